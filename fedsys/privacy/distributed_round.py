"""The public parameters of a distributed-DP round (``dp.mode = "distributed"``).

Distributed DP-FedSGD: every sampled holder Poisson-samples its records, encodes each record's
clipped gradient at the global weights into the integer ring and adds a Skellam *share* of the
noise (:mod:`fedsys.secagg.ddp`); SecAgg+ reveals only the sum, which carries the noise of all
contributors. What server and holders must agree on is public and derived here:

- the aggregate noise ``dp.noise-multiplier`` ``z``: the total Skellam noise has standard
  deviation ``z * Delta_2``, with ``Delta_2`` the integer sensitivity of one record after
  scaling and conditional rounding, so the accountant's leading term is the Gaussian one at ``z``;
- the scale ``gamma``: the server picks the largest one whose ring fits ``dp.bits`` bits per
  coordinate for the round's participants and sends it with the SecAgg+ setup. A holder uses the
  ``gamma`` it is sent, but computes ``Delta_2`` and its noise share itself, so no ``gamma`` a
  server sends can weaken the guarantee the holder's ledger charges (it only changes precision);
- the threshold ``t`` of the round (checked by each holder against its own policy): each holder
  adds ``mu_total / t``, so every aggregate SecAgg+ can release (``>= t`` contributors) carries at
  least the calibrated noise, whoever dropped out;
- the rotation seed, from the run id and round (public; the bound never depends on it).

The noise randomness itself is never derived from anything here: a real holder draws it from
:func:`fedsys.secagg.ddp.secure_noise_generator` (ChaCha20 keyed from the OS).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.privacy.distributed import SkellamSegment, sensitivity
from fedsys.secagg.ddp import DdpEncoding, make_encoding

_GAMMA_STEPS = 40  # bisection steps on log(gamma): far finer than one ring bit


def rotation_seed(run_id: str, rnd: int) -> bytes:
    """The round's public 32-byte rotation seed."""
    return hashlib.sha256(f"fedsys-ddp-rotation/{run_id}/{rnd}".encode()).digest()


def records_bound(batch_size: int) -> int:
    """A public bound on one holder's Poisson batch (expected ``batch_size``), for sizing the ring.

    A batch above it (probability below 1e-9 for any batch size) can only make the sum wrap
    around, which costs accuracy in that round, never privacy.
    """
    return math.ceil(batch_size + 7.0 * math.sqrt(batch_size) + 25.0)


def mu_total_for(noise_multiplier: float, l2: float) -> float:
    """The aggregate Skellam parameter whose standard deviation is ``noise_multiplier * l2``."""
    return (noise_multiplier * l2) ** 2 / 2.0


def encoding_for(
    config: RunConfig,
    *,
    dim: int,
    gamma: float,
    threshold: int,
    participants: int,
    local_noise_multiplier: float | None = None,
) -> DdpEncoding:
    """The encoding of a round with scale ``gamma`` (any ring size: see :func:`server_encoding`).

    ``local_noise_multiplier`` is the floor on the noise one holder adds by itself (a holder passes
    its own; the server leaves it None and sizes the ring with ``dp.local-noise-multiplier``).

    Raises:
        ConfigError: ``dp.noise-multiplier`` is not > 0, or the parameters are out of range.
    """
    z = config.dp.noise_multiplier
    if not (math.isfinite(z) and z > 0):
        raise ConfigError(f'dp.mode = "distributed" needs dp.noise-multiplier > 0, got {z}')
    floor = config.dp.local_noise_multiplier if local_noise_multiplier is None else local_noise_multiplier
    _, l2 = sensitivity(clip=config.dp.max_grad_norm, gamma=gamma, dim=dim)
    return make_encoding(
        dim=dim,
        clip=config.dp.max_grad_norm,
        gamma=gamma,
        noise_mu_total=mu_total_for(z, l2),
        noise_mu_floor=mu_total_for(floor, l2) if floor > 0 else 0.0,
        min_survivors=threshold,
        max_summands=participants
        * (1 if config.dp.level == "client" else records_bound(config.train.batch_size)),
        max_contributors=participants,
    )


def server_encoding(config: RunConfig, *, dim: int, threshold: int, participants: int) -> DdpEncoding:
    """The largest ``gamma`` whose ring fits ``dp.bits`` bits (the server's choice, sent at setup).

    Raises:
        ConfigError: even ``gamma = 1 / clip`` needs more than ``dp.bits`` bits.
    """

    def fits(gamma: float) -> DdpEncoding | None:
        try:
            enc = encoding_for(config, dim=dim, gamma=gamma, threshold=threshold, participants=participants)
        except ConfigError:
            return None
        return enc if enc.ring_bits <= config.dp.bits else None

    lo = 1.0 / config.dp.max_grad_norm
    best = fits(lo)
    if best is None:
        raise ConfigError(
            f"dp.bits = {config.dp.bits} is too few for distributed DP with {participants} participants "
            f"and batch size {config.train.batch_size}; raise dp.bits"
        )
    hi = lo
    while (candidate := fits(hi * 2)) is not None and hi < 1e12:
        hi, best = hi * 2, candidate
    lo, hi = hi, hi * 2
    for _ in range(_GAMMA_STEPS):
        mid = math.sqrt(lo * hi)
        candidate = fits(mid)
        if candidate is None:
            hi = mid
        else:
            lo, best = mid, candidate
    return replace(best, ring_bits=config.dp.bits)


