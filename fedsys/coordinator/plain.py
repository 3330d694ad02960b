"""A plaintext round: clients send their deltas in the clear, the server averages them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsys.config import RunConfig
from fedsys.coordinator.messaging import exchange
from fedsys.coordinator.round import RoundOutcome, refusal_code
from fedsys.errors import AbortedRoundError, FedsysError, ModelError, ProtocolError
from fedsys.evaluation import EvaluationSums, sums_from_metrics
from fedsys.models import check_weights
from fedsys.strategy import check_step, weighted_mean
from fedsys.wire import (
    ARRAYS,
    CONFIG,
    DECLINED,
    METRICS,
    STATUS_OK,
    epsilon_metric,
    metric,
    optional_metric,
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
    num_classes: int = 0,
) -> RoundOutcome:
    """Send the global weights, collect deltas, and average them by example count.

    With ``num_classes`` (federated evaluation) the replies' evaluation sums of the global weights,
    from holders whose policy lets them leave in plaintext, are added up into ``outcome.evaluation``.
    """
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
        try:
            reply = parse_train_reply(
                ex.replies[node],
                node,
                weights,
                max_weight=config.secagg.max_weight,
                num_classes=num_classes,
                loss_bound=config.evaluation.loss_bound,
                noisy=config.evaluation.noise_multiplier > 0,
            )
        except FedsysError as err:
            log.warning("round %d: dropping the reply of node %d: %s", rnd, node, err)
            outcome.failed.append(node)
            continue
        if reply.epsilon is not None:
            outcome.epsilons[node] = reply.epsilon
        if reply.evaluation is not None:
            outcome.evaluation = (
                reply.evaluation + outcome.evaluation if outcome.evaluation else reply.evaluation
            )
        if reply.delta is None:
            log.warning("round %d: node %d declined: %s", rnd, node, reply.reason or reply.status)
            outcome.declined.append(node)
            outcome.refusals[node] = refusal_code(reply.status, reply.reason)
            continue
        deltas.append(reply.delta)
        counts.append(reply.num_examples)
        if reply.train_loss is not None:
            outcome.train_losses.append(reply.train_loss)
        outcome.succeeded.append(node)
    if len(deltas) < config.sampling.min_clients:
        outcome.status = "abandoned"
        declined = f"; {outcome.declined_summary()}" if outcome.declined else ""
        outcome.message = (
            f"only {len(deltas)} of {len(sampled)} sampled client(s) returned an update "
            f"(sampling.min-clients = {config.sampling.min_clients}){declined}; global model unchanged"
        )
        log.warning("round %d abandoned: %s", rnd, outcome.message)
        return outcome
    t0 = time.perf_counter()
    try:
        delta = weighted_mean(deltas, counts)
        check_step(weights, delta)
    except AbortedRoundError as err:
        outcome.status, outcome.message = "abandoned", f"{err}; global model unchanged"
        log.warning("round %d abandoned: %s", rnd, outcome.message)
        return outcome
    outcome.delta = delta
    outcome.aggregate_seconds = time.perf_counter() - t0
    return outcome


@dataclass(frozen=True)
class TrainReply:
    """A node's parsed plaintext reply: an update (``delta`` set) or a refusal (``delta`` None)."""

    status: str
    reason: str = ""
    delta: dict[str, np.ndarray] | None = None
    num_examples: float = 1.0
    epsilon: float | None = None
    train_loss: float | None = None
    evaluation: EvaluationSums | None = None


