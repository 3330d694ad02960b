"""A SecAgg+ round on Flower's Message API: four exchanges (five against a malicious server),
and the server learns only the sum.

Stage messages (ClientApp actions ``train.secagg_*``):

1. ``secagg_setup``   round config + SecAgg setup -> public keys (signed in malicious mode), or a refusal
2. ``secagg_share``   peers' public keys -> encrypted Shamir shares for each neighbour
3. ``secagg_mask``    global weights + shares addressed to the client -> masked delta
   ``secagg_consistency`` (``secagg.mode = "malicious"`` only) the survivor set U3 -> the client's
   signature on it (Bonawitz et al. CCS 2017, Fig. 4 round 3)
4. ``secagg_unmask``  who survived / dropped (+ the survivors' signatures) -> the shares needed to
   remove the masks

A node that errors, times out, or sends a malformed reply at any stage counts as dropped.
The server never accepts a plaintext update in this mode: only masked vectors are read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsys.config import RunConfig
from fedsys.coordinator.messaging import Exchange, exchange
from fedsys.coordinator.plain import round_configs
from fedsys.coordinator.round import RoundOutcome, refusal_code
from fedsys.errors import AbortedRoundError, ConfigError, FedsysError, ProtocolError
from fedsys.evaluation import (
    EvaluationSums,
    check_sums,
    decode_section,
    section_length,
    section_ring_bits,
)
from fedsys.models import flatten, unflatten
from fedsys.secagg import (
    AdvertiseKeysReply,
    ConsistencyReply,
    MaskedInputReply,
    RoundContext,
    SecAggParams,
    SecAggServer,
    ShareKeysReply,
    UnmaskReply,
)
from fedsys.wire import (
    ARRAYS,
    CONFIG,
    DECLINED,
    MASKED,
    METRICS,
    SECAGG,
    decode_array,
    epsilon_metric,
    optional_metric,
    reason_of,
    status_of,
    to_record,
)

log = logging.getLogger("fedsys")

ACTIONS = {
    "setup": "train.secagg_setup",
    "share": "train.secagg_share",
    "mask": "train.secagg_mask",
    "consistency": "train.secagg_consistency",
    "unmask": "train.secagg_unmask",
}
_R = TypeVar("_R")

if TYPE_CHECKING:
    from fedsys.secagg.ddp import DdpEncoding


def secagg_params(config: RunConfig, *, num_classes: int = 0, participants: int = 2) -> SecAggParams:
    """The operator's SecAgg+ parameters from the scenario.

    In distributed-DP mode the clients send integer vectors in a ring of ``dp.bits`` bits; the
    scale they encode with is chosen per round, once the threshold is known (:func:`secure_round`).
    With ``num_classes`` (federated evaluation in local mode) each client appends its evaluation
    section (:mod:`fedsys.evaluation`) and the ring is widened so the sections' sum cannot wrap.
    """
    sa = config.secagg
    extra = {}
    if num_classes and config.dp.mode != "distributed":
        extra = {
            "extra_length": section_length(num_classes),
            "min_ring_bits": section_ring_bits(
                num_clients=participants,
                max_examples=sa.max_weight,
                loss_bound=config.evaluation.loss_bound,
                noise_multiplier=config.evaluation.noise_multiplier,
            ),
        }
    return SecAggParams(
        **extra,
        integer_ring_bits=config.dp.bits if config.dp.mode == "distributed" else None,
        max_weight=sa.max_weight,
        clip_range=sa.clip_range,
        quant_bits=sa.quant_bits,
        degree=sa.degree or None,
        threshold=sa.threshold or None,
        min_survivors=max(config.sampling.min_clients, 2),
        mode=sa.mode,
    )


def secure_round(
    grid: Grid,
    config: RunConfig,
    assignment: Mapping[int, str],
    weights: dict[str, np.ndarray],
    rnd: int,
    run_id: str,
    *,
    simulated: bool,
    num_classes: int = 0,
    evaluate_only: bool = False,
) -> RoundOutcome:
    """Run one SecAgg+ round over the sampled nodes and return the securely averaged delta.

    With ``num_classes`` the clients also append the federated-evaluation sums of ``weights``;
    with ``evaluate_only`` they send only those (an integer-input round: nothing trained, no
    budget spent), for the final model.
    """
    sampled = list(assignment)
    ids = {node: i + 1 for i, node in enumerate(sampled)}
    nodes = {i: node for node, i in ids.items()}
    if len(sampled) < 2:
        return RoundOutcome(
            sampled=sampled,
            status="abandoned",
            message=f"secure aggregation needs at least 2 sampled clients, got {len(sampled)}",
        )
    dim = len(flatten(weights))
    distributed = config.dp.mode == "distributed"
    if distributed:  # imported here: a plain run's server never loads the distributed-DP stack
        from fedsys.privacy.distributed_round import server_encoding
        from fedsys.secagg.ddp_bounds import padded_dim_for
    try:
        params = secagg_params(
            config, num_classes=0 if evaluate_only else num_classes, participants=len(nodes)
        )
    except ConfigError as err:  # the evaluation sums could wrap the ring: train without them
        log.warning("round %d: federated evaluation left out: %s", rnd, err)
        params = secagg_params(config)
    try:
        if evaluate_only:  # an integer-input round whose whole vector is the evaluation section
            dim = section_length(num_classes)
            bits = section_ring_bits(
                num_clients=len(nodes),
                max_examples=config.secagg.max_weight,
                loss_bound=config.evaluation.loss_bound,
                noise_multiplier=config.evaluation.noise_multiplier,
            )
            params = replace(params, integer_ring_bits=bits, integer_scale=0.0)
    except ConfigError as err:
        return RoundOutcome(sampled=sampled, status="abandoned", message=f"federated evaluation: {err}")
    server = SecAggServer(
        list(nodes),
        context=RoundContext(run_id=secagg_run_id(run_id), round=rnd),
        vector_length=padded_dim_for(dim) if distributed and not evaluate_only else dim,
        params=params,
    )
    outcome = RoundOutcome(sampled=sampled)
    encoding = None
    if distributed and not evaluate_only:
        try:
            encoding = server_encoding(config, dim=dim, threshold=server.threshold, participants=len(nodes))
        except ConfigError as err:
            return RoundOutcome(sampled=sampled, status="abandoned", message=f"distributed DP: {err}")
        server.params = replace(server.params, integer_scale=encoding.gamma)
    configs = round_configs(config, assignment, rnd, run_id, simulated=simulated)
    if evaluate_only:
        from fedsys.node.handlers import EVALUATE_ONLY

        configs = {n: ConfigRecord({**dict(c), EVALUATE_ONLY: True}) for n, c in configs.items()}
    timeout = config.secagg.stage_timeout
    started = time.perf_counter()

    def send(
        stage: str, requests: Mapping[int, Any], extra: Mapping[str, Any] | None = None, wait: float = timeout
    ) -> Exchange:
        contents = {}
        for u, request in requests.items():
            content = RecordDict({SECAGG: ConfigRecord(request.to_record()), **(extra or {})})
            if stage in ("setup", "mask"):
                content[CONFIG] = configs[nodes[u]]
            contents[nodes[u]] = content
        ex = exchange(grid, contents, message_type=ACTIONS[stage], timeout=wait)
        for node, reason in ex.errors.items():
            log.warning("round %d, secagg %s: node %d failed: %s", rnd, stage, node, reason)
        _note_failures(outcome, ex)
        return ex

    try:
        _run_stages(server, send, ids, outcome, weights, config, encoding, run_id=run_id, rnd=rnd)
    except (AbortedRoundError, ProtocolError) as err:
        # the refusals come first: they are the cause that a survivor count alone hides
        cause = f"{outcome.declined_summary()}; " if outcome.declined else ""
        outcome.status = "abandoned"
        outcome.message = f"secure aggregation aborted, nothing released: {cause}{err}"
        outcome.failed = sorted({n for n in sampled if n not in outcome.declined})
        log.warning("round %d abandoned: %s", rnd, outcome.message)
        return outcome
    outcome.train_seconds = time.perf_counter() - started - outcome.aggregate_seconds
    return outcome


def _run_stages(
    server: SecAggServer,
    send: Callable[..., Exchange],
    ids: Mapping[int, int],
    outcome: RoundOutcome,
    weights: dict[str, np.ndarray],
    config: RunConfig,
    encoding: DdpEncoding | None,
    *,
    run_id: str,
    rnd: int,
) -> None:
    nodes = {i: node for node, i in ids.items()}
    ex = send("setup", server.setup_requests())
    for node, reply in ex.replies.items():
        if status_of(reply) in DECLINED:
            _note_refusal(outcome, node, reply)
    keys = _parse(ex, ids, AdvertiseKeysReply.from_record, skip=set(outcome.declined) | set(outcome.failed))
    shares = _parse(send("share", server.receive_keys(keys)), ids, ShareKeysReply.from_record)
    mask_requests = server.receive_shares(shares)
    ex = send(
        "mask",
        mask_requests,
        {ARRAYS: to_record(weights)},
        wait=config.sampling.round_timeout,
    )
    masked = _parse(ex, ids, _masked_reply, on_reply=lambda node, r: _note_training(outcome, node, r))
    if server.malicious:
        check = send("consistency", server.receive_masked_inputs_for_check(masked))
        unmask_requests = server.receive_consistency(_parse(check, ids, ConsistencyReply.from_record))
    else:
        unmask_requests = server.receive_masked_inputs(masked)
    unmasked = _parse(send("unmask", unmask_requests), ids, UnmaskReply.from_record)
    t0 = time.perf_counter()
    result = server.receive_unmask(unmasked)
    outcome.aggregate_seconds = time.perf_counter() - t0
    outcome.succeeded = [nodes[u] for u in result.contributors]
    scoring = server.params.integer_ring_bits is not None and encoding is None  # evaluation only
    section = result.ring_sum if scoring else result.extra_sum
    if section is not None:
        outcome.evaluation = _cohort_sums(section, server, config, len(result.contributors))
    if scoring:
        outcome.failed = sorted({n for n in ids if n not in outcome.succeeded and n not in outcome.declined})
        return
    if encoding is not None and result.ring_sum is not None:
        outcome.delta = _fedsgd_step(
            result.ring_sum, encoding, weights, config, run_id, rnd, len(result.contributors)
        )
        outcome.extra = _distributed_extra(encoding, config, len(result.contributors))
    else:
        outcome.delta = unflatten(result.average, weights)
    outcome.failed = sorted({n for n in ids if n not in outcome.succeeded and n not in outcome.declined})
    outcome.extra = {
        **outcome.extra,
        "secagg-error-bound": result.mean_error_bound,
        "secagg-survivors": list(result.survivors_per_stage),
    }


def _cohort_sums(
    section: np.ndarray, server: SecAggServer, config: RunConfig, contributors: int
) -> EvaluationSums | None:
    """Decode the cohort's evaluation sums; a sum no honest cohort could produce is logged and left
    out (under SecAgg+ no single sender can be blamed, and the round's update stands)."""
    classes = math.isqrt(max(section.size - section_length(0), 0))
    try:
        sums = decode_section(section, ring_bits=server.ring_bits, num_classes=classes)
        check_sums(
            sums,
            loss_bound=config.evaluation.loss_bound,
            max_examples=config.secagg.max_weight * contributors,
            noisy=config.evaluation.noise_multiplier > 0,
        )
    except ProtocolError as err:
        log.warning("round %d: federated evaluation left out: %s", server.context.round, err)
        return None
    return sums


def _fedsgd_step(
    ring_sum: np.ndarray,
    encoding: DdpEncoding,
    weights: dict[str, np.ndarray],
    config: RunConfig,
    run_id: str,
    rnd: int,
    contributors: int,
) -> dict[str, np.ndarray]:
    """The global update from the decoded noisy sum: DP-FedSGD's ``-lr * sum / (B * |U|)`` (sample
    level), or DP-FedAvg's ``sum / |U|`` of clipped local updates (client level).

    ``B * |U|`` (the expected records of the contributors) is public, so the normalisation adds no
    privacy cost, as with Opacus' expected batch size in central DP-SGD.
    """
    from fedsys.privacy.distributed_round import rotation_seed
    from fedsys.secagg.ddp import decode_sum

    total = decode_sum(ring_sum, encoding, rotation_seed=rotation_seed(run_id, rnd))
    if config.dp.level == "client":  # DP-FedAvg: the mean of the clipped, noised updates
        return unflatten((total / contributors).astype(np.float32), weights)
    step = -config.train.lr * total / (config.train.batch_size * contributors)
    return unflatten(step.astype(np.float32), weights)


def _distributed_extra(encoding: DdpEncoding, config: RunConfig, contributors: int) -> dict[str, Any]:
    """What a round record says about its distributed DP (all public)."""
    return {
        "dp-mode": "distributed",
        "dp-level": config.dp.level,
        "ddp-noise-multiplier": config.dp.noise_multiplier,
        "ddp-local-noise-multiplier": config.dp.local_noise_multiplier,
        "ddp-min-survivors": encoding.min_survivors,
        "ddp-noise-contributors": contributors,
        "ddp-gamma": encoding.gamma,
        "ddp-ring-bits": encoding.ring_bits,
        "ddp-wrap-probability": encoding.wrap_probability,
    }


def _masked_reply(record: Mapping[str, Any]) -> MaskedInputReply:
    return MaskedInputReply.from_record(record)


_UINT64 = (np.dtype(np.uint64),)


def _parse(
    ex: Exchange,
    ids: Mapping[int, int],
    parse: Callable[[Mapping[str, Any]], _R],
    skip: set[int] | None = None,
    on_reply: Callable[[int, Message], None] | None = None,
) -> dict[int, _R]:
    """Parse each node's stage reply; a malformed one drops that node (logged), not the round.

    Everything read from a reply is read here, inside one guard: the stage record, the masked
    vector (a 1-d uint64 ``.npy`` and nothing else) and, through ``on_reply``, its metrics.
    """
    parsed: dict[int, _R] = {}
    for node, reply in ex.replies.items():
        if skip and node in skip:
            continue
        try:
            if reply.metadata.src_node_id != node:
                raise ProtocolError(f"reply comes from node {reply.metadata.src_node_id}")
            record: dict[str, Any] = dict(reply.content.config_records[SECAGG])
            if MASKED in reply.content.array_records:
                masked = reply.content.array_records[MASKED]["masked-input"]
                record["masked-input"] = decode_array(masked, name="masked-input", dtypes=_UINT64)
            message = parse(record)
            if on_reply is not None:
                on_reply(node, reply)
        except (KeyError, FedsysError) as err:
            log.warning("dropping node %d: malformed secagg reply: %s", node, err)
            continue
        parsed[ids[node]] = message
    return parsed


def _note_failures(outcome: RoundOutcome, ex: Exchange) -> None:
    outcome.failed = sorted(set(outcome.failed) | set(ex.failed))


def _note_refusal(outcome: RoundOutcome, node: int, reply: Message) -> None:
    """A refusal at setup; one with a malformed epsilon counts as a failure instead."""
    try:
        _note_epsilon(outcome, node, reply)
    except ProtocolError as err:
        log.warning("secagg setup: dropping node %d: malformed refusal: %s", node, err)
        outcome.failed = sorted({*outcome.failed, node})
        return
    log.warning("secagg setup: node %d declined: %s", node, reason_of(reply) or status_of(reply))
    outcome.declined.append(node)
    outcome.refusals[node] = refusal_code(status_of(reply), reason_of(reply))


def _note_epsilon(outcome: RoundOutcome, node: int, reply: Message) -> None:
    """Record the node's epsilon if it sent one; ProtocolError unless it is a finite number >= 0."""
    epsilon = epsilon_metric(reply.content.metric_records.get(METRICS))
    if epsilon is not None:
        outcome.epsilons[node] = epsilon


def _note_training(outcome: RoundOutcome, node: int, reply: Message) -> None:
    """Record the mask-stage metrics; ProtocolError (nothing recorded) if any is malformed."""
    loss = optional_metric(reply.content.metric_records.get(METRICS), "train-loss")
    _note_epsilon(outcome, node, reply)
    if loss is not None:
        outcome.train_losses.append(loss)


def secagg_run_id(run_id: str) -> int:
    """The 64-bit run id SecAgg+ binds every envelope to: a deployed run's id is Flower's (decimal),
    a simulated run's is fedsys' own 16 hex digits (any value in [0, 2^64) binds as well)."""
    return int(run_id) if run_id.isdecimal() and len(run_id) != 16 else int(run_id, 16)
