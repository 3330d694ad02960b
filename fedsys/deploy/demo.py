"""``fedsys demo deploy``: a whole TLS deployment on loopback, from certificates to a finished run.

It does what the README's deployment sections tell an operator and each data holder to do,
in one directory: a CA and SuperLink certificate (:func:`fedsys.deploy.certs.init_certs`,
the CA key kept in a separate ``offline-ca`` directory), one key pair per holder made by that
holder and allowlisted by the operator, a ledger per holder, digits partitions as CSV files
(scikit-learn's bundled copy, nothing downloaded), ``fedsys server start`` with node
authentication, one ``fedsys client start`` per holder, and ``fedsys server run`` on
``simulations/deploy-digits.toml``. Every process it starts is stopped when the run ends,
fails, or the demo is interrupted (Ctrl-C, SIGTERM); none outlives it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fedsys.deploy.certs import authorize_node, generate_node_key, init_certs
from fedsys.deploy.process import Sink, Supervisor, executable, flower_env
from fedsys.deploy.server import free_loopback_port
from fedsys.errors import ConfigError, DeploymentError

SCENARIO = Path(__file__).resolve().parents[2] / "simulations" / "deploy-digits.toml"
HOLDER_NAMES = ("hospital-a", "hospital-b", "hospital-c")
DIGITS_RANGE = "0,16"  # digits' documented pixel counts: public, not computed from rows


@dataclass(frozen=True)
class DemoOptions:
    """``fedsys demo deploy`` options."""

    out: Path | None = None  # default: a new temporary directory (kept, its path printed)
    holders: int = 2
    rounds: int = 2
    secagg: bool = True
    max_epsilon: float = 8.0
    start_timeout: float = 180.0
    run_timeout: float = 600.0
    scenario: Path = SCENARIO
    pull_hold: float | None = None  # the Fleet proxy's hold of empty pulls (None: its default)
    allow_plaintext: bool = False  # holders also accept plaintext rounds (the latency benchmark)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo left its files."""

    root: Path
    run_dir: Path
    log_file: Path
    seconds: float


@dataclass
class _Watch:
    """A sink that remembers lines, so the demo can wait for a child's readiness message."""

    echo: Sink
    lines: list[str] = field(default_factory=list)
    shown: re.Pattern[str] = re.compile(r"\[run-[\w-]+\] (INFO fedsys: round \d+|run \d+:|error)")
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()
        if self.shown.search(line):
            self.echo(line)

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for(self, pattern: str, count: int, timeout: float, supervisor: Supervisor) -> None:
        deadline = time.monotonic() + timeout
        while self.count(pattern) < count:
            dead = [c.name for c in supervisor.children if c.process.poll() is not None]
            if dead:
                raise DeploymentError(f"{dead[0]} exited while the demo waited for /{pattern}/")
            if time.monotonic() > deadline:
                raise DeploymentError(f"no /{pattern}/ after {timeout:.0f} s")
            with self._changed:
                self._changed.wait(0.2)


def check_options(options: DemoOptions) -> None:
    """Raises ConfigError for a holder count or round count the demo cannot run."""
    if options.holders not in (2, 3):
        raise ConfigError(f"--holders must be 2 or 3, got {options.holders}")
    if not 1 <= options.rounds <= 50:
        raise ConfigError(f"--rounds must be in 1..50, got {options.rounds}")
    if options.out is not None and options.out.exists() and any(options.out.iterdir()):
        raise ConfigError(f"--out {options.out} exists and is not empty; give a new directory")
    if not options.scenario.is_file():
        raise ConfigError(f"the demo scenario {options.scenario} is missing (it ships in simulations/)")


def run_demo(options: DemoOptions, echo: Sink) -> DemoResult:
    """Build certificates, keys, data and ledgers, start everything, run, stop everything.

    Raises:
        ConfigError: bad options.
        DeploymentError: a process failed to start, or the run did not complete.
    """
    started = time.monotonic()
    with demo_cluster(options, echo) as cluster:
        run_dir = cluster.run("demo", secagg=options.secagg, rounds=options.rounds)
    echo(f"stopped the SuperLink and {options.holders} SuperNodes; full log: {cluster.log_file}")
    echo(_summary_line(run_dir))
    return DemoResult(cluster.root, run_dir, cluster.log_file, time.monotonic() - started)


@dataclass
class DemoCluster:
    """A running SuperLink and its data holders; :meth:`run` submits a run and waits for it."""

    options: DemoOptions
    root: Path
    names: list[str]
    supervisor: Supervisor
    echo: Sink
    env: dict[str, str] = field(default_factory=dict)
    approve: list[str] = field(default_factory=list)

    @property
    def log_file(self) -> Path:
        """Every line of every process, with millisecond timestamps."""
        return self.root / "demo.log"

    @property
    def state(self) -> Path:
        """The SuperLink's state directory."""
        return self.root / "server-state"

    def run(self, name: str, *, secagg: bool, rounds: int) -> Path:
        """``fedsys server run`` the demo scenario into ``STATE/runs/NAME``; returns that directory.

        Raises:
            DeploymentError: the run did not complete in time.
        """
        run_dir = self.state / "runs" / name
        mode = "on" if secagg else "off"
        self.echo(f"running {rounds} rounds with {len(self.names)} holders (SecAgg+ {mode})")
        argv = [executable("fedsys"), "server", "run", str(self.options.scenario), "--state", str(self.state)]
        argv += ["--out", str(run_dir), "--app", str(self.root / "app")]
        argv += ["--set", f"num-rounds={rounds}", "--set", f"sampling.min-clients={len(self.names)}"]
        argv += ["--set", f"secagg.enabled={str(secagg).lower()}"]
        run = self.supervisor.start(f"run-{name}", argv, self.env, cwd=self.root)
        try:
            code = run.process.wait(timeout=self.options.run_timeout)
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(f"the run did not finish in {self.options.run_timeout:.0f} s") from err
        if code != 0:
            raise DeploymentError(f"`fedsys server run` exited with code {code}; see {self.log_file}")
        return run_dir


