"""The client's side of a SecAgg+ round on Flower's Message API (see :mod:`fedsys.coordinator.secure`).

Between stages the client may be a fresh process (a SuperNode starts one per message), so its
protocol state -- this round's private keys, self-mask seed and received shares -- lives in the
node's ``Context.state``, which stays on the data holder's machine.

Against a malicious server (``secagg.mode = "malicious"``) the holder signs with its identity and
checks its peers against its own trusted set (:mod:`fedsys.node.pki`). Which mode a round runs in is
decided at setup, by the holder, and kept in its state: later stages rebuild the client in that mode
whatever they carry, and a holder whose policy requires it refuses a semi-honest setup.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.errors import FedsysError, ProtocolError
from fedsys.evaluation import EvaluationSums, empty_sums, encode_section, section_length
from fedsys.models import flatten
from fedsys.node.handlers import (
    admit_round,
    admit_scoring,
    budget_reason,
    decline,
    evaluate_only,
    local_settings,
    server_config,
)
from fedsys.node.pki import HolderPki, deployed_pki, simulated_pki
from fedsys.node.policy import Refusal, check_request
from fedsys.node.settings import HolderSettings
from fedsys.node.update import (
    compute_update,
    evaluate_global,
    local_data,
    precheck_budget,
    release_evaluation,
    shareable_metrics,
)
from fedsys.secagg import (
    ConsistencyRequest,
    MaskedInputRequest,
    Record,
    SecAggClient,
    SetupRequest,
    ShareKeysRequest,
    UnmaskRequest,
)
from fedsys.wire import (
    ARRAYS,
    MASKED,
    METRICS,
    SECAGG,
    require_arrays,
    to_record,
)

log = logging.getLogger("fedsys")
_STATE = "fedsys.secagg-client"


def _request(message: Message) -> dict[str, Any]:
    if SECAGG not in message.content.config_records:
        raise ProtocolError(f"secagg message {message.metadata.message_type} lacks its {SECAGG!r} record")
    return dict(message.content.config_records[SECAGG])


def _load(context: Context, local: Mapping[str, Any]) -> SecAggClient:
    if _STATE not in context.state.config_records:
        raise ProtocolError("secagg stage message without a preceding setup on this node")
    pki = _round_pki(context, local)
    return SecAggClient.from_record(
        dict(context.state.config_records[_STATE]),
        identity=None if pki is None else pki.identity,
        trusted_peers=None if pki is None else pki.trusted,
    )


_PKI_STATE = "fedsys.secagg-pki"  # present iff this round runs against a malicious server


def _setup_pki(settings: HolderSettings, local: Mapping[str, Any]) -> tuple[HolderPki | None, dict[str, Any]]:
    """This holder's PKI, and where to find it again in later stages (kept in its own state)."""
    if settings.partition_id is not None and settings.num_partitions is not None:
        where: dict[str, Any] = {
            "partition": settings.partition_id,
            "num-partitions": settings.num_partitions,
        }
        return simulated_pki(
            local, partition_id=settings.partition_id, num_partitions=settings.num_partitions
        ), where
    if settings.identity_key is None or settings.peers is None:
        return None, {}
    where = {"identity-key": str(settings.identity_key), "peers": str(settings.peers)}
    return deployed_pki(settings.identity_key, settings.peers), where


def _round_pki(context: Context, local: Mapping[str, Any]) -> HolderPki | None:
    record = context.state.config_records.get(_PKI_STATE)
    if record is None:
        return None
    if "partition" in record:
        partition, num = int(str(record["partition"])), int(str(record["num-partitions"]))
        pki = simulated_pki(local, partition_id=partition, num_partitions=num)
        if pki is None:
            raise ProtocolError("this round runs against a malicious server but the simulated PKI is gone")
        return pki
    return deployed_pki(Path(str(record["identity-key"])), Path(str(record["peers"])))


def _forget_round(context: Context) -> None:
    for key in (_STATE, _POLICY_STATE, _PKI_STATE):
        context.state.config_records.pop(key, None)


def _save(context: Context, client: SecAggClient) -> None:
    context.state.config_records[_STATE] = ConfigRecord(client.to_record())  # type: ignore[arg-type]


