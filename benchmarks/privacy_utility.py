"""Privacy-utility benchmark: federated DP-SGD (fedsys) against central DP-SGD on the pooled data.

Usage::

    python benchmarks/privacy_utility.py [--datasets digits,breast-cancer,mnist-5k]
        [--partitions iid,dirichlet:0.5] [--epsilons 1,3,8,inf] [--seeds 0,1]
        [--rounds N] [--out DIR] [--quick]

For every data set (its scenario in ``simulations/``; a scenario that does not exist yet is
skipped with a note) and partition, this runs what ``fedsys sweep SCENARIO --central --seeds``
runs, through the same functions (``run_sweep`` with ``run_scenario`` and
``central_reference``, then ``load_comparison`` and ``write_report``): per target epsilon
(delta = the scenario's ``budget.target-delta``, 1e-5 in all three) and seed, one federated
simulation whose noise makes a client sampled in every round end at the target, and the
central reference: DP-SGD on the union of the clients' training data, same model, initial
weights, test set, clipping norm, learning rate and batch size, for rounds x local epochs
epochs, its noise chosen for the same target. ``inf`` is the non-private pair.

Writes into ``--out``: one sweep folder per data set and partition (run directories,
``report.md``), ``privacy_utility.csv`` (one row per data set, partition and target: mean,
min, max and standard deviation over seeds) and ``privacy_utility.png`` (accuracy against
target epsilon, one panel per data set; federated blue, central orange; IID solid,
Dirichlet dashed), and prints one markdown table: mean (min-max) over seeds. The scenarios
are read, and their data checked, once before the first run, so a scenario file edited while
the benchmark runs does not mix into its results.

``--quick`` is a smoke test (under a minute on two idle cores): digits, IID, one seed,
epsilon 3 and inf, 3 rounds.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsys.config import RunConfig
from fedsys.data.federated import check_scenario_data
from fedsys.errors import FedsysError
from fedsys.report import plots
from fedsys.report.document import comparison_curves, write_report
from fedsys.report.runs import load_runs
from fedsys.report.sweep import (
    ComparisonRow,
    Spread,
    central_reference,
    load_comparison,
    parse_seeds,
    parse_targets,
    run_sweep,
)

_ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "digits": "digits.toml",
    "breast-cancer": "breast-cancer.toml",
    "mnist-5k": "mnist-5k.toml",
}
DEFAULTS: dict[str, Any] = {
    "datasets": "digits,breast-cancer,mnist-5k",
    "partitions": "iid,dirichlet:0.5",
    "epsilons": "1,3,8,inf",
    "seeds": "0,1",
    "rounds": None,
}
QUICK: dict[str, Any] = {
    "datasets": "digits",
    "partitions": "iid",
    "epsilons": "3,inf",
    "seeds": "0",
    "rounds": 3,
}
Result = tuple[str, str, list[ComparisonRow]]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--partitions", help="comma-separated: iid, dirichlet:ALPHA, shards:K")
    parser.add_argument("--epsilons", help="comma-separated target epsilons; inf = no DP")
    parser.add_argument("--seeds", help="comma-separated scenario seeds")
    parser.add_argument("--rounds", type=int, help="federated rounds (default: the scenario's)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs") / f"privacy-utility-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: " + ", ".join(f"{k} {v}" for k, v in QUICK.items())
    )
    args = parser.parse_args(argv)
    for key, default in DEFAULTS.items():  # explicit flags win over --quick
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    return args


def _simulate(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    from simulations.harness import run_scenario

    started = time.perf_counter()
    summary = dict(run_scenario(config, run_dir))
    accuracy = summary.get("final-accuracy")
    shown = f"{100 * accuracy:.2f}%" if isinstance(accuracy, float) else "?"
    label = "/".join(run_dir.parts[-2:]) if run_dir.parent.name.startswith("seed-") else run_dir.name
    print(f"    federated {label}: accuracy {shown} ({time.perf_counter() - started:.0f} s)", flush=True)
    return summary


def _scenarios(args: argparse.Namespace) -> list[tuple[str, str, RunConfig]]:
    """Every (data set, partition) to run, each scenario read and its data checked before any run."""
    jobs = []
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if dataset not in SCENARIOS:
            raise SystemExit(f"unknown data set {dataset!r}; known: {', '.join(SCENARIOS)}")
        scenario = _ROOT / "simulations" / SCENARIOS[dataset]
        if not scenario.is_file():
            print(f"note: {scenario.relative_to(_ROOT)} does not exist yet; skipping {dataset}", flush=True)
            continue
        try:
            base = RunConfig.from_toml(scenario)
            for partition in [p.strip() for p in args.partitions.split(",") if p.strip()]:
                overrides: dict[str, Any] = {"partition": partition}
                if args.rounds is not None:
                    overrides["num-rounds"] = args.rounds
                config = base.replace(overrides)
                check_scenario_data(config)
                jobs.append((dataset, partition, config))
        except FedsysError as err:
            print(
                f"note: {scenario.relative_to(_ROOT)} cannot run here ({err}); skipping {dataset}", flush=True
            )
    return jobs


def _run_one(
    dataset: str, partition: str, config: RunConfig, args: argparse.Namespace
) -> list[ComparisonRow]:
    folder = args.out / dataset / partition.replace(":", "-")
    train = config.train
    print(
        f"{dataset}, {partition}: {config.model}, {config.simulation.num_clients} clients, batch "
        f"{train.batch_size}, lr {train.lr:g}, {config.num_rounds} rounds x {train.local_epochs} "
        f"local epochs -> {folder}",
        flush=True,
    )
    run_dirs = run_sweep(
        config,
        parse_targets(args.epsilons),
        folder,
        simulate=_simulate,
        seeds=parse_seeds(args.seeds),
        central=central_reference,
        on_central=lambda r: print(
            f"    central ε {r.target_epsilon:g} seed {r.simulation_seed}: accuracy {100 * r.accuracy:.2f}% "
            f"({r.seconds:.0f} s)",
            flush=True,
        ),
    )
    rows = load_comparison(folder)
    write_report(
        load_runs(run_dirs), folder, title=f"Privacy-utility: {dataset}, {partition}", comparison=rows
    )
    return rows


def _cell(spread: Spread | None, *, percent: bool) -> str:
    if spread is None:
        return "–"
    scale, spec = (100.0, ".1f") if percent else (1.0, ".2f")
    text = f"{scale * spread.mean:{spec}}"
    if spread.count > 1:
        text += f" ({scale * spread.low:{spec}}–{scale * spread.high:{spec}})"
    return text


def _gap(row: ComparisonRow) -> str:
    if row.central_accuracy is None or row.federated_accuracy is None:
        return "–"
    return f"{100 * (row.central_accuracy.mean - row.federated_accuracy.mean):+.1f}"


def markdown_table(results: Sequence[Result]) -> str:
    """One line per data set, partition and target: accuracy (%) and epsilon, mean (min–max)."""
    lines = [
        "| data set | partition | target ε | seeds | federated acc. (%) | federated ε | central acc. (%) "
        "| central ε | central − federated (pp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, partition, rows in results:
        for row in rows:
            target = f"{row.target_epsilon:g}" if row.private else "∞ (no DP)"
            cells = [
                dataset,
                partition,
                target,
                str(len(row.seeds)),
                _cell(row.federated_accuracy, percent=True),
                _cell(row.federated_epsilon, percent=False) if row.private else "∞",
                _cell(row.central_accuracy, percent=True),
                _cell(row.central_epsilon, percent=False) if row.private else "∞",
                _gap(row),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path: Path) -> None:
    """Mean, min, max, std and count over seeds of each quantity, one row per target."""
    quantities = ("federated_accuracy", "federated_epsilon", "central_accuracy", "central_epsilon")
    stats = ("mean", "low", "high", "std", "count")
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "dataset",
                "partition",
                "target_epsilon",
                "seeds",
                *(f"{q}_{s}" for q in quantities for s in stats),
            ]
        )
        for dataset, partition, rows in results:
            for row in rows:
                values: list[Any] = []
                for quantity in quantities:
                    spread = getattr(row, quantity)
                    values += [getattr(spread, s) if spread is not None else "" for s in stats]
                seeds = " ".join(map(str, row.seeds))
                writer.writerow([dataset, partition, f"{row.target_epsilon:g}", seeds, *values])


def plot(results: Sequence[Result], path: Path) -> bool:
    """Accuracy against target epsilon, one panel per data set; IID solid, Dirichlet dashed."""
    panels: dict[str, list[plots.Curve]] = {}
    for dataset, partition, rows in results:
        style = "-" if partition == "iid" else "--" if partition.startswith("dirichlet") else ":"
        panels.setdefault(dataset, []).extend(
            comparison_curves(rows, suffix=f", {partition}", linestyle=style)
        )
    return plots.plot_accuracy_vs_epsilon(
        panels, path, title="Federated vs central DP-SGD: final test accuracy (mean, min–max over seeds)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    started = time.perf_counter()
    jobs = _scenarios(args)  # read once, up front: a scenario edited mid-run does not mix in
    results: list[Result] = [(d, p, _run_one(d, p, config, args)) for d, p, config in jobs]
    if not results:
        raise SystemExit("nothing was run")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(results, args.out / "privacy_utility.csv")
    plot(results, args.out / "privacy_utility.png")
    print()
    print(markdown_table(results))
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; wrote {args.out / 'privacy_utility.csv'} and .png"
    )


if __name__ == "__main__":
    main()
