"""Fixed-point encoding of model updates into the ring Z_{2^k} used by secure aggregation.

Quantisation (as in Bonawitz et al. CCS 2017, Sec. 2, and Flower's SecAgg+ workflow): clip each
coordinate to [-c, c], map it affinely onto [0, 2^b - 1] and round stochastically, which is unbiased;
rounding randomness is not secret, so it comes from a caller-passed ``numpy.random.Generator``.
Each client's rounding error is below one step delta = 2c / (2^b - 1), hence for n unclipped inputs

    |dequantize_sum(sum_i q(x_i)) - sum_i x_i| <= n * delta   (per coordinate),

provided the ring holds the integer sum without wrapping: k >= b + ceil(log2 n) + 1 (see
:func:`ring_bits_for`).

Weighted averaging: a client with weight w (its example count) sends x * (w / W) and appends the
coordinate c * (w / W), where W is a public upper bound on weights sent by the server at setup. Since
w / W <= 1 the scaled update stays inside the clip range and keeps the full quantisation grid (sending
w * x instead would force c to grow with example counts and coarsen the grid for everyone). The server
recovers A = sum w_i x_i / W and B = sum w_i / W, each with error <= n * delta (B's with n * delta / c),
and returns A / B, whose error is at most 2 * n * delta / B_hat for clipped inputs (|mean| <= c); see
:func:`mean_error_bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedsys.errors import ConfigError, ModelError
from fedsys.secagg.prg import MAX_RING_BITS

MAX_QUANT_BITS = 32


@dataclass(frozen=True)
class Quantized:
    """Quantised vector: ``values`` in [0, 2^quant_bits) and how many inputs were clipped."""

    values: NDArray[np.uint64]
    num_clipped: int


def check_encoding(*, clip_range: float, quant_bits: int) -> None:
    """Validate the encoding parameters.

    Raises:
        ConfigError: clip range not finite and positive, or quant bits outside [1, 32].
    """
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ConfigError(f"secagg clip-range must be finite and > 0, got {clip_range}")
    if not 1 <= quant_bits <= MAX_QUANT_BITS:
        raise ConfigError(f"secagg quant-bits must be in [1, {MAX_QUANT_BITS}], got {quant_bits}")


def ring_bits_for(*, quant_bits: int, num_clients: int) -> int:
    """Smallest ring exponent k = quant_bits + ceil(log2 n) + 1 where n quantised values sum exactly.

    Raises:
        ConfigError: fewer than one client, or k would exceed 64.
    """
    if num_clients < 1:
        raise ConfigError(f"secagg needs at least one client, got {num_clients}")
    ring_bits = quant_bits + math.ceil(math.log2(num_clients)) + 1
    if ring_bits > MAX_RING_BITS:
        raise ConfigError(
            f"quant-bits {quant_bits} with {num_clients} clients needs a {ring_bits}-bit ring (> 64)"
        )
    return ring_bits


def quantization_step(*, clip_range: float, quant_bits: int) -> float:
    """Grid spacing delta = 2c / (2^b - 1)."""
    return 2.0 * clip_range / float((1 << quant_bits) - 1)


def sum_error_bound(*, num_summands: int, clip_range: float, quant_bits: int) -> float:
    """Per-coordinate bound n * delta on the error of a dequantised sum of unclipped inputs."""
    return num_summands * quantization_step(clip_range=clip_range, quant_bits=quant_bits)


def mean_error_bound(*, num_summands: int, clip_range: float, quant_bits: int, weight_sum: float) -> float:
    """Per-coordinate bound 2 n delta / B_hat on the weighted mean's error (B_hat = sum w_i / W)."""
    return (
        2.0
        * sum_error_bound(num_summands=num_summands, clip_range=clip_range, quant_bits=quant_bits)
        / weight_sum
    )


def clip(values: NDArray[np.floating], *, clip_range: float) -> tuple[NDArray[np.float64], int]:
    """Clip to [-clip_range, clip_range]; returns the clipped copy and the number of clipped coordinates.

    Raises:
        ModelError: the values contain NaN or infinity.
    """
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ModelError(f"update has {int(np.count_nonzero(~np.isfinite(array)))} non-finite coordinates")
    num_clipped = int(np.count_nonzero(np.abs(array) > clip_range))
    return np.clip(array, -clip_range, clip_range), num_clipped


def quantize(
    values: NDArray[np.floating], *, clip_range: float, quant_bits: int, rng: np.random.Generator
) -> Quantized:
    """Clip, map onto [0, 2^b - 1] and round stochastically (unbiased) to integers.

    Args:
        values: real vector.
        clip_range: c > 0.
        quant_bits: b in [1, 32].
        rng: source of the (non-secret) rounding randomness.

    Raises:
        ConfigError: invalid parameters.
        ModelError: non-finite values.
    """
    check_encoding(clip_range=clip_range, quant_bits=quant_bits)
    clipped, num_clipped = clip(values, clip_range=clip_range)
    scaled = (clipped + clip_range) / quantization_step(clip_range=clip_range, quant_bits=quant_bits)
    scaled = np.clip(scaled, 0.0, float((1 << quant_bits) - 1))
    floor = np.floor(scaled)
    rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
    return Quantized(values=rounded.astype(np.uint64), num_clipped=num_clipped)


def dequantize_sum(
    total: NDArray[np.uint64], *, num_summands: int, clip_range: float, quant_bits: int
) -> NDArray[np.float64]:
    """Map the exact integer sum of ``num_summands`` quantised vectors back to the real sum."""
    step = quantization_step(clip_range=clip_range, quant_bits=quant_bits)
    return total.astype(np.float64) * step - num_summands * clip_range


def encode_weighted(
    update: NDArray[np.floating], *, weight: float, max_weight: float, clip_range: float
) -> tuple[NDArray[np.float64], int]:
    """Clip ``update``, scale it by w / W and append the weight coordinate c * w / W.

    Returns:
        The encoded vector (length len(update) + 1) and the number of clipped coordinates.

    Raises:
        ConfigError: weight not in (0, max_weight].
        ModelError: non-finite update values.
    """
    if not (math.isfinite(weight) and 0 < weight <= max_weight):
        raise ConfigError(f"secagg weight must be in (0, max-weight={max_weight}], got {weight}")
    clipped, num_clipped = clip(update, clip_range=clip_range)
    fraction = weight / max_weight
    return np.append(clipped * fraction, clip_range * fraction), num_clipped


def decode_weighted(
    total: NDArray[np.float64], *, max_weight: float, clip_range: float
) -> tuple[NDArray[np.float64], float]:
    """Split a dequantised sum of :func:`encode_weighted` vectors into (A, B) = (sum w x / W, sum w / W)."""
    return total[:-1], float(total[-1]) / clip_range
