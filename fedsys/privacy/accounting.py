"""Exact, data-independent privacy accounting over a history of DP-SGD segments.

A history is a sequence of ``(noise_multiplier, sample_rate, steps)`` segments: ``steps``
applications of the Poisson-subsampled Gaussian mechanism (Abadi et al., CCS 2016) with
sampling rate ``sample_rate``. Epsilon depends only on this history and ``target_delta``,
never on the data, so a budget can be checked before any data is touched.

Two Opacus accountants are supported: ``rdp`` (Renyi DP, Mironov et al. 2019, with the
RDP-to-(eps, delta) conversion of Balle et al. 2020) and ``prv`` (numerical composition
of privacy loss random variables, Gopi et al., NeurIPS 2021; Opacus returns the upper
bound of its error interval). Both give valid upper bounds on epsilon, so a history may
be re-evaluated with either; epsilons from different accountants are never added.

A history may also hold :class:`~fedsys.privacy.distributed.SkellamSegment` entries: rounds of
distributed DP (``dp.mode = "distributed"``), where the noise is the sum of integer Skellam
shares added inside secure aggregation. Opacus cannot account those, so a history with any
Skellam segment is evaluated as a whole with fedsys' RDP composition
(:func:`fedsys.privacy.distributed.epsilon_of`: the Gaussian segments with Opacus' own RDP
curve, the Skellam ones with Agarwal et al.'s bound), whatever accountant the budget names;
that is a valid upper bound too, only never tighter than RDP.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeGuard, Union, cast

from opacus.accountants import create_accountant

from fedsys.errors import ConfigError
from fedsys.privacy.settings import ACCOUNTANTS, Accountant

if TYPE_CHECKING:
    from fedsys.privacy.distributed import SkellamSegment

Segment = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)`` of the Poisson-subsampled Gaussian mechanism."""
AnySegment = Union[Segment, "SkellamSegment"]
"""A Gaussian segment or a distributed-DP (Skellam) one."""


def is_gaussian(segment: AnySegment) -> TypeGuard[Segment]:
    """Whether ``segment`` is a Gaussian ``(noise_multiplier, sample_rate, steps)`` triple."""
    return isinstance(segment, tuple) and not hasattr(segment, "mu")


def gaussian_part(history: Sequence[AnySegment]) -> list[Segment]:
    """The Gaussian segments of a history, merged: what an Opacus accountant can hold."""
    merged: list[Segment] = []
    for segment in history:
        if is_gaussian(segment):
            noise, rate, steps = segment
            merged = cast(
                list[Segment], extend_history(merged, noise_multiplier=noise, sample_rate=rate, steps=steps)
            )
    return merged


def append_segment(history: Sequence[AnySegment], segment: AnySegment) -> list[AnySegment]:
    """Append any segment, merging it with an equal-parameter last one (no steps: unchanged).

    Raises:
        ConfigError: a Gaussian segment is out of range.
    """
    if is_gaussian(segment):
        noise, rate, steps = segment
        return extend_history(history, noise_multiplier=float(noise), sample_rate=float(rate), steps=steps)
    merged = list(history)
    skellam = cast("SkellamSegment", segment)
    if skellam.steps == 0:
        return merged
    last = merged[-1] if merged else None
    if last is not None and not is_gaussian(last):
        previous = cast("SkellamSegment", last)
        if replace(previous, steps=skellam.steps) == skellam:
            merged[-1] = replace(previous, steps=previous.steps + skellam.steps)
            return merged
    merged.append(skellam)
    return merged


# Opacus' RDP conversion warns when the best order sits at the edge of its order grid. The
# epsilon is still a valid (if looser than possible) upper bound, so the check stays sound.
_EDGE_ORDER_WARNING = "Optimal order is the (smallest|largest) alpha"


