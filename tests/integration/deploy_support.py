"""Real SuperLink / SuperNode processes on 127.0.0.1 for the deployment tests.

Every process gets its own session (so a whole tree can be signalled), its own FLWR_HOME
under the test's tmp dir, and is killed - with all its descendants, including the ones
Flower starts in sessions of their own - when the test's cluster is torn down.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w
from sklearn.datasets import load_breast_cancer

from fedsys.data.builtin import BREAST_CANCER_RANGES
from fedsys.deploy.certs import create_node_key, init_certs
from fedsys.privacy.ledger import PrivacyLedger

FEDSYS = str(Path(sys.executable).parent / "fedsys")
MARKER = 987654.123456789  # planted in one data holder's CSV; must never reach the server
MARKER_TEXT = "987654.123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"})
    # One torch/BLAS thread per process: the SuperLink, three SuperNodes and their ClientApps share
    # the test machine's cores, and oversubscribed torch threads spin-wait each other (~10x slower).
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    return env


@dataclass
class Proc:
    """A started command, its log, and its process tree."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float, *, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}) before /{pattern}/:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no /{pattern}/ after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self, sig: signal.Signals = signal.SIGKILL, grace: float = 20.0) -> None:
        """Signal the whole tree; escalate to SIGKILL after ``grace`` seconds."""
        tree = descendants(self.popen.pid)
        _signal_tree(self.popen.pid, tree, sig)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_tree(self.popen.pid, tree, signal.SIGKILL)
            self.popen.wait(timeout=10)
        _signal_tree(self.popen.pid, tree | descendants(self.popen.pid), signal.SIGKILL)


def spawn(name: str, argv: list[str], log: Path, cwd: Path, *, flwr_home: Path | None = None) -> Proc:
    """Start ``argv`` in a new session, output appended to ``log`` (fedsys commands set FLWR_HOME)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = child_env()
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(),
            cwd=cwd,
        )
    return Proc(name, popen, log)


def descendants(root: int) -> set[int]:
    """All live descendants of ``root`` (Linux /proc), including ones in other sessions."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal_tree(root: int, tree: set[int], sig: signal.Signals) -> None:
    for pid in [root, *tree]:
        for target in (lambda p: os.killpg(p, sig), lambda p: os.kill(p, sig)):
            try:
                target(pid)
            except (ProcessLookupError, PermissionError):
                pass


def write_holder_csvs(directory: Path, parts: int = 3) -> list[Path]:
    """Split breast_cancer into ``parts`` CSV files (label column ``y``); plant MARKER in the first."""
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    paths = []
    for i, rows in enumerate(np.array_split(order, parts)):
        frame = pd.DataFrame(x[rows], columns=[f"f{j}" for j in range(x.shape[1])])
        frame["y"] = y[rows]
        if i == 0:
            frame.loc[frame.index[0], "f0"] = MARKER
        path = directory / f"holder-{i + 1}.csv"
        frame.to_csv(path, index=False, float_format="%.15g")
        paths.append(path)
    assert MARKER_TEXT in paths[0].read_text()
    write_range_table(directory / "ranges.csv")
    return paths


def write_range_table(path: Path) -> Path:
    """The holders' declared public feature ranges (breast cancer's documented min/max)."""
    rows = [f"f{j},{low!r},{high!r}" for j, (low, high) in enumerate(BREAST_CANCER_RANGES)]
    path.write_text("column,low,high\n" + "\n".join(rows) + "\n")
    return path


def marker_patterns() -> list[bytes]:
    return [MARKER_TEXT.encode(), struct.pack("<d", MARKER), struct.pack("<f", MARKER)]


def files_containing_marker(*roots: Path) -> list[Path]:
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and any(p in path.read_bytes() for p in marker_patterns()):
                hits.append(path)
    return hits


def scenario(*, secagg: bool, rounds: int = 2, min_clients: int = 3, **extra: object) -> dict[str, object]:
    config: dict[str, object] = {
        "num-rounds": rounds,
        "seed": 7,
        "dataset": "node",
        "feature-shape": "30",
        "num-classes": 2,
        "model": "logreg",
        # lr for features in [-1, 1] (declared ranges); 0.5 suited per-holder standardisation
        "train": {"lr": 1.0, "batch-size": 32, "momentum": 0.0, "local-epochs": 1},
        "dp": {"enabled": True, "noise-multiplier": 1.0, "max-grad-norm": 1.0},
        "secagg": {"enabled": secagg, "stage-timeout": 120.0},
        "sampling": {"min-clients": min_clients, "round-timeout": 120.0},
    }
    config.update(extra)
    return config


