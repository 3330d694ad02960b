"""Unmasking-secret reconstruction that tolerates wrong shares from a minority of holders.

Shamir reconstruction (Shamir, CACM 1979; SS.recon in Bonawitz et al. CCS 2017, Sec. 3.1) from more
than t shares checks the extra shares against the polynomial through the first t; a check that fails
means some holder sent a wrong value. A single wrong holder is identified by leaving each holder out in
turn: exactly one omission leaves a consistent set (with at least t + 1 shares, or t shares when the
secret itself can be verified, as an s-key against its advertised public key). That holder's shares are
discarded everywhere and reconstruction restarts. Anything else (several wrong holders, too few shares
to tell) aborts: a wrong aggregate is never released knowingly. With exactly t shares of a self-mask
seed a wrong share cannot be detected (no commitment to b_u exists); it corrupts the aggregate, not
privacy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedsys.errors import AbortedRoundError, IntegrityError, ProtocolError
from fedsys.secagg import shamir

Check = Callable[[int, bytes], bool]
"""``check(owner, secret)``: whether a reconstructed secret is right (e.g. matches a public key)."""


def reconstruct_all(
    shares: Mapping[int, Mapping[int, int]],
    *,
    threshold: int,
    secret_length: int,
    check: Check | None = None,
) -> tuple[dict[int, bytes], frozenset[int]]:
    """Reconstruct every owner's secret from its holders' shares, blaming and skipping bad holders.

    Args:
        shares: owner -> holder -> share value.
        threshold: t.
        secret_length: byte length of each secret.
        check: optional verification of a reconstructed secret.

    Returns:
        (owner -> secret, holders whose shares were found wrong and discarded).

    Raises:
        AbortedRoundError: some secret has fewer than t usable shares, or a wrong share cannot be
            attributed to a single holder.
    """
    bad: set[int] = set()
    while True:
        secrets: dict[int, bytes] = {}
        for owner, by_holder in sorted(shares.items()):
            usable = {h: v for h, v in by_holder.items() if h not in bad}
            secret = _attempt(owner, usable, threshold, secret_length, check)
            if secret is None:
                culprit = _blame(owner, usable, threshold, secret_length, check)
                if culprit is None:
                    raise AbortedRoundError(
                        f"secagg round aborted: the shares of client {owner}'s secret are inconsistent "
                        f"and no single holder among {sorted(usable)} can be blamed"
                    )
                bad.add(culprit)
                break
            secrets[owner] = secret
        else:
            return secrets, frozenset(bad)


def _attempt(
    owner: int, shares: Mapping[int, int], threshold: int, secret_length: int, check: Check | None
) -> bytes | None:
    if len(shares) < threshold:
        raise AbortedRoundError(
            f"secagg round aborted: only {len(shares)} valid shares of client {owner}'s secret, "
            f"need {threshold}"
        )
    try:
        secret = shamir.reconstruct_secret(shares, threshold=threshold, secret_length=secret_length)
    except (IntegrityError, ProtocolError):
        return None
    return secret if check is None or check(owner, secret) else None


def _blame(
    owner: int, shares: Mapping[int, int], threshold: int, secret_length: int, check: Check | None
) -> int | None:
    needed = threshold if check is not None else threshold + 1  # fewer cannot tell right from wrong
    if len(shares) - 1 < needed:
        return None
    consistent = []
    for holder in sorted(shares):
        rest = {h: v for h, v in shares.items() if h != holder}
        try:
            if _attempt(owner, rest, threshold, secret_length, check) is not None:
                consistent.append(holder)
        except AbortedRoundError:
            return None
    return consistent[0] if len(consistent) == 1 else None
