"""A plaintext round: clients send their deltas in the clear, the server averages them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
from flwr.app import ConfigRecord, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsys.config import RunConfig
from fedsys.coordinator.messaging import exchange
from fedsys.coordinator.round import RoundOutcome
from fedsys.errors import ModelError, ProtocolError
from fedsys.models import check_weights
from fedsys.strategy import weighted_mean
from fedsys.wire import (
    ARRAYS,
    CONFIG,
    DECLINED,
    METRICS,
    STATUS_OK,
    metric,
    reason_of,
    require_arrays,
    status_of,
    to_record,
)

log = logging.getLogger("fedsys")


def round_config(config: RunConfig, rnd: int, run_id: str, client_key: str | None = None) -> ConfigRecord:
    """The run config plus round and run id, as sent to clients.

    ``client_key`` is the partition a virtual node plays (simulation only; a real data holder's
    node ignores it and trains on its own data).
    """
    shared = {
        k: v for k, v in config.to_flat().items() if not k.startswith(("budget.", "ledger-dir", "out-dir"))
    }
    extra = {} if client_key is None else {"partition-id": int(client_key)}
    return ConfigRecord({**shared, "server-round": rnd, "run-id": run_id, **extra})


def round_configs(
    config: RunConfig, assignment: Mapping[int, str], rnd: int, run_id: str, *, simulated: bool
) -> dict[int, ConfigRecord]:
    """Each sampled node's config record (with its partition in simulation)."""
    if not simulated:
        shared = round_config(config, rnd, run_id)
        return {node: shared for node in assignment}
    return {node: round_config(config, rnd, run_id, key) for node, key in assignment.items()}


def plain_round(
    grid: Grid,
    config: RunConfig,
    assignment: Mapping[int, str],
    weights: dict[str, np.ndarray],
    rnd: int,
    run_id: str,
    *,
    simulated: bool,
) -> RoundOutcome:
    """Send the global weights, collect deltas, and average them by example count."""
    arrays = to_record(weights)
    configs = round_configs(config, assignment, rnd, run_id, simulated=simulated)
    sampled = list(assignment)
    started = time.perf_counter()
    ex = exchange(
        grid,
        {n: RecordDict({ARRAYS: arrays, CONFIG: configs[n]}) for n in sampled},
        message_type=MessageType.TRAIN,
        timeout=config.sampling.round_timeout,
    )
    outcome = RoundOutcome(sampled=sampled, failed=ex.failed, train_seconds=time.perf_counter() - started)
    for node, reason in ex.errors.items():
        log.warning("round %d: node %d failed: %s", rnd, node, reason)
    deltas, counts = [], []
    # Visit replies in sampling order (stable across runs; Flower's node ids are random),
    # so floating-point sums, and hence the run, are reproducible.
    for node in (n for n in sampled if n in ex.replies):
        reply = ex.replies[node]
        metrics = dict(reply.content.metric_records.get(METRICS, {}))
        if "epsilon" in metrics:
            outcome.epsilons[node] = metric(metrics, "epsilon")
        status = status_of(reply)
        if status in DECLINED:
            log.warning("round %d: node %d declined: %s", rnd, node, reason_of(reply) or status)
            outcome.declined.append(node)
            continue
        try:
            if status != STATUS_OK:
                raise ProtocolError(f"unknown status {status!r}")
            delta = require_arrays(reply)
            check_weights(weights, delta, source=f"node {node}")
        except (ModelError, ProtocolError) as err:
            log.warning("round %d: dropping the update of node %d: %s", rnd, node, err)
            outcome.failed.append(node)
            continue
        deltas.append(delta)
        # a holder that keeps its size private sends none: its update weighs as one example
        counts.append(metric(metrics, "num-examples", 1.0))
        if "train-loss" in metrics:
            outcome.train_losses.append(metric(metrics, "train-loss"))
        outcome.succeeded.append(node)
    if len(deltas) < config.sampling.min_clients:
        outcome.status = "abandoned"
        outcome.message = (
            f"only {len(deltas)} of {len(sampled)} sampled client(s) returned an update "
            f"(sampling.min-clients = {config.sampling.min_clients}); global model unchanged"
        )
        log.warning("round %d abandoned: %s", rnd, outcome.message)
        return outcome
    t0 = time.perf_counter()
    outcome.delta = weighted_mean(deltas, counts)
    outcome.aggregate_seconds = time.perf_counter() - t0
    return outcome
