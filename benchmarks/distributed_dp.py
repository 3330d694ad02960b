"""Distributed vs local vs central DP at one epsilon: accuracy, epsilon, bits and round time.

    python benchmarks/distributed_dp.py [--datasets digits,mnist-5k] [--seeds 0,1,2] [--epsilon 3]

For each data set, in one run and on the same machine:

- **distributed**: ``simulations/digits-distributed.toml`` (for mnist-5k: the same schedule with
  10 holders of ~400 records), DP-FedSGD with the Skellam noise added in shares inside SecAgg+;
- **local**: the data set's shipped local-DP scenario (``digits.toml``, ``mnist-5k.toml`` with an
  IID partition), each holder adding all of its DP-SGD noise;
- **central**: central DP-SGD on the pooled training data (``fedsys.privacy.central``), the
  local scenario's model and batch size, same test set, with the tight Gaussian accountant;
- **central-gd**: the distributed run's own schedule done centrally (the same Opacus code): every
  pooled record every step (q = 1), ``num-rounds`` steps, the same step size, no dropout margin
  and the PRV accountant, the best a trusted curator could do with that schedule.

Epsilon is each run's largest ledger epsilon (``epsilon-max``); round time is the median over
rounds 2.. (round 1 includes the Ray start-up). Accuracy is on the central test set.

    python benchmarks/distributed_dp.py --client-level [--clients 100x20,1000x100] [--seeds 0]

runs client-level DP on the FedProx Synthetic(0.5, 0.5) data (``simulations/synthetic.toml``,
FedAvg, ``N`` clients of which ``K`` per round) instead:

- **distributed**: DP-FedAvg inside SecAgg+ (``dp.level = "client"``), each client's whole update
  clipped and noised with its Skellam share;
- **central**: central DP-FedAvg on the same rounds (plain FedAvg, the same clients per round and
  clip): the server clips each update and adds Gaussian noise to the sum, with Flower's own
  server-side fixed-clipping pieces (``flwr.supercore.differential_privacy``). Its noise is
  calibrated as fedsys' client-level ledger charges: sampling rate 1 (no amplification from
  client sampling) for each of ``num-rounds`` rounds;
- **secagg** and **plain**: the same rounds without DP, inside SecAgg+ and in the clear;
- **local**: local DP-SGD (sample level: each client's records, not the client, are protected).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import fedsys.coordinator.plain as plain_round
from fedsys.cli import load_scenario
from fedsys.config import RunConfig
from fedsys.privacy.accounting import compute_epsilon
from fedsys.privacy.central import pooled_training_data, train_central
from fedsys.privacy.planning import noise_for_target
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
        # the sampled holders' own test splits, by the final evaluation-only exchange
        "federated-accuracy": summary.get("final-federated-accuracy"),
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
                for mode, config in (("central", local), ("central-gd", central_gd(distributed))):
                    central = train_central(config, target_epsilon=epsilon, simulation_seed=seed)
                    rows.append({"data": dataset, "mode": mode, "seed": seed, "accuracy": central.accuracy,
                                 "epsilon": central.epsilon, "round-seconds": float("nan"), "bits": None,
                                 "noise": central.noise_multiplier})  # fmt: skip
                print(rows[-4:], flush=True)
    return rows


def central_gd(distributed: RunConfig) -> RunConfig:
    """The distributed scenario's schedule for a central curator: full-batch DP-GD on the pooled
    records, one step per round, at the step size the server takes (``lr * n / (B * |U|)`` per
    mean gradient), with the PRV accountant."""
    n = len(pooled_training_data(distributed))
    contributors = distributed.sampling.clients_per_round or distributed.simulation.num_clients
    lr = distributed.train.lr * n / (distributed.train.batch_size * contributors)
    return distributed.replace(
        {"dp.mode": "local", "train.batch-size": n, "train.lr": lr, "train.local-epochs": 1,
         "train.local-steps": 0, "budget.accountant": "prv"}
    )  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | mode | accuracy mean (min–max) | ε max | noise multiplier | ring bits | s / round |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted(
        {(r["data"], r["mode"]) for r in rows},
        key=lambda k: (k[0], ["distributed", "local", "central", "central-gd"].index(k[1])),
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


SYNTHETIC = ["train.strategy=fedavg", "train.proximal-mu=0.0", "sampling.min-clients=2", "train.lr=0.5",
             "train.local-epochs=5"]  # fmt: skip
CLIENT_DP = ["dp.enabled=true", "dp.level=client", "dp.max-grad-norm=1.0"]


def _client_configs(clients: int, per_round: int, epsilon: float, seed: int) -> dict[str, RunConfig]:
    base = [*SYNTHETIC, f"seed={seed}", f"simulation.num-clients={clients}",
            f"sampling.clients-per-round={per_round}"]  # fmt: skip

    def scenario(*sets: str) -> RunConfig:
        return load_scenario(SCENARIO_DIR / "synthetic.toml", {}, [*base, *sets])

    return {
        "distributed": scenario(
            *CLIENT_DP,
            "dp.mode=distributed",
            f"dp.target-epsilon={epsilon}",
            "dp.bits=16",
            "secagg.enabled=true",
        ),  # fmt: skip
        "central": scenario("dp.enabled=false", "secagg.enabled=false"),
        "secagg": scenario("dp.enabled=false", "secagg.enabled=true"),
        "plain": scenario("dp.enabled=false", "secagg.enabled=false"),
        "local": scenario(
            "dp.enabled=true", "dp.mode=local", f"dp.target-epsilon={epsilon}", "secagg.enabled=false"
        ),  # fmt: skip
    }


def central_fedavg_noise(config: RunConfig, epsilon: float) -> float:
    """The Gaussian multiplier of central DP-FedAvg at ``epsilon``, charged like fedsys' client-level
    ledger: sampling rate 1 in each of ``num-rounds`` rounds (tight RDP of the Gaussian)."""
    return noise_for_target(
        target_epsilon=epsilon,
        target_delta=config.budget.target_delta,
        sample_rate=1.0,
        steps=config.num_rounds,
        accountant="rdp",
    )


def _central_fedavg(config: RunConfig, noise_multiplier: float, work: Path, name: str) -> dict[str, Any]:
    """A plain FedAvg run whose server clips each update and adds N(0, (z C)^2) to their sum
    (Flower's DifferentialPrivacyServerSideFixedClipping pieces, equal client weights)."""
    import numpy as np
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        clip_inputs_inplace,
        compute_stdv,
    )

    clip = config.dp.max_grad_norm
    np.random.seed(config.seed)  # Flower draws this noise from numpy's global generator

    def noised_mean(deltas: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
        names = list(deltas[0])
        updates = [[np.array(d[k], np.float64) for k in names] for d in deltas]
        for update in updates:
            clip_inputs_inplace(update, clip)
        mean = [np.mean([u[i] for u in updates], axis=0) for i in range(len(names))]
        add_gaussian_noise_inplace(mean, compute_stdv(noise_multiplier, clip, len(updates)))
        return {k: v.astype(np.float32) for k, v in zip(names, mean, strict=True)}

    original = plain_round.weighted_mean
    plain_round.weighted_mean = noised_mean  # type: ignore[assignment]
    try:
        row = _federated(config, work, name)
    finally:
        plain_round.weighted_mean = original
    history = [(noise_multiplier, 1.0, config.num_rounds)]  # what the noise was calibrated to
    epsilon = compute_epsilon(history, target_delta=config.budget.target_delta, accountant="rdp")
    return {**row, "epsilon": epsilon, "noise": noise_multiplier}


def run_client_level(
    populations: list[tuple[int, int]], seeds: list[int], epsilon: float
) -> list[dict[str, Any]]:
    """Every population x mode x seed, as rows."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for clients, per_round in populations:
            for seed in seeds:
                configs = _client_configs(clients, per_round, epsilon, seed)
                z = central_fedavg_noise(configs["distributed"], epsilon)
                for mode, config in configs.items():
                    name = f"{mode}-{clients}-{per_round}-{seed}"
                    if mode == "central":
                        result = _central_fedavg(config, z, work, name)
                    else:
                        result = _federated(config, work, name)
                    rows.append({"data": f"{clients}x{per_round}", "mode": mode, "seed": seed, **result})
                    print(rows[-1], flush=True)
    return rows


def _client_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients x per round | mode | accuracy, holders' test splits | accuracy, unseen devices "
        "| ε max | noise multiplier | ring bits | s / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ["distributed", "central", "local", "secagg", "plain"]
    keys = {(r["data"], r["mode"]) for r in rows}
    for data, mode in sorted(keys, key=lambda k: (int(k[0].split("x")[0]), order.index(k[1]))):
        group = [r for r in rows if (r["data"], r["mode"]) == (data, mode)]
        acc = [r["accuracy"] for r in group]
        eps = [r["epsilon"] for r in group if r["epsilon"]]
        noise = group[0]["noise"]
        own = [r["federated-accuracy"] or 0.0 for r in group]
        lines.append(
            f"| {data} | {mode} | {_spread(own)} | {_spread(acc)} "
            f"| {f'{max(eps):.3f}' if eps else '–'} | {'–' if noise is None else f'{noise:.3g}'} "
            f"| {group[0]['bits'] or '–'} | {_seconds(group)} |"
        )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist-5k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--client-level", action="store_true", help="client-level DP on Synthetic")
    parser.add_argument("--clients", default="100x20", help="N x K: clients, clients per round")
    args = parser.parse_args()
    logging.getLogger("fedsys").setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.client_level:
        populations = [tuple(int(n) for n in item.split("x")) for item in args.clients.split(",")]
        print(_client_table(run_client_level(populations, seeds, args.epsilon)))  # type: ignore[arg-type]
        return
    rows = run(args.datasets.split(","), seeds, args.epsilon)
    print(_table(rows))


if __name__ == "__main__":
    main()