@dataclass
class Cluster:
    """A SuperLink and its SuperNodes under one tmp dir."""

    root: Path
    port: int = field(default_factory=free_port)
    server: Proc | None = None
    nodes: dict[str, Proc] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)
    app_hash: str = ""

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def state(self) -> Path:
        return self.root / "server-state"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def make_certs(self, names: list[str], **cert_args: object) -> None:
        init_certs(self.certs, server_host="fedsys.test", **cert_args)  # type: ignore[arg-type]
        for name in names:
            create_node_key(self.certs, name)

    def start_server(self, approve: list[str] | None = None) -> Proc:
        argv = [FEDSYS, "server", "start", "--certs", str(self.certs), "--address", self.address]
        for digest in approve or [self.app_hash]:
            argv += ["--approve", digest]
        log = self.root / "logs" / "server.log"
        earlier = log.read_text().count("SuperLink ready") if log.exists() else 0  # the log is appended to
        self.server = spawn("server", [*argv, "--state", str(self.state)], log, self.root)
        self.server.wait_for(r"SuperLink ready", timeout=90, count=earlier + 1)
        return self.server

    def start_node(
        self,
        name: str,
        *,
        approve: str,
        key: Path | None = None,
        ca: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> Proc:
        home = self.root / "nodes" / name
        argv = [
            FEDSYS,
            "client",
            "start",
            "--superlink",
            self.address,
            "--ca",
            str(ca or self.certs / "ca.crt"),
            "--key",
            str(key or self.certs / "nodes" / f"{name}.key"),
            "--data",
            str(self.data[name]),
            "--label-column",
            "y",
            "--feature-range",
            str(self.data[name].parent / "ranges.csv"),  # written by write_holder_csvs
            "--num-classes",
            "2",
            "--max-epsilon",
            "1000",
            "--target-delta",
            "1e-5",
            "--ledger",
            str(home / "ledger.sqlite"),
            "--home",
            str(home),
            "--approve",
            approve,
            *extra,
        ]
        ledger = home / "ledger.sqlite"
        if not ledger.exists():  # a data holder creates its ledger once (`fedsys ledger init`)
            home.mkdir(parents=True, exist_ok=True)
            PrivacyLedger.init(ledger)
        proc = spawn(name, argv, self.root / "logs" / f"{name}.log", self.root)
        self.nodes[name] = proc
        return proc

    def ledger(self, name: str) -> Path:
        return self.root / "nodes" / name / "ledger.sqlite"

    def run(
        self, config: dict[str, object], out: Path, *, app: Path, resume: bool = False, timeout: float = 400
    ) -> subprocess.CompletedProcess[str]:
        argv = [FEDSYS, "server", "run", "--state", str(self.state), "--app", str(app)]
        if resume:
            argv += ["--resume", str(out)]
        else:
            argv += [str(self._scenario_file(config, out)), "--out", str(out)]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=self.root
        )

    def _scenario_file(self, config: dict[str, object], out: Path) -> Path:
        """The scenario TOML, kept out of the server's runs directory (which only the server writes)."""
        path = self.root / "scenarios" / f"{out.name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(tomli_w.dumps(config))
        return path

    def runs(self, name: str) -> Path:
        """A run directory inside the server's runs directory (the only place a run may write)."""
        return self.state / "runs" / name

    def start_run(self, config: dict[str, object], out: Path, *, app: Path) -> Proc:
        path = self._scenario_file(config, out)
        argv = [
            FEDSYS,
            "server",
            "run",
            "--state",
            str(self.state),
            "--app",
            str(app),
            str(path),
            "--out",
            str(out),
        ]
        return spawn(f"run-{out.name}", argv, self.root / "logs" / f"run-{out.name}.log", self.root)

    def stop(self) -> None:
        for proc in [*self.nodes.values(), *([self.server] if self.server else [])]:
            if proc.popen.poll() is None:
                proc.kill(signal.SIGTERM)
            else:
                proc.kill(signal.SIGKILL, grace=1)
