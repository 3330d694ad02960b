"""Fuzzing the plaintext round's reply handling: random and mutated replies from one node.

Whatever node 3 sends, the round never raises, every sampled node ends up in exactly one of
succeeded / failed / declined, and the released mean is finite; when node 3 is not counted, the
mean is exactly the honest one.
"""

import numpy as np
from coordinator_builders import WEIGHTS, npy_bytes, raw_array, reply_with, run_plain, update
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsys.wire import STATUS_BUDGET, STATUS_DECLINED, STATUS_OK, to_record

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
METRIC_VALUES = st.one_of(INT64, st.floats(), st.lists(INT64, max_size=3), st.lists(st.floats(), max_size=3))
METRICS = st.dictionaries(
    st.one_of(st.sampled_from(["num-examples", "epsilon", "train-loss"]), st.text(max_size=6)),
    METRIC_VALUES,
    max_size=4,
)
STATUSES = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "status": st.one_of(
                st.sampled_from([STATUS_OK, STATUS_BUDGET, STATUS_DECLINED]), st.text(max_size=8)
            )
        }
    ),
    st.dictionaries(
        st.sampled_from(["status", "reason"]), st.one_of(st.text(max_size=8), INT64, st.binary(max_size=8))
    ),
)
DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", "|b1", "<c8", "<U1", "<u8", "<f16"])


@st.composite
def _mutated_npy(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from([(2, 2), (2,), (4,), (2, 3), ()]))
    data = bytearray(npy_bytes(np.zeros(shape, draw(DTYPES))))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        action = draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "truncate":
            del data[at:]
        elif action == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


ARRAY = st.one_of(
    st.builds(raw_array, _mutated_npy()),
    st.builds(raw_array, st.binary(max_size=64)),
    st.builds(
        Array,
        dtype=st.text(max_size=4),
        shape=st.lists(st.integers(0, 3), max_size=2).map(tuple),
        stype=st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]),
        data=st.binary(max_size=32),
    ),
    st.builds(lambda v: Array(np.full((2, 2), v, np.float64)), st.floats()),
)


@st.composite
def _arrays(draw: st.DrawFn) -> ArrayRecord | None:
    if draw(st.booleans()):
        return None if draw(st.booleans()) else ArrayRecord()
    record = to_record(WEIGHTS)
    for name in draw(st.lists(st.sampled_from(["w", "b", "extra"]), max_size=2, unique=True)):
        record[name] = draw(ARRAY)
    if draw(st.booleans()):
        del record["b"]
    return record


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=_arrays(), metrics=METRICS, status=STATUSES)
def test_no_reply_crashes_the_round_or_poisons_the_mean(arrays, metrics, status):
    outcome = run_plain({1: update(1.0, 30), 2: update(3.0, 10), 3: reply_with(arrays, metrics, status)})

    groups = [outcome.succeeded, outcome.failed, outcome.declined]
    assert sorted(n for group in groups for n in group) == [1, 2, 3]
    assert outcome.status == "ok" and outcome.succeeded[:2] == [1, 2]
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in outcome.delta.values())
    assert all(np.isfinite(e) and e >= 0 for e in outcome.epsilons.values())
    assert all(np.isfinite(loss) for loss in outcome.train_losses)
    if 3 not in outcome.succeeded:
        assert np.allclose(outcome.delta["w"], 1.5) and np.allclose(outcome.delta["b"], 1.5)
        assert outcome.train_losses == []


@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32), examples=st.floats())
def test_a_counted_update_moves_the_mean_only_within_its_weight(value, examples):
    outcome = run_plain({1: update(1.0, 30), 2: update(3.0, 10), 3: update(value, examples)})

    if 3 in outcome.succeeded:
        assert 0 < examples <= 10_000
        expected = (60 + examples * np.float64(np.float32(value))) / (40 + examples)
        assert np.allclose(outcome.delta["w"], np.float32(expected), rtol=1e-6)
    else:
        assert outcome.failed == [3] and np.allclose(outcome.delta["w"], 1.5)
