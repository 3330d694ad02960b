"""Server optimizers on the aggregated update: server SGD, FedAvgM, FedAdagrad, FedAdam, FedYogi.

Each round's aggregate ``delta`` (the example-weighted mean of the client deltas, in the clear or
from SecAgg+) is the negative of a pseudo-gradient (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Sec. 2). The optimizers read that aggregate and nothing else: they are
post-processing of what the round released, so they cost no privacy budget and behave the same
under plaintext and secure aggregation.

With ``x`` the global model, ``lr`` the server learning rate and elementwise arithmetic:

- ``sgd``: ``x + lr * delta`` (FedAvg with a server learning rate; ``lr`` 1 is plain FedAvg).
- ``momentum``: FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", 2019, Sec. 3): ``m = momentum * m + delta``,
  ``x + lr * m``, from ``m = 0``.
- ``adagrad``, ``adam``, ``yogi``: Reddi et al. Algorithm 2 as printed (no bias correction),
  from ``m = 0`` and ``v = tau**2`` (the algorithm asks for ``v >= tau**2``):
  ``m = beta1 * m + (1 - beta1) * delta``, then
  ``v = v + delta**2`` (adagrad), ``v = beta2 * v + (1 - beta2) * delta**2`` (adam) or
  ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)`` (yogi), and ``x + lr * m / (sqrt(v) + tau)``.

Moments are kept in float64 (the model stays float32) and never updated in place, so a refused
step leaves the previous state intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedsys.config import ServerConfig, ServerOptimizerName
from fedsys.errors import AbortedRoundError, ConfigError
from fedsys.strategy.fedavg import apply_delta

_ADAPTIVE: tuple[ServerOptimizerName, ...] = ("adagrad", "adam", "yogi")


@dataclass(frozen=True)
class ServerOptimizerState:
    """What a server optimizer carries from round to round.

    ``step`` counts the updates applied. ``first_moment`` is FedAvgM's momentum buffer or the
    adaptive optimizers' ``m``; ``second_moment`` their ``v``. Both are keyed like the model and
    empty until the first step (and always for ``sgd``).
    """

    optimizer: ServerOptimizerName = "sgd"
    step: int = 0
    first_moment: Mapping[str, np.ndarray] = field(default_factory=dict)
    second_moment: Mapping[str, np.ndarray] = field(default_factory=dict)


def apply_server_optimizer(
    weights: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    state: ServerOptimizerState,
    *,
    config: ServerConfig,
) -> tuple[dict[str, np.ndarray], ServerOptimizerState]:
    """One server step: the next global model and the optimizer's next state.

    Args:
        weights: The current global model.
        delta: The round's aggregated update, shaped like ``weights``.
        state: The optimizer's state after the previous step (``ServerOptimizerState(optimizer=...)``
            before the first).
        config: The validated ``[server]`` section.

    Returns:
        The next global model (float32) and state; ``weights`` and ``state`` are left untouched.

    Raises:
        ConfigError: ``state`` belongs to another optimizer than ``config.optimizer``.
        AbortedRoundError: the next model (or a moment) would not be finite; nothing is released
            and the caller keeps the previous model and state.
    """
    if state.optimizer != config.optimizer:
        raise ConfigError(
            f"server.optimizer is {config.optimizer!r}, but the optimizer state is {state.optimizer!r}"
        )
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    if config.optimizer == "sgd":
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            out = apply_delta(weights, delta, server_lr=config.lr)
    else:
        steps = {}
        for name in weights:
            step, first[name], second_entry = _direction(name, delta[name], state, config)
            if second_entry is not None:
                second[name] = second_entry
            steps[name] = step
        out = _moved(weights, steps, config.lr)
    for name, value in (*out.items(), *first.items(), *second.items()):
        if not bool(np.all(np.isfinite(value))):
            raise AbortedRoundError(f"the server optimizer's next {name!r} is not finite; nothing released")
    return out, ServerOptimizerState(config.optimizer, state.step + 1, first, second)


def resume_optimizer_state(
    saved: ServerOptimizerState | None, weights: Mapping[str, np.ndarray], *, config: ServerConfig
) -> ServerOptimizerState:
    """The state to continue a run from, checked against the configured optimizer and the model.

    ``saved`` is None for a checkpoint written before server optimizers existed (those runs used
    plain FedAvg, which has no state): the run continues from a fresh state.

    Raises:
        ConfigError: ``saved`` belongs to another optimizer, or its moments do not fit the model.
    """
    if saved is None:
        return ServerOptimizerState(config.optimizer)
    if saved.optimizer != config.optimizer:
        raise ConfigError(
            f"the checkpoint's server optimizer is {saved.optimizer!r} (after {saved.step} step(s)), "
            f"but server.optimizer is {config.optimizer!r}; resume with the optimizer it was run with"
        )
    started = saved.step > 0
    uses_first = started and saved.optimizer != "sgd"
    uses_second = started and saved.optimizer in _ADAPTIVE
    _check_moments(saved.first_moment, weights if uses_first else {}, "first")
    _check_moments(saved.second_moment, weights if uses_second else {}, "second")
    return saved


def _direction(
    name: str, delta: np.ndarray, state: ServerOptimizerState, config: ServerConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The step before the learning rate, the next ``m`` and the next ``v`` (None for FedAvgM)."""
    update = np.asarray(delta, np.float64)
    shape = update.shape
    m = state.first_moment.get(name, np.zeros(shape))
    if config.optimizer == "momentum":
        m_next = config.momentum * m + update
        return m_next, m_next, None
    v = state.second_moment.get(name, np.full(shape, config.tau**2))
    m_next = config.beta1 * m + (1 - config.beta1) * update
    squared = update * update
    with np.errstate(over="ignore", invalid="ignore"):  # the caller checks the results
        if config.optimizer == "adagrad":
            v_next = v + squared
        elif config.optimizer == "adam":
            v_next = config.beta2 * v + (1 - config.beta2) * squared
        else:  # yogi
            v_next = v - (1 - config.beta2) * squared * np.sign(v - squared)
        return m_next / (np.sqrt(v_next) + config.tau), m_next, v_next


def _moved(
    weights: Mapping[str, np.ndarray], steps: Mapping[str, np.ndarray], lr: float
) -> dict[str, np.ndarray]:
    """``x + lr * step`` in float64, rounded once to float32 (an overflow gives inf, checked later)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return {
            name: (np.asarray(value, np.float64) + lr * steps[name]).astype(np.float32)
            for name, value in weights.items()
        }


def _check_moments(moments: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray], which: str) -> None:
    if set(moments) != set(weights):
        raise ConfigError(
            f"the checkpoint's server optimizer {which} moment covers {sorted(moments)}, "
            f"expected {sorted(weights)}"
        )
    for name, value in moments.items():
        if value.shape != np.shape(weights[name]) or not bool(np.all(np.isfinite(value))):
            raise ConfigError(
                f"the checkpoint's server optimizer {which} moment of {name!r} does not fit the model "
                f"(shape {value.shape}, expected {np.shape(weights[name])}) or is not finite"
            )