def parse_train_reply(
    reply: Message,
    node: int,
    expected: Mapping[str, np.ndarray],
    *,
    max_weight: float,
    num_classes: int = 0,
    loss_bound: float = 0.0,
    noisy: bool = False,
) -> TrainReply:
    """Parse one node's training reply at the boundary, trusting nothing in it.

    A refusal may carry the node's epsilon; an update must carry float arrays, finite and shaped like
    ``expected``, and a ``num-examples`` in (0, max_weight] (``secagg.max-weight``, the public bound
    on one client's weight that SecAgg+ uses too). A holder that keeps its size private sends none:
    its update weighs as one example. With ``num_classes``, ``eval-sum-*`` metrics (optional) must be
    consistent sums of at most ``max_weight`` examples (:func:`fedsys.evaluation.sums_from_metrics`).

    Raises:
        ProtocolError, ModelError: the reply is malformed, from another sender, or out of range.
    """
    if reply.metadata.src_node_id != node:
        raise ProtocolError(f"reply to node {node} comes from node {reply.metadata.src_node_id}")
    metrics = dict(reply.content.metric_records.get(METRICS, {}))
    epsilon = epsilon_metric(metrics)
    status = status_of(reply)
    if status in DECLINED:
        return TrainReply(status=status, reason=reason_of(reply), epsilon=epsilon)
    if status != STATUS_OK:
        raise ProtocolError(f"unknown status {status!r}")
    evaluation = None
    if num_classes:
        evaluation = sums_from_metrics(
            metrics, num_classes=num_classes, loss_bound=loss_bound, max_examples=max_weight, noisy=noisy
        )
    num_examples = metric(metrics, "num-examples", 1.0)
    if not 0 < num_examples <= max_weight:
        raise ProtocolError(f"num-examples must be in (0, {max_weight}], got {num_examples}")
    delta = require_arrays(reply)
    check_weights(expected, delta, source=f"node {node}")
    return TrainReply(
        status=status,
        delta=_as_model_dtype(delta, expected, node),
        num_examples=num_examples,
        epsilon=epsilon,
        train_loss=optional_metric(metrics, "train-loss"),
        evaluation=evaluation,
    )


def _as_model_dtype(
    delta: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], node: int
) -> dict[str, np.ndarray]:
    """The (finite) delta in the model's dtypes; a value beyond their range is the sender's error."""
    out = {}
    for name, value in delta.items():
        limit = float(np.finfo(expected[name].dtype).max)
        if value.size and float(np.max(np.abs(value))) > limit:
            raise ModelError(f"weights from node {node}: {name} exceeds the {expected[name].dtype} range")
        out[name] = value.astype(expected[name].dtype)
    return out


def plain_evaluation(
    grid: Grid,
    config: RunConfig,
    assignment: Mapping[int, str],
    weights: dict[str, np.ndarray],
    rnd: int,
    run_id: str,
    *,
    simulated: bool,
    num_classes: int,
) -> RoundOutcome:
    """Ask the nodes only to score ``weights`` and add up the sums they send in plaintext.

    Only holders whose policy is ``share-evaluation = "plain"`` answer with sums; the others decline
    (counted, not failed). A malformed reply drops its sender.
    """
    from fedsys.node.handlers import EVALUATE_ACTION, EVALUATE_ONLY

    configs = round_configs(config, assignment, rnd, run_id, simulated=simulated)
    sampled = list(assignment)
    ex = exchange(
        grid,
        {
            n: RecordDict(
                {ARRAYS: to_record(weights), CONFIG: ConfigRecord({**dict(configs[n]), EVALUATE_ONLY: True})}
            )
            for n in sampled
        },
        message_type=f"{MessageType.TRAIN}.{EVALUATE_ACTION}",
        timeout=config.sampling.round_timeout,
    )
    outcome = RoundOutcome(sampled=sampled, failed=ex.failed)
    for node in (n for n in sampled if n in ex.replies):
        reply = ex.replies[node]
        try:
            if reply.metadata.src_node_id != node:
                raise ProtocolError(f"reply to node {node} comes from node {reply.metadata.src_node_id}")
            if status_of(reply) in DECLINED:
                outcome.declined.append(node)
                outcome.refusals[node] = refusal_code(status_of(reply), reason_of(reply))
                continue
            sums = sums_from_metrics(
                dict(reply.content.metric_records.get(METRICS, {})),
                num_classes=num_classes,
                loss_bound=config.evaluation.loss_bound,
                max_examples=config.secagg.max_weight,
                noisy=config.evaluation.noise_multiplier > 0,
            )
        except FedsysError as err:
            log.warning("final evaluation: dropping the reply of node %d: %s", node, err)
            outcome.failed.append(node)
            continue
        if sums is not None:
            outcome.succeeded.append(node)
            outcome.evaluation = sums + outcome.evaluation if outcome.evaluation else sums
    return outcome
