"""Privacy-utility sweeps: one run per target epsilon, then one report over all of them.

How a target epsilon becomes a run (``plan_budget``):

- ``inf`` is the non-private baseline: ``dp.enabled = false``, everything else unchanged.
- A finite target keeps every DP-SGD setting of the scenario and sets ``dp.target-epsilon``
  to it: each client calibrates its own noise multiplier once, for the whole run, so that it
  ends at the target if *sampled in every round* (``sample_rate = 1 / ceil(n / batch_size)``,
  the rate Opacus and the ledger use, and ``steps = num_rounds * local steps per round``;
  ``opacus.accountants.utils.get_noise_multiplier`` with the budget's accountant and
  ``target_delta``). With unequal partitions a large client needs less noise than a small
  one; one multiplier for all (the largest) would cost the large clients accuracy for no
  privacy. The plan records the most exposed client's multiplier (computed here the same
  way, bisection to within ``EPSILON_TOLERANCE``, from below) as ``dp.noise-multiplier``.
- ``budget.max-epsilon`` is set to the target, so each client's ledger enforces it: a
  round that would cross it is refused (or truncated, per ``budget.policy``).
- Each run keeps its ledgers in its own directory, so budgets of different runs never mix.

A client sampled in fewer rounds than all spends less than the target; the report shows
the largest epsilon any client actually spent, read from the ledgers.

Next to each federated run a sweep can train the central reference
(:mod:`fedsys.privacy.central`): DP-SGD on the pooled training data at the same target, with
the same model, test set, clipping norm, learning rate and batch size, for as many epochs as
a client sampled in every round trains. With several seeds every target runs once per seed
(the seed sets the data split, partition, sampling, initial model and noise), into
``seed-<s>/eps-<target>``; the comparison shows the mean and the min-max over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsys.config import RunConfig
from fedsys.errors import ConfigError

if TYPE_CHECKING:
    from fedsys.privacy.central import CentralResult
    from fedsys.privacy.settings import Accountant
    from fedsys.report.runs import RunData

EPSILON_TOLERANCE = 1e-3  # absolute; get_noise_multiplier's default (0.01) is coarse at eps 0.5
PLAN_FILE = "sweep.json"
CENTRAL_FILE = "central.json"
Simulate = Callable[[RunConfig, Path], Mapping[str, Any]]
Central = Callable[[RunConfig, float], "CentralResult"]


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
        seed: The scenario's seed the plan was computed for (client sizes depend on it).
    """

    target_epsilon: float
    noise_multiplier: float | None = None
    planned_epsilon: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    accountant: str = "rdp"
    seed: int = 0

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


def parse_seeds(text: str) -> list[int]:
    """Parse ``0,1,2`` into distinct seeds, in the order given.

    Raises:
        ConfigError: an item is not an integer >= 0.
    """
    seeds: list[int] = []
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError as err:
            raise ConfigError(f"--seeds wants integers >= 0, got {item.strip()!r}") from err
        if value < 0:
            raise ConfigError(f"--seeds wants integers >= 0, got {item.strip()!r}")
        if value not in seeds:
            seeds.append(value)
    return seeds


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
    from fedsys.privacy.precheck import holder_schedule, simulated_train_sizes

    schedules = (holder_schedule(config, n, config.num_rounds) for n in set(simulated_train_sizes(config)))
    return {(schedule.sample_rate, schedule.steps) for schedule in schedules}


def plan_budget(config: RunConfig, target_epsilon: float) -> BudgetPlan:
    """Choose the noise multiplier that makes the planned rounds reach ``target_epsilon``.

    Raises:
        ConfigError: the target cannot be reached (Opacus finds no noise multiplier).
    """
    accountant = budget_accountant(config)
    if not math.isfinite(target_epsilon):
        return BudgetPlan(target_epsilon=target_epsilon, accountant=accountant, seed=config.seed)
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
            best = BudgetPlan(target_epsilon, sigma, None, sample_rate, steps, accountant, config.seed)
    if best is None or best.noise_multiplier is None or best.sample_rate is None or best.steps is None:
        raise ConfigError("the scenario has no clients to plan a privacy budget for")
    planned = compute_epsilon(
        [(best.noise_multiplier, best.sample_rate, best.steps)],
        target_delta=delta,
        accountant=accountant,
    )
    return BudgetPlan(
        target_epsilon, best.noise_multiplier, planned, best.sample_rate, best.steps, accountant, config.seed
    )


