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
