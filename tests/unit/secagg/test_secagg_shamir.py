"""Tests for Shamir secret sharing over GF(2^521 - 1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.errors import ConfigError, IntegrityError, ProtocolError
from fedsys.secagg.shamir import (
    PRIME,
    decode_share,
    encode_share,
    interpolate,
    reconstruct_secret,
    share_secret,
)


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), num_shares=st.integers(2, 15), data=st.data())
def test_any_threshold_sized_subset_reconstructs(secret: bytes, num_shares: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(2, num_shares))
    ids = data.draw(st.lists(st.integers(1, 2**63), min_size=num_shares, max_size=num_shares, unique=True))
    shares = share_secret(secret, threshold=threshold, share_ids=ids)
    subset_size = data.draw(st.integers(threshold, num_shares))
    subset = data.draw(st.permutations(ids))[:subset_size]

    recovered = reconstruct_secret({i: shares[i] for i in subset}, threshold=threshold, secret_length=32)

    assert recovered == secret


def test_fewer_than_threshold_shares_raise() -> None:
    shares = share_secret(os.urandom(32), threshold=5, share_ids=range(1, 9))

    with pytest.raises(ProtocolError, match="need 5 shares"):
        reconstruct_secret({i: shares[i] for i in (1, 2, 3, 4)}, threshold=5, secret_length=32)


def test_threshold_minus_one_shares_are_consistent_with_every_candidate_secret() -> None:
    secret, threshold = os.urandom(32), 4
    shares = share_secret(secret, threshold=threshold, share_ids=range(1, 9))
    seen = [(i, shares[i]) for i in (2, 5, 7)]

    for candidate in (bytes(32), b"\xff" * 32, os.urandom(32)):
        # the degree-3 polynomial through (0, candidate) and the seen shares gives a 4th share ...
        points = [(0, int.from_bytes(candidate, "big")), *seen]
        fourth = (8, interpolate(points, 8))
        # ... and the seen shares plus that share reconstruct the candidate: they cannot exclude it
        forged = dict([*seen, fourth])
        assert reconstruct_secret(forged, threshold=threshold, secret_length=32) == candidate


def test_threshold_minus_one_shares_do_not_interpolate_to_the_secret() -> None:
    secret = os.urandom(32)
    shares = share_secret(secret, threshold=3, share_ids=[1, 2, 3])

    guess = interpolate([(1, shares[1]), (2, shares[2])], 0)

    assert guess != int.from_bytes(secret, "big")  # the polynomial has full degree t - 1


def test_threshold_minus_one_share_distribution_does_not_depend_on_secret() -> None:
    prime, draws = 257, 20_000

    def share_histogram(secret: bytes) -> np.ndarray:
        values = [share_secret(secret, threshold=2, share_ids=[1, 2], prime=prime)[1] for _ in range(draws)]
        return np.bincount(values, minlength=prime)

    for secret in (b"\x03", b"\xc8"):
        counts = share_histogram(secret)
        expected = draws / prime
        chi_square = float(np.sum((counts - expected) ** 2) / expected)
        assert np.all(counts > 0)  # every field element is a possible share for either secret
        assert chi_square < 256 + 6 * np.sqrt(2 * 256)


def test_share_off_by_one_is_detected_when_more_than_threshold_shares_arrive() -> None:
    shares = share_secret(os.urandom(32), threshold=3, share_ids=range(1, 6))
    shares[4] = (shares[4] + 1) % PRIME

    with pytest.raises(IntegrityError, match="inconsistent"):
        reconstruct_secret(shares, threshold=3, secret_length=32)


def test_garbage_share_is_detected_even_with_exactly_threshold_shares() -> None:
    shares = share_secret(os.urandom(32), threshold=3, share_ids=range(1, 4))
    shares[2] = int.from_bytes(os.urandom(66), "big") % PRIME

    # the interpolated value is then uniform in GF(p), wider than 32 bytes except with prob. 2^-265
    with pytest.raises(IntegrityError, match="wider"):
        reconstruct_secret(shares, threshold=3, secret_length=32)


@pytest.mark.parametrize(
    ("threshold", "ids"), [(1, [1, 2]), (3, [1, 2]), (2, [1, 1, 2]), (2, [0, 1]), (2, [1, PRIME])]
)
def test_invalid_sharing_parameters_raise(threshold: int, ids: list[int]) -> None:
    with pytest.raises(ConfigError):
        share_secret(b"secret", threshold=threshold, share_ids=ids)


def test_secret_too_large_for_field_raises() -> None:
    with pytest.raises(ConfigError):
        share_secret(b"\x01" * 66, threshold=2, share_ids=[1, 2])


@given(value=st.integers(0, PRIME - 1))
def test_share_encoding_round_trips(value: int) -> None:
    encoded = encode_share(value)

    assert len(encoded) == 66
    assert decode_share(encoded) == value


@pytest.mark.parametrize("data", [b"\x00" * 65, b"\xff" * 66])
def test_malformed_share_bytes_raise(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_share(data)
