"""Budget policy: how many planned DP-SGD steps a data holder's budget grants."""

from __future__ import annotations

from collections.abc import Sequence

from fedsys.errors import BudgetExceededError
from fedsys.privacy.accounting import Segment, compute_epsilon, extend_history, max_steps_within
from fedsys.privacy.settings import LocalBudget


def budget_epsilon(history: Sequence[Segment], budget: LocalBudget) -> float:
    """Epsilon of a history under the budget's own accountant and delta."""
    return compute_epsilon(history, target_delta=budget.target_delta, accountant=budget.accountant)


def grant_steps(
    prior: Sequence[Segment],
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    budget: LocalBudget,
) -> int:
    """Number of planned steps the budget allows after ``prior`` (exact, data-independent).

    Args:
        prior: History already spent or reserved on this data set.
        noise_multiplier: Noise multiplier of the planned steps.
        sample_rate: Poisson sampling rate of the planned steps.
        steps: Planned number of steps.
        budget: The data holder's budget; only it decides, never the server.

    Returns:
        ``steps`` when they fit; under ``truncate`` the largest number that fits.

    Raises:
        BudgetExceededError: under ``refuse`` when the planned steps do not fit, and
            under ``truncate`` when not even one step fits.
    """
    planned = extend_history(prior, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    planned_epsilon = budget_epsilon(planned, budget)
    if planned_epsilon <= budget.max_epsilon:
        return steps
    fit = 0
    if budget.policy == "truncate":
        fit = max_steps_within(
            prior,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            target_delta=budget.target_delta,
            max_epsilon=budget.max_epsilon,
            accountant=budget.accountant,
            upper=steps,
        )
    if fit == 0:
        raise BudgetExceededError(
            f"{steps} steps would reach epsilon {planned_epsilon:.4f} > budget max-epsilon "
            f"{budget.max_epsilon} (delta {budget.target_delta}, {budget.accountant}, "
            f"already spent {budget_epsilon(prior, budget):.4f}, policy {budget.policy!r})"
        )
    return fit
