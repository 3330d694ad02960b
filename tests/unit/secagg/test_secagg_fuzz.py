"""Fuzzing the SecAgg+ message decoders: any record decodes to its type or raises ProtocolError.

Random records and mutations of valid ones (a key dropped, a value of another type, a wrong stage, an extra
key) are fed to every ``from_record``; nothing else may escape, and whatever decodes round-trips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsys.errors import ProtocolError
from fedsys.secagg.messages import (
    AdvertiseKeysReply,
    ConsistencyReply,
    ConsistencyRequest,
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

CONTEXT = RoundContext(run_id=9, round=4)
KEYS = PeerKeys(encryption=b"e" * 32, masking=b"m" * 32)
SIGNED = PeerKeys(encryption=b"f" * 32, masking=b"n" * 32, identity=b"id-der", signature=b"sig")
VALID = [
    SetupRequest(CONTEXT, 1, (2, 3), 2, 21, 16, 8.0, 10, 100.0),
    AdvertiseKeysReply(CONTEXT, KEYS),
    AdvertiseKeysReply(CONTEXT, SIGNED),
    ShareKeysRequest(CONTEXT, 1, {2: KEYS, 3: PeerKeys(b"f" * 32, b"n" * 32)}),
    ShareKeysRequest(CONTEXT, 1, {2: SIGNED}),
    ShareKeysReply(CONTEXT, {2: b"env-2", 3: b"env-3"}),
    MaskedInputRequest(CONTEXT, 1, {2: b"env-2"}),
    MaskedInputReply(CONTEXT, np.arange(5, dtype=np.uint64), (2,)),
    ConsistencyRequest(CONTEXT, 1, (1, 2, 3)),
    ConsistencyReply(CONTEXT, b"signature"),
    UnmaskRequest(CONTEXT, 1, (1, 2), (3,)),
    UnmaskRequest(CONTEXT, 1, (1, 2), (3,), {1: b"s1", 2: b"s2"}),
    UnmaskReply(CONTEXT, {1: b"b1", 2: b"b2"}, {3: b"s3"}),
]
DECODERS = sorted({type(m) for m in VALID}, key=lambda cls: cls.__name__)
KEYS_SEEN = sorted({key for m in VALID for key in m.to_record()})

# int64 is what a Flower record carries on the wire; see test_a_huge_int_float_field_* for beyond it
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(st.none(), st.booleans(), INT64, st.floats(), st.binary(max_size=40), st.text(max_size=8))
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint64, np.int64, np.float64, np.uint8, np.bool_, ">u8"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(INT64, max_size=4),
    st.lists(st.binary(max_size=40), max_size=4),
    st.lists(SCALARS, max_size=4),
    st.tuples(INT64, INT64),
    st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
    ARRAYS,
)
FIELD = st.one_of(st.sampled_from(KEYS_SEEN), st.text(max_size=12))


def _decode(cls: Any, record: dict[str, object]) -> None:
    """Decode; a ProtocolError is fine, anything else fails the test. A decoded value round-trips."""
    try:
        message = cls.from_record(record)
    except ProtocolError:
        return
    assert isinstance(message, cls)
    again = cls.from_record(message.to_record())
    if cls is MaskedInputReply:
        np.testing.assert_array_equal(again.masked_input, message.masked_input)
        assert again.failed_peers == message.failed_peers and again.context == message.context
    else:
        assert again == message


@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from(DECODERS), record=st.dictionaries(FIELD, VALUES, max_size=12))
def test_a_random_record_decodes_or_raises_protocol_error(cls: Any, record: dict[str, object]) -> None:
    _decode(cls, record)


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[Any, dict[str, object]]:
    message = draw(st.sampled_from(VALID))
    record: dict[str, object] = dict(message.to_record())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "stage", "shorten"]))
        key = draw(st.sampled_from(sorted(record))) if record else "stage"
        if action == "drop":
            record.pop(key, None)
        elif action == "replace":
            record[key] = draw(VALUES)
        elif action == "add":
            record[draw(FIELD)] = draw(VALUES)
        elif action == "stage":
            record["stage"] = draw(st.integers(min_value=-1, max_value=6))
        elif isinstance(record.get(key), (list, np.ndarray)):
            record[key] = record[key][: draw(st.integers(min_value=0, max_value=2))]  # type: ignore[index]
    # any decoder, not only the message's own: a record replayed into another stage must not decode
    return draw(st.sampled_from(DECODERS)), record


@settings(max_examples=200, deadline=None)
@given(case=_mutated())
def test_a_mutated_record_decodes_or_raises_protocol_error(case: tuple[Any, dict[str, object]]) -> None:
    cls, record = case
    _decode(cls, record)


@settings(max_examples=40, deadline=None)
@given(message=st.sampled_from(VALID), target=st.sampled_from(DECODERS))
def test_a_valid_record_decodes_only_as_its_own_type(message: Any, target: Any) -> None:
    record = dict(message.to_record())

    if target is type(message):
        _decode(target, record)
    else:
        try:
            target.from_record(record)
        except ProtocolError:
            return
        raise AssertionError(f"a {type(message).__name__} record decoded as {target.__name__}")


def test_a_huge_int_float_field_is_a_protocol_error() -> None:
    record: dict[str, object] = dict(VALID[0].to_record())
    record["clip-range"] = 10**400  # a Python int in an in-process record (the protobuf wire refuses it)

    with pytest.raises(ProtocolError):
        SetupRequest.from_record(record)


def test_an_advertised_keys_record_decodes_canonically_or_not_at_all() -> None:
    record: dict[str, object] = dict(AdvertiseKeysReply(CONTEXT, KEYS).to_record())
    record |= {"identity-key": b"", "key-signature": b"sig"}

    _decode(AdvertiseKeysReply, record)