@contextmanager
def demo_cluster(options: DemoOptions, echo: Sink) -> Iterator[DemoCluster]:
    """Prepare a demo directory, start a SuperLink and the holders; stop every process on exit.

    Raises:
        ConfigError: bad options.
        DeploymentError: a process failed to start.
    """
    check_options(options)
    root = (options.out or Path(tempfile.mkdtemp(prefix="fedsys-demo-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    echo(f"demo directory: {root}")
    names = list(HOLDER_NAMES[: options.holders])
    _prepare(root, names)
    with _terminate_on_sigterm(), Supervisor(root / "demo.log", _Watch(echo)) as supervisor:
        try:
            yield _start(DemoCluster(options, root, names, supervisor, echo))
        finally:
            pids = _tree(supervisor)
            supervisor.stop_all()
            _kill_survivors(pids)


def _prepare(root: Path, names: list[str]) -> None:
    """Certificates (CA key set apart, as `fedsys certs init` does), holder keys, ledgers, data."""
    init_certs(root / "certs", server_host="localhost", ca_dir=root / "offline-ca")
    for name in names:
        holder = root / name
        key = generate_node_key(holder / "node.key", name=name)  # on the holder's machine
        authorize_node(root / "certs", name, key.public_key.read_text(encoding="utf-8"))  # operator
        _init_ledger(holder / "ledger.sqlite")
    write_digits_partitions([root / name / "digits.csv" for name in names])


def _start(cluster: DemoCluster) -> DemoCluster:
    from fedsys.deploy.app import stage_app

    options, root, supervisor = cluster.options, cluster.root, cluster.supervisor
    watch = supervisor.sink
    assert isinstance(watch, _Watch)  # set by demo_cluster
    # One frozen copy of the installed app: what the server submits and every party approves.
    cluster.approve = ["--approve", stage_app(root / "app").fab_hash]
    cluster.env = flower_env(root / "flwr-home")
    fedsys = executable("fedsys")
    address = f"127.0.0.1:{free_loopback_port()}"
    server = [fedsys, "server", "start", "--certs", str(root / "certs"), "--address", address]
    if options.pull_hold is not None:
        server += ["--pull-hold", str(options.pull_hold)]
    supervisor.start("server", [*server, *cluster.approve, "--state", str(cluster.state)], cluster.env, root)
    watch.wait_for(r"SuperLink ready", 1, options.start_timeout, supervisor)
    cluster.echo(f"SuperLink ready on {address} (TLS, node authentication); starting the data holders")
    for name in cluster.names:
        argv = _client_argv(fedsys, options, root / name, address, root / "certs")
        supervisor.start(name, [*argv, *cluster.approve], cluster.env, root)
    watch.wait_for(r"app gate ready", len(cluster.names), options.start_timeout, supervisor)
    return cluster


def _summary_line(run_dir: Path) -> str:
    """Final accuracy (federated evaluation at the holders) from the run's summary.json."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no summary.json in {run_dir}"
    accuracy = summary.get("final-accuracy")
    shown = f"{accuracy:.3f}" if isinstance(accuracy, float) else "n/a"
    rounds = summary.get("rounds-completed")
    return f"{rounds} rounds completed; final accuracy {shown} (evaluated at the holders)"


def _client_argv(fedsys: str, options: DemoOptions, holder: Path, address: str, certs: Path) -> list[str]:
    argv = [fedsys, "client", "start", "--superlink", address, "--ca", str(certs / "ca.crt")]
    argv += ["--key", str(holder / "node.key"), "--data", str(holder / "digits.csv")]
    argv += ["--label-column", "y", "--num-classes", "10", "--feature-range", DIGITS_RANGE]
    argv += ["--max-epsilon", str(options.max_epsilon), "--target-delta", "1e-5"]
    argv += ["--ledger", str(holder / "ledger.sqlite"), "--home", str(holder / "node")]
    if options.allow_plaintext or not options.secagg:
        # a plaintext update is seen alone: a holder that allows it must allow a "sum" of one
        return [*argv, "--allow-plaintext", "--min-cohort", "1"]
    return [*argv, "--min-cohort", "2"]


def write_digits_partitions(paths: list[Path]) -> None:
    """Split scikit-learn's bundled digits into one CSV per holder (64 pixel columns, label ``y``)."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    for path, rows in zip(paths, np.array_split(order, len(paths)), strict=True):
        frame = pd.DataFrame(x[rows].astype(int), columns=[f"pixel{j}" for j in range(x.shape[1])])
        frame["y"] = y[rows]
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


def _init_ledger(path: Path) -> None:
    from fedsys.privacy.ledger import PrivacyLedger

    path.parent.mkdir(parents=True, exist_ok=True)
    PrivacyLedger.init(path)


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (as Ctrl-C), so the cleanup below runs either way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tree(supervisor: Supervisor) -> set[int]:
    """Every live process below the supervisor's children (Flower starts some in new sessions)."""
    pids: set[int] = set()
    for child in supervisor.children:
        pids |= {child.process.pid, *descendants(child.process.pid)}
    return pids


def descendants(root: int) -> set[int]:
    """All live descendants of ``root`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _kill_survivors(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
