"""Atomic per-round checkpoints of the server's state, so a run can resume.

One ``.npz`` file: the global weights, the server optimizer's moments and the iterate average
(as arrays, so they round-trip exactly) and a JSON document (round, sampling RNG state, strategy
state, server optimizer name and step, averaging and its count, metrics so far). Written to a
temporary file, fsynced, then renamed over the old one, so a crash leaves either the previous or
the new checkpoint, never half.
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
from fedsys.strategy import ServerOptimizerState
from fedsys.strategy.averaging import IterateAverage

CHECKPOINT_NAME = "checkpoint.npz"
_STATE_KEY = "__fedsys_state__"
# Array-name prefixes of the optimizer's moments; model parameter names never start with "__".
_FIRST_MOMENT = "__fedsys_server_m__:"
_SECOND_MOMENT = "__fedsys_server_v__:"
_OPTIMIZER_KEY = "server-optimizer"
_AVERAGE = "__fedsys_server_avg__:"  # the iterate average (server.average), kept in float64
_AVERAGE_KEY = "server-average"


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
    # None only when read from a checkpoint written before server optimizers existed
    optimizer: ServerOptimizerState | None = None
    # None only when read from a checkpoint written before iterate averaging existed
    average: IterateAverage | None = None


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
    arrays: dict[str, Any] = dict(state.weights)
    if state.optimizer is not None:
        doc[_OPTIMIZER_KEY] = {"optimizer": state.optimizer.optimizer, "step": state.optimizer.step}
        arrays.update({_FIRST_MOMENT + k: v for k, v in state.optimizer.first_moment.items()})
        arrays.update({_SECOND_MOMENT + k: v for k, v in state.optimizer.second_moment.items()})
    if state.average is not None:
        doc[_AVERAGE_KEY] = {"average": state.average.average, "count": state.average.count}
        arrays.update({_AVERAGE + k: v for k, v in state.average.weights.items()})
    arrays[_STATE_KEY] = np.array(json.dumps(doc))
    target = run_dir / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
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
        moments = (_FIRST_MOMENT, _SECOND_MOMENT, _AVERAGE)
        weights = {k: data[k] for k in data.files if k != _STATE_KEY and not k.startswith(moments)}
        first = _with_prefix(data, _FIRST_MOMENT)
        second = _with_prefix(data, _SECOND_MOMENT)
        averaged = _with_prefix(data, _AVERAGE)
    saved = doc.get(_OPTIMIZER_KEY)
    optimizer = None
    if saved is not None:
        optimizer = ServerOptimizerState(saved["optimizer"], int(saved["step"]), first, second)
    kept = doc.get(_AVERAGE_KEY)
    average = None if kept is None else IterateAverage(kept["average"], int(kept["count"]), averaged)
    return ServerState(
        round=int(doc["round"]),
        run_id=str(doc["run_id"]),
        weights=weights,
        rng_state=doc["rng_state"],
        history=doc["history"],
        exhausted=doc["exhausted"],
        strategy=doc["strategy"],
        optimizer=optimizer,
        average=average,
    )


def _with_prefix(data: Any, prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): data[k] for k in data.files if k.startswith(prefix)}
