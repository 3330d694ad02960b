"""Experiment tracking: each round's metrics record as TensorBoard scalars (``tensorboard-dir``).

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
from typing import Any

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
        for key, tag in SCALARS.items():
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (if any round was written)."""
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
    """Fail before any process starts if ``tensorboard-dir`` is set but cannot be written.

    Raises:
        ConfigError: as :func:`open_tracker`.
    """
    if config.tensorboard_dir:
        _summary_writer_class()
        tensorboard_root(config)


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "tensorboard-dir needs the tensorboard package: pip install 'fedsys[tensorboard]' "
            f"(or pip install tensorboard); {err}"
        ) from err
    return SummaryWriter