def holder_encoding(
    config: RunConfig,
    *,
    dim: int,
    gamma: float,
    ring_bits: int,
    threshold: int,
    participants: int,
    local_noise_multiplier: float = 0.0,
) -> DdpEncoding:
    """The holder's own encoding for the ``gamma`` and ring the server sent.

    Delta_2 and the noise share come from ``gamma`` and the holder's view of the round, the local
    floor from the holder's own ``local_noise_multiplier`` (never the server's); the ring size is
    the server's (a ring too small only wraps, which costs accuracy, never privacy).

    Raises:
        ConfigError: ``gamma`` or ``ring_bits`` out of range (the holder refuses the round).
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"distributed DP: the server's scale gamma must be finite and > 0, got {gamma}")
    if not 2 <= ring_bits <= 62:
        raise ConfigError(f"distributed DP: the server's ring bits must be in [2, 62], got {ring_bits}")
    enc = encoding_for(
        config,
        dim=dim,
        gamma=gamma,
        threshold=threshold,
        participants=participants,
        local_noise_multiplier=local_noise_multiplier,
    )
    return replace(enc, ring_bits=ring_bits)


def holder_sample_rate(config: RunConfig, num_examples: int) -> float:
    """The sampling rate a holder's ledger charges: its records' Poisson rate (sample level), or 1
    at client level (the server chooses who takes part, so no amplification is claimed)."""
    from fedsys.privacy.dpsgd import sample_rate_for

    if config.dp.level == "client":
        return 1.0
    return sample_rate_for(num_examples, config.train.batch_size)


def round_segment(enc: DdpEncoding, sample_rate: float) -> SkellamSegment:
    """What one round costs a holder sampling its records at ``sample_rate``: the aggregate noise
    it relies on (``mu_total``, i.e. ``t`` shares) and one record's integer sensitivities."""
    l1, l2 = sensitivity(clip=enc.clip, gamma=enc.gamma, dim=enc.dim, beta=enc.beta)
    return SkellamSegment(mu=enc.noise_mu_total, l1=l1, l2=l2, sample_rate=sample_rate, steps=1)


def local_epsilon(enc: DdpEncoding, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` of one holder's own noisy vectors seen unmasked (SecAgg+ broken, or the
    server colluding with every other holder of the round).

    Each carries ``Sk(enc.noise_mu)`` (its share, or its local floor when larger) on the sum of its
    sampled records: one round alone is the distributed mechanism with that parameter.
    """
    from fedsys.privacy.distributed import epsilon_of

    return epsilon_of([], [replace(round_segment(enc, sample_rate), mu=enc.noise_mu, steps=rounds)], delta)


def round_threshold(config: RunConfig, participants: int) -> int:
    """The SecAgg+ threshold a round of ``participants`` gets (as :class:`fedsys.secagg.SecAggServer`
    picks it from the scenario): the fewest noise shares any released aggregate carries."""
    from fedsys.secagg.graph import (
        DEFAULT_CORRUPTION_FRACTION,
        default_degree,
        default_threshold,
        malicious_threshold,
    )

    if config.secagg.threshold:
        return config.secagg.threshold
    if config.secagg.mode == "malicious":
        return malicious_threshold(participants, corruption_fraction=DEFAULT_CORRUPTION_FRACTION)
    degree = config.secagg.degree or default_degree(participants)
    return default_threshold(min(degree, participants - 1) + 1)


def expected_participants(config: RunConfig) -> int:
    """Clients sampled per round in simulation (the ring and the threshold are sized for them)."""
    total = config.simulation.num_clients
    per_round = config.sampling.clients_per_round or math.ceil(config.sampling.fraction * total)
    return max(2, min(total, per_round))


def resolve_noise(config: RunConfig, *, sizes: list[int], dim: int) -> RunConfig:
    """Turn ``dp.target-epsilon`` into the one public aggregate ``dp.noise-multiplier`` (simulation).

    In distributed mode every holder adds a share of the same aggregate noise, so the noise is
    agreed, not per holder: the multiplier that brings the most exposed simulated holder (the
    largest sampling rate) to the target after ``num-rounds`` rounds. A deployment names
    ``dp.noise-multiplier`` itself (``fedsys privacy plan --mode distributed``).

    Raises:
        ConfigError: the target cannot be met within the ring (raise ``dp.bits``).
    """
    from fedsys.privacy.distributed import calibrate_skellam

    target = config.dp.target_epsilon
    if config.dp.mode != "distributed" or target <= 0:
        return config
    participants = expected_participants(config)
    threshold = round_threshold(config, participants)
    rate = max(holder_sample_rate(config, n) for n in sizes)
    noise = 1.0
    for _ in range(3):  # gamma depends (weakly) on the noise through the ring size; converges at once
        trial = config.replace({"dp.noise-multiplier": noise})
        enc = server_encoding(trial, dim=dim, threshold=threshold, participants=participants)
        mu_total = calibrate_skellam(
            target * (1 - 1e-3),
            config.budget.target_delta,
            rate,
            config.num_rounds,
            clip=config.dp.max_grad_norm,
            gamma=enc.gamma,
            dim=dim,
        )
        noise = math.sqrt(2 * mu_total) / enc.l2_bound
    return config.replace({"dp.noise-multiplier": noise, "dp.target-epsilon": 0.0})
