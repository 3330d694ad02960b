"""The client's side of a SecAgg+ round on Flower's Message API (see :mod:`fedsys.coordinator.secure`).

Between stages the client may be a fresh process (a SuperNode starts one per message), so its
protocol state -- this round's private keys, self-mask seed and received shares -- lives in the
node's ``Context.state``, which stays on the data holder's machine.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsys.errors import ProtocolError
from fedsys.models import flatten
from fedsys.node.handlers import admit_round, budget_reason, decline, local_settings, server_config
from fedsys.node.policy import Refusal, check_request
from fedsys.node.update import compute_update, precheck_budget, shareable_metrics
from fedsys.secagg import (
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


def _load(context: Context) -> SecAggClient:
    if _STATE not in context.state.config_records:
        raise ProtocolError("secagg stage message without a preceding setup on this node")
    return SecAggClient.from_record(dict(context.state.config_records[_STATE]))


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
    refusal = check_request(settings.policy, config, server_round=rnd, secure=True, **cohort)
    if refusal is not None:
        return decline(message, *refusal)
    reason, spent = precheck_budget(config, settings)
    if reason:
        shared = {"epsilon": spent} if settings.policy.share_epsilon else {}
        return decline(message, Refusal.BUDGET, budget_reason(settings, reason), metrics=shared)
    refusal = admit_round(settings.policy, context)
    if refusal is not None:
        return decline(message, *refusal)
    client = SecAggClient(request.recipient)
    reply = client.advertise_keys(request)
    _save(context, client)
    context.state.config_records[_POLICY_STATE] = ConfigRecord(dict(cohort.items()))
    return _reply(message, reply.to_record())


def share(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 2: Shamir-share this round's secrets among neighbours, sealed per recipient."""
    client = _load(context)
    reply = client.share_keys(ShareKeysRequest.from_record(_request(message)))
    _save(context, client)
    return _reply(message, reply.to_record())


def mask(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 3: train (DP-SGD inside the local budget), then send only the masked delta.

    The run config travels again with this stage, so the policy is checked again against it
    (with the cohort of the setup): a server cannot pass setup and then ask for less.
    """
    client = _load(context)
    server, rnd, run_id = server_config(message)
    config, settings = local_settings(context, server, local, message)
    cohort = {k: int(str(v)) for k, v in context.state.config_records[_POLICY_STATE].items()}
    refusal = check_request(settings.policy, config, server_round=rnd, secure=True, **cohort)
    if refusal is not None:
        raise ProtocolError(f"the mask request breaks this holder's policy: {refusal[1]}")
    request = MaskedInputRequest.from_record(_request(message))
    global_arrays = require_arrays(message, ARRAYS)
    # Before any record is read: a request that cannot complete must not cost budget. The weight
    # is clamped with the max-weight agreed at setup, not with what this message's config says.
    max_weight = client.admit_masked_input(request, vector_length=flatten(global_arrays).size)
    update = compute_update(config, settings, global_arrays, server_round=rnd, run_id=run_id)
    if update.status != "ok":  # the budget changed since setup (e.g. another run): drop out
        raise ProtocolError(
            f"cannot contribute to the secure round: {budget_reason(settings, update.reason)}"
        )
    weight = float(min(update.num_examples, max_weight))
    rng = _rounding_rng(config.seed, settings.partition_id, rnd)
    reply = client.mask_input(request, update=flatten(update.delta), weight=weight, rng=rng)
    if client.num_clipped:
        log.warning(
            "secagg: %d of %d update coordinates were clipped to +-%g (raise secagg.clip-range)",
            client.num_clipped,
            reply.masked_input.size - 1,
            config.secagg.clip_range,
        )
    _save(context, client)
    log.info("round %d: local metrics %s", rnd, update.metrics)
    shared = shareable_metrics(
        update, dp_enabled=config.dp.enabled, secure=True, share_epsilon=settings.policy.share_epsilon
    )
    masked = to_record({"masked-input": reply.masked_input})
    return _reply(message, reply.to_record(), **{MASKED: masked, METRICS: MetricRecord(dict(shared.items()))})


def unmask(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Stage 4: reveal exactly the shares needed to remove masks; then forget the round."""
    client = _load(context)
    reply = client.unmask(UnmaskRequest.from_record(_request(message)))
    del context.state.config_records[_STATE]
    context.state.config_records.pop(_POLICY_STATE, None)
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
    "secagg_unmask": unmask,
}
