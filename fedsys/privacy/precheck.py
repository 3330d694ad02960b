"""A simulated run's whole DP-SGD schedule checked against every holder's budget, before any round.

DP-SGD accounting is data-independent: a holder's epsilon after the run depends only on the
noise multiplier, its Poisson sampling rate ``q = 1 / ceil(n / batch-size)`` and its number of
steps (Abadi et al., CCS 2016; :mod:`fedsys.privacy.accounting`). In simulation every holder's
training-set size ``n`` is known before any process starts, so the epsilon each holder would
reach if it were sampled in *every* round (the worst case) can be computed up front, with the
budget's own accountant and delta, exactly as the holder's ledger will count it
(:func:`fedsys.privacy.budget.grant_steps`).

- ``dp.target-epsilon`` set: each holder calibrates its noise so that schedule ends at (just
  below) the target, so the run fits when the target is at most ``budget.max-epsilon``.
- Otherwise every holder uses ``dp.noise-multiplier`` and the check computes each holder's
  epsilon. When one exceeds its budget, the explanation names the worst holder and what would
  fit: the noise multiplier for the budget at this schedule, the number of rounds that fit, or
  ``--target-epsilon``.

Assumptions: each holder starts from an empty ledger (a simulated run keeps its ledgers in its
run directory); the check covers this run's schedule only. Holders still enforce their budgets
round by round (``budget.policy``); this check only tells the user before anything is spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fedsys.config import RunConfig
from fedsys.errors import BudgetExceededError, ConfigError
from fedsys.privacy.accounting import compute_epsilon, max_steps_within
from fedsys.privacy.planning import Schedule, noise_for_target, resolve_schedule
from fedsys.privacy.settings import Accountant

__all__ = [
    "HolderForecast",
    "ScheduleForecast",
    "check_schedule",
    "forecast_schedule",
    "holder_schedule",
    "schedule_problem",
    "simulated_train_sizes",
]

ALLOW_PARTIAL_HINT = "--allow-partial runs anyway, until budgets run out"
_SUGGESTED_DECIMALS = 4
# A suggestion may end a little further below the budget than a plan does; it saves bisection steps.
_SUGGESTION_TOLERANCE = 1e-2


@dataclass(frozen=True)
class HolderForecast:
    """What one simulated holder would spend if sampled in every round.

    Attributes:
        client: The holder's partition id (its ledger is ``client-<id>.sqlite``).
        num_examples: Its training examples ``n``.
        schedule: Its whole DP-SGD schedule (sampling rate, steps per round, rounds).
        epsilon: Epsilon of that schedule under the budget's accountant and delta.
    """

    client: int
    num_examples: int
    schedule: Schedule
    epsilon: float


@dataclass(frozen=True)
class ScheduleForecast:
    """Every simulated holder's forecast at one noise multiplier, against one budget.

    Attributes:
        noise_multiplier: The scenario's ``dp.noise-multiplier``.
        max_epsilon: Each holder's ``budget.max-epsilon``.
        target_delta: The budget's delta.
        accountant: The budget's accountant.
        holders: One forecast per holder, in partition order.
    """

    noise_multiplier: float
    max_epsilon: float
    target_delta: float
    accountant: Accountant
    holders: tuple[HolderForecast, ...]

    @property
    def worst(self) -> HolderForecast:
        """The holder with the largest epsilon (the lowest id among equals)."""
        return max(self.holders, key=lambda h: (h.epsilon, -h.client))

    @property
    def fits(self) -> bool:
        """True when every holder stays within its budget."""
        return self.worst.epsilon <= self.max_epsilon


def simulated_train_sizes(config: RunConfig) -> list[int]:
    """Training-set size of every simulated holder, in partition order (reads the scenario's data)."""
    from fedsys.data.federated import simulated_client_data

    num = config.simulation.num_clients
    return [len(simulated_client_data(config, partition_id=p, num_partitions=num).train) for p in range(num)]


def holder_schedule(config: RunConfig, num_examples: int, rounds: int) -> Schedule:
    """The DP-SGD schedule of a holder with ``num_examples`` training examples, sampled ``rounds`` times."""
    train = config.train
    return resolve_schedule(
        rounds=rounds,
        local_epochs=None if train.local_steps else train.local_epochs,
        local_steps=train.local_steps or None,
        dataset_size=num_examples,
        batch_size=train.batch_size,
    )


def forecast_schedule(config: RunConfig, sizes: Sequence[int]) -> ScheduleForecast:
    """Each holder's epsilon after ``num-rounds`` rounds at ``dp.noise-multiplier``.

    Args:
        config: The scenario (DP on, ``dp.target-epsilon`` 0).
        sizes: Each holder's training-set size, in partition order.

    Raises:
        ConfigError: the noise multiplier is 0 (no finite epsilon), or there are no holders.
    """
    sigma = config.dp.noise_multiplier
    if not sigma > 0:
        raise ConfigError(
            f"dp.noise-multiplier must be > 0 with DP-SGD on (no noise has no finite epsilon), got {sigma!r}"
        )
    if not sizes:
        raise ConfigError("the scenario has no clients to check a privacy budget for")
    budget = config.budget
    holders = []
    for client, n in enumerate(sizes):
        schedule = holder_schedule(config, n, config.num_rounds)
        epsilon = schedule.epsilon(sigma, target_delta=budget.target_delta, accountant=budget.accountant)
        holders.append(HolderForecast(client, n, schedule, epsilon))
    return ScheduleForecast(sigma, budget.max_epsilon, budget.target_delta, budget.accountant, tuple(holders))


def schedule_problem(config: RunConfig, sizes: Sequence[int] | None = None) -> str | None:
    """Why the run's schedule would exceed a holder's budget, in one line; None when it fits.

    Args:
        config: The scenario.
        sizes: Each holder's training-set size; read from the scenario's data when needed and
            not given (only with a fixed noise multiplier).

    Raises:
        ConfigError: as :func:`forecast_schedule`.
    """
    dp, budget = config.dp, config.budget
    if not dp.enabled:
        return None
    if dp.mode == "distributed" and dp.target_epsilon <= 0:
        return _distributed_problem(config, simulated_train_sizes(config) if sizes is None else sizes)
    if dp.target_epsilon > 0:
        if dp.target_epsilon <= budget.max_epsilon:
            return None
        return (
            f"dp.target-epsilon {dp.target_epsilon:g} exceeds budget.max-epsilon {budget.max_epsilon:g}: "
            f"each client would calibrate its noise to spend {dp.target_epsilon:g} over the "
            f"{config.num_rounds} rounds; fits: --target-epsilon {budget.max_epsilon:g}"
        )
    forecast = forecast_schedule(config, simulated_train_sizes(config) if sizes is None else sizes)
    if forecast.fits:
        return None
    return _explain(forecast)


def model_dim(config: RunConfig) -> int:
    """Number of weights of the scenario's model (the length of an update)."""
    from fedsys.api import model_signature
    from fedsys.models import build_model

    shape, classes = model_signature(config)
    model = build_model(config.model, shape, classes, fix=config.fix_model)
    return sum(int(v.numel()) for v in model.state_dict().values())


def _distributed_problem(config: RunConfig, sizes: Sequence[int]) -> str | None:
    """As :func:`schedule_problem` for distributed DP: ``num-rounds`` rounds of the aggregate noise."""
    from fedsys.privacy.distributed_round import (
        expected_participants,
        holder_sample_rate,
        resolve_noise,
        round_segment,
        round_threshold,
        server_encoding,
    )

    if not sizes:
        raise ConfigError("the scenario has no clients to check a privacy budget for")
    dim, participants = model_dim(config), expected_participants(config)
    enc = server_encoding(
        config, dim=dim, threshold=round_threshold(config, participants), participants=participants
    )
    rate = max(holder_sample_rate(config, n) for n in sizes)
    history = [replace(round_segment(enc, rate), steps=config.num_rounds)]
    epsilon = compute_epsilon(
        history, target_delta=config.budget.target_delta, accountant=config.budget.accountant
    )
    if epsilon <= config.budget.max_epsilon:
        return None
    fits = resolve_noise(
        config.replace({"dp.target-epsilon": config.budget.max_epsilon}), sizes=list(sizes), dim=dim
    ).dp.noise_multiplier
    return (
        f"distributed DP at aggregate noise multiplier {config.dp.noise_multiplier:g} for "
        f"{config.num_rounds} rounds would bring the most exposed holder to epsilon {epsilon:.3g} > "
        f"budget.max-epsilon {config.budget.max_epsilon:g}; "
        f"fits: --set dp.noise-multiplier={math.ceil(fits * 100) / 100:g}"
    )


def _explain(forecast: ScheduleForecast) -> str:
    worst = forecast.worst
    schedule = worst.schedule
    over = sum(h.epsilon > forecast.max_epsilon for h in forecast.holders)
    others = f"; {over} of {len(forecast.holders)} clients over budget" if over > 1 else ""
    fits = []
    sigma = _noise_that_fits(forecast)
    if sigma is not None:
        fits.append(f"--noise-multiplier {sigma:.{_SUGGESTED_DECIMALS}f}")
    rounds = _rounds_that_fit(forecast)
    if rounds:
        fits.append(f"--rounds {rounds}")
    fits.append(f"--target-epsilon {forecast.max_epsilon:g}")
    return (
        f"client {worst.client} ({worst.num_examples} training examples) would spend epsilon "
        f"{worst.epsilon:.4f} > budget.max-epsilon {forecast.max_epsilon:g} if sampled in all "
        f"{schedule.rounds} rounds ({schedule.steps} DP-SGD steps at sampling rate "
        f"{schedule.sample_rate:.4g}, noise multiplier {forecast.noise_multiplier:g}; "
        f"{forecast.accountant}, delta {forecast.target_delta:g}){others}; fits: {', or '.join(fits)}"
    )


def _by_exposure(forecast: ScheduleForecast) -> list[HolderForecast]:
    """One holder per distinct schedule (equal schedules spend equally), most exposed first."""
    distinct = {(h.schedule.sample_rate, h.schedule.steps_per_round): h for h in forecast.holders}
    return sorted(distinct.values(), key=lambda h: h.epsilon, reverse=True)


def _noise_that_fits(forecast: ScheduleForecast) -> float | None:
    """The smallest noise multiplier (rounded up) with which every holder fits; None if none does.

    Starts from the most exposed holder and re-plans only for a holder that still does not fit,
    so it usually costs one bisection (Opacus' ``get_noise_multiplier``) and one check per holder.
    """
    sigma = 0.0
    for holder in _by_exposure(forecast):
        schedule = holder.schedule
        if sigma and _epsilon(forecast, schedule, sigma, schedule.steps) <= forecast.max_epsilon:
            continue
        try:
            needed = noise_for_target(
                target_epsilon=forecast.max_epsilon,
                target_delta=forecast.target_delta,
                sample_rate=schedule.sample_rate,
                steps=schedule.steps,
                accountant=forecast.accountant,
                epsilon_tolerance=_SUGGESTION_TOLERANCE,
            )
        except ConfigError:
            return None
        # rounded up, so the printed value still fits (epsilon falls as the noise grows)
        sigma = max(sigma, math.ceil(needed * 10**_SUGGESTED_DECIMALS) / 10**_SUGGESTED_DECIMALS)
    return sigma or None


def _rounds_that_fit(forecast: ScheduleForecast) -> int:
    """The most rounds every holder fits at the scenario's noise multiplier (0 when not even one)."""
    rounds: int | None = None
    for holder in _by_exposure(forecast):
        schedule = holder.schedule
        if rounds is not None and (
            rounds == 0
            or _epsilon(forecast, schedule, forecast.noise_multiplier, rounds * schedule.steps_per_round)
            <= forecast.max_epsilon
        ):
            continue
        steps = max_steps_within(
            [],
            noise_multiplier=forecast.noise_multiplier,
            sample_rate=schedule.sample_rate,
            target_delta=forecast.target_delta,
            max_epsilon=forecast.max_epsilon,
            accountant=forecast.accountant,
            upper=schedule.steps,
        )
        rounds = steps // schedule.steps_per_round
    return rounds or 0


def _epsilon(forecast: ScheduleForecast, schedule: Schedule, noise_multiplier: float, steps: int) -> float:
    return compute_epsilon(
        [(noise_multiplier, schedule.sample_rate, steps)],
        target_delta=forecast.target_delta,
        accountant=forecast.accountant,
    )


def check_schedule(
    config: RunConfig, *, allow_partial: bool = False, sizes: Sequence[int] | None = None
) -> str | None:
    """Refuse, before any round, a run whose schedule would exceed a holder's budget.

    Args:
        config: The scenario.
        allow_partial: Proceed anyway (holders then refuse or truncate once their budget is
            spent, per ``budget.policy``, and the run stops early).
        sizes: Each holder's training-set size (read from the scenario's data when needed).

    Returns:
        None when every holder fits; with ``allow_partial`` the explanation of what does not.

    Raises:
        BudgetExceededError: a holder's budget does not fit the schedule (without ``allow_partial``);
            the one-line message names the worst holder and what would fit.
        ConfigError: as :func:`forecast_schedule`.
    """
    problem = schedule_problem(config, sizes)
    if problem is not None and not allow_partial:
        raise BudgetExceededError(f"{problem}; {ALLOW_PARTIAL_HINT}")
    return problem