def apply_plan(config: RunConfig, plan: BudgetPlan) -> RunConfig:
    """The scenario for one target: DP off for ``inf``, else each client calibrated to it.

    ``dp.target-epsilon`` is always the plan's target (a scenario's own target would otherwise
    run every target at the scenario's epsilon); ``dp.noise-multiplier`` records the most
    exposed client's multiplier, which clients calibrating to a target do not read.
    """
    overrides: dict[str, Any] = {"ledger-dir": "", "out-dir": ""}
    if plan.private:
        overrides |= {
            "dp.enabled": True,
            "dp.noise-multiplier": plan.noise_multiplier,
            "dp.target-epsilon": plan.target_epsilon,
            "budget.max-epsilon": plan.target_epsilon,
        }
    else:
        overrides["dp.enabled"] = False
    return config.replace(overrides)


def central_reference(config: RunConfig, target_epsilon: float) -> CentralResult:
    """Central DP-SGD on the scenario's pooled data at ``target_epsilon``, seeded by its seed.

    It runs with the torch threads of one virtual client (``simulation.num-cpus``, as Ray
    gives each client): on a busy CPU, more threads than cores made these small models
    ~100x slower (measured: 10.5 s vs 0.1 s for three non-private epochs of digits).
    """
    import torch

    from fedsys.privacy.central import train_central

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.simulation.num_cpus)))
    try:
        return train_central(config, target_epsilon=target_epsilon, simulation_seed=config.seed)
    finally:
        torch.set_num_threads(threads)


def run_sweep(
    config: RunConfig,
    targets: Sequence[float],
    out: Path,
    *,
    simulate: Simulate,
    seeds: Sequence[int] | None = None,
    central: Central | None = None,
    on_plan: Callable[[BudgetPlan], None] | None = None,
    on_central: Callable[[CentralResult], None] | None = None,
) -> list[Path]:
    """Plan every target for every seed, then simulate each into its run directory.

    Args:
        config: The scenario (with any overrides already applied).
        targets: Target epsilons; ``inf`` = non-private baseline.
        out: The sweep directory; gets ``sweep.json``, one run directory per target
            (``eps-<target>``, or ``seed-<s>/eps-<target>`` with several seeds) and, with
            ``central``, ``central.json``.
        simulate: Runs one scenario into a run directory (``simulations.harness.run_scenario``).
        seeds: Scenario seeds to run every target with (default: the scenario's own seed).
        central: Trains the central reference for a scenario and target, after each run
            (:func:`central_reference`); None skips it.
        on_plan: Called with each plan before its run starts (progress display).
        on_central: Called with each central result (progress display).

    Returns:
        The run directories, seed by seed, each in the order of ``targets``.
    """
    chosen = list(dict.fromkeys(seeds)) if seeds else [config.seed]
    scenarios = [config if s == config.seed else config.replace({"seed": s}) for s in chosen]
    nested = len(chosen) > 1
    plans = [(cfg, plan_budget(cfg, t)) for cfg in scenarios for t in targets]
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(
        json.dumps([_plan_json(p, _run_path(p, nested)) for _, p in plans], indent=2) + "\n"
    )
    run_dirs: list[Path] = []
    references: list[dict[str, Any]] = []
    for cfg, plan in plans:
        if on_plan is not None:
            on_plan(plan)
        run_dir = out / _run_path(plan, nested)
        simulate(apply_plan(cfg, plan), run_dir)
        run_dirs.append(run_dir)
        if central is not None:
            result = central(cfg, plan.target_epsilon)
            references.append(_kebab_json(asdict(result)))
            (out / CENTRAL_FILE).write_text(json.dumps(references, indent=2) + "\n")
            if on_central is not None:
                on_central(result)
    return run_dirs


def _run_path(plan: BudgetPlan, nested: bool) -> str:
    return f"seed-{plan.seed}/{plan.name}" if nested else plan.name


