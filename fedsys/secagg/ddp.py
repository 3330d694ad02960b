"""Distributed DP inside SecAgg: clip, rotate, round and add a Skellam noise share in Z_{2^k}.

The distributed Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021, Alg. 1; rounding and rotation as in
Kairouz, Liu, Steinke, ICML 2021, Sec. 4): every summand (one record's gradient in sample-level mode, one
client's update in client-level mode) is clipped to L2 norm ``clip``, scaled by ``gamma``, rotated by the
randomised Walsh-Hadamard transform ``H D`` (``D`` public random signs from the round's rotation seed, ``H``
orthonormal) and conditionally rounded to an integer vector of L2 norm at most ``l2_bound`` (see
:mod:`fedsys.secagg.ddp_bounds`). A client sums its integer vectors, adds ``Sk(noise_mu)`` noise per
coordinate (``Poisson(mu) - Poisson(mu)``, variance ``2 mu``) and reduces mod ``2^k`` before masking. Since
``Sk(a) + Sk(b) = Sk(a + b)``, any ``t >= min_survivors`` contributors give total noise ``Sk(t mu) >=
Sk(noise_mu_total)``, the level the accountant (:mod:`fedsys.privacy.distributed`) charges.

Guarantees and assumptions:

- The sensitivity bound is exact: every rounded vector's squared norm is checked in int64 against
  ``floor(l2_bound^2)``; no floating-point rounding can let a summand exceed it.
- Noise is secret and drawn from :func:`secure_noise_generator` (ChaCha20 keyed from ``os.urandom``); the
  server never influences it. Rotation signs and rounding coins are not secret.
- Integer sums stay in int64/uint64; float64 is used only for the real-valued input and the final output.
- Poisson sampling uses numpy's ``Generator.poisson`` (exact algorithms driven by the CSPRNG's doubles).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from randomgen import ChaCha

from fedsys.errors import ConfigError, FedsysError, ModelError, ProtocolError
from fedsys.secagg.ddp_bounds import (
    DEFAULT_BETA,
    DEFAULT_WRAP_BOUND,
    MAX_DDP_RING_BITS,
    l1_bound,
    padded_dim_for,
    ring_bits_for_ddp,
    rounded_l2_bound,
    wrap_probability,
)
from fedsys.secagg.prg import SEED_BYTES, expand_seed, ring_mask

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_WRAP_BOUND",
    "DdpEncoding",
    "add_noise_share",
    "centre",
    "decode_sum",
    "encode_client_update",
    "encode_records",
    "make_encoding",
    "padded_dim_for",
    "ring_bits_for_ddp",
    "rotate",
    "sample_skellam",
    "secure_noise_generator",
    "unrotate",
    "wrap_probability",
]

MAX_ROUNDING_ATTEMPTS = 200  # per vector; with beta <= 0.61 failing them all has probability < 1e-43
MAX_NOISE_MU = 1e15  # far below numpy's Poisson limit; a larger share means a mis-scaled gamma
_ROWS_PER_CHUNK = 256  # bounds the float64 working set of encode_records
_INT64_SAFE = 2**62
_BLOCK = 64  # Hadamard levels done as one small matrix product


@dataclass(frozen=True, kw_only=True)
class DdpEncoding:
    """Public parameters of one distributed-DP round (identical for every client and the server).

    ``noise_mu`` is THIS client's Skellam noise: its share ``noise_mu_total / min_survivors``, or its own
    local floor ``noise_mu_floor`` when that is larger (then its vector alone is DP at the floor's level,
    whatever happens to the masks; the aggregate only gets more noise); ``l2_bound`` (Delta_2)
    bounds every summand's rounded integer vector and ``l1_bound`` (Delta_1) follows from it;
    ``wrap_probability`` bounds the chance that the round's aggregate wraps around in Z_{2^ring_bits}.
    """

    dim: int
    padded_dim: int
    clip: float
    gamma: float
    l2_bound: float
    ring_bits: int
    noise_mu: float
    beta: float
    noise_mu_total: float
    min_survivors: int
    max_contributors: int
    max_summands: int
    wrap_probability: float
    noise_mu_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.padded_dim != padded_dim_for(self.dim):
            raise ConfigError(f"ddp padded dim must be {padded_dim_for(self.dim)}, got {self.padded_dim}")
        _check_positive("clip", self.clip)
        _check_positive("gamma", self.gamma)
        _check_positive("noise mu", self.noise_mu)
        if not (math.isfinite(self.noise_mu_floor) and 0 <= self.noise_mu_floor <= self.noise_mu):
            raise ConfigError(f"ddp noise floor must be in [0, noise mu], got {self.noise_mu_floor!r}")
        if not 2 <= self.ring_bits <= MAX_DDP_RING_BITS:
            raise ConfigError(f"ddp ring bits must be in [2, {MAX_DDP_RING_BITS}], got {self.ring_bits}")
        if (self.gamma * self.clip + math.sqrt(self.padded_dim)) ** 2 >= _INT64_SAFE:
            raise ConfigError(
                f"ddp gamma * clip = {self.gamma * self.clip} overflows int64 norms; lower gamma"
            )
        if not self.l2_bound >= self.gamma * self.clip:
            raise ConfigError(f"ddp l2 bound {self.l2_bound} is below gamma * clip {self.gamma * self.clip}")

    @property
    def l1_bound(self) -> float:
        """Delta_1 of one summand's integer vector."""
        return l1_bound(l2_bound=self.l2_bound, padded_dim=self.padded_dim)

    @property
    def l2_bound_squared(self) -> int:
        """The exact integer bound every rounded vector's squared norm is held to."""
        return math.floor(self.l2_bound**2)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"ddp {name} must be finite and > 0, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"ddp {name} must be an integer >= {minimum}, got {value!r}")


