"""ClientApp message handlers: turn Flower messages into calls of :mod:`fedsys.node.update`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.errors import FedsysError, ProtocolError
from fedsys.node.policy import HolderPolicy, Refusal, check_request
from fedsys.node.settings import HolderSettings, holder_settings, is_virtual_node
from fedsys.node.update import (
    compute_update,
    evaluate_global,
    release_evaluation,
    shareable_metrics,
    shares_size,
)
from fedsys.wire import (
    ARRAYS,
    CONFIG,
    METRICS,
    STATUS,
    STATUS_BUDGET,
    STATUS_DECLINED,
    require_arrays,
    status_record,
    to_record,
)

log = logging.getLogger("fedsys")
_LOCAL_SECTIONS = ("budget.", "ledger-dir", "audit-canaries", "audit-client-canaries")


def server_config(message: Message) -> tuple[RunConfig, int, str]:
    """The scenario the server sent (minus anything only the data holder may set)."""
    if CONFIG not in message.content.config_records:
        raise ProtocolError("training request lacks its config record")
    flat = dict(message.content.config_records[CONFIG])
    try:
        rnd, run_id = int(str(flat.pop("server-round"))), str(flat.pop("run-id"))
        flat.pop("partition-id", None)
        flat.pop(EVALUATE_ONLY, None)
    except KeyError as err:
        raise ProtocolError(f"training request lacks {err}") from err
    scenario = {k: v for k, v in flat.items() if not k.startswith(_LOCAL_SECTIONS)}
    return RunConfig.from_mapping(scenario), rnd, run_id


EVALUATE_ONLY = "evaluate-only"  # round-config flag of the final, evaluation-only exchange
EVALUATE_ACTION = "fedsys_evaluate"  # the plaintext evaluation-only message: train.fedsys_evaluate


def evaluate_only(message: Message) -> bool:
    """Whether the server asks only to score the model it sends (no training, no budget)."""
    return message.content.config_records[CONFIG].get(EVALUATE_ONLY) is True


def assigned_partition(message: Message) -> int | None:
    """The partition the simulation server asked this virtual node to play, if any."""
    value = message.content.config_records[CONFIG].get("partition-id")
    return None if value is None else int(str(value))


def local_settings(
    context: Context, server: RunConfig, local: Mapping[str, Any], message: Message
) -> tuple[RunConfig, HolderSettings]:
    """Combine the server's scenario with the data holder's own settings.

    ``local`` holds budget / ledger-dir overrides that a simulation harness passes as the
    stand-in for every data holder; in deployment it is empty and the node config rules
    (a real node ignores any partition the server names: it has only its own data).
    """
    own = {
        k: v for k, v in {**dict(context.run_config), **dict(local)}.items() if k.startswith(_LOCAL_SECTIONS)
    }
    config = server.replace(own) if own else server
    return config, holder_settings(dict(context.node_config), config, partition=assigned_partition(message))


def decline(
    message: Message, refusal: Refusal, reason: str, *, metrics: Mapping[str, float] | None = None
) -> Message:
    """Reply that this holder declines the request; the server sees the code and ``reason``."""
    log.warning("declining: %s", reason)
    status = STATUS_BUDGET if refusal is Refusal.BUDGET else STATUS_DECLINED
    content = RecordDict({STATUS: status_record(status, f"{refusal.value}: {reason}")})
    if metrics:
        content[METRICS] = MetricRecord(dict(metrics))
    return Message(content, reply_to=message)


def budget_reason(settings: HolderSettings, detail: str) -> str:
    """The budget refusal the server may read: the detail (steps, epsilon) reveals the number of
    examples, so it leaves only when the holder shares its epsilon."""
    return detail if settings.policy.share_epsilon else "the round would exceed this data holder's budget"


_PARTICIPATION = "fedsys.participation"


def admit_round(policy: HolderPolicy, context: Context) -> tuple[Refusal, str] | None:
    """Count this run's rounds at the holder, whatever round numbers the server claims.

    ``Context.state`` belongs to this run and stays on the data holder's node, so a server
    that repeats "round 1 of 1" is counted all the same. Call it when a round is accepted.
    """
    limit = policy.max_rounds_per_run
    if limit is None:
        return None
    record = context.state.config_records.get(_PARTICIPATION)
    taken = 0 if record is None else int(str(record["rounds"]))
    if taken >= limit:
        return (
            Refusal.TOO_MANY_ROUNDS,
            f"this data holder took part in {taken} rounds of this run (limit {limit})",
        )
    context.state.config_records[_PARTICIPATION] = ConfigRecord({"rounds": taken + 1})
    return None


_SCORED = "fedsys-scoring"


def admit_scoring(context: Context) -> tuple[Refusal, str] | None:
    """Allow one scoring-only request per run (the final model's), counted at the holder.

    Each request scores a model the server chooses on the holder's held-out records; without
    ``evaluation.noise-multiplier`` its sums are exact, so a server must not be able to ask for
    them as often as it likes. Training rounds carry their own evaluation and are limited by the
    budget and ``max-rounds-per-run``; this caps the rest. Call it when the request is accepted.
    """
    record = context.state.config_records.get(_SCORED)
    if record is not None and int(str(record["requests"])) >= 1:
        return (
            Refusal.EVALUATION_PRIVATE,
            "this data holder scores at most one model per run outside training rounds",
        )
    context.state.config_records[_SCORED] = ConfigRecord({"requests": 1})
    return None


Handler = Callable[[Message, Context, Mapping[str, Any]], Message]


def private_errors(handler: Handler) -> Handler:
    """At a real data holder, keep an exception's text (paths, labels, sizes) in the holder's log.

    Flower sends a ClientApp's exception text to the server; there it could carry the data path,
    a label or the number of examples. The server gets the error's class only. A simulated
    holder (the harness plays every party) keeps the full error.
    """

    def run(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
        try:
            return handler(message, context, local)
        except Exception as err:
            if is_virtual_node(context.node_config):
                raise
            log.exception("could not serve %s", message.metadata.message_type)
            raise FedsysError(
                f"the data holder could not serve this request ({type(err).__name__}); details are in its log"
            ) from None

    return run


def train(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Evaluate and train on local data; reply with the delta, a budget or a policy refusal."""
    server, rnd, run_id = server_config(message)
    config, settings = local_settings(context, server, local, message)
    refusal = check_request(settings.policy, config, server_round=rnd, secure=False)
    refusal = refusal or admit_round(settings.policy, context)
    if refusal is not None:
        return decline(message, *refusal)
    update = compute_update(
        config, settings, require_arrays(message, ARRAYS), server_round=rnd, run_id=run_id
    )
    log.info("round %d: trained; epsilon now %s", rnd, update.metrics.get("epsilon", "-"))
    log.debug("round %d: local metrics %s", rnd, update.metrics)
    shared = shareable_metrics(
        update, dp_enabled=config.dp.enabled, secure=False, share_epsilon=settings.policy.share_epsilon
    )
    if update.status != "ok":
        return decline(message, Refusal.BUDGET, budget_reason(settings, update.reason), metrics=shared)
    if update.evaluation is not None and settings.policy.share_evaluation == "plain":
        released = release_evaluation(update.evaluation, config, settings, server_round=rnd, run_id=run_id)
        shared.update(released.to_metrics() if released is not None else {})  # type: ignore[arg-type]
    if shares_size(dp_enabled=config.dp.enabled, share_epsilon=settings.policy.share_epsilon):
        # capped at the public max-weight, as under SecAgg+; else the server weights it as 1
        shared["num-examples"] = min(update.num_examples, config.secagg.max_weight)
    metrics = MetricRecord(dict(shared.items()))
    content = RecordDict(
        {METRICS: metrics, STATUS: status_record(update.status), ARRAYS: to_record(update.delta)}
    )
    return Message(content, reply_to=message)


def evaluate(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Score the global model on the local test split and reply with its sums, in plaintext: only
    a holder whose policy is ``share-evaluation = "plain"`` answers; the others decline."""
    server, rnd, run_id = server_config(message)
    config, settings = local_settings(context, server, local, message)
    refusal = check_request(settings.policy, config, server_round=rnd, secure=False, evaluate_only=True)
    if refusal is None:
        refusal = admit_scoring(context)
    if refusal is not None:
        return decline(message, *refusal)
    exact = evaluate_global(config, settings, require_arrays(message, ARRAYS))
    sums = release_evaluation(exact, config, settings, server_round=rnd, run_id=run_id)
    if sums is None:
        return decline(message, Refusal.BUDGET, "the evaluation's noise would exceed this holder's budget")
    log.info("final evaluation: %d of %d correct", sums.correct, sums.examples)
    metrics = MetricRecord(sums.to_metrics())  # type: ignore[arg-type]
    return Message(RecordDict({METRICS: metrics, STATUS: status_record("ok")}), reply_to=message)
