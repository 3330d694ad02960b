"""Privacy-utility sweeps: one run per target epsilon, then one report over all of them.

How a target epsilon becomes a run (``plan_budget``):

- ``inf`` is the non-private baseline: ``dp.enabled = false``, everything else unchanged.
- A finite target keeps every DP-SGD setting of the scenario except
  ``dp.noise-multiplier``, chosen so that a client *sampled in every round* ends the run at
  the target: for each client, ``sample_rate = 1 / ceil(n / batch_size)`` (the rate Opacus
  and the ledger use; it is ``batch_size / n`` rounded up to whole batches) and
  ``steps = num_rounds * local steps per round``; the noise multiplier comes from
  ``opacus.accountants.utils.get_noise_multiplier`` with the budget's accountant and
  ``target_delta`` (bisection to within ``EPSILON_TOLERANCE``, from below). With unequal
  partitions the largest multiplier over clients is taken, so the most exposed client
  reaches the target and no client exceeds it.
- ``budget.max-epsilon`` is set to the target, so each client's ledger enforces it: a
  round that would cross it is refused (or truncated, per ``budget.policy``).
- Each run keeps its ledgers in its own directory, so budgets of different runs never mix.

A client sampled in fewer rounds than all spends less than the target; the report shows
the largest epsilon any client actually spent, read from the ledgers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsys.config import RunConfig
from fedsys.errors import ConfigError

if TYPE_CHECKING:
    from fedsys.privacy.settings import Accountant

EPSILON_TOLERANCE = 1e-3  # absolute; get_noise_multiplier's default (0.01) is coarse at eps 0.5
PLAN_FILE = "sweep.json"
Simulate = Callable[[RunConfig, Path], Mapping[str, Any]]


@dataclass(frozen=True)
class BudgetPlan:
    """How one target epsilon is run.

    Attributes:
        target_epsilon: The target (``inf`` for the non-private baseline).
        noise_multiplier: Chosen noise multiplier (None when non-private).
        planned_epsilon: Epsilon the most exposed client reaches if sampled every round.
        sample_rate: That client's Poisson sampling rate.
        steps: That client's DP-SGD steps over all rounds.
        accountant: Accountant of the budget the plan was computed with.
    """

    target_epsilon: float
    noise_multiplier: float | None = None
    planned_epsilon: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    accountant: str = "rdp"

    @property
    def private(self) -> bool:
        """False for the non-private baseline."""
        return math.isfinite(self.target_epsilon)

    @property
    def name(self) -> str:
        """Run directory name: ``eps-0.5``, ``eps-8``, ``eps-inf``."""
        return f"eps-{self.target_epsilon:g}"


def parse_targets(text: str) -> list[float]:
    """Parse ``0.5,1,3,8,inf`` into sorted, distinct targets.

    Raises:
        ConfigError: an item is not a number > 0 or ``inf``.
    """
    targets = set()
    for item in text.split(","):
        try:
            value = float(item.strip())
        except ValueError as err:
            raise ConfigError(f"--target-epsilon wants numbers > 0 or inf, got {item.strip()!r}") from err
        if math.isnan(value) or value <= 0:
            raise ConfigError(f"--target-epsilon wants numbers > 0 or inf, got {item.strip()!r}")
        targets.add(value)
    return sorted(targets)


def budget_accountant(config: RunConfig) -> Accountant:
    """The accountant a simulated client's ledger checks its budget with (``rdp`` by default)."""
    from fedsys.privacy.settings import ACCOUNTANTS

    name = getattr(config.budget, "accountant", "rdp")
    for accountant in ACCOUNTANTS:
        if name == accountant:
            return accountant
    raise ConfigError(f"budget.accountant must be one of {', '.join(ACCOUNTANTS)}, got {name!r}")


