"""The operator's side: a SuperLink with TLS, node authentication and a persistent state database.

A state directory holds everything the SuperLink keeps between restarts::

    STATE/superlink.db      Flower's state (registered nodes, runs, messages in flight)
    STATE/superlink.log     this daemon's log (the same lines go to stdout)
    STATE/flwr-home/        FLWR_HOME of the operator's ``flwr`` CLI: config.toml names the
                            SuperLink connection ``fedsys`` (address + CA) used by
                            ``flwr supernode register`` and ``fedsys server run``
    STATE/runs/             default run directories (metrics, checkpoints, final model)
    STATE/superexec.secret  shared secret of the SuperLink and its app gate (0600, per start)

The state directory and everything in it is owner-only (directories 0700, files 0600: the
database holds model updates in flight). The SuperLink itself listens on 127.0.0.1 only
(``--local-port``); the public ``--address`` is served by the Fleet-only proxy
(``python -m server.proxy``, :mod:`fedsys.deploy.fleet_proxy`), so the Control and Runtime
APIs are reachable from the operator's host only. The SuperLink runs with
``--isolation process``; the operator's app gate (``python -m server.daemon``,
:mod:`fedsys.deploy.server_gate`) is its only executor and starts ServerApps for approved
FAB hashes only, with run directories confined to ``STATE/runs`` (``FEDSYS_RUNS_ROOT``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedsys.deploy.certs import AllowedNode, CertPaths, read_allowlist, write_private
from fedsys.deploy.process import Sink, Supervisor, executable, flower_env
from fedsys.errors import DeploymentError

CONNECTION = "fedsys"
DEFAULT_ADDRESS = "127.0.0.1:9093"
LOOPBACK = "127.0.0.1"
RUNS_ROOT_ENV = "FEDSYS_RUNS_ROOT"  # tells the ServerApp where run directories may be
_ALREADY_REGISTERED = "Public key already in use"


@dataclass(frozen=True)
class ServerLayout:
    """Paths inside a server state directory."""

    state: Path

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of the SuperLink and of the operator's flwr CLI."""
        return self.state / "flwr-home"

    @property
    def database(self) -> Path:
        """The SuperLink's state database."""
        return self.state / "superlink.db"

    @property
    def log_file(self) -> Path:
        """Where ``fedsys server start`` logs."""
        return self.state / "superlink.log"

    @property
    def keys_dir(self) -> Path:
        """Copies of the allowlisted public keys, as registered."""
        return self.state / "registered-keys"

    @property
    def secret_file(self) -> Path:
        """SuperExec shared secret of the SuperLink and the app gate."""
        return self.state / "superexec.secret"

    @property
    def runs_dir(self) -> Path:
        """Default parent of run directories."""
        return self.state / "runs"


@dataclass(frozen=True)
class ServerOptions:
    """``fedsys server start`` options."""

    certs: Path | None
    state: Path
    approved: Sequence[str] = ()
    address: str = DEFAULT_ADDRESS
    insecure: bool = False
    ready_timeout: float = 60.0
    local_port: int = 0  # loopback port of the SuperLink (Control, Runtime API); 0: any free one
    pull_hold: float | None = None  # seconds the proxy holds an empty pull (None: its default)

    @property
    def local_address(self) -> str:
        """Where the SuperLink itself listens: loopback only.

        Raises:
            DeploymentError: no local port was chosen yet.
        """
        if not 0 < self.local_port < 65536:
            raise DeploymentError(f"the SuperLink's loopback port must be in 1..65535, got {self.local_port}")
        return f"{LOOPBACK}:{self.local_port}"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:PORT``)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploymentError(f"address must be HOST:PORT, got {address!r}")
    return host, int(port)


