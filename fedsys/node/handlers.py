"""ClientApp message handlers: turn Flower messages into calls of :mod:`fedsys.node.update`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.errors import ProtocolError
from fedsys.node.settings import HolderSettings, holder_settings
from fedsys.node.update import compute_update, shareable_metrics
from fedsys.wire import ARRAYS, CONFIG, METRICS, STATUS, require_arrays, status_record, to_record

log = logging.getLogger("fedsys")
_LOCAL_SECTIONS = ("budget.", "ledger-dir")


def server_config(message: Message) -> tuple[RunConfig, int, str]:
    """The scenario the server sent (minus anything only the data holder may set)."""
    if CONFIG not in message.content.config_records:
        raise ProtocolError("training request lacks its config record")
    flat = dict(message.content.config_records[CONFIG])
    try:
        rnd, run_id = int(str(flat.pop("server-round"))), str(flat.pop("run-id"))
        flat.pop("partition-id", None)
    except KeyError as err:
        raise ProtocolError(f"training request lacks {err}") from err
    scenario = {k: v for k, v in flat.items() if not k.startswith(_LOCAL_SECTIONS)}
    return RunConfig.from_mapping(scenario), rnd, run_id


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


def train(message: Message, context: Context, local: Mapping[str, Any]) -> Message:
    """Evaluate and train on local data; reply with the delta or a budget refusal."""
    server, rnd, run_id = server_config(message)
    config, settings = local_settings(context, server, local, message)
    update = compute_update(
        config, settings, require_arrays(message, ARRAYS), server_round=rnd, run_id=run_id
    )
    log.info("round %d: local metrics %s", rnd, update.metrics)
    metrics = MetricRecord(
        {**shareable_metrics(update, dp_enabled=config.dp.enabled), "num-examples": update.num_examples}
    )
    content = RecordDict({METRICS: metrics, STATUS: status_record(update.status, update.reason)})
    if update.status == "ok":
        content[ARRAYS] = to_record(update.delta)
    else:
        log.warning("round %d: declined: %s", rnd, update.reason)
    return Message(content, reply_to=message)
