"""Operator parameters of a SecAgg+ round and the aggregate it releases."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import ConfigError
from fedsys.secagg.encoding import check_encoding
from fedsys.secagg.graph import DEFAULT_CORRUPTION_FRACTION, malicious_threshold


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Round parameters chosen by the server operator.

    Args:
        max_weight: W, public upper bound on a client's weight (example count); see
            :mod:`fedsys.secagg.encoding` for the weighting scheme.
        clip_range: c, each (unweighted) update coordinate is clipped to [-c, c].
        quant_bits: b, quantisation grid of 2^b points over [-c, c].
        degree: k, neighbours per client; ``None`` = :func:`fedsys.secagg.graph.default_degree`.
        threshold: t of the k + 1 holders; ``None`` = floor((k + 1) / 2) + 1.
        min_survivors: fewest contributors for which an aggregate is released; ``None`` = t.
        mode: ``"semi-honest"`` trusts the server to follow the protocol; ``"malicious"`` adds signed
            keys and the ConsistencyCheck round, forces the complete graph and, by default,
            t = :func:`fedsys.secagg.graph.malicious_threshold` (clients with identity keys demand it).
        corruption_fraction: gamma for the malicious threshold.
        integer_ring_bits: integer-input mode (distributed DP): clients send vectors already
            in Z_2^k with k = this, and the server releases the ring sum as it is
            (:attr:`AggregateResult.ring_sum`) instead of a weighted average; clip range,
            quantisation and max-weight are then unused. ``None``: the fixed-point encoding.
        integer_scale: integer-input mode: the public scale the clients encode with (sent at setup).
        extra_length: fixed-point mode: integer coordinates each client appends after its quantised
            update and weight (federated evaluation sums, :mod:`fedsys.evaluation`); summed in the
            same ring and released apart as :attr:`AggregateResult.extra_sum`.
        min_ring_bits: the ring is at least this wide (the extra coordinates' sum must not wrap).
    """

    max_weight: float
    clip_range: float = 8.0
    quant_bits: int = 20
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None
    mode: Literal["semi-honest", "malicious"] = "semi-honest"
    corruption_fraction: float = DEFAULT_CORRUPTION_FRACTION
    integer_ring_bits: int | None = None
    integer_scale: float = 0.0
    extra_length: int = 0
    min_ring_bits: int = 0

    def __post_init__(self) -> None:
        if self.extra_length < 0 or (self.extra_length and self.integer_ring_bits is not None):
            raise ConfigError(
                f"secagg extra coordinates need fixed-point mode and a length >= 0, got {self.extra_length}"
            )
        if not 0 <= self.min_ring_bits <= 64:
            raise ConfigError(f"secagg min ring bits must be in [0, 64], got {self.min_ring_bits}")
        if self.integer_ring_bits is not None and not 2 <= self.integer_ring_bits <= 62:
            raise ConfigError(f"secagg integer ring bits must be in [2, 62], got {self.integer_ring_bits}")
        check_encoding(clip_range=self.clip_range, quant_bits=self.quant_bits)
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigError(f"secagg max-weight must be finite and > 0, got {self.max_weight}")
        if self.min_survivors is not None and self.min_survivors < 2:
            raise ConfigError(f"secagg min-survivors must be >= 2, got {self.min_survivors}")
        if self.mode not in ("semi-honest", "malicious"):
            raise ConfigError(f"secagg mode must be 'semi-honest' or 'malicious', got {self.mode!r}")
        malicious_threshold(2, corruption_fraction=self.corruption_fraction)  # range check


@dataclass(frozen=True)
class AggregateResult:
    """The released aggregate and round diagnostics.

    ``average`` is sum w_i x_i / sum w_i over ``contributors`` (x_i clipped to [-c, c]);
    ``mean_error_bound`` = 2 n delta / B_hat bounds its per-coordinate quantisation error.
    ``survivors_per_stage`` is (|U1|, |U2|, |contributors|, |U4|). ``excluded`` lists clients whose
    replies the server rejected as malformed (``rejections`` says why); one excluded only at unmask
    (wrong shares) still counts among the contributors, its shares were discarded.
    """

    average: NDArray[np.float64]
    weighted_sum: NDArray[np.float64]
    total_weight: float
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    excluded: tuple[int, ...]
    survivors_per_stage: tuple[int, ...]
    mean_error_bound: float
    rejections: Mapping[int, str]
    ring_sum: NDArray[np.uint64] | None = None
    """Integer-input mode only: the sum of the contributors' vectors in Z_2^k (``average`` and
    ``weighted_sum`` are then empty and ``total_weight`` is 0)."""
    extra_sum: NDArray[np.uint64] | None = None
    """With ``extra_length``: the ring sum of the contributors' extra coordinates (in Z_2^k)."""
