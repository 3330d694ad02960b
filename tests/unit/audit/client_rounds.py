"""Client-level distributed-DP rounds in-process, for cheap audit tests (no Ray, no Flower).

Each round the server samples a cohort of simulated partitions; each member runs the real
holder round (:func:`fedsys.node.distributed.distributed_update`: ledger, local training or its
canary direction, clipping, rotation, rounding, Skellam share), the encoded vectors are summed in
the ring (what SecAgg+ releases: the masks cancel, tested in tests/unit/secagg) and the server
takes the real DP-FedAvg step (:func:`fedsys.coordinator.secure._fedsgd_step`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsys.audit.client_canaries import ClientCanaries, make_client_canaries
from fedsys.audit.client_level import (
    HOLDER_CANARY_FILE,
    audit_config,
    judge_client_run,
)
from fedsys.audit.federated import _initial_model
from fedsys.audit.result import AuditResult
from fedsys.config import RunConfig
from fedsys.coordinator.secure import _fedsgd_step
from fedsys.models import to_arrays
from fedsys.node.distributed import distributed_update
from fedsys.node.settings import holder_settings
from fedsys.privacy.distributed_round import round_threshold, server_encoding
from fedsys.secagg import SetupRequest
from fedsys.secagg.prg import ring_mask
from fedsys.secagg.primitives import RoundContext

RUN_ID = "00aa"


def _setup(
    enc_gamma: float, ring_bits: int, threshold: int, cohort: int, length: int, rnd: int
) -> SetupRequest:
    return SetupRequest(
        context=RoundContext(run_id=0, round=rnd),
        recipient=1,
        neighbours=tuple(range(2, cohort + 1)),
        threshold=threshold,
        ring_bits=ring_bits,
        quant_bits=16,
        clip_range=8.0,
        vector_length=length,
        max_weight=1000.0,
        integer_input=True,
        integer_scale=enc_gamma,
    )


def run_client_level(config: RunConfig, run_dir: Path, canaries: ClientCanaries) -> dict[int, np.ndarray]:
    """Run ``config``'s rounds with ``canaries`` at the holders; the flat released models by round."""
    holder_file = canaries.save(run_dir / HOLDER_CANARY_FILE, holders_only=True)
    config = config.replace(
        {"ledger-dir": str(run_dir / "ledgers"), "audit-client-canaries": str(holder_file)}
    )
    weights = to_arrays(_initial_model(config))
    names = list(weights)
    dim = sum(int(a.size) for a in weights.values())
    cohort = config.sampling.clients_per_round
    threshold = round_threshold(config, cohort)
    enc = server_encoding(config, dim=dim, threshold=threshold, participants=cohort)
    rng = np.random.default_rng(config.seed)
    flat = {0: np.concatenate([weights[k].astype(np.float64).ravel() for k in names])}
    for rnd in range(1, config.num_rounds + 1):
        setup = _setup(enc.gamma, enc.ring_bits, threshold, cohort, enc.padded_dim, rnd)
        total = np.zeros(enc.padded_dim, dtype=np.uint64)
        for pid in rng.choice(config.simulation.num_clients, size=cohort, replace=False):
            settings = holder_settings({"partition-id": 0, "num-partitions": 1}, config, partition=int(pid))
            update = distributed_update(
                config, settings, weights, setup=setup, server_round=rnd, run_id=RUN_ID
            )
            assert update.encoded is not None, update.reason
            total = (total + update.encoded) & ring_mask(enc.ring_bits)
        step = _fedsgd_step(total, enc, weights, config, RUN_ID, rnd, cohort)
        weights = {k: (weights[k] + step[k]).astype(np.float32) for k in names}
        flat[rnd] = np.concatenate([weights[k].astype(np.float64).ravel() for k in names])
    return flat


def audit_in_process(
    config: RunConfig, run_dir: Path, *, canaries: int, audit_seed: int = 0, no_dp: bool = False
) -> AuditResult:
    """The client-level audit of ``config`` over :func:`run_client_level` (0.95 confidence)."""
    from simulations.harness import distributed_noise

    config = distributed_noise(audit_config(config, no_dp=no_dp).replace({"out-dir": str(run_dir)}))
    model = to_arrays(_initial_model(config))
    canary_set = make_client_canaries(
        count=canaries,
        names=list(model),
        dim=sum(int(a.size) for a in model.values()),
        holders=config.simulation.num_clients,
        rng=np.random.default_rng(audit_seed),
    )
    releases = run_client_level(config, run_dir, canary_set)
    return judge_client_run(
        releases, canary_set, config, run_dir, confidence=0.95, no_dp=no_dp, seed=audit_seed, seconds=0.0
    )
