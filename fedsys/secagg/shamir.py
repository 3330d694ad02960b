"""Shamir t-out-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir, "How to share a secret", CACM 1979; used as SS.share / SS.recon in Bonawitz et al. CCS 2017,
Sec. 3.1. A secret s becomes f(0) of a random polynomial f of degree t - 1 with coefficients drawn
uniformly by :mod:`secrets`; holder x receives f(x). Any t shares determine s by Lagrange interpolation
at 0; any t - 1 shares are uniformly distributed whatever s is, so they reveal nothing (perfect
secrecy). The Mersenne prime 2^521 - 1 is large enough for 32-byte secrets (and up to 65 bytes).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from fedsys.errors import ConfigError, IntegrityError, ProtocolError

PRIME = 2**521 - 1


def share_bytes_length(prime: int = PRIME) -> int:
    """Fixed byte length of an encoded share value in GF(prime)."""
    return (prime.bit_length() + 7) // 8


def share_secret(
    secret: bytes, *, threshold: int, share_ids: Sequence[int], prime: int = PRIME
) -> dict[int, int]:
    """Split ``secret`` into one share per id, any ``threshold`` of which reconstruct it.

    Args:
        secret: the secret; as a big-endian integer it must be smaller than ``prime``.
        threshold: t, the number of shares needed, with 2 <= t <= len(share_ids).
        share_ids: distinct evaluation points in [1, prime) (the holders' participant ids).
        prime: field modulus; the default is 2^521 - 1 (smaller primes only for tests).

    Returns:
        Mapping share id -> f(id) mod prime.

    Raises:
        ConfigError: invalid threshold, duplicate or out-of-range ids, or a secret too large.
    """
    _check_threshold(threshold, len(share_ids))
    _check_ids(share_ids, prime)
    value = int.from_bytes(secret, "big")
    if 8 * len(secret) >= prime.bit_length():
        raise ConfigError(
            f"secret of {len(secret)} bytes does not fit GF(p) with p of {prime.bit_length()} bits"
        )
    coefficients = [value] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return {share_id: _evaluate(coefficients, share_id, prime) for share_id in share_ids}


def reconstruct_secret(
    shares: Mapping[int, int], *, threshold: int, secret_length: int, prime: int = PRIME
) -> bytes:
    """Recover the secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Shares beyond the first ``threshold`` (by id) are checked to lie on the same polynomial.

    Args:
        shares: share id -> share value.
        threshold: t used when sharing.
        secret_length: byte length of the original secret.
        prime: field modulus used when sharing.

    Returns:
        The secret, ``secret_length`` bytes.

    Raises:
        ProtocolError: fewer than ``threshold`` shares (t - 1 shares carry no information).
        IntegrityError: the shares are inconsistent or interpolate to a value that is not a secret
            of the given length (a wrong or tampered share).
    """
    if len(shares) < threshold:
        raise ProtocolError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    _check_ids(list(shares), prime)
    ordered = sorted(shares.items())
    basis, extra = ordered[:threshold], ordered[threshold:]
    for share_id, share_value in extra:
        if interpolate(basis, share_id, prime=prime) != share_value % prime:
            raise IntegrityError(f"share of holder {share_id} is inconsistent with the others")
    value = interpolate(basis, 0, prime=prime)
    if value >= 1 << (8 * secret_length):
        raise IntegrityError(f"shares interpolate to a value wider than {secret_length} bytes")
    return value.to_bytes(secret_length, "big")


def interpolate(points: Sequence[tuple[int, int]], x: int, *, prime: int = PRIME) -> int:
    """Evaluate at ``x`` the unique polynomial of degree < len(points) through ``points`` (mod prime)."""
    total = 0
    for j, (x_j, y_j) in enumerate(points):
        numerator, denominator = 1, 1
        for m, (x_m, _) in enumerate(points):
            if m != j:
                numerator = numerator * (x - x_m) % prime
                denominator = denominator * (x_j - x_m) % prime
        total = (total + y_j * numerator * pow(denominator, -1, prime)) % prime
    return total


def encode_share(value: int, prime: int = PRIME) -> bytes:
    """Fixed-width big-endian encoding of a share value.

    Raises:
        ProtocolError: the value is not a field element.
    """
    if not 0 <= value < prime:
        raise ProtocolError("share value is not an element of the field")
    return value.to_bytes(share_bytes_length(prime), "big")


def decode_share(data: bytes, prime: int = PRIME) -> int:
    """Inverse of :func:`encode_share`.

    Raises:
        ProtocolError: wrong length or not a field element.
    """
    if len(data) != share_bytes_length(prime):
        raise ProtocolError(f"a share is {share_bytes_length(prime)} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= prime:
        raise ProtocolError("share value is not an element of the field")
    return value


def _evaluate(coefficients: Sequence[int], x: int, prime: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % prime
    return result


def _check_threshold(threshold: int, num_shares: int) -> None:
    if not 2 <= threshold <= num_shares:
        raise ConfigError(
            f"Shamir threshold must be in [2, {num_shares}] for {num_shares} shares, got {threshold}"
        )


def _check_ids(share_ids: Sequence[int], prime: int) -> None:
    if len(set(share_ids)) != len(share_ids):
        raise ConfigError(f"share ids must be distinct, got {sorted(share_ids)}")
    bad = [share_id for share_id in share_ids if not 1 <= share_id < prime]
    if bad:
        raise ConfigError(f"share ids must be in [1, p), got {bad}")
