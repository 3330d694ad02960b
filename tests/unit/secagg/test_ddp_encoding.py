"""Tests for distributed-DP encoding: rotation, conditional rounding, Skellam shares, ring size, CSPRNG."""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from randomgen import ChaCha
from scipy import optimize, stats
from scipy.linalg import hadamard

from fedsys.errors import ConfigError, FedsysError, ModelError, ProtocolError
from fedsys.secagg import ddp
from fedsys.secagg.ddp_bounds import (
    max_summands_for,
    padded_dim_for,
    ring_bits_for_ddp,
    rounded_l2_bound,
    wrap_probability,
)
from fedsys.secagg.prg import ring_mask

SEED = bytes(range(32))


def _encoding(**overrides: object) -> ddp.DdpEncoding:
    params: dict[str, object] = {
        "dim": 10,
        "clip": 1.0,
        "gamma": 50.0,
        "noise_mu_total": 300.0,
        "min_survivors": 3,
        "max_summands": 40,
    }
    params.update(overrides)
    return ddp.make_encoding(**params)  # type: ignore[arg-type]


# --- rotation -------------------------------------------------------------------------------------


def test_hadamard_matches_scipy_orthonormal_matrix() -> None:
    identity = np.eye(16)

    np.testing.assert_allclose(ddp._hadamard(identity), hadamard(16) / 4.0, atol=1e-15)


@pytest.mark.parametrize(("dim", "padded"), [(1, 1), (2, 2), (3, 4), (650, 1024), (1024, 1024), (1025, 2048)])
def test_padded_dim_is_next_power_of_two(dim: int, padded: int) -> None:
    assert padded_dim_for(dim) == padded


def test_rotation_is_orthonormal_and_invertible() -> None:
    rows = np.random.default_rng(0).normal(size=(7, 13))

    rotated = ddp.rotate(rows, seed=SEED, padded_dim=16)
    restored = ddp.unrotate(rotated, seed=SEED, dim=13)

    assert rotated.shape == (7, 16)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), np.linalg.norm(rows, axis=1), rtol=1e-12)
    np.testing.assert_allclose(rotated @ rotated.T, rows @ rows.T, atol=1e-12)  # inner products kept
    np.testing.assert_allclose(restored, rows, atol=1e-12)


def test_rotation_keeps_rank_and_depends_on_seed() -> None:
    vector = np.zeros(8)
    vector[0] = 1.0

    generic = np.arange(1.0, 9.0)

    first = ddp.rotate(vector, seed=SEED, padded_dim=8)

    assert first.shape == (8,)
    np.testing.assert_allclose(np.abs(first), np.full(8, 1 / math.sqrt(8)))  # a spike is spread evenly
    restored = ddp.unrotate(first, seed=SEED, dim=8)
    assert restored.shape == (8,)
    np.testing.assert_allclose(restored, vector, atol=1e-15)
    assert not np.allclose(
        ddp.rotate(generic, seed=SEED, padded_dim=8), ddp.rotate(generic, seed=bytes(32), padded_dim=8)
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: ddp.rotate(np.ones(4), seed=b"short", padded_dim=4), ConfigError),
        (lambda: ddp.rotate(np.ones(4), seed=SEED, padded_dim=6), ConfigError),
        (lambda: ddp.rotate(np.ones(9), seed=SEED, padded_dim=8), ModelError),
        (lambda: ddp.rotate(np.array([1.0, np.nan]), seed=SEED, padded_dim=2), ModelError),
        (lambda: ddp.unrotate(np.ones(8), seed=SEED, dim=3), ModelError),
    ],
)
def test_rotation_rejects_bad_input(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


# --- conditional rounding -------------------------------------------------------------------------


def test_rounded_l2_bound_matches_kairouz_theorem_1() -> None:
    r, d, beta = 40.0, 64, math.exp(-0.5)
    expected_sq = r**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (r + math.sqrt(d) / 2)

    assert rounded_l2_bound(scaled_norm=r, padded_dim=d, beta=beta) == pytest.approx(math.sqrt(expected_sq))
    assert rounded_l2_bound(scaled_norm=r, padded_dim=d, beta=0.0) == r + 8.0
    assert rounded_l2_bound(scaled_norm=1.0, padded_dim=4, beta=1e-30) == 3.0  # deterministic wins


def test_conditional_rounding_holds_the_norm_bound_for_every_record() -> None:
    # tiny beta bound is tight enough that many first draws fail and are redrawn
    enc = _encoding(dim=64, gamma=4.0, beta=0.9, max_summands=1000)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(500, 64)) * 10  # all clipped to norm 1, scaled to 4
    rotated = ddp.rotate(
        rows / np.linalg.norm(rows, axis=1, keepdims=True) * enc.gamma, seed=SEED, padded_dim=64
    )
    first_try = np.floor(rotated) + (rng.random(rotated.shape) < rotated - np.floor(rotated))

    rounded = ddp._round_conditionally(rotated, bound_squared=enc.l2_bound_squared, rng=rng)

    assert np.any(np.einsum("ij,ij->i", first_try, first_try) > enc.l2_bound_squared)  # redraws were needed
    assert rounded.dtype == np.int64
    assert int(np.einsum("ij,ij->i", rounded, rounded).max()) <= enc.l2_bound_squared
    assert np.all(np.abs(rounded - rotated) < 1)  # still a rounding of the input


