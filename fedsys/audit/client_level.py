"""One-run audit of client-level distributed DP (``dp.mode = "distributed"``, ``dp.level = "client"``).

Canary clients in the style of Andrew et al. (ICLR 2024, "One-shot empirical privacy estimation
for federated learning"), judged with the statistic of Steinke, Nasr & Jagielski (NeurIPS 2023):
m simulated partitions are canary slots, each canary included with probability 1/2; an included
one sends its secret unit direction ``u_i`` scaled to the clipping norm through the normal
client-level path (:mod:`fedsys.audit.client_canaries`), an excluded one trains like any client.
The scenario runs through ``fedsys simulate``'s path (same ServerApp/ClientApp, ledgers, SecAgg+).

The attacker is the server. It sees every released global model ``w_t`` (the mean of the round's
noisy clipped updates is ``w_t - w_{t-1}``) and knows which clients it put in each round's cohort
(read here from each canary slot's ledger, which records exactly the rounds it contributed to).
Scores, one per attack, higher meaning "included":

- ``cohort-alignment``: ``sum over the rounds slot i contributed to of <w_t - w_{t-1}, u_i>``;
- ``update-alignment``: ``<w_T - w_0, u_i>`` over the whole run (also ranks like Andrew et al.'s
  cosine of the final model delta with ``u_i``).

The lower bound takes the best attack and guess count under a union bound
(:func:`fedsys.audit.result.judge`). Beside it, :func:`gaussian_fit_epsilon` gives Andrew et
al.'s estimate: the epsilon of the Gaussian mechanism that separates the included canaries'
scores from the excluded ones' as much as observed. It is an *estimate*, not a bound.

"DP off" at client level keeps clipping, rounding and SecAgg+ and sets the aggregate noise
multiplier to :data:`NO_DP_NOISE` (the mode needs some noise); the budgets are lifted so the
ledgers accept it, and the result reports no epsilon.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, stats

from fedsys.audit.client_canaries import ClientCanaries, make_client_canaries
from fedsys.audit.federated import _initial_model, claimed_epsilon
from fedsys.audit.result import AuditResult, judge
from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.errors import ConfigError
from fedsys.models import to_arrays
from fedsys.privacy.ledger import PrivacyLedger
from fedsys.privacy.ledger_schema import DEFAULT_BUDGET_KEY

CLIENT_CANARY_FILE = "client-canaries.npz"  # the auditor's copy: directions and inclusion bits
HOLDER_CANARY_FILE = "client-canaries-holders.npz"  # what the simulated holders read: included only
COHORT_ALIGNMENT = "cohort-alignment"
UPDATE_ALIGNMENT = "update-alignment"
NO_DP_NOISE = 0.01  # "DP off": the aggregate noise multiplier (noise 1% of the clipping norm)
NO_DP_BUDGET = 1e12


def is_client_level(config: RunConfig) -> bool:
    """Whether ``config`` is client-level distributed DP (what this audit audits)."""
    return config.dp.mode == "distributed" and config.dp.level == "client"


def gaussian_fit_epsilon(scores: NDArray[np.float64], included: NDArray[np.bool_], *, delta: float) -> float:
    """Andrew et al.'s Gaussian-fit epsilon estimate (an estimate, not a bound).

    Fits one Gaussian to the included canaries' scores and one to the excluded ones' (pooled
    variance), and returns the epsilon at ``delta`` of the Gaussian mechanism whose shift is the
    fitted separation ``mu = (mean_in - mean_out) / sd``: the smallest eps with
    ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) <= delta`` (Balle & Wang, ICML 2018, Thm 8).
    0 when the included scores are not higher; needs at least two canaries on each side.

    Raises:
        ConfigError: fewer than two canaries on either side, or ``delta`` not in (0, 1).
    """
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    inside, outside = scores[included], scores[~included]
    if inside.size < 2 or outside.size < 2:
        raise ConfigError(
            f"the Gaussian fit needs two canaries included and two excluded, got {inside.size}/{outside.size}"
        )
    pooled = ((inside.size - 1) * inside.var(ddof=1) + (outside.size - 1) * outside.var(ddof=1)) / (
        inside.size + outside.size - 2
    )
    if pooled <= 0:
        return math.inf if inside.mean() > outside.mean() else 0.0
    mu = float((inside.mean() - outside.mean()) / math.sqrt(pooled))
    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:
        return (
            float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))
            - delta
        )

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0 and high < 1e4:
        high *= 2
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-10))


def contributed_rounds(run_dir: Path, partition: int) -> list[int]:
    """The rounds ``partition`` contributed to, as its ledger records them (the server's cohorts)."""
    path = run_dir / "ledgers" / f"client-{partition:05d}.sqlite"
    if not path.exists():
        return []
    ledger = PrivacyLedger.open(path)
    try:
        return sorted({int(e.round) for e in ledger.entries(DEFAULT_BUDGET_KEY) if e.status == "committed"})
    finally:
        ledger.close()


def client_scores(
    releases: dict[int, NDArray[np.float64]], canary_set: ClientCanaries, cohorts: list[list[int]]
) -> dict[str, NDArray[np.float64]]:
    """Both attacks' scores from the flat released models (round -> weights; round 0 = initial)."""
    rounds = sorted(releases)
    steps = {t: releases[t] - releases[prev] for prev, t in zip(rounds, rounds[1:], strict=False)}
    cohort = np.array(
        [
            sum(float(steps[t] @ u) for t in rounds_in if t in steps)
            for u, rounds_in in zip(canary_set.directions, cohorts, strict=True)
        ]
    )
    total = releases[rounds[-1]] - releases[rounds[0]]
    return {COHORT_ALIGNMENT: cohort, UPDATE_ALIGNMENT: canary_set.directions @ total}


def audit_config(config: RunConfig, *, no_dp: bool) -> RunConfig:
    """The scenario as audited: a checkpoint every round; "DP off" as described in the module."""
    config = config.replace({"checkpoint-every": 1})
    if no_dp:
        config = config.replace(
            {
                "dp.noise-multiplier": NO_DP_NOISE,
                "dp.target-epsilon": 0.0,
                "budget.max-epsilon": NO_DP_BUDGET,
            }
        )
    return config


def audit_client_level(
    config: RunConfig,
    out_dir: Path,
    *,
    canaries: int | None = None,
    confidence: float = 0.95,
    audit_seed: int | None = None,
    no_dp: bool = False,
) -> AuditResult:
    """Simulate ``config`` with canary clients into ``out_dir`` and audit it at client level.

    Args:
        config: A client-level distributed-DP scenario (see :func:`is_client_level`).
        out_dir: The run directory (config.toml, metrics, ledgers, canary files, audit.json).
        canaries: m (default: every simulated client is a canary slot).
        confidence: 1 - beta.
        audit_seed: Seeds the canary slots, directions and inclusion bits (None: OS entropy).
        no_dp: Audit with negligible noise (attack power; see the module docstring).

    Raises:
        ConfigError: not a client-level scenario, ``confidence`` or ``canaries`` out of range, or
            the run released no global model.
    """
    from simulations.harness import run_scenario

    if not is_client_level(config):
        raise ConfigError(
            'the client-level audit needs dp.mode = "distributed" and dp.level = "client", '
            f"got mode {config.dp.mode!r}, level {config.dp.level!r}"
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}")
    started = time.perf_counter()
    config = audit_config(config, no_dp=no_dp)
    initial = to_arrays(_initial_model(config))
    names = list(initial)
    holders = config.simulation.num_clients
    canary_set = make_client_canaries(
        count=canaries if canaries is not None else holders,
        names=names,
        dim=sum(int(a.size) for a in initial.values()),
        holders=holders,
        rng=np.random.default_rng(audit_seed),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    canary_set.save(out_dir / CLIENT_CANARY_FILE)
    holder_file = canary_set.save(out_dir / HOLDER_CANARY_FILE, holders_only=True)

    def flat(weights: dict[str, np.ndarray]) -> NDArray[np.float64]:
        return np.concatenate([np.asarray(weights[k], dtype=np.float64).ravel() for k in names])

    releases = {0: flat(initial)}

    def collect(record: dict[str, Any]) -> None:
        if record.get("status") == "ok":
            releases[int(record["round"])] = flat(load_checkpoint(out_dir.resolve()).weights)

    run_scenario(
        config,
        out_dir,
        on_round=collect,
        holder_extras={"audit-client-canaries": str(holder_file.resolve())},
    )
    if len(releases) < 2:
        raise ConfigError("the run released no global model; nothing to audit")
    return judge_client_run(
        releases,
        canary_set,
        config,
        out_dir,
        confidence=confidence,
        no_dp=no_dp,
        seed=audit_seed,
        seconds=time.perf_counter() - started,
    )


def judge_client_run(
    releases: dict[int, NDArray[np.float64]],
    canary_set: ClientCanaries,
    config: RunConfig,
    run_dir: Path,
    *,
    confidence: float,
    no_dp: bool,
    seed: int | None,
    seconds: float,
) -> AuditResult:
    """Score the canaries against a run's released models (``releases``: round -> flat weights,
    round 0 the initial model) over the rounds each canary's holder took part in, and judge them;
    the result carries Andrew et al.'s Gaussian-fit estimate beside the bound."""
    cohorts = [contributed_rounds(run_dir.resolve(), int(p)) for p in canary_set.partitions]
    scores = client_scores(releases, canary_set, cohorts)
    result = judge(
        scores,
        canary_set,
        epsilon=math.inf if no_dp else claimed_epsilon(config, run_dir),
        delta=config.budget.target_delta,
        confidence=confidence,
        setting="federated-client",
        dp=not no_dp,
        seed=seed,
        seconds=seconds,
    )
    estimate = gaussian_fit_epsilon(
        scores[COHORT_ALIGNMENT], canary_set.included, delta=config.budget.target_delta
    )
    return result.with_estimate(estimate, level="client")
