"""Iterate averaging of the global model: the released model as an EMA of the server's iterates.

With ``x_t`` the global model after the ``t``-th released round and ``d`` the decay
(``server.ema-decay``), the average starts at the first released iterate and follows

    ``a_1 = x_1``,  ``a_t = d * a_{t-1} + (1 - d) * x_t``

(an exponential moving average of the iterates, as Polyak–Ruppert tail averaging but with a
geometric window of about ``1 / (1 - d)`` rounds). It reduces the round-to-round noise of the
last iterate under DP, where each step carries fresh Gaussian/Skellam noise.

Privacy: ``x_t`` is a function of the released aggregates only, so the average is
post-processing (Dwork & Roth 2014, Prop. 2.1) and costs no budget: no holder's ledger changes.
Training continues from ``x_t``; holders never receive the average. The average is kept in
float64 and released rounded to float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedsys.config import ServerAverage, ServerConfig
from fedsys.errors import ConfigError


@dataclass(frozen=True)
class IterateAverage:
    """The running average of the released iterates and how many it covers (0: none yet)."""

    average: ServerAverage = "none"
    count: int = 0
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)


def update_average(
    state: IterateAverage, weights: Mapping[str, np.ndarray], *, config: ServerConfig
) -> IterateAverage:
    """Fold the newly released global model ``weights`` into the average.

    Args:
        state: The average after the previous released round (``IterateAverage(average=...)`` before
            the first).
        weights: The global model after this round's server step.
        config: The validated ``[server]`` section.

    Returns:
        The next state; ``state`` and ``weights`` are left untouched. With ``average = "none"`` the
        state stays empty.

    Raises:
        ConfigError: ``state`` belongs to another averaging than ``config.average``.
    """
    if state.average != config.average:
        raise ConfigError(f"server.average is {config.average!r}, but the average state is {state.average!r}")
    if config.average == "none":
        return state
    if state.count == 0:
        first = {name: np.asarray(value, np.float64) for name, value in weights.items()}
        return IterateAverage(config.average, 1, first)
    decay = config.ema_decay
    mixed = {
        name: decay * state.weights[name] + (1 - decay) * np.asarray(value, np.float64)
        for name, value in weights.items()
    }
    return IterateAverage(config.average, state.count + 1, mixed)


def released_model(state: IterateAverage, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model the server releases (evaluates, writes to ``model.pt``): the average once there is
    one, else the global model ``weights`` itself."""
    source = state.weights if state.count > 0 else weights
    return {name: np.asarray(value).astype(np.float32) for name, value in source.items()}


def resume_average(
    saved: IterateAverage | None, weights: Mapping[str, np.ndarray], *, config: ServerConfig
) -> IterateAverage:
    """The average to continue a run from, checked against the configuration and the model.

    ``saved`` is None for a checkpoint written before averaging existed (no average was kept).

    Raises:
        ConfigError: ``saved`` belongs to another averaging, or its arrays do not fit the model.
    """
    if saved is None:
        saved = IterateAverage()
    if saved.average != config.average:
        raise ConfigError(
            f"the checkpoint's server.average is {saved.average!r} (over {saved.count} round(s)), "
            f"but server.average is {config.average!r}; resume with the averaging it was run with"
        )
    expected = set(weights) if saved.count > 0 else set()
    if set(saved.weights) != expected:
        raise ConfigError(
            f"the checkpoint's iterate average covers {sorted(saved.weights)}, expected {sorted(expected)}"
        )
    for name, value in saved.weights.items():
        if value.shape != np.shape(weights[name]) or not bool(np.all(np.isfinite(value))):
            raise ConfigError(
                f"the checkpoint's iterate average of {name!r} does not fit the model "
                f"(shape {value.shape}, expected {np.shape(weights[name])}) or is not finite"
            )
    return saved
