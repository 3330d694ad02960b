"""Tests for fixed-point quantisation, ring sizing and the weighted encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.errors import ConfigError, ModelError
from fedsys.secagg.encoding import (
    decode_weighted,
    dequantize_sum,
    encode_weighted,
    quantize,
    ring_bits_for,
    sum_error_bound,
)
from fedsys.secagg.prg import ring_mask


@settings(max_examples=80, deadline=None)
@given(
    num_clients=st.integers(1, 40),
    clip_range=st.floats(1e-3, 1e3),
    quant_bits=st.integers(2, 32),
    seed=st.integers(0, 2**32),
)
def test_dequantized_sum_is_within_error_bound(
    num_clients: int, clip_range: float, quant_bits: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-clip_range, clip_range, size=(num_clients, 64))
    ring_bits = ring_bits_for(quant_bits=quant_bits, num_clients=num_clients)
    total = np.zeros(64, dtype=np.uint64)
    for row in inputs:
        np.add(total, quantize(row, clip_range=clip_range, quant_bits=quant_bits, rng=rng).values, out=total)
    np.bitwise_and(total, ring_mask(ring_bits), out=total)

    decoded = dequantize_sum(total, num_summands=num_clients, clip_range=clip_range, quant_bits=quant_bits)

    bound = sum_error_bound(num_summands=num_clients, clip_range=clip_range, quant_bits=quant_bits)
    assert np.max(np.abs(decoded - inputs.sum(axis=0))) <= bound * (1 + 1e-9)


@given(quant_bits=st.integers(1, 32), num_clients=st.integers(1, 10**6))
def test_ring_holds_the_largest_possible_sum(quant_bits: int, num_clients: int) -> None:
    ring_bits = ring_bits_for(quant_bits=quant_bits, num_clients=num_clients)

    assert num_clients * (2**quant_bits - 1) < 2 ** (ring_bits - 1)


def test_quantized_values_lie_on_the_grid_and_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    value = np.full(100_000, 0.3)

    quantized = quantize(value, clip_range=1.0, quant_bits=2, rng=rng)

    # 0.3 sits at 1.95 grid steps: it rounds to 1 or 2, with mean 1.95
    assert set(np.unique(quantized.values).tolist()) == {1, 2}
    assert abs(float(quantized.values.mean()) - 1.95) < 0.01


def test_clipped_coordinates_are_counted() -> None:
    values = np.array([-10.0, -2.0, 0.0, 1.5, 2.0, 2.0000001, 7.0])

    quantized = quantize(values, clip_range=2.0, quant_bits=8, rng=np.random.default_rng(0))

    assert quantized.num_clipped == 3
    assert quantized.values[0] == 0 and quantized.values[-1] == 255


@pytest.mark.parametrize("clip_range", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_invalid_clip_range_is_rejected_with_its_value(clip_range: float) -> None:
    with pytest.raises(ConfigError, match=f"got {clip_range}"):
        quantize(np.zeros(3), clip_range=clip_range, quant_bits=8, rng=np.random.default_rng(0))


@pytest.mark.parametrize("quant_bits", [0, 33])
def test_invalid_quant_bits_are_rejected(quant_bits: int) -> None:
    with pytest.raises(ConfigError, match=f"got {quant_bits}"):
        quantize(np.zeros(3), clip_range=1.0, quant_bits=quant_bits, rng=np.random.default_rng(0))


def test_non_finite_update_is_rejected() -> None:
    with pytest.raises(ModelError, match="1 non-finite"):
        quantize(np.array([0.0, math.nan]), clip_range=1.0, quant_bits=8, rng=np.random.default_rng(0))


def test_ring_wider_than_64_bits_is_rejected() -> None:
    with pytest.raises(ConfigError, match="> 64"):
        ring_bits_for(quant_bits=32, num_clients=2**40)


def test_weighted_encoding_recovers_weighted_sum_and_total_weight() -> None:
    updates = [np.array([1.0, -2.0]), np.array([0.5, 3.0])]
    weights, max_weight, clip_range = [10.0, 30.0], 40.0, 4.0
    total = np.zeros(3)
    for update, weight in zip(updates, weights, strict=True):
        total += encode_weighted(update, weight=weight, max_weight=max_weight, clip_range=clip_range)[0]

    weighted, weight_fraction = decode_weighted(total, max_weight=max_weight, clip_range=clip_range)

    np.testing.assert_allclose(weighted * max_weight, [10 * 1.0 + 30 * 0.5, 10 * -2.0 + 30 * 3.0])
    assert weight_fraction * max_weight == pytest.approx(40.0)


def test_weighted_encoding_clips_before_scaling() -> None:
    encoded, num_clipped = encode_weighted(np.array([9.0, -1.0]), weight=1.0, max_weight=2.0, clip_range=4.0)

    np.testing.assert_allclose(encoded, [2.0, -0.5, 2.0])
    assert num_clipped == 1


@pytest.mark.parametrize("weight", [0.0, -1.0, 41.0, math.nan])
def test_weight_outside_zero_to_max_is_rejected(weight: float) -> None:
    with pytest.raises(ConfigError, match="weight"):
        encode_weighted(np.zeros(2), weight=weight, max_weight=40.0, clip_range=1.0)
