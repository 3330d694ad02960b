"""Data-holder process glue: the app gate that executes tasks for this node's SuperNode.

Started by ``fedsys client start`` (``python -m clients.node ...``); see
:mod:`fedsys.deploy.executor` for what it checks and why.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from fedsys.deploy.executor import GateSettings, serve

CLIENT_APP = "clients.app:app"


def main(argv: list[str] | None = None) -> int:
    """Parse the gate's options and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m clients.node", description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    parser.add_argument("--approve", action="append", default=[], help="an approved FAB hash")
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.approve:
        parser.error("at least one --approve FAB hash is required")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    secret = args.superexec_auth_secret_file.read_bytes() if args.superexec_auth_secret_file else None
    settings = GateSettings(
        runtime_api_address=args.runtime_api_address,
        approved=frozenset(args.approve),
        client_app=CLIENT_APP,
        secret=secret,
        poll_interval=args.poll_interval,
    )
    serve(settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
