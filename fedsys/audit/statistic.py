"""The one-run audit statistic: guesses about canaries -> an empirical lower bound on epsilon.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023
(Theorem 5.2, Appendix D). Setting: ``m`` canaries, each included in the training data
independently with probability 1/2; after training, the auditor guesses "in" or "out" for
``r`` of them (abstaining on the rest) and ``v`` guesses are right. If the training algorithm
is (epsilon, delta)-DP then, with ``q = e^epsilon / (1 + e^epsilon)``,

    P[V >= v] <= P[Bin(r, q) >= v] + 2 m delta * max_{i = 1..v} P[v - i <= Bin(r, q) < v] / i.

The right-hand side is the p-value of the observed ``v`` under the hypothesis "the algorithm
is (epsilon, delta)-DP". The lower bound at confidence ``1 - beta`` is the largest epsilon whose
p-value is still at most ``beta``: any smaller claimed epsilon is rejected at level ``beta``.
It is monotone in epsilon, so a bisection finds it.

With ``delta = 0`` the bound is the one-sided binomial test, so ``q`` is at least the
Clopper-Pearson lower confidence limit of ``v / r`` (checked against scipy in the tests).
The statistic needs no assumption about the attack: any scores, any way of choosing guesses,
as long as the guesses are fixed before the inclusion bits are looked at. Choosing among
several guess counts (or attacks) after the fact costs a union bound, which
:func:`best_lower_bound` pays (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fedsys.errors import ConfigError

_BISECTION_STEPS = 60
_EPSILON_CEILING = 100.0  # no audit with < 10^40 canaries can certify more


def _check_counts(m: int, r: int, v: int) -> None:
    if not (isinstance(m, int) and isinstance(r, int) and isinstance(v, int)):
        raise ConfigError(f"canaries, guesses and correct guesses must be integers, got {m!r}, {r!r}, {v!r}")
    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")


def _check_level(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and low <= value <= high):
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value!r}")


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``correct`` right guesses if training is (epsilon, delta)-DP.

    Args:
        canaries: m, canaries each included independently with probability 1/2.
        guesses: r, guesses made (abstentions excluded).
        correct: v, right guesses.
        epsilon: The hypothesised epsilon (>= 0).
        delta: The hypothesised delta (in [0, 1]).

    Returns:
        The bound of Theorem 5.2 (capped at 1).

    Raises:
        ConfigError: counts or privacy parameters out of range (echoed).
    """
    _check_counts(canaries, guesses, correct)
    _check_level("epsilon", epsilon, 0.0, math.inf)
    _check_level("delta", delta, 0.0, 1.0)
    q = float(stats.logistic.cdf(epsilon))  # e^eps / (1 + e^eps), stable for large eps
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # P[Bin(r, q) >= v]
    if delta == 0 or correct == 0:
        return min(1.0, tail)
    # P[v - i <= Bin < v] for i = 1..v, as cumulative sums of the pmf below v
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
    worst = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(1.0, tail + 2 * canaries * delta * worst)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float
) -> float:
    """The largest epsilon rejected at level ``1 - confidence`` (0 when none is).

    Args:
        canaries: m.
        guesses: r.
        correct: v.
        delta: The delta the lower bound is stated at (the scenario's target delta).
        confidence: 1 - beta, e.g. 0.95.

    Returns:
        epsilon_lb >= 0, accurate to about 1e-12 relative.

    Raises:
        ConfigError: counts or levels out of range (echoed).
    """
    _check_level("confidence", confidence, 0.0, 1.0)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    beta = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta) <= beta

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > _EPSILON_CEILING:
            return _EPSILON_CEILING
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


@dataclass(frozen=True)
class Guesses:
    """One way of guessing: the top ``k`` scores "in", the bottom ``k`` "out", the rest abstain."""

    guesses: int
    correct: int
    epsilon_lower_bound: float


def guess_from_scores(scores: np.ndarray, included: np.ndarray, *, guesses: int) -> tuple[int, int]:
    """Guess "in" for the ``guesses // 2`` highest scores and "out" for as many lowest.

    Returns:
        ``(r, v)``: guesses made and how many were right. Ties are broken by canary index,
        which is independent of the inclusion bits.

    Raises:
        ConfigError: scores and bits differ in length, or ``guesses`` is out of range.
    """
    if scores.shape != included.shape or scores.ndim != 1:
        raise ConfigError(
            f"scores and inclusion bits must be vectors of one length, got {scores.shape}, {included.shape}"
        )
    if not 2 <= guesses <= len(scores):
        raise ConfigError(f"guesses must be in [2, {len(scores)}], got {guesses}")
    side = guesses // 2
    order = np.argsort(scores, kind="stable")
    right = int(included[order[-side:]].sum()) + int((~included[order[:side]]).sum())
    return 2 * side, right


def best_lower_bound(
    scores: Sequence[np.ndarray],
    included: np.ndarray,
    *,
    delta: float,
    confidence: float,
    guess_fractions: Sequence[float] = (0.1, 0.2, 0.5, 1.0),
) -> tuple[int, Guesses]:
    """The best lower bound over several score vectors (attacks) and guess counts, made valid by a
    union bound: each of the ``len(scores) * len(guess_fractions)`` tests runs at level
    ``beta / that number``, so the maximum holds at confidence ``1 - beta``.

    Returns:
        ``(index of the best attack, its guesses)``; the bound is 0 when nothing is rejected.

    Raises:
        ConfigError: no attack or guess fraction, or fractions outside (0, 1].
    """
    if not scores or not guess_fractions:
        raise ConfigError("need at least one attack and one guess fraction")
    if any(not 0 < f <= 1 for f in guess_fractions):
        raise ConfigError(f"guess fractions must be in (0, 1], got {list(guess_fractions)}")
    tests = len(scores) * len(guess_fractions)
    level = 1 - (1 - confidence) / tests
    m = len(included)
    best = (0, Guesses(0, 0, 0.0))
    for index, attack in enumerate(scores):
        for fraction in guess_fractions:
            r, v = guess_from_scores(attack, included, guesses=max(2, round(fraction * m)))
            bound = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, confidence=level)
            if bound > best[1].epsilon_lower_bound:
                best = (index, Guesses(r, v, bound))
    return best
