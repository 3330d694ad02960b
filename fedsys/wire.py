"""What travels between ServerApp and ClientApp: record keys, statuses and conversions.

Clients send *deltas* (local weights minus the global weights they received), so plaintext
FedAvg and secure aggregation add up the same quantity.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Final

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from numpy.lib import format as npformat

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

FLOAT_DTYPES: Final = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_NPY_HEADERS: Final = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named NumPy arrays as an ArrayRecord (order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(
    record: ArrayRecord, dtypes: tuple[np.dtype[np.generic], ...] = FLOAT_DTYPES
) -> dict[str, np.ndarray]:
    """An ArrayRecord as named NumPy arrays, each decoded by :func:`decode_array`."""
    return {name: decode_array(array, name=name, dtypes=dtypes) for name, array in record.items()}


def decode_array(
    array: Array,
    *,
    name: str,
    dtypes: tuple[np.dtype[np.generic], ...] = FLOAT_DTYPES,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Decode one ``.npy`` payload that another party sent, without trusting it.

    Unlike ``Array.numpy()`` (``np.load``), this reads only a plain ``.npy`` (no ``.npz`` archive,
    no pickle), checks the header's dtype and shape before allocating anything, and requires the
    payload to hold exactly the bytes the header announces, so a small message cannot claim a huge
    array.

    Args:
        array: the received array.
        name: its name in the record, for the error message.
        dtypes: accepted element types (any byte order); the result is in native byte order.
        shape: the required shape; None accepts any.

    Returns:
        A writable copy in native byte order.

    Raises:
        ProtocolError: anything but a well-formed ``.npy`` of an accepted dtype (and shape).
    """
    data = array.data
    if array.stype != "numpy.ndarray" or not isinstance(data, bytes):
        raise ProtocolError(f"array {name!r} must be a serialised numpy.ndarray, got {array.stype!r}")
    stream = io.BytesIO(data)
    try:
        version = npformat.read_magic(stream)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        found, fortran, dtype = read_header(stream)
    except Exception as err:  # numpy's header parser (tokenize, ast, dtype construction) raises
        # ValueError, SyntaxError, tokenize.TokenError, TypeError, ... on hostile bytes: all mean "not .npy"
        raise ProtocolError(f"array {name!r} is not a valid .npy payload: {err}") from err
    native = dtype.newbyteorder("=")
    if dtype.fields is not None or dtype.subdtype is not None or native not in dtypes:
        raise ProtocolError(f"array {name!r} has dtype {dtype}, expected one of {[str(d) for d in dtypes]}")
    if any(side < 0 for side in found) or (shape is not None and found != shape):
        raise ProtocolError(f"array {name!r} has shape {found}, expected {shape}")
    body = memoryview(data)[stream.tell() :]
    if len(body) != math.prod(found) * dtype.itemsize:
        raise ProtocolError(
            f"array {name!r} of shape {found} and dtype {dtype} needs "
            f"{math.prod(found) * dtype.itemsize} bytes, got {len(body)}"
        )
    flat = np.frombuffer(body, dtype=dtype)
    return flat.reshape(found, order="F" if fortran else "C").astype(native, order="C")


def metric(record: Mapping[str, object], key: str, default: float = 0.0) -> float:
    """A finite scalar metric as a float (MetricRecord values are typed as int | float | lists).

    Raises:
        ProtocolError: the value is not a single finite number.
    """
    value = record.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"metric {key!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError as err:
        raise ProtocolError(f"metric {key!r} must be a finite number, got {value!r}") from err
    if not math.isfinite(number):
        raise ProtocolError(f"metric {key!r} must be a finite number, got {value!r}")
    return number


def optional_metric(record: Mapping[str, object] | None, key: str) -> float | None:
    """A scalar metric if ``record`` has it (checked as :func:`metric` does), else None."""
    return metric(record, key) if record is not None and key in record else None


def epsilon_metric(record: Mapping[str, object] | None) -> float | None:
    """The cumulative epsilon a node reported, if any; ProtocolError unless a finite number >= 0."""
    epsilon = optional_metric(record, "epsilon")
    if epsilon is not None and epsilon < 0:
        raise ProtocolError(f"epsilon must be >= 0, got {epsilon}")
    return epsilon


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
    """The named float arrays of a message, or ProtocolError naming the sender."""
    content = reply.content
    if key not in content.array_records:
        raise ProtocolError(f"reply from node {reply.metadata.src_node_id} lacks the {key!r} record")
    try:
        return from_record(content.array_records[key])
    except ProtocolError as err:
        raise ProtocolError(f"message from node {reply.metadata.src_node_id}: {err}") from err
