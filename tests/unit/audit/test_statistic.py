"""The one-run audit statistic against independent computations (scipy, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedsys.audit.statistic import best_lower_bound, epsilon_lower_bound, guess_from_scores, p_value
from fedsys.errors import ConfigError


def _clopper_pearson_epsilon(r: int, v: int, beta: float) -> float:
    """Independent: the one-sided Clopper-Pearson lower limit of v/r as a logit (delta = 0)."""
    q_low = stats.beta.ppf(beta, v, r - v + 1)
    return max(0.0, math.log(q_low / (1 - q_low)))


@pytest.mark.parametrize(
    ("r", "v", "confidence"),
    [(10, 10, 0.95), (100, 62, 0.95), (100, 80, 0.99), (500, 400, 0.95), (1000, 999, 0.9), (1000, 510, 0.95)],
)
def test_delta_zero_is_clopper_pearson(r: int, v: int, confidence: float) -> None:
    got = epsilon_lower_bound(canaries=1000, guesses=r, correct=v, delta=0.0, confidence=confidence)

    assert got == pytest.approx(_clopper_pearson_epsilon(r, v, 1 - confidence), abs=1e-7)


@pytest.mark.parametrize("r", [5, 10, 100, 1000])
def test_perfect_guesses_closed_form(r: int) -> None:
    # P[Bin(r, q) >= r] = q^r = beta  ->  q = beta^(1/r), epsilon = logit(q)
    q = 0.05 ** (1 / r)

    got = epsilon_lower_bound(canaries=1000, guesses=r, correct=r, delta=0.0, confidence=0.95)

    assert got == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


def test_delta_term_matches_a_direct_sum() -> None:
    m, r, v, eps, delta = 1000, 200, 150, 1.0, 1e-5
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[v:])
    worst = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))

    got = p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)

    assert got == pytest.approx(tail + 2 * m * delta * worst, rel=1e-9)


def test_delta_only_lowers_the_bound() -> None:
    kwargs = {"canaries": 1000, "guesses": 500, "correct": 400, "confidence": 0.95}

    assert epsilon_lower_bound(delta=1e-3, **kwargs) < epsilon_lower_bound(delta=0.0, **kwargs)


def test_chance_guessing_certifies_nothing() -> None:
    assert epsilon_lower_bound(canaries=1000, guesses=1000, correct=500, delta=1e-5, confidence=0.95) == 0.0


def test_bound_is_rejected_and_a_bit_more_is_not() -> None:
    kwargs = {"canaries": 1000, "guesses": 300, "correct": 240, "delta": 1e-5}
    eps = epsilon_lower_bound(confidence=0.95, **kwargs)

    assert p_value(epsilon=eps, **kwargs) <= 0.05 < p_value(epsilon=eps + 1e-6, **kwargs)


@pytest.mark.parametrize(
    ("m", "r", "v"),
    [(10, 11, 5), (10, 5, 6), (10, 5, -1)],
)
def test_bad_counts_are_one_line_errors(m: int, r: int, v: int) -> None:
    with pytest.raises(ConfigError, match="guesses"):
        p_value(canaries=m, guesses=r, correct=v, epsilon=1.0, delta=0.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bad_confidence(confidence: float) -> None:
    with pytest.raises(ConfigError, match="confidence"):
        epsilon_lower_bound(canaries=10, guesses=10, correct=10, delta=0.0, confidence=confidence)


def test_guesses_take_top_as_in_and_bottom_as_out() -> None:
    scores = np.array([5.0, -1.0, 3.0, 0.0, -4.0, 1.0])
    included = np.array([True, False, False, True, False, True])

    # top 2: indices 0 (in), 2 (out); bottom 2: indices 4 (out), 1 (out)
    assert guess_from_scores(scores, included, guesses=4) == (4, 3)


def test_union_bound_never_beats_a_single_test() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    perfect = included.astype(float)

    _, alone = best_lower_bound([perfect], included, delta=0.0, confidence=0.95)
    index, beside_noise = best_lower_bound([rng.random(200), perfect], included, delta=0.0, confidence=0.95)

    assert index == 1
    assert beside_noise.guesses == alone.guesses
    assert beside_noise.epsilon_lower_bound < alone.epsilon_lower_bound
    # 4 guess counts -> each test at level 0.05 / 4
    r, v = alone.guesses, alone.correct
    assert alone.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(canaries=200, guesses=r, correct=v, delta=0.0, confidence=1 - 0.05 / 4)
    )