def _reply(message: Message, record: Record, **extra: Any) -> Message:
    scalars = {k: v for k, v in record.items() if not isinstance(v, np.ndarray)}
    content = RecordDict({SECAGG: ConfigRecord(scalars), **extra})  # type: ignore[arg-type]
    return Message(content, reply_to=message)


_POLICY_STATE = "fedsys.secagg-policy"


def setup(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stages 0-1: check the holder's policy and budget (no data read), then advertise fresh keys."""
    server, rnd, _ = server_config(message)
    config, settings = local_settings(context, server, local, message)
    request = SetupRequest.from_record(_request(message))
    cohort: dict[str, int] = {"cohort": len(request.neighbours) + 1, "threshold": request.threshold}
    scoring = evaluate_only(message)
    refusal = check_request(
        settings.policy, config, server_round=rnd, secure=True, evaluate_only=scoring, **cohort
    )
    if refusal is not None:
        return decline(message, *refusal)
    pki, where = _setup_pki(settings, local) if config.secagg.mode == "malicious" else (None, {})
    if config.secagg.mode == "malicious" and pki is None:
        return decline(
            message,
            Refusal.NO_SECAGG_IDENTITY,
            "SecAgg+ against a malicious server needs this holder's identity key and peers file",
        )
    if scoring:  # scores a model: no training, no budget, not one of the run's rounds
        refusal = admit_scoring(context)
        if refusal is not None:
            return decline(message, *refusal)
        return _advertise(message, context, request, pki, where, {**cohort, _SCORING: 1})
    if (config.dp.mode == "distributed") != request.integer_input:
        raise ProtocolError(
            f"dp.mode {config.dp.mode!r} does not match the secagg setup "
            f"({'integer' if request.integer_input else 'real-valued'} inputs)"
        )
    if config.dp.mode == "distributed":
        from fedsys.node.distributed import precheck_distributed  # imported by distributed rounds only

        reason, spent = precheck_distributed(config, settings, request, request.vector_length)
    else:
        reason, spent = precheck_budget(config, settings)
    if reason:
        shared = {"epsilon": spent} if settings.policy.share_epsilon else {}
        return decline(message, Refusal.BUDGET, budget_reason(settings, reason), metrics=shared)
    refusal = admit_round(settings.policy, context)
    if refusal is not None:
        return decline(message, *refusal)
    return _advertise(message, context, request, pki, where, {**cohort, _SCORING: 0})


_SCORING = "evaluate-only"


def _advertise(
    message: Message,
    context: Context,
    request: SetupRequest,
    pki: HolderPki | None,
    where: Mapping[str, Any],
    round_state: Mapping[str, int],
) -> Message:
    """Accept the setup: fresh keys, and what later stages must re-check, kept in the holder's state."""
    _forget_round(context)  # whatever an unfinished earlier round left
    if pki is None:
        client = SecAggClient(request.recipient)
    else:
        client = SecAggClient(request.recipient, identity=pki.identity, trusted_peers=pki.trusted)
        context.state.config_records[_PKI_STATE] = ConfigRecord(dict(where))
    reply = client.advertise_keys(request)
    _save(context, client)
    context.state.config_records[_POLICY_STATE] = ConfigRecord(dict(round_state.items()))
    return _reply(message, reply.to_record())


def share(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 2: Shamir-share this round's secrets among neighbours, sealed per recipient."""
    client = _load(context, local)
    reply = client.share_keys(ShareKeysRequest.from_record(_request(message)))
    _save(context, client)
    return _reply(message, reply.to_record())


def mask(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 3: train (DP-SGD inside the local budget), then send only the masked delta.

    The run config travels again with this stage, so the policy is checked again against it
    (with the cohort of the setup): a server cannot pass setup and then ask for less.
    """
    client = _load(context, local)
    server, rnd, run_id = server_config(message)
    config, settings = local_settings(context, server, local, message)
    cohort = {k: int(str(v)) for k, v in context.state.config_records[_POLICY_STATE].items()}
    scoring = bool(cohort.pop(_SCORING, 0))
    if scoring != evaluate_only(message):  # before any record is read or budget spent
        raise ProtocolError("the mask request and this round's setup disagree on evaluate-only")
    refusal = check_request(
        settings.policy, config, server_round=rnd, secure=True, evaluate_only=scoring, **cohort
    )
    if refusal is not None:
        raise ProtocolError(f"the mask request breaks this holder's policy: {refusal[1]}")
    request = MaskedInputRequest.from_record(_request(message))
    global_arrays = require_arrays(message, ARRAYS)
    if scoring:
        return _mask_evaluation(message, context, client, request, global_arrays, config, settings)
    integer = client.setup is not None and client.setup.integer_input
    if (config.dp.mode == "distributed") != integer:  # before any record is read or budget spent
        raise ProtocolError(f"dp.mode {config.dp.mode!r} at the mask stage does not match this round's setup")
    if config.dp.mode == "distributed":
        return _mask_distributed(message, context, client, request, global_arrays, config, settings)
    # Before any record is read: a request that cannot complete must not cost budget. The weight
    # is clamped with the max-weight agreed at setup, not with what this message's config says.
    max_weight = client.admit_masked_input(request, vector_length=sum(a.size for a in global_arrays.values()))
    num_classes = _check_section(client, config, settings)
    update = compute_update(config, settings, global_arrays, server_round=rnd, run_id=run_id)
    if update.status != "ok":  # the budget changed since setup (e.g. another run): drop out
        raise ProtocolError(
            f"cannot contribute to the secure round: {budget_reason(settings, update.reason)}"
        )
    weight = float(min(update.num_examples, max_weight))
    rng = _rounding_rng(config.seed, settings.partition_id, rnd)
    extra = None
    if num_classes and client.setup is not None:
        released = None
        if update.evaluation is not None and settings.policy.share_evaluation != "none":
            released = release_evaluation(
                update.evaluation, config, settings, server_round=rnd, run_id=run_id
            )
        extra = _section(released, num_classes, settings, ring_bits=client.setup.ring_bits)
    reply = client.mask_input(request, update=flatten(update.delta), weight=weight, rng=rng, extra=extra)
    if client.num_clipped:
        log.warning(
            "secagg: %d of %d update coordinates were clipped to +-%g (raise secagg.clip-range)",
            client.num_clipped,
            reply.masked_input.size - 1,
            config.secagg.clip_range,
        )
    _save(context, client)
    log.info("round %d: trained; epsilon now %s", rnd, update.metrics.get("epsilon", "-"))
    log.debug("round %d: local metrics %s", rnd, update.metrics)
    shared = shareable_metrics(
        update, dp_enabled=config.dp.enabled, secure=True, share_epsilon=settings.policy.share_epsilon
    )
    masked = to_record({"masked-input": reply.masked_input})
    return _reply(message, reply.to_record(), **{MASKED: masked, METRICS: MetricRecord(dict(shared.items()))})


def _check_section(client: SecAggClient, config: RunConfig, settings: HolderSettings) -> int:
    """The number of classes an evaluation section the setup asks for must cover (0: none asked);
    checked before any training, so a request that cannot complete costs no budget."""
    setup = client.setup
    if setup is None or not setup.extra_length:
        return 0
    classes = local_data(config, settings).test.num_classes
    if setup.extra_length != section_length(classes):
        raise ProtocolError(
            f"the round appends {setup.extra_length} coordinates; an evaluation section of "
            f"{classes} classes has {section_length(classes)}"
        )
    return classes


def _section(
    sums: EvaluationSums | None, num_classes: int, settings: HolderSettings, *, ring_bits: int
) -> np.ndarray:
    """This holder's evaluation section in the round's ring: its sums, or zeros when its policy keeps
    them (``share-evaluation = "none"``); SecAgg+ hides either among the cohort's sum."""
    if sums is None or settings.policy.share_evaluation == "none":
        sums = empty_sums(num_classes)
    return encode_section(sums, ring_bits=ring_bits)


def _mask_evaluation(
    message: Message,
    context: Context,
    client: SecAggClient,
    request: MaskedInputRequest,
    global_arrays: dict[str, np.ndarray],
    config: RunConfig,
    settings: HolderSettings,
) -> Message:
    """Stage 3 of the final, evaluation-only round: mask the global model's evaluation sums (an
    integer-input round whose whole vector is the section); nothing is trained or charged."""
    setup = client.setup
    if setup is None or not setup.integer_input:
        raise ProtocolError("an evaluation-only secagg round needs integer inputs")
    client.admit_masked_input(request, vector_length=setup.vector_length)
    exact = evaluate_global(config, settings, global_arrays)
    classes = exact.confusion.shape[0]
    if section_length(classes) != setup.vector_length:
        raise ProtocolError(f"an evaluation section has {section_length(classes)} coordinates")
    _, rnd, run_id = server_config(message)
    sums = release_evaluation(exact, config, settings, server_round=rnd, run_id=run_id)
    section = _section(sums, classes, settings, ring_bits=setup.ring_bits)
    reply = client.mask_integer_input(request, encoded=section)
    _save(context, client)
    masked = to_record({"masked-input": reply.masked_input})
    return _reply(message, reply.to_record(), **{MASKED: masked})


def _mask_distributed(
    message: Message,
    context: Context,
    client: SecAggClient,
    request: MaskedInputRequest,
    global_arrays: dict[str, np.ndarray],
    config: RunConfig,
    settings: HolderSettings,
) -> Message:
    """Stage 3 in distributed-DP mode: one DP-FedSGD step, encoded with this holder's noise share."""
    from fedsys.node.distributed import distributed_update

    setup_request = client.setup
    if setup_request is None or not setup_request.integer_input:
        raise ProtocolError("distributed DP needs a secagg round with integer inputs")
    # before any record is read, as in local mode: a request that cannot complete costs nothing
    client.admit_masked_input(request, vector_length=setup_request.vector_length)
    from fedsys.secagg.ddp_bounds import padded_dim_for

    if padded_dim_for(sum(a.size for a in global_arrays.values())) != setup_request.vector_length:
        raise ProtocolError("the global model does not match the vector length agreed at setup")
    _, rnd, run_id = server_config(message)
    update = distributed_update(
        config, settings, global_arrays, setup=setup_request, server_round=rnd, run_id=run_id
    )
    if update.status != "ok" or update.encoded is None:
        raise ProtocolError(
            f"cannot contribute to the secure round: {budget_reason(settings, update.reason)}"
        )
    reply = client.mask_integer_input(request, encoded=update.encoded)
    _save(context, client)
    shared = (
        {k: v for k, v in update.metrics.items() if k == "epsilon"} if settings.policy.share_epsilon else {}
    )
    masked = to_record({"masked-input": reply.masked_input})
    return _reply(message, reply.to_record(), **{MASKED: masked, METRICS: MetricRecord(dict(shared.items()))})


def consistency(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Malicious-server mode: sign the server's survivor set U3, once per round (Bonawitz et al.
    CCS 2017, Fig. 4 round 3); a semi-honest round has no such stage and the client refuses it."""
    client = _load(context, local)
    reply = client.sign_survivors(ConsistencyRequest.from_record(_request(message)))
    _save(context, client)
    return _reply(message, reply.to_record())


def unmask(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 4: reveal exactly the shares needed to remove masks; then forget the round.

    A refused request (e.g. survivors' signatures missing) also ends the round for this holder, so
    a server cannot try again with another request.
    """
    try:
        client = _load(context, local)
        reply = client.unmask(UnmaskRequest.from_record(_request(message)))
    except FedsysError:
        _forget_round(context)
        raise
    _forget_round(context)
    return _reply(message, reply.to_record())


def _rounding_rng(seed: int, partition_id: int | None, rnd: int) -> np.random.Generator:
    """Stochastic rounding needs unbiased, not secret, randomness: reproducible per virtual
    client in simulation, fresh from the OS at a real data holder."""
    if partition_id is None:
        return np.random.default_rng(secrets.randbits(128))
    digest = hashlib.sha256(f"round-{seed}/{partition_id}/{rnd}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


HANDLERS: dict[str, Callable[[Message, Context, Mapping[str, Any]], Message]] = {
    "secagg_setup": setup,
    "secagg_share": share,
    "secagg_mask": mask,
    "secagg_consistency": consistency,
    "secagg_unmask": unmask,
}