def make_encoding(
    *,
    dim: int,
    clip: float,
    gamma: float,
    noise_mu_total: float,
    min_survivors: int,
    max_summands: int,
    max_contributors: int | None = None,
    noise_mu_floor: float = 0.0,
    beta: float = DEFAULT_BETA,
    wrap_bound: float = DEFAULT_WRAP_BOUND,
    max_ring_bits: int = MAX_DDP_RING_BITS,
) -> DdpEncoding:
    """Derive a round's encoding: padded dimension, Delta_2, each client's noise share and the ring size.

    Args:
        dim: model dimension d.
        clip: L2 clip of each summand (per record, or per client update).
        gamma: scale before rounding; larger is more precise and needs more ring bits
            (:func:`fedsys.privacy.ddp_plan.plan_skellam` picks it for a bit budget).
        noise_mu_total: Skellam parameter of the aggregate noise the accountant charges
            (:func:`fedsys.privacy.distributed.calibrate_skellam`).
        min_survivors: t, the fewest contributors an aggregate is released for; each share is mu_total / t.
        max_summands: most summands in one aggregate (records over all holders, or clients), for the ring.
        max_contributors: most clients adding a share (the ring must hold their noise); default t.
        noise_mu_floor: the least Skellam parameter this client adds by itself (its local floor, so that
            its vector alone is DP); its noise is ``max(share, floor)``; 0 for none.
        beta: conditional-rounding parameter of :func:`fedsys.secagg.ddp_bounds.rounded_l2_bound`.
        wrap_bound: tolerated probability that the round's aggregate wraps around.
        max_ring_bits: refuse parameters that need a larger ring (the bits-per-coordinate budget).

    Raises:
        ConfigError: a parameter is out of range or the ring would exceed ``max_ring_bits``.
    """
    padded_dim = padded_dim_for(dim)
    _check_positive("clip", clip)
    _check_positive("gamma", gamma)
    _check_positive("noise mu total", noise_mu_total)
    _check_count("min survivors", min_survivors, 1)
    _check_count("max summands", max_summands, 1)
    contributors = min_survivors if max_contributors is None else max_contributors
    _check_count("max contributors", contributors, min_survivors)
    if not (math.isfinite(noise_mu_floor) and noise_mu_floor >= 0):
        raise ConfigError(f"ddp noise floor mu must be finite and >= 0, got {noise_mu_floor!r}")
    share = max(noise_mu_total / min_survivors, noise_mu_floor)
    if share > MAX_NOISE_MU:
        raise ConfigError(f"ddp noise share mu {share:.3g} exceeds {MAX_NOISE_MU:.0e}; lower gamma")
    ring_noise = share * contributors
    ring_bits = ring_bits_for_ddp(
        padded_dim=padded_dim,
        clip=clip,
        gamma=gamma,
        max_summands=max_summands,
        noise_mu=ring_noise,
        wrap_bound=wrap_bound,
    )
    if ring_bits > max_ring_bits:
        raise ConfigError(f"ddp needs {ring_bits} ring bits, more than the {max_ring_bits} allowed")
    return DdpEncoding(
        dim=dim,
        padded_dim=padded_dim,
        clip=clip,
        gamma=gamma,
        l2_bound=rounded_l2_bound(scaled_norm=gamma * clip, padded_dim=padded_dim, beta=beta),
        ring_bits=ring_bits,
        noise_mu=share,
        beta=beta,
        noise_mu_total=noise_mu_total,
        min_survivors=min_survivors,
        max_contributors=contributors,
        max_summands=max_summands,
        noise_mu_floor=noise_mu_floor,
        wrap_probability=wrap_probability(
            ring_bits=ring_bits,
            padded_dim=padded_dim,
            clip=clip,
            gamma=gamma,
            num_summands=max_summands,
            noise_mu=ring_noise,
        ),
    )


