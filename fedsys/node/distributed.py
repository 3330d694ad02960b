"""A data holder's distributed-DP round (``dp.mode = "distributed"``): one DP-FedSGD step.

The holder reserves the round in its own ledger (charged with the aggregate noise it relies on,
:func:`fedsys.privacy.distributed_round.round_segment`), Poisson-samples its records, computes
their gradients at the global weights and encodes them with its secret Skellam noise share
(:mod:`fedsys.secagg.ddp`). The result leaves the holder only masked by SecAgg+.

Randomness: at a real holder, record sampling and rounding use fresh OS entropy and the noise a
ChaCha20 generator keyed from the OS; nothing the server sends can shape them. A simulated
virtual client derives them from the scenario's seed (reproducible, not for protecting data).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from fedsys.config import RunConfig
from fedsys.data import ClientData
from fedsys.errors import BudgetExceededError
from fedsys.models import build_model, load_weights, to_arrays
from fedsys.node.settings import HolderSettings
from fedsys.node.update import _ledger, holder_budget, local_data
from fedsys.privacy import fingerprint_dataset
from fedsys.privacy.budget import budget_epsilon
from fedsys.privacy.distributed_round import (
    holder_encoding,
    holder_sample_rate,
    local_epsilon,
    rotation_seed,
    round_segment,
)
from fedsys.privacy.fedsgd import per_example_gradients, poisson_sample
from fedsys.secagg import SetupRequest
from fedsys.secagg.ddp import (
    DdpEncoding,
    add_noise_share,
    encode_client_update,
    encode_records,
    secure_noise_generator,
)
from fedsys.training import planned_steps, train_plain

log = logging.getLogger("fedsys")


@dataclass(frozen=True)
class DistributedUpdate:
    """A holder's answer in distributed mode: its noisy encoded vector, or why there is none."""

    status: str  # "ok" or "budget-exhausted"
    encoded: NDArray[np.uint64] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def round_encoding(config: RunConfig, settings: HolderSettings, setup: SetupRequest, dim: int) -> DdpEncoding:
    """This holder's encoding for the round the server set up (see :func:`holder_encoding`), with
    the holder's own local noise floor.

    Raises:
        ConfigError: the server's scale or ring size is out of range.
    """
    return holder_encoding(
        config,
        dim=dim,
        gamma=setup.integer_scale,
        ring_bits=setup.ring_bits,
        threshold=setup.threshold,
        participants=len(setup.neighbours) + 1,
        local_noise_multiplier=settings.policy.local_noise_multiplier,
    )


def precheck_distributed(
    config: RunConfig, settings: HolderSettings, setup: SetupRequest, dim: int
) -> tuple[str, float]:
    """Would one more distributed round fit the holder's budget? Reads no example, reserves nothing.

    Returns:
        ``("", epsilon_spent)`` when it fits, else ``(reason, epsilon_spent)``.
    """
    data = local_data(config, settings)
    enc = round_encoding(config, settings, setup, dim)
    segment = round_segment(enc, holder_sample_rate(config, len(data.train)))
    budget = holder_budget(settings)
    ledger = _ledger(settings)
    try:
        prior = ledger.history(settings.dataset_name)
    finally:
        ledger.close()
    spent = budget_epsilon(prior, budget)
    after = budget_epsilon([*prior, segment], budget)
    if after > budget.max_epsilon:
        return (
            f"a distributed-DP round would reach epsilon {after:.4g} > budget {budget.max_epsilon:g}",
            spent,
        )
    return "", spent


def _generators(
    config: RunConfig, settings: HolderSettings, server_round: int
) -> tuple[torch.Generator, np.random.Generator, np.random.Generator]:
    """Record sampling, rounding and noise randomness (see the module docstring)."""
    if not settings.simulated:
        sampling = torch.Generator().manual_seed(secrets.randbits(63))
        return sampling, np.random.default_rng(secrets.randbits(128)), secure_noise_generator()
    digest = hashlib.sha256(f"ddp/{config.seed}/{settings.partition_id}/{server_round}".encode()).digest()
    seeds = [int.from_bytes(digest[i : i + 8], "little") for i in (0, 8, 16)]
    sampling = torch.Generator().manual_seed(seeds[0] >> 1)
    return sampling, np.random.default_rng(seeds[1]), np.random.default_rng(seeds[2])


