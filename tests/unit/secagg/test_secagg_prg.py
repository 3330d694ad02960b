"""Tests for the AES-CTR pseudorandom generator over Z_{2^k}."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedsys.errors import ConfigError
from fedsys.secagg.prg import expand_seed


def test_same_seed_gives_same_vector() -> None:
    seed = os.urandom(32)

    first = expand_seed(seed, length=1000, ring_bits=40)

    np.testing.assert_array_equal(first, expand_seed(seed, length=1000, ring_bits=40))
    np.testing.assert_array_equal(first[:10], expand_seed(seed, length=10, ring_bits=40))


def test_different_seeds_give_different_vectors() -> None:
    first = expand_seed(os.urandom(32), length=1000, ring_bits=32)
    second = expand_seed(os.urandom(32), length=1000, ring_bits=32)

    assert np.count_nonzero(first == second) < 5


@pytest.mark.parametrize("ring_bits", [1, 7, 21, 63, 64])
def test_output_lies_in_ring(ring_bits: int) -> None:
    values = expand_seed(os.urandom(32), length=4096, ring_bits=ring_bits)

    assert values.dtype == np.uint64
    assert int(values.max()) < 2**ring_bits
    assert int(values.max()) >= 2 ** (ring_bits - 1)  # the top bit is used


def test_output_is_roughly_uniform() -> None:
    bins, per_bin = 256, 200
    values = expand_seed(os.urandom(32), length=bins * per_bin, ring_bits=8)

    counts = np.bincount(values.astype(np.int64), minlength=bins)
    chi_square = float(np.sum((counts - per_bin) ** 2) / per_bin)

    # 255 degrees of freedom: mean 255, standard deviation about 22.6; accept +- 6 sigma
    assert 120 < chi_square < 390


def test_high_bits_of_64_bit_words_are_balanced() -> None:
    values = expand_seed(os.urandom(32), length=20_000, ring_bits=64)

    top_bit_fraction = float(np.mean(values >> np.uint64(63)))

    assert abs(top_bit_fraction - 0.5) < 0.03


@pytest.mark.parametrize(
    ("seed", "length", "ring_bits"),
    [(b"x" * 16, 4, 8), (b"x" * 32, -1, 8), (b"x" * 32, 4, 0), (b"x" * 32, 4, 65)],
)
def test_invalid_arguments_raise_config_error(seed: bytes, length: int, ring_bits: int) -> None:
    with pytest.raises(ConfigError):
        expand_seed(seed, length=length, ring_bits=ring_bits)
