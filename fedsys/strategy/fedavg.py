"""FedAvg (McMahan et al., AISTATS 2017): example-weighted mean of client deltas.

FedProx (Li et al., MLSys 2020) aggregates the same way; its proximal term lives in the
clients' local training (``train.proximal-mu``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedsys.errors import AbortedRoundError

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def weighted_mean(
    deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """``sum_i w_i * delta_i / sum_i w_i``, per named array.

    The caller has checked each weight (finite, > 0) and delta (finite, model-shaped); this still
    refuses to release a mean that is not finite in float32, whatever went in.

    Raises:
        AbortedRoundError: no update, a total weight that is not finite and > 0, or a mean that
            overflows float32. Nothing is released.
    """
    total = math.fsum(weights)
    if not deltas or not (math.isfinite(total) and total > 0):
        raise AbortedRoundError(f"no client update to aggregate (total weight {total})")
    out: dict[str, np.ndarray] = {}
    for name in deltas[0]:
        acc = np.zeros_like(deltas[0][name], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            for delta, weight in zip(deltas, weights, strict=True):
                acc += weight * np.asarray(delta[name], dtype=np.float64)
            mean = acc / total
        _require_float32(mean, f"the weighted mean of {name!r}")
        out[name] = mean.astype(np.float32)
    return out


def check_step(
    weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], *, server_lr: float = 1.0
) -> None:
    """Raise AbortedRoundError unless :func:`apply_delta` would give a finite float32 model."""
    for name, value in weights.items():
        with np.errstate(over="ignore", invalid="ignore"):
            step = np.asarray(value, np.float64) + server_lr * np.asarray(delta[name], np.float64)
        _require_float32(step, f"the next global {name!r}")


def apply_delta(
    weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], *, server_lr: float = 1.0
) -> dict[str, np.ndarray]:
    """The next global model: ``w + server_lr * delta``."""
    return {k: (weights[k] + server_lr * delta[k]).astype(np.float32) for k in weights}


def _require_float32(values: np.ndarray, what: str) -> None:
    if not bool(np.all(np.abs(values) <= _FLOAT32_MAX)):  # False for NaN as well
        raise AbortedRoundError(f"{what} is not a finite float32; nothing released")
