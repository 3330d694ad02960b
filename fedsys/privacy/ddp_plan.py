"""Choose gamma and the Skellam noise level of a distributed-DP round for a bits-per-coordinate budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsys.errors import ConfigError
from fedsys.privacy.distributed import (
    SkellamSegment,
    calibrate_skellam,
    epsilon_of,
    noise_multiplier_equivalent,
    noise_share,
    sensitivity,
)
from fedsys.secagg.ddp_bounds import (
    DEFAULT_BETA,
    DEFAULT_WRAP_BOUND,
    MAX_DDP_RING_BITS,
    padded_dim_for,
    ring_bits_for_ddp,
    wrap_probability,
)


@dataclass(frozen=True)
class SkellamPlan:
    """A gamma and noise level for a bits-per-coordinate budget (:func:`plan_skellam`)."""

    gamma: float
    mu_total: float
    mu_share: float
    ring_bits: int
    l1: float
    l2: float
    noise_multiplier: float
    epsilon: float
    wrap_probability: float


def plan_skellam(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    clip: float,
    dim: int,
    max_ring_bits: int,
    min_survivors: int,
    max_summands: int,
    max_contributors: int | None = None,
    beta: float = DEFAULT_BETA,
    wrap_bound: float = DEFAULT_WRAP_BOUND,
) -> SkellamPlan:
    """The largest gamma (to 1%) whose calibrated noise fits a ``max_ring_bits`` ring, and its noise level.

    A larger gamma means less rounding error relative to the noise, but more bits. For each candidate gamma
    the noise is calibrated (:func:`calibrate_skellam`) and the ring sized (``ring_bits_for_ddp``) for
    ``max_contributors`` shares of ``mu_total / min_survivors`` and ``max_summands`` summands.

    Raises:
        ConfigError: parameters out of range, or even gamma = 1 / clip needs more than ``max_ring_bits``.
    """
    contributors = min_survivors if max_contributors is None else max_contributors
    padded = padded_dim_for(dim)

    def bits_for(gamma: float) -> tuple[int, float]:
        mu_total = calibrate_skellam(
            target_epsilon, delta, sample_rate, steps, clip=clip, gamma=gamma, dim=dim, beta=beta, rtol=1e-3
        )
        ring_noise = noise_share(mu_total, min_survivors) * contributors
        try:
            bits = ring_bits_for_ddp(
                padded_dim=padded,
                clip=clip,
                gamma=gamma,
                max_summands=max_summands,
                noise_mu=ring_noise,
                wrap_bound=wrap_bound,
            )
        except ConfigError:
            bits = MAX_DDP_RING_BITS + 1
        return bits, mu_total

    lo = 1.0 / clip
    if bits_for(lo)[0] > max_ring_bits:
        raise ConfigError(f"even gamma = 1/clip needs more than {max_ring_bits} ring bits")
    hi = lo * 2
    while bits_for(hi)[0] <= max_ring_bits:
        lo, hi = hi, hi * 2
    while hi > lo * 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if bits_for(mid)[0] <= max_ring_bits else (lo, mid)
    bits, mu_total = bits_for(lo)
    l1, l2 = sensitivity(clip=clip, gamma=lo, dim=dim, beta=beta)
    ring_noise = noise_share(mu_total, min_survivors) * contributors
    return SkellamPlan(
        gamma=lo,
        mu_total=mu_total,
        mu_share=noise_share(mu_total, min_survivors),
        ring_bits=bits,
        l1=l1,
        l2=l2,
        noise_multiplier=noise_multiplier_equivalent(mu_total=mu_total, gamma=lo, clip=clip),
        epsilon=epsilon_of([], [SkellamSegment(mu_total, l1, l2, sample_rate, steps)], delta),
        wrap_probability=wrap_probability(
            ring_bits=bits,
            padded_dim=padded,
            clip=clip,
            gamma=lo,
            num_summands=max_summands,
            noise_mu=ring_noise,
        ),
    )
