"""Norm and wrap-around bounds for distributed DP in the SecAgg ring (see :mod:`fedsys.secagg.ddp`).

Two bounds decide the parameters of a distributed-DP round:

- **Sensitivity after rounding** (Kairouz, Liu, Steinke, ICML 2021, "The Distributed Discrete Gaussian
  Mechanism for Federated Learning with Secure Aggregation", Thm 1; the same bound in Agarwal, Kairouz,
  Liu, NeurIPS 2021, Sec. 4). Randomised rounding of a vector ``x`` in R^d with ``||x||_2 <= r`` gives an
  integer vector with ``||x~||_2 <= r + sqrt(d)`` always, and with ``||x~||_2^2 <= r^2 + d/4 +
  sqrt(2 ln(1/beta)) (r + sqrt(d)/2)`` with probability at least ``1 - beta``. Rounding is repeated until
  the norm is at most the smaller of the two, so the bound holds with certainty ("conditional rounding").
  An integer vector also has ``||x~||_1 <= min(||x~||_2^2, sqrt(d) ||x~||_2)``.
- **Wrap-around in Z_{2^k}** (this module's own derivation, stated at :func:`wrap_probability`).
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.stats import binom

from fedsys.errors import ConfigError

MAX_DDP_RING_BITS = 62  # the centred sum must fit int64 with room for the noise draw
DEFAULT_BETA = math.exp(-0.5)  # TFF's default for conditional rounding; ~1.65 tries per vector
DEFAULT_WRAP_BOUND = 1e-9


def padded_dim_for(dim: int) -> int:
    """The Walsh-Hadamard length: the smallest power of two >= ``dim``.

    Raises:
        ConfigError: ``dim`` is not a positive integer.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"ddp dim must be an integer >= 1, got {dim!r}")
    return 1 << (dim - 1).bit_length()


def _check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0 <= beta < 1):
        raise ConfigError(f"ddp beta (conditional rounding) must be in [0, 1), got {beta!r}")


def rounded_l2_bound(*, scaled_norm: float, padded_dim: int, beta: float) -> float:
    """L2 bound of a conditionally rounded integer vector (Kairouz et al. ICML 2021, Thm 1).

    Args:
        scaled_norm: ``gamma * clip``, the norm of the real vector before rounding.
        padded_dim: dimension of the (rotated) vector being rounded.
        beta: rounding failure probability per attempt; 0 keeps the deterministic bound.

    Returns:
        ``min(r + sqrt(d), sqrt(r^2 + d/4 + sqrt(2 ln(1/beta)) (r + sqrt(d)/2)))``.

    Raises:
        ConfigError: a parameter is out of range.
    """
    if not (math.isfinite(scaled_norm) and scaled_norm > 0):
        raise ConfigError(f"ddp gamma * clip must be finite and > 0, got {scaled_norm!r}")
    _check_beta(beta)
    root_d = math.sqrt(padded_dim)
    deterministic = scaled_norm + root_d
    if beta == 0:
        return deterministic
    squared = scaled_norm**2 + padded_dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_norm + root_d / 2)
    return min(deterministic, math.sqrt(squared))