def _check_segment(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")


def extend_history(
    history: Sequence[AnySegment], *, noise_multiplier: float, sample_rate: float, steps: int
) -> list[AnySegment]:
    """Append ``steps`` to a history the way Opacus' accountants record them.

    Consecutive segments with identical parameters are merged, exactly as
    ``IAccountant.step`` does, so a history rebuilt from a ledger equals the history of
    one accountant that ran every step (this matters for PRV, whose discretisation
    depends on how the history is split).

    Args:
        history: Existing segments (not modified).
        noise_multiplier: Noise multiplier of the new steps.
        sample_rate: Poisson sampling rate of the new steps.
        steps: Number of new steps; 0 returns the history unchanged.

    Returns:
        A new, merged list of segments.

    Raises:
        ConfigError: a parameter is out of range.
    """
    _check_segment(noise_multiplier, sample_rate, steps)
    merged = list(history)
    if steps == 0:
        return merged
    last = merged[-1] if merged else None
    if last is not None and is_gaussian(last) and last[0] == noise_multiplier and last[1] == sample_rate:
        merged[-1] = (noise_multiplier, sample_rate, last[2] + steps)
    else:
        merged.append((noise_multiplier, sample_rate, steps))
    return merged


def normalize_history(history: Sequence[AnySegment]) -> list[AnySegment]:
    """Validate a history, drop empty segments and merge consecutive equal ones.

    Raises:
        ConfigError: a segment is out of range.
    """
    merged: list[AnySegment] = []
    for segment in history:
        merged = append_segment(merged, segment)
    return merged


def compute_epsilon(history: Sequence[AnySegment], *, target_delta: float, accountant: Accountant) -> float:
    """Epsilon spent by a history at ``target_delta``, computed by an Opacus accountant.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` segments.
        target_delta: The delta of the (epsilon, delta) guarantee, in (0, 1).
        accountant: ``rdp`` or ``prv``.

    Returns:
        Epsilon; 0.0 for an empty history.

    Raises:
        ConfigError: an unknown accountant, a delta out of range or a bad segment.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if not (0 < target_delta < 1):
        raise ConfigError(f"target_delta must be in (0, 1), got {target_delta!r}")
    segments = normalize_history(history)
    if not segments:
        return 0.0
    if not all(is_gaussian(segment) for segment in segments):
        from fedsys.privacy.distributed import epsilon_of

        skellam = [cast("SkellamSegment", segment) for segment in segments if not is_gaussian(segment)]
        return float(epsilon_of(gaussian_part(segments), skellam, target_delta))
    return _epsilon(tuple(cast(list[Segment], segments)), target_delta, accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon(segments: tuple[Segment, ...], target_delta: float, accountant: Accountant) -> float:
    # Pure in its (hashable) arguments; a budget check and a binary search revisit the
    # same histories, and fractional-order RDP costs tens of milliseconds per history.
    engine_accountant = create_accountant(mechanism=accountant)
    engine_accountant.history = list(segments)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EDGE_ORDER_WARNING, category=UserWarning)
        return float(engine_accountant.get_epsilon(delta=target_delta))


def max_steps_within(
    history: Sequence[AnySegment],
    *,
    noise_multiplier: float,
    sample_rate: float,
    target_delta: float,
    max_epsilon: float,
    accountant: Accountant,
    upper: int,
) -> int:
    """Largest ``k`` in ``[0, upper]`` such that ``history`` plus ``k`` steps fits the budget.

    Binary search over ``k``; epsilon is non-decreasing in the number of steps. The
    search keeps the invariant "``lo`` fits, ``hi`` does not" with every bound evaluated,
    so the returned ``k`` is verified to fit and ``k + 1`` (when ``<= upper``) to exceed.

    Args:
        history: Steps already spent (or reserved).
        noise_multiplier: Noise multiplier of the planned steps.
        sample_rate: Poisson sampling rate of the planned steps.
        target_delta: Delta at which epsilon is evaluated.
        max_epsilon: The budget.
        accountant: ``rdp`` or ``prv``.
        upper: Largest number of steps wanted.

    Returns:
        The number of steps that fit; 0 when even the existing history exceeds the budget.

    Raises:
        ConfigError: a parameter is out of range.
    """
    if isinstance(upper, bool) or not isinstance(upper, int) or upper < 0:
        raise ConfigError(f"upper must be an integer >= 0, got {upper!r}")

    def fits(steps: int) -> bool:
        extended = extend_history(
            history, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        epsilon = compute_epsilon(extended, target_delta=target_delta, accountant=accountant)
        return epsilon <= max_epsilon

    if not fits(0):
        return 0
    if fits(upper):
        return upper
    lo, hi = 0, upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
