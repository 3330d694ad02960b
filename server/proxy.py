"""Operator process glue: the public Fleet-only proxy in front of the loopback SuperLink.

Started by ``fedsys server start`` (``python -m server.proxy ...``); see
:mod:`fedsys.deploy.fleet_proxy` for what it forwards and why.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fedsys.deploy.fleet_proxy import DEFAULT_PULL_HOLD, ProxySettings, serve
from fedsys.deploy.server import parse_address


def main(argv: list[str] | None = None) -> int:
    """Parse the proxy's options and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m server.proxy", description=__doc__)
    parser.add_argument("--listen", required=True, help="public HOST:PORT")
    parser.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    parser.add_argument("--certfile", default=None, help="TLS certificate (server.crt)")
    parser.add_argument("--keyfile", default=None, help="TLS private key (server.key)")
    parser.add_argument("--ca-certfile", default=None, help="CA that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (local trials)")
    parser.add_argument(
        "--pull-hold",
        type=float,
        default=DEFAULT_PULL_HOLD,
        help="seconds an empty pull-messages is held until a message arrives (0: answer at once)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.insecure and None in (args.certfile, args.keyfile, args.ca_certfile):
        parser.error("--certfile, --keyfile and --ca-certfile are required unless --insecure")
    host, port = parse_address(args.listen)
    scheme = "http" if args.insecure else "https"
    settings = ProxySettings(
        listen_host=host,
        listen_port=port,
        upstream=f"{scheme}://{args.upstream}",
        certfile=None if args.insecure else args.certfile,
        keyfile=None if args.insecure else args.keyfile,
        upstream_ca=None if args.insecure else args.ca_certfile,
        pull_hold=max(0.0, args.pull_hold),
    )
    logging.getLogger("fedsys.deploy.proxy").info(
        "Fleet proxy on %s forwards POST /v1/fleet/* to %s; everything else is refused",
        args.listen,
        settings.upstream,
    )
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