def _signs(seed: bytes, padded_dim: int) -> NDArray[np.float64]:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ConfigError(f"ddp rotation seed must be {SEED_BYTES} bytes")
    bits = expand_seed(seed, length=padded_dim, ring_bits=1)
    return 1.0 - 2.0 * bits.astype(np.float64)


@functools.lru_cache(maxsize=8)
def _hadamard_block(size: int) -> NDArray[np.float64]:
    block = np.ones((1, 1))
    while block.shape[0] < size:
        block = np.block([[block, block], [block, -block]])
    block.setflags(write=False)
    return block


def _hadamard(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """Orthonormal fast Walsh-Hadamard transform of each row (Sylvester order), O(d log d) per row.

    ``H_d = H_(d/k) (x) H_k``: the first log2(k) butterfly levels act within contiguous blocks of k, done as
    one matrix product with the +-1 matrix ``H_k``; the remaining levels are in-place butterflies.
    """
    count, length = rows.shape
    block = min(length, _BLOCK)
    out = (rows.reshape(-1, block) @ _hadamard_block(block)).reshape(count, length)
    half = block
    while half < length:
        pairs = out.reshape(count, length // (2 * half), 2, half)
        top = pairs[:, :, 0, :].copy()
        pairs[:, :, 0, :] += pairs[:, :, 1, :]
        np.subtract(top, pairs[:, :, 1, :], out=pairs[:, :, 1, :])
        half *= 2
    out /= math.sqrt(length)
    return out


def _as_rows(x: NDArray[np.floating], width: int, name: str) -> NDArray[np.float64]:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != width:
        raise ModelError(f"ddp {name} must have shape (B, {width}) or ({width},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ModelError(f"ddp {name} has {int(np.count_nonzero(~np.isfinite(array)))} non-finite values")
    return array.reshape(-1, width)


def rotate(x: NDArray[np.floating], *, seed: bytes, padded_dim: int) -> NDArray[np.float64]:
    """Zero-pad to ``padded_dim`` (a power of two) and apply ``H D`` (orthonormal, norm-preserving).

    Keeps the rank: ``(d,)`` gives ``(padded_dim,)``, ``(B, d)`` gives ``(B, padded_dim)``.

    Raises:
        ConfigError: a bad seed or a ``padded_dim`` that is not a power of two.
        ModelError: a wrong shape or non-finite values.
    """
    if padded_dim < 1 or padded_dim & (padded_dim - 1):
        raise ConfigError(f"ddp padded dim must be a power of two, got {padded_dim}")
    array = np.asarray(x)
    width = array.shape[-1] if array.ndim else 0
    if width > padded_dim:
        raise ModelError(f"ddp cannot rotate {width} coordinates into {padded_dim}")
    rows = _as_rows(array, width, "input")
    padded = np.zeros((rows.shape[0], padded_dim))
    padded[:, :width] = rows
    rotated = _hadamard(padded * _signs(seed, padded_dim))
    return rotated[0] if array.ndim == 1 else rotated


def unrotate(y: NDArray[np.floating], *, seed: bytes, dim: int) -> NDArray[np.float64]:
    """Invert :func:`rotate` (``D H``, as ``H`` is symmetric and orthonormal) and drop the padding."""
    array = np.asarray(y)
    width = array.shape[-1] if array.ndim else 0
    if width != padded_dim_for(dim):
        raise ModelError(f"ddp unrotate expects {padded_dim_for(dim)} coordinates for dim {dim}, got {width}")
    rows = _as_rows(array, width, "rotated vector")
    restored = _hadamard(rows) * _signs(seed, width)
    return restored[0, :dim] if array.ndim == 1 else restored[:, :dim]


def _round_conditionally(
    scaled: NDArray[np.float64], *, bound_squared: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Unbiased randomised rounding per row, redrawn until ``||row||^2 <= bound_squared`` (exact int64)."""
    floor = np.floor(scaled)
    fraction = scaled - floor
    base = floor.astype(np.int64)
    rounded = base + (rng.random(scaled.shape) < fraction)
    pending = np.flatnonzero(np.einsum("ij,ij->i", rounded, rounded) > bound_squared)
    for _ in range(MAX_ROUNDING_ATTEMPTS):
        if pending.size == 0:
            return rounded
        redraw = base[pending] + (rng.random((pending.size, scaled.shape[1])) < fraction[pending])
        rounded[pending] = redraw
        pending = pending[np.einsum("ij,ij->i", redraw, redraw) > bound_squared]
    raise FedsysError(f"ddp conditional rounding failed {MAX_ROUNDING_ATTEMPTS} times; is beta too large?")


def encode_records(
    per_sample: NDArray[np.floating], enc: DdpEncoding, *, rotation_seed: bytes, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Clip each row to ``enc.clip``, scale by gamma, rotate, round conditionally and sum (no noise yet).

    Args:
        per_sample: ``(B, dim)`` per-record gradients (B may be 0: an empty Poisson sample).
        enc: the round's encoding.
        rotation_seed: the round's public 32-byte rotation seed.
        rng: rounding randomness (not secret).

    Returns:
        The ``(padded_dim,)`` int64 sum of the rounded vectors; each has squared norm <= ``floor(Delta_2^2)``.

    Raises:
        ModelError: wrong shape or non-finite values.
    """
    rows = _as_rows(per_sample, enc.dim, "per-sample gradients")
    total = np.zeros(enc.padded_dim, dtype=np.int64)
    for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        chunk = rows[start : start + _ROWS_PER_CHUNK]
        norms = np.linalg.norm(chunk, axis=1)
        factors = enc.gamma * np.minimum(1.0, enc.clip / np.maximum(norms, np.finfo(np.float64).tiny))
        rotated = rotate(chunk * factors[:, None], seed=rotation_seed, padded_dim=enc.padded_dim)
        rounded = _round_conditionally(rotated, bound_squared=enc.l2_bound_squared, rng=rng)
        total += rounded.sum(axis=0)
    return total


def sample_skellam(mu: float, size: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """``size`` draws of symmetric Skellam ``Poisson(mu) - Poisson(mu)`` (variance ``2 mu``), as int64.

    Raises:
        ConfigError: ``mu`` not in (0, 1e15].
    """
    if not (math.isfinite(mu) and 0 < mu <= MAX_NOISE_MU):
        raise ConfigError(f"ddp Skellam mu must be in (0, {MAX_NOISE_MU:.0e}], got {mu!r}")
    positive = rng.poisson(mu, size).astype(np.int64)
    return positive - rng.poisson(mu, size).astype(np.int64)


def add_noise_share(
    v: NDArray[np.int64], enc: DdpEncoding, *, noise_rng: np.random.Generator
) -> NDArray[np.uint64]:
    """Add this client's ``Sk(enc.noise_mu)`` share to each coordinate and reduce into Z_{2^ring_bits}.

    Args:
        v: the ``(padded_dim,)`` int64 output of :func:`encode_records`.
        enc: the round's encoding.
        noise_rng: secret noise source; :func:`secure_noise_generator` outside simulations.

    Raises:
        ModelError: wrong shape, dtype or magnitude of ``v``.
    """
    array = np.asarray(v)
    if array.shape != (enc.padded_dim,) or array.dtype != np.int64:
        raise ModelError(
            f"ddp noise expects int64 of shape ({enc.padded_dim},), got {array.dtype} {array.shape}"
        )
    if array.size and int(np.abs(array).max()) >= _INT64_SAFE:
        raise ModelError("ddp encoded vector is too large for the int64 sum")
    noisy = array + sample_skellam(enc.noise_mu, enc.padded_dim, noise_rng)
    return noisy.view(np.uint64) & ring_mask(enc.ring_bits)


def encode_client_update(
    update: NDArray[np.floating],
    enc: DdpEncoding,
    *,
    rotation_seed: bytes,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> NDArray[np.uint64]:
    """Client-level mode: clip, rotate and round the whole ``(dim,)`` update once, then add the share."""
    row = _as_rows(update, enc.dim, "update")
    if row.shape[0] != 1:
        raise ModelError(f"ddp client update must have shape ({enc.dim},), got {np.shape(update)}")
    encoded = encode_records(row, enc, rotation_seed=rotation_seed, rng=rng)
    return add_noise_share(encoded, enc, noise_rng=noise_rng)


def decode_sum(total: NDArray[np.uint64], enc: DdpEncoding, *, rotation_seed: bytes) -> NDArray[np.float64]:
    """Centre the ring sum into ``[-2^(k-1), 2^(k-1))``, unrotate and divide by gamma.

    Raises:
        ProtocolError: wrong shape or values outside Z_{2^ring_bits}.
    """
    array = np.asarray(total)
    modulus = 1 << enc.ring_bits
    if array.shape != (enc.padded_dim,) or array.dtype != np.uint64:
        raise ProtocolError(
            f"ddp sum must be uint64 of shape ({enc.padded_dim},), got {array.dtype} {array.shape}"
        )
    if array.size and int(array.max()) >= modulus:
        raise ProtocolError(f"ddp sum has values outside Z_2^{enc.ring_bits}")
    return (
        unrotate(centre(array, enc.ring_bits).astype(np.float64), seed=rotation_seed, dim=enc.dim) / enc.gamma
    )


def centre(values: NDArray[np.uint64], ring_bits: int) -> NDArray[np.int64]:
    """Map Z_{2^k} (as uint64 in [0, 2^k)) to the signed integers in ``[-2^(k-1), 2^(k-1))``."""
    signed = values.astype(np.int64)
    signed[signed >= 1 << (ring_bits - 1)] -= 1 << ring_bits
    return signed


def secure_noise_generator() -> np.random.Generator:
    """A numpy Generator over ChaCha20 (20 rounds) keyed with 256 bits from ``os.urandom``.

    randomgen's ``ChaCha(key=...)`` sets the key directly (no seed expansion) and its stream equals the
    RFC 7539 ChaCha20 keystream with a zero nonce, so its outputs are those of a CSPRNG. There is no seed
    argument on purpose: DP noise must never be reproducible or chosen by another party.
    """
    key = int.from_bytes(os.urandom(32), "little")
    return np.random.Generator(ChaCha(key=key, counter=0, rounds=20))
