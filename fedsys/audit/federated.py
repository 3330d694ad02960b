"""One-run audit of a federated simulation: canaries at the holders, scores from the server's view.

The auditor draws m canaries (:mod:`fedsys.audit.canaries`), each included with probability
1/2 and given to one simulated holder chosen at random, and writes them to
``RUN_DIR/canaries.npz``. Each simulated holder reads its own included canaries through its
*own* settings (``audit-canaries``, passed by the harness beside its budget and ledger, never
in the server's run config: a server-sent value is dropped like its budget keys) and trains on
them like on any other record: the same ServerApp and ClientApp, DP-SGD with its own calibrated
noise, ledger and SecAgg+ as ``fedsys simulate``. Only simulated holders read it (their data
comes from :func:`fedsys.data.federated.simulated_client_data`); a real holder reads its file.

The attacker is the server: it sees the initial model and every released global model (the
per-round checkpoints), nothing else, and scores the canaries from them
(:mod:`fedsys.audit.attacks`). The epsilon it is compared with is the largest epsilon any
holder's own ledger records for the run.

Not audited here: noise replay. Simulated holders seed DP noise from the scenario seed,
partition and round (reproducible simulations), which the server knows by construction; a
replaying server would always win in simulation. Real holders seed from OS entropy; the
in-process guard (:func:`fedsys.audit.central.audit_central`) audits that path.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsys.audit.attacks import Weights, gradient_alignment
from fedsys.audit.canaries import default_canary_count, make_canaries
from fedsys.audit.central import END_TO_END, GRADIENT_ALIGNMENT, PEAK
from fedsys.audit.result import AuditResult, judge
from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.errors import ConfigError
from fedsys.models import build_model, to_arrays
from fedsys.privacy.accounting import compute_epsilon
from fedsys.privacy.central import pooled_training_data
from fedsys.privacy.ledger import PrivacyLedger
from fedsys.privacy.ledger_schema import DEFAULT_BUDGET_KEY

CANARY_FILE = "canaries.npz"


def _initial_model(config: RunConfig) -> torch.nn.Module:
    from fedsys.api import model_signature

    shape, classes = model_signature(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # as the coordinator builds the initial global model
        return build_model(config.model, shape, classes, fix=config.fix_model)


def claimed_epsilon(config: RunConfig, run_dir: Path) -> float:
    """The largest epsilon the simulated holders' own ledgers record (``inf`` without DP).

    Raises:
        ConfigError: DP was on but no ledger was written.
    """
    if not config.dp.enabled:
        return math.inf
    ledgers = sorted((run_dir / "ledgers").glob("client-*.sqlite"))
    if not ledgers:
        raise ConfigError(f"no holder ledger under {run_dir / 'ledgers'}: did any holder train?")
    worst = 0.0
    for path in ledgers:
        ledger = PrivacyLedger.open(path)
        try:
            history = ledger.history(DEFAULT_BUDGET_KEY)
        finally:
            ledger.close()
        if history:
            eps = compute_epsilon(
                history, target_delta=config.budget.target_delta, accountant=config.budget.accountant
            )
            worst = max(worst, eps)
    return worst


def audit_federated(
    config: RunConfig,
    out_dir: Path,
    *,
    canaries: int | None = None,
    confidence: float = 0.95,
    amplitude: float | None = None,
    audit_seed: int | None = None,
) -> AuditResult:
    """Simulate ``config`` with canaries at the holders into ``out_dir`` and audit it.

    Args:
        config: The scenario (``dp.enabled`` decides DP; everything else as ``fedsys simulate``).
        out_dir: The run directory (config.toml, metrics, ledgers, canaries.npz, audit.json).
        canaries: m (default :func:`~fedsys.audit.canaries.default_canary_count`).
        confidence: 1 - beta.
        amplitude: The canaries' feature value (default: :func:`~fedsys.audit.canaries.make_canaries`).
        audit_seed: Seeds canaries and inclusion bits (None: OS entropy).

    Raises:
        ConfigError: ``confidence`` out of range, or the run released fewer than one round.
    """
    from simulations.harness import run_scenario

    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}")
    started = time.perf_counter()
    config = config.replace({"checkpoint-every": 1})
    pooled = pooled_training_data(config)
    m = canaries if canaries is not None else default_canary_count(pooled)
    canary_set = make_canaries(
        pooled,
        count=m,
        rng=np.random.default_rng(audit_seed),
        amplitude=amplitude,
        holders=config.simulation.num_clients,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = canary_set.save(out_dir / CANARY_FILE)
    model = _initial_model(config)
    releases: list[Weights] = [to_arrays(model)]

    def collect(_record: dict[str, Any]) -> None:
        releases.append(load_checkpoint(out_dir.resolve()).weights)

    run_scenario(config, out_dir, on_round=collect, holder_extras={"audit-canaries": str(path.resolve())})
    if len(releases) < 2:
        raise ConfigError("the run released no global model; nothing to audit")
    scores = {
        GRADIENT_ALIGNMENT: gradient_alignment(model, releases, canary_set),
        END_TO_END: gradient_alignment(model, [releases[0], releases[-1]], canary_set),
        PEAK: gradient_alignment(model, releases, canary_set, peak=True),
    }
    return judge(
        scores,
        canary_set,
        epsilon=claimed_epsilon(config, out_dir),
        delta=config.budget.target_delta,
        confidence=confidence,
        setting="federated",
        dp=config.dp.enabled,
        seed=audit_seed,
        seconds=time.perf_counter() - started,
    )
