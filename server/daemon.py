"""Operator process glue: the app gate that starts ServerApps for this operator's SuperLink.

Started by ``fedsys server start`` (``python -m server.daemon ...``); see
:mod:`fedsys.deploy.server_gate` for what it checks and why.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from fedsys.deploy.server_gate import ServerGateSettings, serve_server_apps


def main(argv: list[str] | None = None) -> int:
    """Parse the gate's options and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m server.daemon", description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperLink's Runtime API")
    parser.add_argument("--root-certificates", default=None, help="CA certificate (omit with --insecure)")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--approve", action="append", default=[], help="an approved FAB hash")
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.approve:
        parser.error("at least one --approve FAB hash is required")
    if not args.insecure and args.root_certificates is None:
        parser.error("--root-certificates is required unless --insecure")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    secret = args.superexec_auth_secret_file.read_bytes() if args.superexec_auth_secret_file else None
    settings = ServerGateSettings(
        runtime_api_address=args.runtime_api_address,
        approved=frozenset(args.approve),
        root_certificates=None if args.insecure else args.root_certificates,
        secret=secret,
    )
    serve_server_apps(settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
