"""Distributed vs local vs central DP at one epsilon: accuracy, epsilon, bits and round time.

    python benchmarks/distributed_dp.py [--datasets digits,mnist-5k] [--seeds 0,1,2] [--epsilon 3]

For each data set, in one run and on the same machine:

- **distributed**: ``simulations/digits-distributed.toml`` (for mnist-5k: the same schedule with
  10 holders of ~400 records), DP-FedSGD with the Skellam noise added in shares inside SecAgg+;
- **local**: the data set's shipped local-DP scenario (``digits.toml``, ``mnist-5k.toml`` with an
  IID partition), each holder adding all of its DP-SGD noise;
- **central**: central DP-SGD on the pooled training data (``fedsys.privacy.central``), the
  local scenario's model and batch size, same test set, with the tight Gaussian accountant.

Epsilon is each run's largest ledger epsilon (``epsilon-max``); round time is the median over
rounds 2.. (round 1 includes the Ray start-up). Accuracy is on the central test set.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedsys.cli import load_scenario
from fedsys.config import RunConfig
from fedsys.privacy.central import train_central
from fedsys.results import read_metrics
from simulations.harness import SCENARIO_DIR, run_scenario

MNIST = ["dataset=mnist-5k", "simulation.num-clients=10", "sampling.clients-per-round=10",
         "train.batch-size=450", "secagg.threshold=7", "sampling.min-clients=7"]  # fmt: skip
LOCAL = {"digits": "digits.toml", "mnist-5k": "mnist-5k.toml"}


def _configs(dataset: str, epsilon: float, seed: int) -> tuple[RunConfig, RunConfig]:
    common = [f"seed={seed}", f"dp.target-epsilon={epsilon}"]
    distributed = load_scenario(
        SCENARIO_DIR / "digits-distributed.toml", {}, common + (MNIST if dataset == "mnist-5k" else [])
    )
    local = load_scenario(SCENARIO_DIR / LOCAL[dataset], {}, [*common, "partition=iid"])
    return distributed, local


def _federated(config: RunConfig, work: Path, name: str) -> dict[str, Any]:
    summary = run_scenario(config, work / name)
    records = read_metrics(work / name)
    times = [r["round-seconds"] for r in records[1:]]
    last = records[-1]
    return {
        "accuracy": float(summary["final-accuracy"]),
        "epsilon": float(summary["epsilon-max"]),
        "round-seconds": statistics.median(times) if times else float("nan"),
        "bits": last.get("ddp-ring-bits"),
        "noise": last.get("ddp-noise-multiplier"),
    }


def run(datasets: list[str], seeds: list[int], epsilon: float) -> list[dict[str, Any]]:
    """Every data set x mode x seed, as rows."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dataset in datasets:
            for seed in seeds:
                distributed, local = _configs(dataset, epsilon, seed)
                name = f"{dataset}-{seed}"
                rows.append({"data": dataset, "mode": "distributed", "seed": seed,
                             **_federated(distributed, work, f"d-{name}")})  # fmt: skip
                rows.append({"data": dataset, "mode": "local", "seed": seed,
                             **_federated(local, work, f"l-{name}")})  # fmt: skip
                central = train_central(local, target_epsilon=epsilon, simulation_seed=seed)
                rows.append({"data": dataset, "mode": "central", "seed": seed, "accuracy": central.accuracy,
                             "epsilon": central.epsilon, "round-seconds": float("nan"), "bits": None,
                             "noise": central.noise_multiplier})  # fmt: skip
                print(rows[-3:], flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | mode | accuracy mean (min–max) | ε max | noise multiplier | ring bits | s / round |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted(
        {(r["data"], r["mode"]) for r in rows},
        key=lambda k: (k[0], ["distributed", "local", "central"].index(k[1])),
    )
    for data, mode in keys:
        group = [r for r in rows if (r["data"], r["mode"]) == (data, mode)]
        acc = [r["accuracy"] for r in group]
        noise = group[0]["noise"]
        lines.append(
            f"| {data} | {mode} | {100 * statistics.mean(acc):.1f} "
            f"({100 * min(acc):.1f}–{100 * max(acc):.1f}) "
            f"| {max(r['epsilon'] or 0.0 for r in group):.3f} | {'–' if noise is None else f'{noise:.3g}'} "
            f"| {group[0]['bits'] or '–'} | {_seconds(group)} |"
        )
    return "\n".join(lines)


def _seconds(group: list[dict[str, Any]]) -> str:
    times = [r["round-seconds"] for r in group if r["round-seconds"] == r["round-seconds"]]  # drop NaN
    return f"{statistics.mean(times):.2f}" if times else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist-5k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilon", type=float, default=3.0)
    args = parser.parse_args()
    logging.getLogger("fedsys").setLevel(logging.ERROR)
    rows = run(args.datasets.split(","), [int(s) for s in args.seeds.split(",")], args.epsilon)
    print(_table(rows))


if __name__ == "__main__":
    main()