def test_conditional_rounding_fails_closed_when_the_bound_is_unreachable() -> None:
    with pytest.raises(FedsysError, match="conditional rounding failed"):
        ddp._round_conditionally(np.full((2, 4), 0.5), bound_squared=-1, rng=np.random.default_rng(0))


def test_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(2)
    values = np.full((20_000, 4), 0.3) + np.arange(4)

    rounded = ddp._round_conditionally(values, bound_squared=10**6, rng=rng)

    np.testing.assert_allclose(rounded.mean(axis=0), values[0], atol=0.02)


def test_encode_records_clips_each_record() -> None:
    enc = _encoding(dim=4, gamma=1000.0, max_summands=5)
    huge = np.array([[300.0, 400.0, 0.0, 0.0]])  # norm 500, clipped to 1

    total = ddp.encode_records(huge, enc, rotation_seed=SEED, rng=np.random.default_rng(3))
    decoded = ddp.unrotate(total.astype(np.float64), seed=SEED, dim=4) / enc.gamma

    np.testing.assert_allclose(decoded, [0.6, 0.8, 0.0, 0.0], atol=2.0 / enc.gamma)
    assert int(total @ total) <= enc.l2_bound_squared


def test_encode_records_accepts_an_empty_poisson_sample() -> None:
    enc = _encoding()

    total = ddp.encode_records(np.zeros((0, 10)), enc, rotation_seed=SEED, rng=np.random.default_rng(0))

    assert total.dtype == np.int64
    assert not total.any()


# --- Skellam noise shares -------------------------------------------------------------------------


def test_noise_of_n_clients_sums_to_the_intended_skellam() -> None:
    clients, mu_total, samples = 5, 6.0, 4096
    enc = _encoding(dim=samples, noise_mu_total=mu_total, min_survivors=clients, max_summands=1)
    rng = np.random.default_rng(4)
    zero = np.zeros(enc.padded_dim, dtype=np.int64)

    shares = [ddp.add_noise_share(zero, enc, noise_rng=rng) for _ in range(clients)]
    ring_sum = np.zeros(enc.padded_dim, dtype=np.uint64)
    for share in shares:
        ring_sum = (ring_sum + share) & ring_mask(enc.ring_bits)
    noise = ring_sum.astype(np.int64)
    noise[noise >= 2 ** (enc.ring_bits - 1)] -= 2**enc.ring_bits

    assert enc.noise_mu == pytest.approx(mu_total / clients)
    assert abs(noise.mean()) < 4 * math.sqrt(2 * mu_total / samples)
    assert noise.var() == pytest.approx(2 * mu_total, rel=0.08)
    reference = stats.skellam(mu_total, mu_total)
    support = np.arange(noise.min(), noise.max() + 1)
    empirical_cdf = np.searchsorted(np.sort(noise), support, side="right") / samples
    ks_distance = float(np.abs(empirical_cdf - reference.cdf(support)).max())  # KS on the integer lattice
    assert stats.kstwo.sf(ks_distance, samples) > 1e-3  # Kolmogorov's law is conservative for lattices
    values, counts = np.unique(np.clip(noise, -7, 7), return_counts=True)
    expected = reference.pmf(values) * samples
    expected[0], expected[-1] = reference.cdf(-7) * samples, reference.sf(6) * samples
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3