def control_address(address: str) -> str:
    """Where local tools reach a SuperLink bound to ``address`` (wildcards mean loopback)."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_connection(layout: ServerLayout, *, address: str, ca_cert: Path | None) -> Path:
    """Write ``FLWR_HOME/config.toml`` naming the SuperLink connection ``fedsys``."""
    connection: dict[str, Any] = {"address": control_address(address)}
    if ca_cert is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(ca_cert.resolve())
    layout.flwr_home.mkdir(parents=True, exist_ok=True)
    path = layout.flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    return path


def superlink_argv(options: ServerOptions, layout: ServerLayout) -> list[str]:
    """The ``flower-superlink`` command line for ``options`` (bound to loopback only)."""
    argv = [executable("flower-superlink"), "--host", LOOPBACK, "--port", str(options.local_port)]
    argv += ["--database", str(layout.database), "--isolation", "process"]
    argv += ["--superexec-auth-secret-file", str(layout.secret_file)]
    argv += ["--disable-runtime-dependency-installation"]
    if options.insecure:
        return [*argv, "--insecure"]
    paths = _cert_paths(options.certs)
    argv += ["--ssl-ca-certfile", str(paths.ca_cert), "--ssl-certfile", str(paths.server_cert)]
    argv += ["--ssl-keyfile", str(paths.server_key), "--enable-supernode-auth"]
    return argv


def gate_argv(options: ServerOptions, layout: ServerLayout) -> list[str]:
    """The operator's app gate command line."""
    argv = [sys.executable, "-m", "server.daemon", "--runtime-api-address", options.local_address]
    if options.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(_cert_paths(options.certs).ca_cert)]
    argv += ["--superexec-auth-secret-file", str(layout.secret_file)]
    for digest in options.approved:
        argv += ["--approve", digest]
    return argv


def proxy_argv(options: ServerOptions) -> list[str]:
    """The public Fleet-only proxy's command line (``options.address`` -> the loopback SuperLink)."""
    argv = [sys.executable, "-m", "server.proxy", "--listen", options.address]
    argv += ["--upstream", options.local_address]
    if options.pull_hold is not None:
        argv += ["--pull-hold", str(options.pull_hold)]
    if options.insecure:
        return [*argv, "--insecure"]
    paths = _cert_paths(options.certs)
    argv += ["--certfile", str(paths.server_cert), "--keyfile", str(paths.server_key)]
    return [*argv, "--ca-certfile", str(paths.ca_cert)]


def start_server(options: ServerOptions, sink: Sink) -> int:
    """Run the loopback SuperLink, its app gate and the public Fleet proxy until SIGTERM/SIGINT.

    Everything this creates (and the SuperLink and ServerApps it starts) is owner-only: the
    process runs with umask 077 and the state directory is set to 0700.

    Raises:
        DeploymentError: no approved app, certificates missing, the CA key lies beside the
            server's certificates, or the SuperLink did not start.
    """
    if not options.approved:
        raise DeploymentError("no approved app: pass --approve FAB_HASH")
    if not options.insecure:
        refuse_ca_key(_cert_paths(options.certs))
    previous_umask = os.umask(0o077)
    try:
        return _serve(_with_local_port(options), sink)
    finally:
        os.umask(previous_umask)


def refuse_ca_key(paths: CertPaths) -> None:
    """Fail if the CA's private key sits in the directory the SuperLink serves from.

    Whoever takes over the internet-facing host must not also get the key that every data
    holder trusts to vouch for the server (it could mint a certificate for any name).

    Raises:
        DeploymentError: ``ca.key`` is in the certificate directory.
    """
    if paths.ca_key.exists():
        raise DeploymentError(
            f"{paths.ca_key} must not be on the server: move it offline (e.g. "
            f"`mv {paths.ca_key} /media/offline-ca/`); the server needs only "
            f"{paths.ca_cert.name}, server.crt and server.key (see `fedsys certs init --ca-dir`)"
        )