def client_workloads(config: RunConfig) -> set[tuple[float, int]]:
    """Distinct ``(sample_rate, steps over all rounds)`` of the scenario's clients."""
    from fedsys.data.federated import simulated_client_data
    from fedsys.privacy import plan_steps, sample_rate_for

    num = config.simulation.num_clients
    batch = config.train.batch_size
    sizes = {len(simulated_client_data(config, partition_id=p, num_partitions=num).train) for p in range(num)}
    local_steps = config.train.local_steps or None
    return {
        (
            sample_rate_for(n, batch),
            config.num_rounds
            * plan_steps(
                num_examples=n,
                batch_size=batch,
                local_epochs=None if local_steps else config.train.local_epochs,
                local_steps=local_steps,
            ),
        )
        for n in sizes
    }


def plan_budget(config: RunConfig, target_epsilon: float) -> BudgetPlan:
    """Choose the noise multiplier that makes the planned rounds reach ``target_epsilon``.

    Raises:
        ConfigError: the target cannot be reached (Opacus finds no noise multiplier).
    """
    accountant = budget_accountant(config)
    if not math.isfinite(target_epsilon):
        return BudgetPlan(target_epsilon=target_epsilon, accountant=accountant)
    from fedsys.privacy import compute_epsilon
    from fedsys.privacy.planning import noise_for_target

    delta = config.budget.target_delta
    best: BudgetPlan | None = None
    for sample_rate, steps in sorted(client_workloads(config)):
        sigma = noise_for_target(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=EPSILON_TOLERANCE,
        )
        if best is None or best.noise_multiplier is None or sigma > best.noise_multiplier:
            best = BudgetPlan(target_epsilon, sigma, None, sample_rate, steps, accountant)
    if best is None or best.noise_multiplier is None or best.sample_rate is None or best.steps is None:
        raise ConfigError("the scenario has no clients to plan a privacy budget for")
    planned = compute_epsilon(
        [(best.noise_multiplier, best.sample_rate, best.steps)],
        target_delta=delta,
        accountant=accountant,
    )
    return BudgetPlan(
        target_epsilon, best.noise_multiplier, planned, best.sample_rate, best.steps, accountant
    )


def apply_plan(config: RunConfig, plan: BudgetPlan) -> RunConfig:
    """The scenario for one target: DP off for ``inf``, else noise and budget as planned."""
    overrides: dict[str, Any] = {"ledger-dir": "", "out-dir": ""}
    if plan.private:
        overrides |= {
            "dp.enabled": True,
            "dp.noise-multiplier": plan.noise_multiplier,
            "budget.max-epsilon": plan.target_epsilon,
        }
    else:
        overrides["dp.enabled"] = False
    return config.replace(overrides)


def run_sweep(
    config: RunConfig,
    targets: Sequence[float],
    out: Path,
    *,
    simulate: Simulate,
    on_plan: Callable[[BudgetPlan], None] | None = None,
) -> list[Path]:
    """Plan every target, then simulate each into ``out/eps-<target>``.

    Args:
        config: The scenario (with any overrides already applied).
        targets: Target epsilons; ``inf`` = non-private baseline.
        out: The sweep directory; gets ``sweep.json`` and one run directory per target.
        simulate: Runs one scenario into a run directory (``simulations.harness.run_scenario``).
        on_plan: Called with each plan before its run starts (progress display).

    Returns:
        The run directories, in the order of ``targets``.
    """
    plans = [plan_budget(config, t) for t in targets]
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(json.dumps([_plan_json(p) for p in plans], indent=2) + "\n")
    run_dirs = []
    for plan in plans:
        if on_plan is not None:
            on_plan(plan)
        run_dir = out / plan.name
        simulate(apply_plan(config, plan), run_dir)
        run_dirs.append(run_dir)
    return run_dirs


def _plan_json(plan: BudgetPlan) -> dict[str, Any]:
    data = asdict(plan)
    data["target_epsilon"] = "inf" if not plan.private else plan.target_epsilon
    return {k.replace("_", "-"): v for k, v in data.items()}
