"""FedAvg's mean: exact on honest input, and it never releases a non-finite model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.errors import AbortedRoundError
from fedsys.strategy import apply_delta, check_step, weighted_mean

F32_MAX = float(np.finfo(np.float32).max)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6), st.floats(min_value=1e-3, max_value=1e4)), min_size=1, max_size=6
    )
)
def test_the_mean_lies_between_the_smallest_and_largest_update(pairs):
    deltas = [{"w": np.full(3, value, np.float32)} for value, _ in pairs]

    mean = weighted_mean(deltas, [weight for _, weight in pairs])["w"]

    low, high = min(np.float32(v) for v, _ in pairs), max(np.float32(v) for v, _ in pairs)
    slack = 1e-6 * max(1.0, abs(low), abs(high))
    assert np.all(mean >= low - slack) and np.all(mean <= high + slack)


@pytest.mark.parametrize("weights", [[], [0.0], [-1.0, 1.0], [float("nan")], [float("inf")]])
def test_no_update_or_a_total_weight_outside_zero_to_infinity_aborts(weights):
    with pytest.raises(AbortedRoundError):
        weighted_mean([{"w": np.ones(2, np.float32)}] * len(weights), weights)


def test_a_mean_that_overflows_float32_is_not_released():
    with pytest.raises(AbortedRoundError, match="weighted mean of 'w'"):
        weighted_mean([{"w": np.full(2, 1e300)}], [1.0])


def test_a_step_that_would_overflow_the_model_is_refused():
    weights = {"w": np.full(2, F32_MAX, np.float32)}
    delta = {"w": np.full(2, F32_MAX, np.float32)}

    with pytest.raises(AbortedRoundError, match="next global 'w'"):
        check_step(weights, delta)
    check_step(weights, {"w": -delta["w"]})
    assert np.all(apply_delta(weights, {"w": -delta["w"]})["w"] == 0)