def test_sample_skellam_has_skellam_moments() -> None:
    draws = ddp.sample_skellam(2.5, 200_000, np.random.default_rng(5))

    assert draws.dtype == np.int64
    assert draws.mean() == pytest.approx(0.0, abs=0.03)
    assert draws.var() == pytest.approx(5.0, rel=0.02)
    assert stats.kurtosis(draws) == pytest.approx(1 / 5.0, abs=0.05)  # Skellam's excess kurtosis 1/(2 mu)


@pytest.mark.parametrize(
    "encoded",
    [
        np.zeros(16, dtype=np.int64),  # wrong length (padded_dim is 32)
        np.zeros(32, dtype=np.float64),
        np.full(32, 2**62, dtype=np.int64),
    ],
)
def test_noise_share_rejects_bad_encoded_vectors(encoded: np.ndarray) -> None:
    enc = _encoding(dim=20)

    with pytest.raises(ModelError):
        ddp.add_noise_share(encoded, enc, noise_rng=np.random.default_rng(0))


def test_noise_share_wraps_negative_values_into_the_ring() -> None:
    enc = _encoding(noise_mu_total=1e-6, min_survivors=1)
    encoded = np.full(enc.padded_dim, -3, dtype=np.int64)

    ring = ddp.add_noise_share(encoded, enc, noise_rng=np.random.default_rng(6))

    assert ring.dtype == np.uint64
    assert np.all(ring == 2**enc.ring_bits - 3)


# --- end to end -----------------------------------------------------------------------------------


def test_encode_sum_decode_recovers_the_clipped_sum() -> None:
    clients, records, dim = 4, 30, 20
    gamma = 2000.0
    enc = _encoding(
        dim=dim, gamma=gamma, noise_mu_total=gamma**2 / 2, min_survivors=clients, max_summands=200
    )
    rng = np.random.default_rng(7)
    data = [rng.normal(size=(records, dim)) * rng.uniform(0.1, 3) for _ in range(clients)]

    ring_sum = np.zeros(enc.padded_dim, dtype=np.uint64)
    for rows in data:
        share = ddp.add_noise_share(
            ddp.encode_records(rows, enc, rotation_seed=SEED, rng=rng),
            enc,
            noise_rng=ddp.secure_noise_generator(),
        )
        ring_sum = (ring_sum + share) & ring_mask(enc.ring_bits)
    decoded = ddp.decode_sum(ring_sum, enc, rotation_seed=SEED)

    clipped = sum(
        (rows / np.maximum(1.0, np.linalg.norm(rows, axis=1, keepdims=True))).sum(axis=0) for rows in data
    )
    noise_std = math.sqrt(2 * enc.noise_mu_total) / enc.gamma  # 1.0: the noise multiplier
    rounding_std = math.sqrt(clients * records / 4) / enc.gamma
    error = decoded - clipped
    assert error.std() == pytest.approx(math.hypot(noise_std, rounding_std), rel=0.5)
    assert np.abs(error).max() < 6 * math.hypot(noise_std, rounding_std)


def test_client_level_update_decodes_with_small_error() -> None:
    enc = _encoding(dim=30, gamma=1e5, noise_mu_total=1.0, min_survivors=1, max_summands=3)
    update = np.linspace(-0.1, 0.1, 30)

    ring = ddp.encode_client_update(
        update, enc, rotation_seed=SEED, rng=np.random.default_rng(8), noise_rng=np.random.default_rng(9)
    )
    decoded = ddp.decode_sum(ring, enc, rotation_seed=SEED)

    np.testing.assert_allclose(decoded, update, atol=1e-4)


def test_centre_maps_the_ring_to_signed_integers() -> None:
    ring = np.array([0, 1, 2**9 - 1, 2**9, 2**10 - 1], dtype=np.uint64)

    np.testing.assert_array_equal(ddp.centre(ring, 10), [0, 1, 511, -512, -1])


