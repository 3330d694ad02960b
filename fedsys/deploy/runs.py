"""Submitting a scenario to a running SuperLink (``flwr run``) and following it to the end.

``flwr run`` accepts run-config overrides only for keys the app declares; the fedsys app
declares every :class:`RunConfig` key (see :mod:`fedsys.deploy.app`), so the whole resolved
scenario travels as one TOML overrides file. The ServerApp runs on the SuperLink host and
writes the run directory there (``out-dir``); ``--resume`` sets ``resume-from`` so the
coordinator continues from that directory's checkpoint.

Both paths must lie inside the server's ``STATE/runs``: ``fedsys server run`` checks before
submitting, and the ServerApp checks again (:func:`confined_run_dir`) against the root the
operator's app gate passes in ``FEDSYS_RUNS_ROOT``, so no run config can make the
operator's host write or read a run directory anywhere else.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import CHECKPOINT_NAME
from fedsys.deploy.app import stage_app
from fedsys.deploy.process import Sink, executable, flower_env
from fedsys.deploy.server import CONNECTION, ServerLayout, flwr_json
from fedsys.errors import ConfigError, DeploymentError

COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunResult:
    """How a submitted run ended."""

    run_id: int
    status: str
    run_dir: Path
    seconds: float

    @property
    def ok(self) -> bool:
        """True if the ServerApp finished without error."""
        return self.status == COMPLETED

    def summary(self) -> dict[str, Any]:
        """The run directory's summary.json (empty if the run wrote none)."""
        path = self.run_dir / "summary.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}


def deployment_config(config: RunConfig, *, run_dir: Path, resume: bool) -> RunConfig:
    """The scenario as the deployed ServerApp must see it (absolute run dir, resume flag).

    Raises:
        ConfigError: the scenario cannot run in deployment, or there is nothing to resume.
    """
    if config.dataset != "node":
        raise ConfigError(
            f'a deployed run trains on the data holders\' own data: set dataset = "node" '
            f"(with feature-shape and num-classes), got dataset = {config.dataset!r}"
        )
    run_dir = run_dir.resolve()
    if resume and not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"--resume {run_dir}: no {CHECKPOINT_NAME} there to continue from")
    if not resume and (run_dir / CHECKPOINT_NAME).exists():
        raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    return config.replace({"out-dir": str(run_dir), "resume-from": str(run_dir) if resume else ""})


def confined_run_dir(config: RunConfig, *, runs_root: Path, run_id: int) -> Path:
    """The run directory of a deployed run; ``out-dir`` and ``resume-from`` must be inside ``runs_root``.

    Relative paths count from ``runs_root``; symbolic links are resolved before the check.

    Raises:
        ConfigError: either path resolves to ``runs_root`` itself or outside it.
    """
    root = runs_root.resolve()
    for key, value in (("out-dir", config.out_dir), ("resume-from", config.resume_from)):
        if value:
            inside_runs(root, key, value)
    return inside_runs(root, "out-dir", config.resume_from or config.out_dir or f"run-{run_id}")


def inside_runs(root: Path, key: str, value: str) -> Path:
    """``value`` resolved against ``root``, if it names a directory strictly inside it.

    Raises:
        ConfigError: it does not.
    """
    resolved = (root / Path(value).expanduser()).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ConfigError(
            f"{key} must be a directory inside the server's runs directory {root}, got {value!r}"
        )
    return resolved


def submit_run(
    config: RunConfig, *, state: Path, sink: Sink, app_dir: Path | None = None, follow: bool = True
) -> RunResult:
    """Start ``config`` on the SuperLink of ``state`` and (with ``follow``) wait until it ends.

    Args:
        config: the resolved scenario (see :func:`deployment_config`).
        state: the SuperLink's state directory (holds the flwr connection settings).
        sink: receives the run's log lines.
        app_dir: a staged fedsys app to submit; default: the installed fedsys, staged afresh.
        follow: stream the run's logs until it finishes.

    Raises:
        DeploymentError: the SuperLink refused the run or is unreachable.
    """
    layout = ServerLayout(state.resolve())
    if not (layout.flwr_home / "config.toml").is_file():
        raise DeploymentError(
            f"no SuperLink connection in {state}; start one with `fedsys server start --state {state}`"
        )
    confined_run_dir(config, runs_root=layout.runs_dir, run_id=0)  # the ServerApp checks again
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedsys-run-") as tmp:
        app = app_dir or _staged(Path(tmp) / "app", sink)
        overrides = Path(tmp) / "run-config.toml"
        overrides.write_text(tomli_w.dumps(config.to_mapping()))
        answer = flwr_json(layout, ["run", str(app), CONNECTION, "--run-config", str(overrides)])
    if not answer.get("success") or "run-id" not in answer:
        raise DeploymentError(f"the SuperLink refused the run: {_last_line(answer)}")
    run_id = int(answer["run-id"])
    sink(f"started run {run_id} (FAB {answer.get('fab-hash')}); run directory {config.out_dir}")
    if not follow:
        return RunResult(run_id, "submitted", Path(config.out_dir), time.monotonic() - started)
    _stream_logs(layout, run_id, sink)
    status = wait_for_run(layout, run_id)
    return RunResult(run_id, status, Path(config.out_dir), time.monotonic() - started)


def wait_for_run(layout: ServerLayout, run_id: int, *, unreachable_seconds: float = 60.0) -> str:
    """Poll until the run is finished; returns its status (e.g. ``finished:completed``).

    Raises:
        DeploymentError: the SuperLink stayed unreachable for ``unreachable_seconds``.
    """
    while True:
        answer = flwr_json(
            layout, ["ls", CONNECTION, "--run-id", str(run_id)], retry_seconds=unreachable_seconds
        )
        if not answer.get("success"):
            raise DeploymentError(
                f"lost the SuperLink while following run {run_id} ({_last_line(answer)}); "
                "after restarting it, continue with `fedsys server run --resume RUN_DIR`"
            )
        runs = answer.get("runs") or []
        status = str(runs[0].get("status", "unknown")) if runs else "unknown"
        if status.startswith("finished"):
            return status
        time.sleep(1.0)


def _staged(directory: Path, sink: Sink) -> Path:
    bundle = stage_app(directory)
    sink(f"submitting the installed fedsys app, FAB hash {bundle.fab_hash}")
    return directory


def _stream_logs(layout: ServerLayout, run_id: int, sink: Sink) -> None:
    argv = [executable("flwr"), "log", str(run_id), CONNECTION, "--stream"]
    with subprocess.Popen(
        argv,
        env=flower_env(layout.flwr_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as process:
        assert process.stdout is not None  # set by Popen(stdout=PIPE)
        for line in process.stdout:
            sink(line.rstrip())


def _last_line(answer: dict[str, Any]) -> str:
    lines = [line for line in str(answer.get("error-message", "")).splitlines() if line.strip()]
    return lines[-1] if lines else json.dumps(answer)
