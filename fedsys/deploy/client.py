"""The data holder's side: a SuperNode plus the app gate, configured only by the data holder.

``fedsys client start`` runs two processes (see :mod:`fedsys.deploy.process`):

- ``flower-supernode`` connects out to the SuperLink over TLS (verifying the server against
  the federation's CA), authenticates with the node's private key, and carries the data
  holder's own settings in ``--node-config`` (data path, label column, privacy budget, ledger
  path): the server never sees or changes them. It runs with ``--isolation process``, so it
  executes nothing itself, and retries the connection after interruptions (``--max-retries``/
  ``--max-wait-time`` unset: forever, unless ``--max-wait-time`` is given).
- the app gate (``python -m clients.node``, :mod:`fedsys.deploy.executor`) takes the tasks
  from the SuperNode's loopback-only Runtime API and runs the installed fedsys ClientApp for
  approved FAB hashes only.

A node directory (``--home``) keeps the SuperNode's FLWR_HOME, the gate's shared secret (0600)
and the log.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsys.config import parse_feature_range
from fedsys.deploy.certs import write_private
from fedsys.deploy.process import Sink, Supervisor, executable, flower_env
from fedsys.deploy.server import parse_address
from fedsys.errors import ConfigError, DeploymentError

log = logging.getLogger("fedsys")
# Per-message lines, several for every exchange of every round: kept in the node's log file
# (supernode.log, which benchmarks/deploy_latency.py times stages from), left off the console.
_PER_MESSAGE = re.compile(
    r"^\[supernode\] (?:\x1b\[[0-9;]*m)?INFO\s*(?:\x1b\[[0-9;]*m)?:\s*"
    r"(?:$|\[RUN \d+(?:, ROUND [^\]]*)?\]$|Receiving: |Received successfully|Sending: |Sent successfully)"
    r"|^\[gate\] .* INFO fedsys\.deploy: run \d+"
    r"(?: task \d+: app FAB \w+ is approved$|: \S+ task answered in )"
)


def concise(sink: Sink) -> Sink:
    """``sink`` without the per-message lines of the SuperNode and the app gate.

    What stays on the console for a run: start-up, one line per round from the node, warnings,
    refusals and errors; the node's log file keeps every line.
    """

    def write(line: str) -> None:
        if not _PER_MESSAGE.search(line):
            sink(line)

    return write


@dataclass(frozen=True)
class ClientOptions:
    """``fedsys client start`` options (all of them are the data holder's own)."""

    superlink: str
    ca_cert: Path | None
    key: Path | None
    data: Path
    label_column: str
    max_epsilon: float
    target_delta: float
    ledger: Path
    home: Path
    approved: Sequence[str]
    num_classes: int = 0
    budget_policy: str = "refuse"
    device: str = "auto"
    runtime_port: int = 0  # 0: pick a free loopback port
    max_wait_time: float | None = None
    insecure: bool = False
    require_secagg: bool = True
    min_cohort: int = 2
    max_rounds_per_run: int = 0  # 0: no limit
    share_epsilon: bool = False
    share_evaluation: str = "secure"  # secure | plain | none: where federated-evaluation sums may go
    dataset_name: str = "default"  # the budget key in the ledger: one budget per declared data set
    feature_range: str = ""  # public range of the data's values: "LO,HI", a .csv table, or "none"
    peers: Path | None = None  # the other holders' identity public keys, checked out of band
    require_malicious_secagg: bool | None = None  # None: required whenever --key and --peers are given
    local_noise_multiplier: float = 0.0  # distributed DP: the noise floor this holder adds by itself


def node_config(options: ClientOptions) -> str:
    """The ``--node-config`` string (keys of :data:`fedsys.node.settings.NODE_KEYS`)."""
    values: dict[str, str | int | float] = {
        "data-path": str(options.data.resolve()),
        "label-column": options.label_column,
        "max-epsilon": float(options.max_epsilon),
        "target-delta": float(options.target_delta),
        "ledger-path": str(options.ledger.resolve()),
        "budget-policy": options.budget_policy,
        "device": options.device,
        "dataset-name": options.dataset_name,
    }
    if options.num_classes:
        values["num-classes"] = int(options.num_classes)
    if options.feature_range:
        declared = parse_feature_range(options.feature_range, key="--feature-range")
        table = declared.table if declared else ""
        values["feature-range"] = str(Path(table).resolve()) if table else options.feature_range
    # the holder's policy (fedsys.node.policy); DP is required whenever max-epsilon is finite
    values["require-secagg"] = str(options.require_secagg).lower()
    values["min-cohort"] = int(options.min_cohort)
    values["share-epsilon"] = str(options.share_epsilon).lower()
    if options.share_evaluation not in ("secure", "plain", "none"):
        raise ConfigError(
            f"--share-evaluation must be secure, plain or none, got {options.share_evaluation!r}"
        )
    values["share-evaluation"] = options.share_evaluation
    if options.max_rounds_per_run:
        values["max-rounds-per-run"] = int(options.max_rounds_per_run)
    if options.local_noise_multiplier:
        values["ddp-local-noise-multiplier"] = float(options.local_noise_multiplier)
    # SecAgg+ against a malicious server: the node-auth key doubles as the holder's signing identity
    if options.key is not None:
        values["identity-key"] = str(options.key.resolve())
    if options.peers is not None:
        values["peers"] = str(options.peers.resolve())
    if options.require_malicious_secagg is not None:
        values["require-malicious-secagg"] = str(options.require_malicious_secagg).lower()
    return " ".join(f"{key}={_toml_value(key, value)}" for key, value in values.items())


def supernode_argv(options: ClientOptions, *, runtime_port: int, secret_file: Path) -> list[str]:
    """The ``flower-supernode`` command line."""
    argv = [executable("flower-supernode"), "--superlink", options.superlink]
    if options.insecure:
        argv.append("--insecure")
    else:
        argv += [
            "--root-certificates",
            str(_required(options.ca_cert, "--ca")),
            "--auth-supernode-private-key",
        ]
        argv.append(str(_required(options.key, "--key")))
    argv += ["--node-config", node_config(options), "--isolation", "process"]
    argv += [
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
        "--superexec-auth-secret-file",
        str(secret_file),
    ]
    if options.max_wait_time is not None:
        argv += ["--max-wait-time", str(options.max_wait_time)]
    return argv


def gate_argv(approved: Sequence[str], *, runtime_port: int, secret_file: Path) -> list[str]:
    """The app gate's command line."""
    argv = [sys.executable, "-m", "clients.node", "--runtime-api-address", f"127.0.0.1:{runtime_port}"]
    argv += ["--superexec-auth-secret-file", str(secret_file)]
    for digest in approved:
        argv += ["--approve", digest]
    return argv


def check_options(options: ClientOptions) -> list[str]:
    """Fail fast on anything the data holder can fix before connecting; creates nothing.

    Returns:
        Warnings for the data holder (e.g. a target delta too large for its data).

    Raises:
        DeploymentError: a certificate or key is missing or the key is readable by others.
        ConfigError: a budget value or the dataset name is out of range, or no --feature-range.
        DataError: the data file cannot be read as a labelled table.
        LedgerError: the ledger is missing, empty or damaged (create it with `fedsys ledger init`).
    """
    parse_address(options.superlink)
    if not options.approved:
        raise DeploymentError("no approved app: pass --approve FAB_HASH")
    if not 0 < options.target_delta < 1:
        raise ConfigError(f"--target-delta must be in (0, 1), got {options.target_delta}")
    if not options.max_epsilon > 0:
        raise ConfigError(f"--max-epsilon must be > 0, got {options.max_epsilon}")
    if options.budget_policy not in ("refuse", "truncate"):
        raise ConfigError(f"--budget-policy must be refuse or truncate, got {options.budget_policy!r}")
    from fedsys.privacy.budget import delta_warning
    from fedsys.privacy.ledger import PrivacyLedger
    from fedsys.privacy.ledger_schema import check_budget_key

    check_budget_key(options.dataset_name)
    if not options.insecure:
        _required_file(_required(options.ca_cert, "--ca"), "CA certificate")
        key = _required_file(_required(options.key, "--key"), "node key")
        if stat.S_IMODE(key.stat().st_mode) & 0o077:
            raise DeploymentError(f"{key} is readable by other users; run `chmod 600 {key}`")
    _check_identity(options)
    from fedsys.data import holder_client_data

    data = holder_client_data(
        options.data,
        label_column=options.label_column,
        num_classes=options.num_classes,
        feature_range=parse_feature_range(options.feature_range, key="--feature-range"),
    )
    if len(data.train) < 2:
        raise DeploymentError(f"{options.data} holds too few rows to train on")
    PrivacyLedger.open(options.ledger).close()  # refuses a missing or damaged ledger, creates none
    warning = delta_warning(options.target_delta, len(data.train))
    return [] if warning is None else [warning]


def start_client(options: ClientOptions, sink: Sink) -> int:
    """Run the SuperNode and the app gate in the foreground until SIGTERM/SIGINT."""
    notes = check_options(options)
    home = options.home.resolve()
    (home / "flwr-home").mkdir(parents=True, exist_ok=True)
    secret_file = home / "superexec.secret"
    write_private(secret_file, secrets.token_bytes(32), force=True)  # fresh per start
    port = options.runtime_port or free_port()
    env = flower_env(home / "flwr-home")
    with Supervisor(home / "supernode.log", concise(sink)) as supervisor:
        if options.insecure:
            supervisor.emit("fedsys", "WARNING: --insecure: the connection to the SuperLink is not encrypted")
        for warning in notes:
            log.warning(warning)
            supervisor.emit("fedsys", f"WARNING: {warning}")
        supervisor.emit("fedsys", f"approved app FAB hashes: {', '.join(options.approved)}")
        supervisor.start(
            "supernode", supernode_argv(options, runtime_port=port, secret_file=secret_file), env
        )
        supervisor.start("gate", gate_argv(options.approved, runtime_port=port, secret_file=secret_file), env)
        return supervisor.run_until_exit()


def _check_identity(options: ClientOptions) -> None:
    """The SecAgg+ identity key and peers file load (ConfigError) and go together (DeploymentError)."""
    from fedsys.secagg import load_identity, load_trusted_peers

    if options.require_malicious_secagg and (options.key is None or options.peers is None):
        raise DeploymentError("--require-malicious-secagg needs --key and --peers")
    if options.peers is None:
        return
    key = _required(options.key, "--key (the identity that --peers is checked against)")
    load_identity(_required_file(key, "node key"))
    load_trusted_peers(_required_file(options.peers, "peers file"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(key: str, value: str | int | float) -> str:
    if not isinstance(value, str):
        return repr(value)
    if any(ch in value for ch in '"\\\n') or not value:
        raise ConfigError(f"{key} cannot contain quotes, backslashes or newlines, got {value!r}")
    return f'"{value}"'


def _required(path: Path | None, option: str) -> Path:
    if path is None:
        raise DeploymentError(f"{option} is required (or --insecure for a local trial)")
    return path


def _required_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DeploymentError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise DeploymentError(f"{what} is not readable: {path}")
    return path