def test_decode_rejects_values_outside_the_ring() -> None:
    enc = _encoding()
    bad = np.full(enc.padded_dim, 2**enc.ring_bits, dtype=np.uint64)

    with pytest.raises(ProtocolError):
        ddp.decode_sum(bad, enc, rotation_seed=SEED)


# --- ring size and wrap-around --------------------------------------------------------------------


def test_ring_bits_is_the_smallest_meeting_the_wrap_bound() -> None:
    params = {"padded_dim": 1024, "clip": 1.0, "gamma": 300.0, "num_summands": 400, "noise_mu": 5e4}

    bits = ring_bits_for_ddp(
        padded_dim=1024, clip=1.0, gamma=300.0, max_summands=400, noise_mu=5e4, wrap_bound=1e-9
    )

    assert wrap_probability(ring_bits=bits, **params) <= 1e-9  # type: ignore[arg-type]
    assert wrap_probability(ring_bits=bits - 1, **params) > 1e-9  # type: ignore[arg-type]


def test_wrap_probability_bounds_the_observed_wrap_rate() -> None:
    trials, ring_bits, records, dim = 3000, 7, 5, 4
    enc = ddp.DdpEncoding(
        dim=dim,
        padded_dim=dim,
        clip=1.0,
        gamma=6.0,
        l2_bound=rounded_l2_bound(scaled_norm=6.0, padded_dim=dim, beta=ddp.DEFAULT_BETA),
        ring_bits=ring_bits,
        noise_mu=200.0,
        beta=ddp.DEFAULT_BETA,
        noise_mu_total=200.0,
        min_survivors=1,
        max_contributors=1,
        max_summands=records,
        wrap_probability=1.0,
    )
    rng = np.random.default_rng(10)
    aligned = np.tile([1.0, 0.0, 0.0, 0.0], (records, 1))  # worst case: every record points the same way
    wraps = 0
    for _ in range(trials):
        seed = rng.bytes(32)
        total = ddp.encode_records(aligned, enc, rotation_seed=seed, rng=rng)
        total += ddp.sample_skellam(enc.noise_mu, dim, rng)
        wraps += bool(np.any((total >= 2 ** (ring_bits - 1)) | (total < -(2 ** (ring_bits - 1)))))
    bound = wrap_probability(
        ring_bits=ring_bits, padded_dim=dim, clip=1.0, gamma=6.0, num_summands=records, noise_mu=200.0
    )

    observed = wraps / trials
    assert 0.005 < observed  # the experiment does see wrap-around
    assert observed <= bound < 1.0


@pytest.mark.parametrize(
    ("ring_bits", "padded_dim", "num_summands", "noise_mu"),
    [(12, 1024, 400, 5e4), (14, 64, 3, 1e6), (11, 8, 50, 0.0), (7, 1, 1, 30.0)],  # bounds 1e-5..0.02
)
def test_wrap_probability_matches_an_independent_chernoff_minimisation(
    ring_bits: int, padded_dim: int, num_summands: int, noise_mu: float
) -> None:
    gamma, clip = 7.0, 1.5
    room = 2 ** (ring_bits - 1) - num_summands
    signal_var = (num_summands * gamma * clip) ** 2 / padded_dim

    def log_bound(lam: float) -> float:
        return lam**2 * signal_var / 2 + 2 * noise_mu * (math.cosh(lam) - 1) - lam * room

    best = optimize.minimize_scalar(log_bound, bounds=(0.0, 50.0), method="bounded", options={"xatol": 1e-12})
    expected = min(1.0, 2 * padded_dim * math.exp(best.fun))

    bound = wrap_probability(
        ring_bits=ring_bits,
        padded_dim=padded_dim,
        clip=clip,
        gamma=gamma,
        num_summands=num_summands,
        noise_mu=noise_mu,
    )

    assert 1e-6 < bound < 0.1  # informative: neither clamped to 1 nor underflowed
    assert bound == pytest.approx(expected, rel=1e-6)