def _local_update(
    model: torch.nn.Module,
    data: ClientData,
    config: RunConfig,
    global_arrays: dict[str, np.ndarray],
    names: list[str],
    generator: torch.Generator,
) -> NDArray[np.float64]:
    """Client level: train without per-record noise; the whole update is clipped and noised later."""
    steps = planned_steps(
        len(data.train),
        batch_size=config.train.batch_size,
        local_epochs=config.train.local_epochs,
        local_steps=config.train.local_steps,
    )
    train_plain(
        model,
        data.train,
        lr=config.train.lr,
        momentum=config.train.momentum,
        batch_size=config.train.batch_size,
        steps=steps,
        proximal_mu=config.train.proximal_mu,
        device=torch.device("cpu"),
        generator=generator,
    )
    trained = to_arrays(model.cpu())
    return np.concatenate([(trained[k] - global_arrays[k]).astype(np.float64).ravel() for k in names])


def canary_update(
    config: RunConfig, settings: HolderSettings, names: list[str]
) -> NDArray[np.float64] | None:
    """Simulation only (``fedsys audit``, client level): a canary client's fixed update; else None.

    An included canary slot sends its secret unit direction scaled to ``dp.max-grad-norm``
    instead of training (:mod:`fedsys.audit.client_canaries`); it is then clipped, encoded,
    noised and masked like every other update. A real holder never plays a canary: it is not
    a virtual client, and the file comes only from the holder's own settings (a server-sent
    ``audit-client-canaries`` is dropped by :func:`fedsys.node.handlers.server_config`).
    """
    if not (settings.simulated and config.audit_client_canaries) or settings.partition_id is None:
        return None
    from fedsys.audit.client_canaries import canary_direction

    direction = canary_direction(Path(config.audit_client_canaries), settings.partition_id, names)
    return None if direction is None else direction * config.dp.max_grad_norm


def distributed_update(
    config: RunConfig,
    settings: HolderSettings,
    global_arrays: dict[str, np.ndarray],
    *,
    setup: SetupRequest,
    server_round: int,
    run_id: str,
) -> DistributedUpdate:
    """Reserve the round, then sample, compute and encode this holder's noisy gradient sum.

    Raises:
        ModelError: the global weights do not fit the local model.
        ConfigError: the server's encoding parameters are out of range.
        LedgerError: the ledger cannot be read or written (nothing is sent).
    """
    data = local_data(config, settings)
    names = list(global_arrays)
    sizes = [int(global_arrays[k].size) for k in names]
    enc = round_encoding(config, settings, setup, sum(sizes))
    sample_rate = holder_sample_rate(config, len(data.train))
    segment = round_segment(enc, sample_rate)
    budget = holder_budget(settings)
    ledger = _ledger(settings)
    try:
        try:
            reservation = ledger.reserve_distributed_round(
                budget_key=settings.dataset_name,
                fingerprint=fingerprint_dataset(data.train.x, data.train.y),
                run_id=run_id,
                server_round=server_round,
                segment=segment,
                budget=budget,
            )
        except BudgetExceededError as err:
            spent = budget_epsilon(ledger.history(settings.dataset_name), budget)
            return DistributedUpdate(status="budget-exhausted", metrics={"epsilon": spent}, reason=str(err))
        # From here on data is read; any exception leaves the reservation open (fail closed).
        model = build_model(
            config.model, data.train.feature_shape, data.train.num_classes, fix=config.fix_model
        )
        load_weights(model, global_arrays, source="server")
        model.train()
        sampling, rounding, noise = _generators(config, settings, server_round)
        seed = rotation_seed(run_id, server_round)
        if config.dp.level == "client":
            delta = canary_update(config, settings, names)
            if delta is None:
                delta = _local_update(model, data, config, global_arrays, names, sampling)
            encoded = encode_client_update(delta, enc, rotation_seed=seed, rng=rounding, noise_rng=noise)
        else:
            batch = poisson_sample(len(data.train), sample_rate, sampling)
            x, y = data.train.to_torch().tensors
            grads = per_example_gradients(model, x[batch], y[batch], order=names, sizes=sizes)
            summed = encode_records(grads, enc, rotation_seed=seed, rng=rounding)
            encoded = add_noise_share(summed, enc, noise_rng=noise)
        ledger.commit(reservation.entry_id, actual_steps=1, epsilon_after=reservation.epsilon_after)
        # this run's Skellam entries, an open reservation of an earlier failed attempt included
        entries = ledger.entries(settings.dataset_name)
        rounds = sum(1 for e in entries if e.run_id == run_id and e.mechanism == "skellam")
    finally:
        ledger.close()
    alone = local_epsilon(enc, sample_rate, rounds, budget.target_delta)
    log.info(
        "round %d: epsilon %.4g; this run's %d vector(s) of this holder alone, if SecAgg+ failed: %.4g",
        server_round,
        reservation.epsilon_after,
        rounds,
        alone,
    )
    return DistributedUpdate(
        status="ok",
        encoded=encoded,
        metrics={"epsilon": reservation.epsilon_after, "steps": 1.0, "ddp-local-epsilon": alone},
    )
