"""Experiment tracking: each round's metrics record as TensorBoard scalars (``tensorboard-dir``)
and in MLflow (``mlflow-uri``, :mod:`fedsys.mlflow_tracking`), both from :func:`round_scalars`.

Written by the server, from the same record that becomes a line of ``metrics.jsonl``, so it
works alike in simulation and deployment and shows nothing the run directory does not. Events go
to ``<tensorboard-dir>/<run directory name>``, so ``tensorboard --logdir DIR`` compares runs.
Under the operator's gate (deployment), the directory must lie inside the server's runs
directory, as ``out-dir`` must. ``tensorboard`` is an optional extra (``fedsys[tensorboard]``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fedsys.config import RunConfig
from fedsys.errors import ConfigError

# metrics.jsonl key -> TensorBoard tag; the section before "/" groups the charts
SCALARS = {
    "accuracy": "eval/accuracy",
    "loss": "eval/loss",
    "macro-f1": "eval/macro-f1",
    "epsilon-min": "privacy/epsilon-min",
    "epsilon-median": "privacy/epsilon-median",
    "epsilon-max": "privacy/epsilon-max",
    "clients-sampled": "clients/sampled",
    "clients-succeeded": "clients/succeeded",
    "clients-failed": "clients/failed",
    "clients-declined": "clients/declined",
    "round-seconds": "time/round-seconds",
}


class Tracker(Protocol):
    """What the coordinator calls: once per round, then once at the end."""

    def log_round(self, record: Mapping[str, Any]) -> None: ...

    def close(self, *, finished: bool = True) -> None: ...


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's :data:`SCALARS` by tag; missing, non-numeric and non-finite values are left out."""
    scalars = {}
    for key, tag in SCALARS.items():
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            scalars[tag] = float(value)
    return scalars


class TensorBoardTracker:
    """Writes :data:`SCALARS` of each round record, at step = the round number.

    The event writer opens at the first record with ``purge_step`` = that round, so a resumed
    run hides the events an earlier attempt wrote for the rounds it repeats.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer_class = _summary_writer_class()
        self._writer: Any = None

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Add the record's scalars (missing or non-finite values are skipped) and flush."""
        step = int(record["round"])
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=step)
        for tag, value in round_scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self, *, finished: bool = True) -> None:
        """Flush and close the event file (if any round was written); ``finished`` changes nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_tracker(config: RunConfig, run_dir: Path) -> TensorBoardTracker | None:
    """The run's tracker, or None when ``tensorboard-dir`` is empty.

    Raises:
        ConfigError: tensorboard is not installed, or (under the operator's gate) the directory
            lies outside the server's runs directory.
    """
    if not config.tensorboard_dir:
        return None
    return TensorBoardTracker(tensorboard_root(config) / run_dir.name)


def open_trackers(config: RunConfig, run_dir: Path, *, resume: bool = False) -> list[Tracker]:
    """Every tracker the run asks for: TensorBoard (``tensorboard-dir``), MLflow (``mlflow-uri``).

    Raises:
        ConfigError: as :func:`open_tracker` and :func:`fedsys.mlflow_tracking.open_mlflow`.
    """
    from fedsys.mlflow_tracking import open_mlflow

    trackers: list[Tracker] = []
    for tracker in (open_tracker(config, run_dir), open_mlflow(config, run_dir, resume=resume)):
        if tracker is not None:
            trackers.append(tracker)
    return trackers


def tensorboard_root(config: RunConfig) -> Path:
    """``tensorboard-dir`` resolved; under the operator's gate, confined to its runs directory.

    Raises:
        ConfigError: gated, and the directory is not strictly inside the runs directory.
    """
    from fedsys.deploy.runs import inside_runs
    from fedsys.deploy.server import RUNS_ROOT_ENV

    runs_root = os.environ.get(RUNS_ROOT_ENV)
    if not runs_root:  # simulation or a local `flwr run`: the caller's own machine
        return Path(config.tensorboard_dir).expanduser()
    return inside_runs(Path(runs_root).resolve(), "tensorboard-dir", config.tensorboard_dir)


def check_tracking(config: RunConfig) -> None:
    """Fail before any process starts if ``tensorboard-dir`` or ``mlflow-uri`` is set but cannot
    be used.

    Raises:
        ConfigError: as :func:`open_tracker` and :func:`fedsys.mlflow_tracking.check_mlflow`.
    """
    from fedsys.mlflow_tracking import check_mlflow

    if config.tensorboard_dir:
        _summary_writer_class()
        tensorboard_root(config)
    check_mlflow(config)


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "tensorboard-dir needs the tensorboard package: pip install 'fedsys[tensorboard]' "
            f"(or pip install tensorboard); {err}"
        ) from err
    return SummaryWriter
