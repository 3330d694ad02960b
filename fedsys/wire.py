"""What travels between ServerApp and ClientApp: record keys, statuses and conversions.

Clients send *deltas* (local weights minus the global weights they received), so plaintext
FedAvg and secure aggregation add up the same quantity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedsys.errors import ProtocolError

ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"
STATUS: Final = "status"
SECAGG: Final = "secagg"  # a SecAgg+ stage message (flat record)
MASKED: Final = "masked"  # a client's masked vector (ArrayRecord with "masked-input")

STATUS_OK: Final = "ok"
STATUS_BUDGET: Final = "budget-exhausted"
STATUS_DECLINED: Final = "declined"  # the holder's policy refuses the request (reason says which)
DECLINED: Final = frozenset({STATUS_BUDGET, STATUS_DECLINED})


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named NumPy arrays as an ArrayRecord (order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as named NumPy arrays."""
    return {name: array.numpy() for name, array in record.items()}


def metric(record: Mapping[str, object], key: str, default: float = 0.0) -> float:
    """A scalar metric as a float (MetricRecord values are typed as int | float | lists)."""
    value = record.get(key, default)
    if not isinstance(value, (int, float)):
        raise ProtocolError(f"metric {key!r} must be a number, got {value!r}")
    return float(value)


def status_of(reply: Message) -> str:
    """The status a client put in its reply (``ok`` when absent)."""
    content = reply.content
    if STATUS in content.config_records:
        return str(content.config_records[STATUS].get("status", STATUS_OK))
    return STATUS_OK


def reason_of(reply: Message) -> str:
    """The reason a client gave with its status (empty when none)."""
    content = reply.content
    if STATUS in content.config_records:
        return str(content.config_records[STATUS].get("reason", ""))[:500]
    return ""


def status_record(status: str, reason: str = "") -> ConfigRecord:
    """A reply's status record."""
    return ConfigRecord({"status": status, "reason": reason})


def require_arrays(reply: Message, key: str = ARRAYS) -> dict[str, np.ndarray]:
    """The named arrays of a reply, or ProtocolError naming the sender."""
    content = reply.content
    if key not in content.array_records:
        raise ProtocolError(f"reply from node {reply.metadata.src_node_id} lacks the {key!r} record")
    return from_record(content.array_records[key])
