"""Fuzzing ``_parse``, the one place a SecAgg+ stage reply is read: random and mutated replies.

Whatever a node sends, ``_parse`` returns either nothing for it (and records none of its metrics)
or a typed message; it never raises.
"""

import numpy as np
from coordinator_builders import npy_bytes, raw_array
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.coordinator.messaging import Exchange
from fedsys.coordinator.round import RoundOutcome
from fedsys.coordinator.secure import _note_training, _parse
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputReply,
    PeerKeys,
    RoundContext,
    ShareKeysReply,
    UnmaskReply,
)
from fedsys.wire import MASKED, METRICS, SECAGG

CONTEXT = RoundContext(run_id=0xAB, round=1)
VALID = [
    AdvertiseKeysReply(CONTEXT, PeerKeys(b"e" * 32, b"m" * 32)),
    ShareKeysReply(CONTEXT, {2: b"env-2", 3: b"env-3"}),
    MaskedInputReply(CONTEXT, np.arange(7, dtype=np.uint64), (2,)),
    UnmaskReply(CONTEXT, {1: b"b1", 2: b"b2"}, {3: b"s3"}),
]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
CONFIG_VALUES = st.one_of(
    INT64,
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=34),
    st.booleans(),
    st.lists(INT64, max_size=3),
    st.lists(st.binary(max_size=34), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
)
METRIC_VALUES = st.one_of(INT64, st.floats(), st.lists(st.floats(), max_size=2), st.lists(INT64, max_size=2))
MASKED_ARRAYS = st.one_of(
    st.builds(lambda v: Array(v), st.sampled_from([np.zeros(7, np.uint64), np.zeros(7, ">u8"), np.zeros(7)])),
    st.builds(lambda d: raw_array(d, "uint64", (7,)), st.binary(max_size=80)),
    st.builds(
        lambda cut, noise: raw_array(
            npy_bytes(np.zeros(7, np.uint64))[: -cut or None] + noise, "uint64", (7,)
        ),
        st.integers(0, 60),
        st.binary(max_size=9),
    ),
)


@st.composite
def _reply(draw: st.DrawFn) -> tuple[type, Message]:
    message = draw(st.sampled_from(VALID))
    record = {k: v for k, v in message.to_record().items() if not isinstance(v, np.ndarray)}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(record) or ["stage"]), st.text(max_size=6)))
        if draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = draw(CONFIG_VALUES)
    content = RecordDict({} if draw(st.booleans()) and not record else {SECAGG: ConfigRecord(record)})
    if isinstance(message, MaskedInputReply) or draw(st.booleans()):
        content[MASKED] = ArrayRecord({draw(st.sampled_from(["masked-input", "x"])): draw(MASKED_ARRAYS)})
    if draw(st.booleans()):
        keys = st.one_of(st.sampled_from(["epsilon", "train-loss"]), st.text(max_size=4))
        content[METRICS] = MetricRecord(draw(st.dictionaries(keys, METRIC_VALUES, max_size=3)))
    request = Message(RecordDict(), dst_node_id=5, message_type="train.secagg_x")
    reply = Message(content, reply_to=request)
    if draw(st.integers(0, 9)) == 0:
        reply.metadata.__dict__["_src_node_id"] = 6  # a reply claiming another sender
    return type(message), reply


@settings(max_examples=150, deadline=None)
@given(case=_reply(), as_type=st.sampled_from([type(m) for m in VALID]))
def test_parse_drops_or_types_every_reply_and_never_raises(case, as_type):
    _, reply = case
    outcome = RoundOutcome(sampled=[5])

    parsed = _parse(
        Exchange(replies={5: reply}),
        {5: 1},
        as_type.from_record,
        on_reply=lambda node, r: _note_training(outcome, node, r),
    )

    assert parsed == {} or (list(parsed) == [1] and isinstance(parsed[1], as_type))
    if parsed == {}:
        assert outcome.epsilons == {} and outcome.train_losses == []
    else:
        assert reply.metadata.src_node_id == 5
        assert all(np.isfinite(e) and e >= 0 for e in outcome.epsilons.values())
        assert all(np.isfinite(loss) for loss in outcome.train_losses)
    if isinstance(parsed.get(1), MaskedInputReply):
        assert parsed[1].masked_input.dtype == np.uint64 and parsed[1].masked_input.ndim == 1
