"""Pseudorandom generator expanding a 32-byte seed into a mask vector over the ring Z_{2^k}.

Bonawitz et al. CCS 2017, Sec. 3.1 (PRG): masks are PRG(seed) with a secure PRG. We use the AES-256-CTR
keystream under the seed as key and an all-zero initial counter block. This is safe because every seed
is used for exactly one expansion per round: self-mask seeds b_u are fresh random values and pairwise
seeds are HKDF outputs bound to the run and round (see :mod:`fedsys.secagg.primitives`).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from fedsys.errors import ConfigError

SEED_BYTES = 32
MAX_RING_BITS = 64
_WORD = np.dtype("<u8")
_SPARE_WORDS = 2


def ring_mask(ring_bits: int) -> np.uint64:
    """The bit mask ``2^ring_bits - 1`` reducing uint64 values into Z_{2^ring_bits}.

    Raises:
        ConfigError: ``ring_bits`` is not in [1, 64].
    """
    if not 1 <= ring_bits <= MAX_RING_BITS:
        raise ConfigError(f"secagg ring bits must be in [1, {MAX_RING_BITS}], got {ring_bits}")
    return np.uint64((1 << ring_bits) - 1)


def expand_seed(seed: bytes, *, length: int, ring_bits: int) -> NDArray[np.uint64]:
    """Expand ``seed`` into ``length`` uniform elements of Z_{2^ring_bits} (as uint64).

    Each element takes 8 keystream bytes reduced by masking; since 2^ring_bits divides 2^64 the
    result is exactly uniform when the keystream is.

    Args:
        seed: 32-byte secret seed (AES-256 key).
        length: number of ring elements.
        ring_bits: ring size exponent k in [1, 64].

    Returns:
        A new, writable uint64 array.

    Raises:
        ConfigError: wrong seed size, negative length or ring bits out of range.
    """
    if len(seed) != SEED_BYTES:
        raise ConfigError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ConfigError(f"PRG output length must be >= 0, got {length}")
    mask = ring_mask(ring_bits)
    # update_into wants room for one extra block; encrypting zeros straight into the array avoids
    # two full-size copies (about 3x faster for 10^6 elements).
    buffer = np.empty(length + _SPARE_WORDS, dtype=_WORD)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    written = encryptor.update_into(bytes(8 * length), buffer.data.cast("B"))
    encryptor.finalize()
    if written != 8 * length:
        raise RuntimeError(f"AES-CTR produced {written} bytes, expected {8 * length}")
    words = buffer[:length].view(np.uint64)
    np.bitwise_and(words, mask, out=words)
    return words