def _kebab_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Kebab-case keys; a non-finite target becomes ``"inf"`` (JSON has no infinity)."""
    fixed = {k: ("inf" if k == "target_epsilon" and not math.isfinite(v) else v) for k, v in data.items()}
    return {k.replace("_", "-"): v for k, v in fixed.items()}


def _plan_json(plan: BudgetPlan, run: str) -> dict[str, Any]:
    return _kebab_json(asdict(plan)) | {"run": run}


@dataclass(frozen=True)
class Spread:
    """Mean of a quantity over seeds, with its range and sample standard deviation."""

    mean: float
    low: float
    high: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        """The spread of the finite values, or None when there are none."""
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return None
        std = statistics.stdev(finite) if len(finite) > 1 else 0.0
        return cls(statistics.fmean(finite), min(finite), max(finite), std, len(finite))


@dataclass(frozen=True)
class ComparisonRow:
    """One target epsilon: the federated runs against the central reference, over seeds.

    Accuracy is the final model's on the central test set; federated epsilon is the largest
    any client spent (from the ledgers), central epsilon the reference's accountant's.
    """

    target_epsilon: float
    seeds: tuple[int, ...]
    federated_accuracy: Spread | None
    federated_epsilon: Spread | None
    central_accuracy: Spread | None
    central_epsilon: Spread | None

    @property
    def private(self) -> bool:
        """False for the non-private baseline."""
        return math.isfinite(self.target_epsilon)

    def to_json(self) -> dict[str, Any]:
        """Kebab-case mapping for report.json (spreads as nested mappings, ``inf`` as a string)."""
        return _kebab_json(
            {
                "target_epsilon": self.target_epsilon,
                "seeds": list(self.seeds),
                **{
                    key: None if value is None else asdict(value)
                    for key, value in (
                        ("federated_accuracy", self.federated_accuracy),
                        ("federated_epsilon", self.federated_epsilon),
                        ("central_accuracy", self.central_accuracy),
                        ("central_epsilon", self.central_epsilon),
                    )
                },
            }
        )


def load_comparison(out: Path) -> list[ComparisonRow]:
    """One row per target of the sweep in ``out`` (from ``sweep.json``, its runs, ``central.json``).

    Runs that have not written metrics yet (an interrupted sweep) are left out.

    Raises:
        ConfigError: ``out`` has no readable ``sweep.json``, or a run directory is unreadable.
    """
    from fedsys.report.runs import load_run
    from fedsys.results import METRICS_FILE

    plans = _read_list(out / PLAN_FILE, required=True)
    central = {(_target(c), c.get("simulation-seed")): c for c in _read_list(out / CENTRAL_FILE)}
    cells: dict[float, list[tuple[int, RunData | None, Mapping[str, Any] | None]]] = {}
    for plan in plans:
        target, seed = _target(plan), int(plan.get("seed", 0))
        run_dir = out / str(plan.get("run", f"eps-{target:g}"))
        run = load_run(run_dir) if (run_dir / METRICS_FILE).is_file() else None
        cells.setdefault(target, []).append((seed, run, central.get((target, seed))))
    rows = []
    for target, cell in sorted(cells.items()):
        runs = [run for _, run, _ in cell if run is not None]
        references = [ref for _, _, ref in cell if ref is not None]
        rows.append(
            ComparisonRow(
                target_epsilon=target,
                seeds=tuple(seed for seed, _, _ in cell),
                federated_accuracy=Spread.of([r.last("accuracy") for r in runs]),
                federated_epsilon=Spread.of([r.final_epsilon() for r in runs if r.private]),
                central_accuracy=Spread.of([ref.get("accuracy") for ref in references]),
                central_epsilon=Spread.of([ref.get("epsilon") for ref in references]),
            )
        )
    return rows


def _target(entry: Mapping[str, Any]) -> float:
    return float(entry["target-epsilon"])  # float("inf") reads the "inf" written for JSON


def _read_list(path: Path, *, required: bool = False) -> list[dict[str, Any]]:
    if not path.is_file():
        if required:
            raise ConfigError(f"{path.parent} is not a sweep directory: it has no {path.name}")
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable: {err}") from err
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ConfigError(f"{path} should hold a list of objects, got {type(data).__name__}")
    return data
