"""Atomic per-round checkpoints of the server's state, so a run can resume.

One ``.npz`` file: the global weights plus a JSON document (round, sampling RNG state,
strategy state, metrics so far). Written to a temporary file, fsynced, then renamed over
the old one, so a crash leaves either the previous or the new checkpoint, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsys.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.npz"
_STATE_KEY = "__fedsys_state__"


@dataclass
class ServerState:
    """What the server needs to continue after round ``round``."""

    round: int
    run_id: str
    weights: dict[str, np.ndarray]
    rng_state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    strategy: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, state: ServerState) -> Path:
    """Write ``state`` atomically to ``run_dir/checkpoint.npz``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "round": state.round,
        "run_id": state.run_id,
        "rng_state": state.rng_state,
        "history": state.history,
        "exhausted": state.exhausted,
        "strategy": state.strategy,
    }
    target = run_dir / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            arrays: dict[str, Any] = {**state.weights, _STATE_KEY: np.array(json.dumps(doc))}
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(run_dir: Path) -> ServerState:
    """Read the last complete checkpoint of ``run_dir``."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"no checkpoint to resume from in {run_dir} (expected {CHECKPOINT_NAME})")
    with np.load(path, allow_pickle=False) as data:
        doc = json.loads(str(data[_STATE_KEY]))
        weights = {k: data[k] for k in data.files if k != _STATE_KEY}
    return ServerState(
        round=int(doc["round"]),
        run_id=str(doc["run_id"]),
        weights=weights,
        rng_state=doc["rng_state"],
        history=doc["history"],
        exhausted=doc["exhausted"],
        strategy=doc["strategy"],
    )