def l1_bound(*, l2_bound: float, padded_dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= ``l2_bound``: ``min(l2^2, sqrt(d) l2)``."""
    return min(l2_bound**2, math.sqrt(padded_dim) * l2_bound)


def _log_tail(*, room: float, signal_var: float, noise_mu: float) -> float:
    """log of the Chernoff bound on P(X + Z >= room), X sub-Gaussian(signal_var), Z ~ Sk(noise_mu)."""

    def exponent(lam: float) -> float:
        # 4 mu sinh^2(lam / 2) = 2 mu (cosh lam - 1), written so small lam keeps its precision
        return lam * lam * signal_var / 2 + 4 * noise_mu * math.sinh(lam / 2) ** 2 - lam * room

    def slope(lam: float) -> float:
        return lam * signal_var + 2 * noise_mu * math.sinh(lam) - room

    uppers = []
    if signal_var > 0:
        uppers.append(room / signal_var)
    if noise_mu > 0:
        uppers.append(math.asinh(room / (2 * noise_mu)))
    upper = min(uppers)  # each term alone already makes the slope >= 0 there
    lam = brentq(slope, 0.0, upper) if slope(upper) > 0 else upper
    return exponent(lam)  # any lam > 0 gives a valid bound; the root only makes it tight


def wrap_probability(
    *, ring_bits: int, padded_dim: int, clip: float, gamma: float, num_summands: int, noise_mu: float
) -> float:
    """Upper bound on the probability that any coordinate of the aggregate leaves Z_{2^k}'s centred range.

    The aggregate is ``S = gamma H D sum_r x_r + sum_r e_r + Z`` with ``||x_r||_2 <= clip``, ``D`` the
    random signs, ``H`` the orthonormal Hadamard matrix, ``e_r`` the rounding errors (each coordinate in
    (-1, 1)) and ``Z`` the total Skellam noise, ``Sk(noise_mu)`` per coordinate. Decoding is correct
    unless ``|S_j| >= 2^(k-1)`` for some ``j``. Per coordinate: ``|sum_r e_rj| < N``; the signal is a
    Rademacher sum with ``sum_i a_i^2 <= (N gamma clip)^2 / d`` (Hoeffding: MGF <= exp(l^2 s^2 / 2));
    Skellam's MGF is ``exp(2 mu (cosh l - 1))``. A Chernoff bound on the sum, both signs and a union bound
    over the ``d`` coordinates give ``d * 2 * min_l exp(l^2 s^2/2 + 2 mu (cosh l - 1) - l (2^(k-1) - N))``.

    Assumes the rotation seed is drawn independently of the data (a server that picks it adversarially
    can cause wrap-around, which breaks utility only: the privacy bound never depends on the rotation).

    Args:
        ring_bits: k.
        padded_dim: d, the rotated dimension.
        clip: per-summand L2 clip.
        gamma: scale applied before rounding.
        num_summands: N, clipped vectors summed (records in sample-level mode, clients in client-level).
        noise_mu: Skellam parameter of all the noise in the sum (variance ``2 * noise_mu``).

    Returns:
        A probability bound in [0, 1].

    Raises:
        ConfigError: a parameter is out of range.
    """
    if not 2 <= ring_bits <= MAX_DDP_RING_BITS:
        raise ConfigError(f"ddp ring bits must be in [2, {MAX_DDP_RING_BITS}], got {ring_bits!r}")
    if num_summands < 0 or not (math.isfinite(noise_mu) and noise_mu >= 0):
        raise ConfigError(f"ddp num_summands >= 0 and noise mu >= 0 required, got {num_summands}, {noise_mu}")
    room = 2.0 ** (ring_bits - 1) - num_summands
    if room <= 0:
        return 1.0
    signal_var = (num_summands * gamma * clip) ** 2 / padded_dim
    if signal_var == 0 and noise_mu == 0:
        return 0.0
    log_bound = math.log(2 * padded_dim) + _log_tail(room=room, signal_var=signal_var, noise_mu=noise_mu)
    return min(1.0, math.exp(log_bound)) if log_bound < 0 else 1.0


def ring_bits_for_ddp(
    *,
    padded_dim: int,
    clip: float,
    gamma: float,
    max_summands: int,
    noise_mu: float,
    wrap_bound: float = DEFAULT_WRAP_BOUND,
) -> int:
    """Smallest ring exponent k <= 62 whose :func:`wrap_probability` is at most ``wrap_bound``.

    Args:
        padded_dim: d, the rotated dimension.
        clip: per-summand L2 clip.
        gamma: scale applied before rounding.
        max_summands: most clipped vectors in one aggregate.
        noise_mu: Skellam parameter of the most noise the aggregate can carry (all contributors).
        wrap_bound: tolerated probability that a round's aggregate wraps around.

    Raises:
        ConfigError: a parameter is out of range or no k <= 62 is enough.
    """
    if not (math.isfinite(wrap_bound) and 0 < wrap_bound < 1):
        raise ConfigError(f"ddp wrap bound must be in (0, 1), got {wrap_bound!r}")
    for bits in range(2, MAX_DDP_RING_BITS + 1):
        probability = wrap_probability(
            ring_bits=bits,
            padded_dim=padded_dim,
            clip=clip,
            gamma=gamma,
            num_summands=max_summands,
            noise_mu=noise_mu,
        )
        if probability <= wrap_bound:
            return bits
    raise ConfigError(
        f"ddp needs more than {MAX_DDP_RING_BITS} ring bits (gamma {gamma}, noise mu {noise_mu}, "
        f"{max_summands} summands); lower gamma"
    )


def max_summands_for(*, num_records: int, sample_rate: float, tail: float = DEFAULT_WRAP_BOUND) -> int:
    """A count Poisson sampling of ``num_records`` at ``sample_rate`` exceeds with probability <= ``tail``.

    Sizing the ring for it adds ``tail`` to the round's wrap-around probability.

    Raises:
        ConfigError: a parameter is out of range.
    """
    if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 1:
        raise ConfigError(f"ddp num_records must be an integer >= 1, got {num_records!r}")
    if not (0 < sample_rate <= 1) or not (0 < tail < 1):
        raise ConfigError(f"ddp sample_rate must be in (0, 1] and tail in (0, 1), got {sample_rate}, {tail}")
    return max(1, int(binom.isf(tail, num_records, sample_rate)))
