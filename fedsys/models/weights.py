"""Moving weights between models and plain NumPy arrays, with shape and finiteness checks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedsys.errors import ModelError


def to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as float32 NumPy arrays, keyed by parameter name."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def check_weights(
    expected: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], *, source: str
) -> None:
    """Raise ModelError unless ``received`` has exactly ``expected``'s names and shapes and is finite."""
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    if missing or extra:
        raise ModelError(f"weights from {source} do not fit the model: missing {missing}, unexpected {extra}")
    for name, ref in expected.items():
        got = received[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise ModelError(
                f"weights from {source}: {name} has shape {tuple(got.shape)}, "
                f"model expects {tuple(ref.shape)}"
            )
        if not np.isfinite(got).all():
            raise ModelError(f"weights from {source}: {name} contains NaN or infinite values")


def load_weights(model: nn.Module, arrays: Mapping[str, np.ndarray], *, source: str = "server") -> None:
    """Check and copy ``arrays`` into ``model``."""
    check_weights(to_arrays(model), arrays, source=source)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector, in the mapping's order."""
    if not arrays:
        return np.zeros(0)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split ``vector`` back into arrays shaped (and named) like ``like``, as float32."""
    sizes = [int(np.prod(a.shape)) for a in like.values()]
    if sum(sizes) != len(vector):
        raise ModelError(f"vector of length {len(vector)} does not fit a model of {sum(sizes)} values")
    out, start = {}, 0
    for (name, ref), size in zip(like.items(), sizes, strict=True):
        out[name] = vector[start : start + size].reshape(ref.shape).astype(np.float32)
        start += size
    return out
