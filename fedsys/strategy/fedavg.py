"""FedAvg (McMahan et al., AISTATS 2017): example-weighted mean of client deltas.

FedProx (Li et al., MLSys 2020) aggregates the same way; its proximal term lives in the
clients' local training (``train.proximal-mu``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsys.errors import AbortedRoundError


def weighted_mean(
    deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """``sum_i w_i * delta_i / sum_i w_i``, per named array."""
    total = float(sum(weights))
    if not deltas or total <= 0:
        raise AbortedRoundError("no client update to aggregate")
    out: dict[str, np.ndarray] = {}
    for name in deltas[0]:
        acc = np.zeros_like(deltas[0][name], dtype=np.float64)
        for delta, weight in zip(deltas, weights, strict=True):
            acc += weight * delta[name]
        out[name] = (acc / total).astype(np.float32)
    return out


def apply_delta(
    weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], *, server_lr: float = 1.0
) -> dict[str, np.ndarray]:
    """The next global model: ``w + server_lr * delta``."""
    return {k: (weights[k] + server_lr * delta[k]).astype(np.float32) for k in weights}
