"""Tests that pairwise masks cancel exactly in the ring."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.secagg.graph import build_neighbour_graph
from fedsys.secagg.masking import apply_mask, pairwise_seed, pairwise_sign, reduce
from fedsys.secagg.primitives import RoundContext, generate_key_pair

CONTEXT = RoundContext(run_id=1, round=2)


@settings(max_examples=25, deadline=None)
@given(num_clients=st.integers(2, 9), ring_bits=st.integers(1, 64), sparse=st.booleans())
def test_pairwise_masks_cancel_in_the_sum(num_clients: int, ring_bits: int, sparse: bool) -> None:
    ids = list(range(1, num_clients + 1))
    graph = build_neighbour_graph(ids, degree=2 if sparse and num_clients > 3 else None)
    keys = {u: generate_key_pair() for u in ids}
    total = np.zeros(32, dtype=np.uint64)
    for u in ids:
        masked = np.zeros(32, dtype=np.uint64)
        for v in graph[u]:
            seed = pairwise_seed(keys[u].private, keys[v].public, context=CONTEXT)
            apply_mask(masked, seed, sign=pairwise_sign(u, v), ring_bits=ring_bits)
        assert np.any(reduce(masked, ring_bits=ring_bits)) or ring_bits < 4  # each mask alone is noise
        np.add(total, masked, out=total)

    assert not np.any(reduce(total, ring_bits=ring_bits))


def test_self_mask_is_removed_by_subtracting_it() -> None:
    seed, values = os.urandom(32), np.arange(10, dtype=np.uint64)
    masked = values.copy()

    apply_mask(masked, seed, sign=1, ring_bits=20)
    apply_mask(masked, seed, sign=-1, ring_bits=20)

    np.testing.assert_array_equal(reduce(masked, ring_bits=20), values)


def test_pairwise_sign_is_antisymmetric() -> None:
    assert pairwise_sign(5, 3) == 1
    assert pairwise_sign(3, 5) == -1
