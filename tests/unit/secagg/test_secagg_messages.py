"""Tests for message records: round trips, allowed value types and rejection of malformed records."""

from __future__ import annotations

import numpy as np
import pytest

from fedsys.errors import ProtocolError
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    MaskedInputReply,
    MaskedInputRequest,
    PeerKeys,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedsys.secagg.primitives import RoundContext

Message = (
    SetupRequest
    | AdvertiseKeysReply
    | ShareKeysRequest
    | ShareKeysReply
    | MaskedInputRequest
    | UnmaskRequest
    | UnmaskReply
)
CONTEXT = RoundContext(run_id=9, round=4)
KEYS = PeerKeys(encryption=b"e" * 32, masking=b"m" * 32)
MESSAGES: list[Message] = [
    SetupRequest(CONTEXT, 1, (2, 3), 2, 21, 16, 8.0, 10, 100.0),
    AdvertiseKeysReply(CONTEXT, KEYS),
    ShareKeysRequest(CONTEXT, 1, {2: KEYS, 3: PeerKeys(b"f" * 32, b"n" * 32)}),
    ShareKeysReply(CONTEXT, {2: b"env-2", 3: b"env-3"}),
    MaskedInputRequest(CONTEXT, 1, {2: b"env-2"}),
    UnmaskRequest(CONTEXT, 1, (1, 2), (3,)),
    UnmaskReply(CONTEXT, {1: b"b1", 2: b"b2"}, {3: b"s3"}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_record_round_trip_preserves_message(message: Message) -> None:
    record = message.to_record()

    assert type(message).from_record(record) == message
    assert all(isinstance(value, (int, float, bytes, list)) for value in record.values())
    assert all(
        all(isinstance(item, (int, bytes)) for item in v) for v in record.values() if isinstance(v, list)
    )


def test_masked_input_record_carries_a_uint64_array() -> None:
    reply = MaskedInputReply(CONTEXT, np.arange(5, dtype=np.uint64), (2,))

    parsed = MaskedInputReply.from_record(reply.to_record())

    np.testing.assert_array_equal(parsed.masked_input, reply.masked_input)
    assert parsed.failed_peers == (2,) and parsed.context == CONTEXT


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"stage": 3}, "stage-2"),
        ({"round": True}, "'round' must be an int"),
        ({"recipients": [2]}, "equally long"),
        ({"recipients": [2, 2]}, "equally long"),
        ({"envelopes": [b"a", "b"]}, "list of bytes"),
        ({"run-id": -5}, "-5"),
    ],
)
def test_malformed_record_is_rejected(change: dict[str, object], match: str) -> None:
    record = ShareKeysReply(CONTEXT, {2: b"env-2", 3: b"env-3"}).to_record() | change

    with pytest.raises(ProtocolError, match=match):
        ShareKeysReply.from_record(record)


def test_missing_field_is_rejected() -> None:
    record = SetupRequest(CONTEXT, 1, (2, 3), 2, 21, 16, 8.0, 10, 100.0).to_record()
    del record["threshold"]

    with pytest.raises(ProtocolError, match="threshold"):
        SetupRequest.from_record(record)


@pytest.mark.parametrize("array", [np.arange(3, dtype=np.int64), np.zeros((2, 2), dtype=np.uint64)])
def test_masked_input_of_wrong_dtype_or_shape_is_rejected(array: np.ndarray) -> None:
    record = MaskedInputReply(CONTEXT, np.zeros(3, dtype=np.uint64), ()).to_record() | {"masked-input": array}

    with pytest.raises(ProtocolError, match="uint64"):
        MaskedInputReply.from_record(record)
