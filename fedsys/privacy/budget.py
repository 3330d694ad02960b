"""Budget policy: how many planned DP-SGD steps a data holder's budget grants."""

from __future__ import annotations

from collections.abc import Sequence

from fedsys.errors import BudgetExceededError
from fedsys.privacy.accounting import AnySegment, compute_epsilon, extend_history, max_steps_within
from fedsys.privacy.settings import LocalBudget


def budget_epsilon(history: Sequence[AnySegment], budget: LocalBudget) -> float:
    """Epsilon of a history under the budget's own accountant and delta."""
    return compute_epsilon(history, target_delta=budget.target_delta, accountant=budget.accountant)


def delta_warning(target_delta: float, num_examples: int) -> str | None:
    """A warning when delta is too large for the data set size, else None.

    A mechanism that publishes each of ``n`` records with probability delta satisfies
    (0, delta)-DP, so delta >= 1/n allows leaking a whole record in expectation (Dwork &
    Roth 2014, Sec. 2.3): delta should be well below 1/n.
    """
    if num_examples >= 1 and target_delta >= 1.0 / num_examples:
        return (
            f"target-delta {target_delta:g} >= 1/n = 1/{num_examples}: at this delta the guarantee "
            f"allows releasing a whole record; choose a delta well below {1.0 / num_examples:.3g}"
        )
    return None


def grant_steps(
    prior: Sequence[AnySegment],
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
