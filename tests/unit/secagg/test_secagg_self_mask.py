"""The self mask really hides: apply_mask adds PRG(seed), and without the b-shares the sum of masked
inputs (in which the pairwise masks already cancel) decodes to garbage."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fedsys.secagg import MaskedInputReply, Record, RoundContext, SecAggParams, SetupRequest, run_local_round
from fedsys.secagg.encoding import dequantize_sum, quantization_step
from fedsys.secagg.masking import apply_mask, reduce
from fedsys.secagg.prg import expand_seed

CONTEXT = RoundContext(run_id=8, round=6)


def _ring_distance(a: NDArray[np.uint64], b: NDArray[np.uint64], ring_bits: int) -> NDArray[np.uint64]:
    modulus_mask = np.uint64((1 << ring_bits) - 1) if ring_bits < 64 else np.uint64(2**64 - 1)
    forward = np.bitwise_and(a - b, modulus_mask)
    backward = np.bitwise_and(b - a, modulus_mask)
    return np.minimum(forward, backward)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    ring_bits=st.integers(8, 64),
    values=st.lists(st.integers(0, 2**8 - 1), min_size=64, max_size=64),
)
def test_apply_mask_adds_and_subtracts_exactly_the_prg_output(
    seed: bytes, ring_bits: int, values: list[int]
) -> None:
    original = np.array(values, dtype=np.uint64)
    mask = expand_seed(seed, length=64, ring_bits=ring_bits)
    added, subtracted = original.copy(), original.copy()

    apply_mask(added, seed, sign=1, ring_bits=ring_bits)
    apply_mask(subtracted, seed, sign=-1, ring_bits=ring_bits)

    np.testing.assert_array_equal(
        reduce(added, ring_bits=ring_bits), reduce(original + mask, ring_bits=ring_bits)
    )
    np.testing.assert_array_equal(
        reduce(subtracted, ring_bits=ring_bits), reduce(original - mask, ring_bits=ring_bits)
    )


def test_masking_moves_the_vector_far_away_and_the_wrong_seed_leaves_garbage() -> None:
    values = np.arange(1000, dtype=np.uint64)
    seed, other = os.urandom(32), os.urandom(32)
    masked = values.copy()

    apply_mask(masked, seed, sign=1, ring_bits=32)
    wrong = masked.copy()
    apply_mask(wrong, other, sign=-1, ring_bits=32)

    assert np.mean(_ring_distance(reduce(masked, ring_bits=32), values, 32) > 2**20) > 0.99
    assert np.mean(_ring_distance(reduce(wrong, ring_bits=32), values, 32) > 2**20) > 0.99


def test_without_the_self_masks_the_sum_of_masked_inputs_reveals_nothing() -> None:
    rng = np.random.default_rng(3)
    updates = [rng.uniform(-1.0, 1.0, 500) for _ in range(6)]
    weights = [float(w) for w in rng.integers(1, 20, 6)]
    params = SecAggParams(max_weight=20.0, clip_range=2.0, quant_bits=16)
    seen: dict[type, dict[int, Record]] = {}

    def record_all(kind: type, client: int, record: Record) -> Record:
        seen.setdefault(kind, {})[client] = record
        return record

    result = run_local_round(updates, weights, rng=rng, params=params, context=CONTEXT, intercept=record_all)
    ring_bits = SetupRequest.from_record(seen[SetupRequest][1]).ring_bits
    raw = np.zeros(501, dtype=np.uint64)
    for record in seen[MaskedInputReply].values():
        np.add(raw, MaskedInputReply.from_record(record).masked_input, out=raw)
    raw = reduce(raw, ring_bits=ring_bits)  # every pairwise mask has cancelled here: only b_u remain
    step = quantization_step(clip_range=2.0, quant_bits=16)
    encoded_sum = (result.weighted_sum / params.max_weight + 6 * 2.0) / step  # what the unmasked sum is
    expected = np.round(encoded_sum).astype(np.uint64)

    assert result.contributors == (1, 2, 3, 4, 5, 6)
    assert np.mean(_ring_distance(raw[:-1], expected, ring_bits) > 2**10) > 0.99
    naive = dequantize_sum(raw, num_summands=6, clip_range=2.0, quant_bits=16)[:-1] * params.max_weight
    assert np.mean(np.abs(naive - result.weighted_sum) > 1.0) > 0.99
