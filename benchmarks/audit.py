"""Audit calibration: fedsys' empirical lower bound on epsilon beside the accountant's epsilon.

Usage::

    python benchmarks/audit.py [--central-epsilons 2,4,8] [--federated-epsilons inf,8,3]
        [--central-scenario simulations/mnist-5k.toml] [--federated-scenario simulations/digits.toml]
        [--white-box-epsilons 2,4,8] [--white-box-canaries 1000]
        [--rounds N] [--seeds 0] [--every-step] [--out DIR] [--quick]

Central rows: the setting closest to Steinke, Nasr & Jagielski (NeurIPS 2023), white-box DP-SGD
auditing with Dirac canaries at delta = 1e-5 and epsilon 2, 4, 8 (they used m = 1,000 gradient
canaries in a Wide-ResNet on CIFAR-10 and saw every iterate): here the scenario's model trained
centrally by fedsys' DP-SGD step (:func:`fedsys.audit.central.audit_central`) with input-space
Dirac canaries on never/rarely used pixels (m = one per rarely used pixel), the attacker seeing
the model after every epoch, or with ``--every-step`` after every DP-SGD step (their threat
model; adds the per-step likelihood-ratio attack). ``max`` is the largest lower bound m canaries could
give at all (every guess right), the ceiling of any one-run audit of this size. ``ideal`` is what
the same statistic (m canaries, the same union bound over attacks and guess counts) gives on
average when each canary's score is the exact Gaussian mechanism at the claimed epsilon
(mu-GDP with delta(epsilon) = target delta; in: N(mu, 1), out: N(0, 1); 20 simulations): the
most a perfect attack on a perfectly accounted mechanism can show in one run of this size.

White-box rows: the paper's own white-box setting on the central scenario
(:func:`fedsys.audit.central.audit_central_white_box`): m = 1,000 Dirac gradient canaries (each
``max-grad-norm`` times a unit vector on one parameter the real data leaves idle) added to the
clipped sum inside Opacus' DP-SGD step, each included with probability 1/2 and, like every record,
Poisson-sampled at the data's rate in each step, so the accountant's epsilon covers them; the
auditor reads every iterate. Compared with their Fig. 1/Sec. 7 white-box CIFAR-10 numbers
(m = 1,000, delta = 1e-5: epsilon_lb about 1.8 at epsilon 4).

Federated rows: ``fedsys audit`` on the federated scenario (each simulated holder trains on its
own canaries, DP-SGD at its own calibrated noise, SecAgg+ as the scenario says), for DP off
(``inf``) and each epsilon.

Prints one markdown table and writes ``audit.csv`` into ``--out``. ``--quick``: 3 rounds, central
epsilon 4 only, federated DP off only.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from fedsys.audit.canaries import default_canary_count
from fedsys.audit.central import WHITE_BOX_CANARIES, audit_central, audit_central_white_box
from fedsys.audit.federated import audit_federated
from fedsys.audit.result import AuditResult
from fedsys.audit.statistic import best_lower_bound, epsilon_lower_bound
from fedsys.config import RunConfig
from fedsys.privacy.central import pooled_training_data

ROOT = Path(__file__).resolve().parents[1]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--central-epsilons", default="2,4,8")
    parser.add_argument("--federated-epsilons", default="inf,8,3")
    parser.add_argument("--central-scenario", type=Path, default=ROOT / "simulations" / "mnist-5k.toml")
    parser.add_argument("--federated-scenario", type=Path, default=ROOT / "simulations" / "digits.toml")
    parser.add_argument("--white-box-epsilons", default="2,4,8", help="'' to skip the white-box rows")
    parser.add_argument("--white-box-canaries", type=int, default=WHITE_BOX_CANARIES)
    parser.add_argument(
        "--white-box-batch-size", type=int, default=None, help="e.g. >= n: full batch, canaries in every step"
    )
    parser.add_argument("--rounds", type=int, default=None, help="num-rounds (default: the scenario's)")
    parser.add_argument("--seeds", default="0", help="comma-separated audit seeds")
    parser.add_argument(
        "--out", type=Path, default=Path("runs") / f"audit-benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parser.add_argument(
        "--every-step", action="store_true", help="central: release every DP-SGD iterate (white-box, slower)"
    )
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


def _epsilons(text: str) -> list[float]:
    return [float(e) for e in text.split(",") if e]


def _config(path: Path, epsilon: float, rounds: int | None) -> RunConfig:
    over: dict[str, Any] = {"dp.enabled": math.isfinite(epsilon)}
    if math.isfinite(epsilon):
        over["dp.target-epsilon"] = epsilon
    if rounds is not None:
        over["num-rounds"] = rounds
    return RunConfig.from_toml(path).replace(over)


def _ceiling(result: AuditResult, guess_counts: int = 4) -> float:
    """Every guess right, at the per-test level the union bound gives (attacks x guess counts tests)."""
    m = result.canaries
    level = 1 - (1 - result.confidence) / (len(result.attacks) * guess_counts)
    return epsilon_lower_bound(canaries=m, guesses=m, correct=m, delta=result.delta, confidence=level)


def _gaussian_ideal(result: AuditResult, guess_fractions: Sequence[float] = (0.1, 0.2, 0.5, 1.0)) -> float:
    """Mean lower bound of a perfect attack on the exact Gaussian mechanism at ``result.epsilon``."""
    if not math.isfinite(result.epsilon):
        return math.nan

    def delta_gap(mu: float) -> float:
        eps = result.epsilon
        return float(
            stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
            - result.delta
        )

    mu = optimize.brentq(delta_gap, 1e-3, 100.0)
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(20):
        included = rng.random(result.canaries) < 0.5
        scores = [rng.normal(size=result.canaries) + mu * included for _ in result.attacks]
        _, best = best_lower_bound(
            scores,
            included,
            delta=result.delta,
            confidence=result.confidence,
            guess_fractions=guess_fractions,
        )
        bounds.append(best.epsilon_lower_bound)
    return float(np.mean(bounds))


def _row(setting: str, scenario: Path, target: float, seed: int, result: AuditResult) -> dict[str, Any]:
    return {
        "setting": setting,
        "scenario": scenario.stem,
        "target-epsilon": target,
        "seed": seed,
        "epsilon": result.epsilon,
        "epsilon-lower-bound": result.epsilon_lower_bound,
        "ratio": result.epsilon_lower_bound / result.epsilon if math.isfinite(result.epsilon) else math.nan,
        "max": _ceiling(result),
        "ideal": _gaussian_ideal(result),
        "canaries": result.canaries,
        "guesses": result.guesses,
        "correct": result.correct,
        "attack": result.attack,
        "seconds": round(result.seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    central = [4.0] if args.quick else _epsilons(args.central_epsilons)
    white_box = [4.0] if args.quick else _epsilons(args.white_box_epsilons)
    federated = [math.inf] if args.quick else _epsilons(args.federated_epsilons)
    rounds = 3 if args.quick else args.rounds
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    base = RunConfig.from_toml(args.central_scenario)
    m = default_canary_count(pooled_training_data(base))
    for seed in seeds:
        for eps in central:
            config = _config(args.central_scenario, eps, rounds)
            result = audit_central(config, canaries=m, audit_seed=seed, every_step=args.every_step)
            setting = "central, every step" if args.every_step else "central, every epoch"
            rows.append(_row(setting, args.central_scenario, eps, seed, result))
            print(rows[-1], flush=True)
        for eps in white_box:
            config = _config(args.central_scenario, eps, rounds)
            if args.white_box_batch_size is not None:
                config = config.replace({"train.batch-size": args.white_box_batch_size})
            result = audit_central_white_box(config, canaries=args.white_box_canaries, audit_seed=seed)
            rows.append(
                _row("central, white-box gradient canaries", args.central_scenario, eps, seed, result)
            )
            print(rows[-1], flush=True)
        for eps in federated:
            config = _config(args.federated_scenario, eps, rounds)
            run_dir = args.out / f"{args.federated_scenario.stem}-eps{eps:g}-seed{seed}"
            result = audit_federated(config, run_dir, audit_seed=seed)
            result.write(run_dir)
            rows.append(_row("federated", args.federated_scenario, eps, seed, result))
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "audit.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(_markdown(rows))


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| setting | scenario | ε (accountant) | ε_lb (95%) | ε_lb / ε | ideal ε_lb | max ε_lb for m | m "
        "| right / guesses | attack |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = f"{r['epsilon']:.2f}" if math.isfinite(r["epsilon"]) else "∞ (DP off)"
        ratio = "–" if np.isnan(r["ratio"]) else f"{r['ratio']:.2f}"
        ideal = "–" if np.isnan(r["ideal"]) else f"{r['ideal']:.2f}"
        lines.append(
            f"| {r['setting']} | {r['scenario']} | {eps} | {r['epsilon-lower-bound']:.2f} | {ratio} | "
            f"{ideal} | {r['max']:.2f} | {r['canaries']} | {r['correct']}/{r['guesses']} | {r['attack']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
