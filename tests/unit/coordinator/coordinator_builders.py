"""Builders for coordinator tests: a scripted Grid and hand-made (possibly hostile) replies."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.coordinator.plain import plain_round
from fedsys.coordinator.round import RoundOutcome
from fedsys.wire import ARRAYS, CONFIG, METRICS, STATUS, from_record, to_record

WEIGHTS = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
Script = Callable[[Message], Message | None]


class ScriptedGrid:
    """Answers each message with ``script[node](message)`` (None = no reply).

    Like a SuperLink, it marks a reply's sender on its own: a crashed node's error reply comes from
    the SuperLink (node 1), not from the node. ``spoofed`` names nodes whose replies claim another
    sender.
    """

    def __init__(self, script: Mapping[int, Script], spoofed: Mapping[int, int] | None = None) -> None:
        self.script, self.spoofed = dict(script), dict(spoofed or {})
        self.sent: list[Message] = []
        self.inbox: dict[str, Message] = {}
        self.count = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.script)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            self.sent.append(message)
            self.count += 1
            mid = f"m{self.count}"
            node = message.metadata.dst_node_id
            reply = self.script[node](message)
            if reply is not None:
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                sender = 1 if reply.has_error() else self.spoofed.get(node, node)
                reply.metadata.__dict__["_src_node_id"] = sender
                self.inbox[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.inbox.pop(mid) for mid in list(message_ids) if mid in self.inbox]


def npy_bytes(value: np.ndarray) -> bytes:
    """``value`` as .npy bytes (what Flower's Array carries)."""
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def raw_array(data: bytes, dtype: str = "float32", shape: tuple[int, ...] = (2, 2)) -> Array:
    """An Array with arbitrary payload bytes, as a hostile sender can put on the wire."""
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def reply_with(
    arrays: ArrayRecord | None = None,
    metrics: Mapping[str, object] | None = None,
    status: Mapping[str, object] | None = None,
) -> Script:
    """A node that answers with exactly these records."""

    def reply(message: Message) -> Message:
        records: dict[str, object] = {}
        if arrays is not None:
            records[ARRAYS] = arrays
        if metrics is not None:
            records[METRICS] = MetricRecord(dict(metrics))  # type: ignore[arg-type]
        if status is not None:
            records[STATUS] = ConfigRecord(dict(status))  # type: ignore[arg-type]
        return Message(RecordDict(records), reply_to=message)  # type: ignore[arg-type]

    return reply


def update(value: float, examples: float | None = 10, **arrays: np.ndarray) -> Script:
    """An honest-looking update: every weight moved by ``value``; ``examples`` None = size kept private."""
    delta = {k: np.full_like(v, value) for k, v in WEIGHTS.items()} | arrays
    metrics = {} if examples is None else {"num-examples": examples}
    return reply_with(to_record(delta), metrics)


def with_array(name: str, array: Array, examples: float = 10) -> Script:
    """An update whose array ``name`` is replaced by ``array`` (the rest honest zeros)."""
    record = to_record(WEIGHTS)
    record[name] = array
    return reply_with(record, {"num-examples": examples})


def run_plain(
    script: Mapping[int, Script], spoofed: Mapping[int, int] | None = None, **overrides: object
) -> RoundOutcome:
    """One plaintext round over ``script``'s nodes (min-clients 2, DP off, unless overridden)."""
    config = RunConfig().replace({"sampling.min-clients": 2, "dp.enabled": False, **overrides})
    assignment = {node: str(node) for node in script}
    grid = ScriptedGrid(script, spoofed)
    return plain_round(grid, config, assignment, WEIGHTS, 1, "00ab", simulated=False)  # type: ignore[arg-type]


def node_config(**overrides: object) -> RunConfig:
    """A deployment-style run (``dataset = "node"``: the nodes are the clients) of a 2-feature,
    2-class logistic regression in plaintext; ``overrides`` are flat scenario keys."""
    return RunConfig().replace(
        {
            "dataset": "node",
            "model": "logreg",
            "feature-shape": "2",
            "num-classes": 2,
            "device": "cpu",
            "secagg.enabled": False,
            "sampling.min-clients": 2,
            **overrides,
        }
    )


def trainer(node: int, steps: Mapping[int, float], *, crash_in: int = 0) -> Script:
    """A node whose delta in round r is ``steps[r] * node`` times a fixed per-coordinate pattern,
    from 10 examples; in round ``crash_in`` it answers with an error instead."""

    def reply(message: Message) -> Message:
        rnd = int(message.content.config_records[CONFIG]["server-round"])
        if rnd == crash_in:
            return Message(Error(code=1, reason="client died"), reply_to=message)
        weights = from_record(message.content.array_records[ARRAYS])
        delta = {
            k: (steps[rnd] * node * np.linspace(-1.0, 2.0, v.size).reshape(v.shape)).astype(np.float32)
            for k, v in weights.items()
        }
        return Message(
            RecordDict({ARRAYS: to_record(delta), METRICS: MetricRecord({"num-examples": 10})}),
            reply_to=message,
        )

    return reply
