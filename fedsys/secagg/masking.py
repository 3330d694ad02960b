"""Self masks and pairwise masks over Z_{2^k} (Bonawitz et al. CCS 2017, Sec. 3.2; Bell et al. 2020).

A client u sends y_u = x_u + PRG(b_u) + sum_{v in N(u)} gamma_uv * PRG(s_uv) mod 2^k with
gamma_uv = +1 if u > v else -1, so every pairwise mask appears once with each sign and cancels in the
sum over surviving pairs. All arithmetic uses uint64 with its natural wrap-around; since 2^k divides
2^64, reducing modulo 2^k once at the end (:func:`reduce`) gives the same result as reducing each step.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519
from numpy.typing import NDArray

from fedsys.secagg.prg import expand_seed, ring_mask
from fedsys.secagg.primitives import RoundContext, agree

Sign = Literal[1, -1]


def pairwise_sign(owner: int, peer: int) -> Sign:
    """gamma_{owner,peer}: +1 if owner > peer, else -1 (antisymmetric, so masks cancel)."""
    return 1 if owner > peer else -1


def pairwise_seed(private: x25519.X25519PrivateKey, peer_public: bytes, *, context: RoundContext) -> bytes:
    """s_uv = HKDF(X25519(s_u, s_v^PK)); both ends of a pair derive the same seed."""
    return agree(private, peer_public, context=context, purpose="mask")


def apply_mask(accumulator: NDArray[np.uint64], seed: bytes, *, sign: Sign, ring_bits: int) -> None:
    """Add (sign=+1) or subtract (sign=-1) PRG(seed) into ``accumulator`` in place (mod 2^64)."""
    mask = expand_seed(seed, length=accumulator.shape[0], ring_bits=ring_bits)
    if sign == 1:
        np.add(accumulator, mask, out=accumulator)
    else:
        np.subtract(accumulator, mask, out=accumulator)


def reduce(accumulator: NDArray[np.uint64], *, ring_bits: int) -> NDArray[np.uint64]:
    """Reduce modulo 2^ring_bits in place and return the array."""
    np.bitwise_and(accumulator, ring_mask(ring_bits), out=accumulator)
    return accumulator