def test_wrap_probability_edge_cases() -> None:
    params = {"padded_dim": 8, "clip": 1.0, "gamma": 4.0}

    assert wrap_probability(ring_bits=10, num_summands=0, noise_mu=0.0, **params) == 0.0  # type: ignore[arg-type]
    assert wrap_probability(ring_bits=3, num_summands=4, noise_mu=1.0, **params) == 1.0  # type: ignore[arg-type]
    for bad in ({"ring_bits": 1}, {"ring_bits": 63}, {"num_summands": -1}, {"noise_mu": float("nan")}):
        arguments = {"ring_bits": 10, "num_summands": 1, "noise_mu": 1.0, **params, **bad}
        with pytest.raises(ConfigError):
            wrap_probability(**arguments)  # type: ignore[arg-type]


def test_encoding_records_its_ring_and_wrap_probability() -> None:
    enc = _encoding(
        dim=650, gamma=300.0, noise_mu_total=1e5, min_survivors=3, max_contributors=5, max_summands=415
    )

    assert enc.padded_dim == 1024
    assert enc.noise_mu == pytest.approx(1e5 / 3)
    assert enc.wrap_probability <= ddp.DEFAULT_WRAP_BOUND
    assert enc.wrap_probability == wrap_probability(
        ring_bits=enc.ring_bits,
        padded_dim=1024,
        clip=1.0,
        gamma=300.0,
        num_summands=415,
        noise_mu=1e5 * 5 / 3,
    )
    assert enc.l1_bound == pytest.approx(min(enc.l2_bound**2, 32 * enc.l2_bound))


def test_max_summands_covers_the_poisson_sample_size() -> None:
    bound = max_summands_for(num_records=1435, sample_rate=64 / 287, tail=1e-9)

    assert stats.binom.sf(bound, 1435, 64 / 287) <= 1e-9
    assert stats.binom.sf(bound - 1, 1435, 64 / 287) > 1e-9
    assert max_summands_for(num_records=10, sample_rate=1.0) == 10
    assert max_summands_for(num_records=1, sample_rate=0.5, tail=0.1) == 1


@pytest.mark.parametrize(
    ("num_records", "sample_rate", "tail"),
    [(0, 0.1, 1e-9), (True, 0.1, 1e-9), (10, 0.0, 1e-9), (10, 0.1, 1.0)],
)
def test_max_summands_rejects_bad_input(num_records: int, sample_rate: float, tail: float) -> None:
    with pytest.raises(ConfigError):
        max_summands_for(num_records=num_records, sample_rate=sample_rate, tail=tail)


@pytest.mark.parametrize(
    "fields",
    [
        {"gamma": 0.0},
        {"clip": -1.0},
        {"noise_mu": float("inf")},
        {"l2_bound": 10.0},
        {"padded_dim": 32},
        {"ring_bits": 63},
    ],
)
def test_encoding_validates_its_fields(fields: dict[str, object]) -> None:
    valid = _encoding()
    params = {name: getattr(valid, name) for name in valid.__dataclass_fields__}
    params.update(fields)

    with pytest.raises(ConfigError):
        ddp.DdpEncoding(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"clip": 0.0},
        {"gamma": float("inf")},
        {"noise_mu_total": -1.0},
        {"min_survivors": 0},
        {"max_summands": 0},
        {"max_contributors": 2},  # fewer than min_survivors = 3
        {"beta": 1.0},
        {"wrap_bound": 0.0},
        {"gamma": 1e12},  # int64 norms would overflow
        {"max_ring_bits": 4},
    ],
)
def test_make_encoding_rejects_bad_parameters(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _encoding(**overrides)


# --- noise generator ------------------------------------------------------------------------------


def test_secure_noise_generator_takes_no_seed() -> None:
    assert inspect.signature(ddp.secure_noise_generator).parameters == {}


def test_secure_noise_generator_is_chacha20_keyed_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setattr(ddp.os, "urandom", lambda size: key[:size])

    generator = ddp.secure_noise_generator()
    words = generator.bit_generator.random_raw(16)

    keystream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(128))
    np.testing.assert_array_equal(words, np.frombuffer(keystream, dtype="<u8"))
    assert isinstance(generator.bit_generator, ChaCha)


def test_secure_noise_generator_ignores_global_seeding() -> None:
    np.random.seed(0)
    first = ddp.secure_noise_generator().integers(0, 2**63, size=4)
    np.random.seed(0)
    second = ddp.secure_noise_generator().integers(0, 2**63, size=4)

    assert not np.array_equal(first, second)