def _with_local_port(options: ServerOptions) -> ServerOptions:
    local_port = options.local_port or free_loopback_port()
    if local_port == parse_address(options.address)[1]:
        raise DeploymentError(f"--local-port {local_port} must differ from the port of --address")
    return dataclasses.replace(options, local_port=local_port)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _serve(options: ServerOptions, sink: Sink) -> int:
    layout = ServerLayout(options.state.resolve())
    nodes = [] if options.insecure else read_allowlist(_cert_paths(options.certs).directory)
    make_private_dirs(layout)
    ca = None if options.insecure else _cert_paths(options.certs).ca_cert
    write_connection(layout, address=options.local_address, ca_cert=ca)
    write_private(layout.secret_file, secrets.token_bytes(32), force=True)
    env = flower_env(layout.flwr_home, {RUNS_ROOT_ENV: str(layout.runs_dir)})
    with Supervisor(layout.log_file, sink) as supervisor:
        if options.insecure:
            supervisor.emit(
                "fedsys",
                "WARNING: --insecure: no TLS and no node authentication; any process that can "
                "reach the port can join or submit runs. Use only for local trials.",
            )
        child = supervisor.start("superlink", superlink_argv(options, layout), env)
        alive = lambda: child.process.poll() is None  # noqa: E731
        wait_for_port(options.local_address, options.ready_timeout, alive=alive)
        make_private_files(layout)
        supervisor.start("gate", gate_argv(options, layout), env)
        proxy = supervisor.start("proxy", proxy_argv(options), env)
        wait_for_port(options.address, options.ready_timeout, alive=lambda: proxy.process.poll() is None)
        if not options.insecure:
            if not nodes:
                supervisor.emit("fedsys", "WARNING: the allowlist is empty; no SuperNode can connect")
            register_nodes(layout, nodes, lambda text: supervisor.emit("fedsys", text))
        supervisor.emit("fedsys", f"approved app FAB hashes: {', '.join(options.approved)}")
        supervisor.emit(
            "fedsys",
            f"Control and Runtime APIs on {options.local_address} (loopback only; flwr connection "
            f"{CONNECTION!r} in {layout.flwr_home})",
        )
        supervisor.emit(
            "fedsys", f"SuperLink ready on {options.address}: Fleet API only (state in {layout.state})"
        )
        return supervisor.run_until_exit()


def make_private_dirs(layout: ServerLayout) -> None:
    """Create the state and runs directories owner-only (0700), tightening existing ones."""
    for path in (layout.state, layout.runs_dir, layout.flwr_home):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)


def make_private_files(layout: ServerLayout) -> None:
    """Set the database (and SQLite's side files) and the log to 0600, e.g. after an upgrade."""
    database = layout.database
    side_files = [database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")]
    for path in (database, *side_files):
        if path.exists():
            path.chmod(0o600)
    if layout.log_file.exists():
        layout.log_file.chmod(0o600)


def wait_for_port(address: str, timeout: float, *, alive: Any = None) -> None:
    """Block until something accepts TCP connections on ``address``."""
    host, port = parse_address(control_address(address))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise DeploymentError(f"the process that should listen on {address} exited")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"nothing listens on {address} after {timeout:.0f} s")


def register_nodes(
    layout: ServerLayout, nodes: Sequence[AllowedNode], sink: Sink, timeout: float = 60.0
) -> None:
    """Register each allowlisted public key with the SuperLink (already registered keys are fine)."""
    layout.keys_dir.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        key_file = layout.keys_dir / f"{node.name}.pub"
        key_file.write_text(node.line() + "\n")
        args = ["supernode", "register", str(key_file), CONNECTION, "--name", node.name]
        result = flwr_json(layout, args, retry_seconds=timeout)
        if result.get("success"):
            sink(f"registered node {node.name} (node id {result.get('node-id')})")
        elif _ALREADY_REGISTERED in str(result.get("error-message", "")):
            sink(f"node {node.name} was already registered")
        else:
            raise DeploymentError(f"cannot register node {node.name}: {_error_of(result)}")


def flwr_json(layout: ServerLayout, args: Sequence[str], *, retry_seconds: float = 0.0) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` against this state's SuperLink; retry while it is starting."""
    deadline = time.monotonic() + retry_seconds
    while True:
        completed = subprocess.run(
            [executable("flwr"), *args, "--format", "json"],
            env=flower_env(layout.flwr_home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        result = _parse_json(completed.stdout, args)
        if result.get("success") or not _is_transient(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _parse_json(stdout: str, args: Sequence[str]) -> dict[str, Any]:
    start = stdout.find("{")
    try:
        parsed = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise DeploymentError(f"flwr {' '.join(args)} gave no JSON answer: {stdout.strip()[:300]!r}")
    return parsed


def _is_transient(result: dict[str, Any]) -> bool:
    message = str(result.get("error-message", "")).lower()
    return any(hint in message for hint in ("connect", "unavailable", "timed out", "refused"))


def _error_of(result: dict[str, Any]) -> str:
    lines = [line for line in str(result.get("error-message", "")).splitlines() if line.strip()]
    return lines[-1] if lines else json.dumps(result)


def _cert_paths(certs: Path | None) -> CertPaths:
    if certs is None:
        raise DeploymentError("--certs DIR is required (or --insecure for a local trial)")
    paths = CertPaths(certs.resolve())
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise DeploymentError(f"{path} is missing; create it with `fedsys certs init {certs}`")
    return paths
