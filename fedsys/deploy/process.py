"""Foreground supervision of Flower processes: start, tee their output, stop them together.

Children share the supervisor's process group (a terminal's Ctrl-C or a ``kill -- -PGID``
reaches all of them) and, on Linux, get SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``),
so no SuperLink or SuperNode outlives the command that started it. SIGTERM/SIGINT sent to the
supervisor are forwarded; a child that ignores them is killed after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from fedsys.errors import DeploymentError

Sink = Callable[[str], None]
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    """One supervised process."""

    name: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread


@dataclass
class Supervisor:
    """Runs child processes in the foreground; use as a context manager (stops them on exit)."""

    log_file: Path
    sink: Sink
    grace_seconds: float = 15.0
    children: list[Child] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Supervisor:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = self.log_file.open("a", encoding="utf-8", buffering=1)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        self._log.close()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Child:
        """Start ``argv`` and copy its output, prefixed with ``[name]``, to the sink and log file."""
        self.emit(name, "$ " + " ".join(argv))
        try:
            process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            raise DeploymentError(f"cannot start {name} ({argv[0]}): {err}") from err
        pump = threading.Thread(target=self._pump, args=(name, process), daemon=True)
        pump.start()
        child = Child(name, process, pump)
        self.children.append(child)
        return child

    def emit(self, name: str, text: str) -> None:
        """Write one line to the sink and the log file."""
        line = f"[{name}] {text.rstrip()}"
        with self._lock:
            self.sink(line)
            self._log.write(f"{_timestamp()} {line}\n")

    def run_until_exit(self) -> int:
        """Block until a signal arrives or a child exits; then stop all. Returns an exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stop.wait(0.2):
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        self.emit(child.name, f"exited with code {code}; stopping the others")
                        return code if code >= 0 else 128 - code
            return 0
        finally:
            self.stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop_all(self) -> None:
        """SIGTERM every running child, wait up to the grace period, then SIGKILL."""
        running = [c for c in self.children if c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.emit(child.name, "did not stop in time; killing it")
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.pump.join(timeout=2.0)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.emit("fedsys", f"received {signal.Signals(signum).name}; shutting down")
        self._stop.set()

    def _pump(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None  # set by Popen(stdout=PIPE)
        for raw in process.stdout:
            self.emit(name, raw.decode("utf-8", errors="replace"))
        process.stdout.close()


def executable(name: str) -> str:
    """Path of a console script installed next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"cannot find the {name!r} command; is flwr installed in this environment?")
    return found


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: own FLWR_HOME, no telemetry, no network look-ups."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    # SuperLink/SuperNode start `flower-superexec` by name: the venv's bin must be on PATH.
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _timestamp() -> str:
    """Local time with milliseconds (the latency benchmark times message stages from the log)."""
    now = time.time()
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
