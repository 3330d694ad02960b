"""RDP accounting for distributed Skellam noise (sample- and client-level), composed with Gaussian DP-SGD.

Convention: ``mu`` is the Skellam parameter of the TOTAL noise in the aggregate, ``Sk(mu) = Poisson(mu) -
Poisson(mu)`` per coordinate, variance ``2 mu`` (scipy's ``skellam(mu, mu)``). Agarwal, Kairouz, Liu
(NeurIPS 2021, "The Skellam Mechanism for Differentially Private Federated Learning", Thm 3.5 / Cor. 3.6,
stated there with mu = the variance) give, for integer alpha > 1 and integer vectors with ``||Delta||_1 <=
l1``, ``||Delta||_2 <= l2``::

    eps(alpha) <= alpha l2^2 / (4 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 mu^2), 3 l1 / (4 mu))

The first term is the Gaussian mechanism's ``alpha l2^2 / (2 sigma^2)`` with ``sigma^2 = 2 mu``; the tests
check the bound against the exact Renyi divergence of shifted Skellam pmfs. Poisson subsampling at rate q
uses Zhu & Wang's general upper bound (ICML 2019, "Poisson Subsampled Renyi Differential Privacy", Thm 5;
Thm 6 is its lower bound, exact for the Gaussian), valid for any base RDP curve at integer alpha >= 2::

    eps_q(alpha) <= 1/(alpha-1) log[(1-q)^(alpha-1) (alpha q - q + 1)
                                    + C(alpha,2) q^2 (1-q)^(alpha-2) e^eps(2)
                                    + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^((l-1) eps(l))]

Gaussian segments ``(noise_multiplier, sample_rate, steps)`` use Opacus' own ``compute_rdp`` at the same
integer orders; RDP adds up over segments and Opacus' ``get_privacy_spent`` (Balle et al. 2020) converts it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.special import gammaln

from fedsys.errors import BudgetExceededError, ConfigError
from fedsys.privacy.accounting import Segment
from fedsys.secagg.ddp_bounds import DEFAULT_BETA, l1_bound, padded_dim_for, rounded_l2_bound

ORDERS: tuple[int, ...] = (*range(2, 257), 320, 384, 512, 768, 1024)
_EDGE_ORDER_WARNING = "Optimal order is the (smallest|largest) alpha"
_LOG3 = math.log(3.0)

RdpCurve = Callable[[NDArray[np.int64]], NDArray[np.float64]]


def _as_orders(orders: Sequence[int]) -> NDArray[np.int64]:
    array = np.asarray(orders)
    if array.ndim != 1 or array.size == 0 or not np.all(array == np.floor(array)) or np.any(array < 2):
        raise ConfigError(f"RDP orders must be a non-empty list of integers >= 2, got {orders!r}")
    return array.astype(np.int64)


def skellam_rdp(orders: Sequence[int], *, mu: float, l1: float, l2: float) -> NDArray[np.float64]:
    """RDP of the multidimensional Skellam mechanism ``x + Sk(mu)^d`` (module docstring, Agarwal et al.).

    Args:
        orders: integer orders alpha >= 2.
        mu: Skellam parameter of the total noise (variance 2 mu per coordinate).
        l1: L1 sensitivity of the integer query.
        l2: L2 sensitivity of the integer query.

    Raises:
        ConfigError: a parameter is out of range.
    """
    alpha = _as_orders(orders).astype(np.float64)
    for name, value in (("mu", mu), ("l1", l1), ("l2", l2)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"Skellam {name} must be finite and > 0, got {value!r}")
    l2_sq = l2 * l2
    surcharge = np.minimum(((2 * alpha - 1) * l2_sq + 6 * l1) / (16 * mu * mu), 3 * l1 / (4 * mu))
    result: NDArray[np.float64] = alpha * l2_sq / (4 * mu) + surcharge
    return result


def subsampled_rdp(orders: Sequence[int], base_rdp_fn: RdpCurve, q: float) -> NDArray[np.float64]:
    """Zhu & Wang's general upper bound (ICML 2019, Thm 5) on the RDP of a Poisson-subsampled mechanism.

    Args:
        orders: integer orders alpha >= 2.
        base_rdp_fn: the base mechanism's RDP, vectorised over integer orders (called on 2..max(orders)).
        q: Poisson sampling rate in (0, 1]; at 1 the base curve is returned.

    Returns:
        ``min(bound, base)`` per order (subsampling never hurts under add/remove neighbours).

    Raises:
        ConfigError: bad orders or rate.
    """
    alphas = _as_orders(orders)
    if not (0 < q <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {q!r}")
    levels = np.arange(2, int(alphas.max()) + 1, dtype=np.int64)
    base = np.asarray(base_rdp_fn(levels), dtype=np.float64)  # base[l - 2] = eps(l)
    own = base[alphas - 2]
    if q == 1:
        return own.copy()
    fixed, head = _subsampling_weights(tuple(alphas.tolist()), q)
    terms = fixed + (levels - 1) * base  # rows: orders, columns: l = 2..max; -inf where l > alpha
    top = np.maximum(terms.max(axis=1), head)  # finite: every row has its l = 2 term
    with np.errstate(over="ignore"):
        # log1p form where the moment is near 1 (small RDP: keeps relative precision), logsumexp elsewhere
        near_one = np.log1p(np.expm1(head) + np.exp(terms).sum(axis=1))
    far = top + np.log(np.exp(terms - top[:, None]).sum(axis=1) + np.exp(head - top))
    bounds = np.where(top < 0, near_one, far) / (alphas - 1)
    result: NDArray[np.float64] = np.minimum(bounds, own)
    return result


@functools.lru_cache(maxsize=64)
def _subsampling_weights(
    alphas: tuple[int, ...], q: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Base-independent parts of Zhu & Wang's bound: log(w_l C(alpha,l) q^l (1-q)^(alpha-l)), the l<2 head."""
    alpha = np.asarray(alphas, dtype=np.float64)[:, None]
    levels = np.arange(2, max(alphas) + 1, dtype=np.float64)[None, :]
    valid = levels <= alpha
    spare = np.where(valid, alpha - levels, 0.0)
    log_binom = gammaln(alpha + 1) - gammaln(levels + 1) - gammaln(spare + 1)
    weights = np.where(levels == 2, 0.0, _LOG3)
    fixed = weights + log_binom + levels * math.log(q) + spare * math.log1p(-q)
    fixed = np.where(valid, fixed, -np.inf)
    head = (alpha[:, 0] - 1) * math.log1p(-q) + np.log1p(alpha[:, 0] * q - q)
    fixed.setflags(write=False)
    head.setflags(write=False)
    return fixed, head


@dataclass(frozen=True)
class SkellamSegment:
    """``steps`` releases of the (Poisson-subsampled) distributed Skellam mechanism.

    ``mu`` is the aggregate noise's Skellam parameter (the level calibrated for t survivors), ``l1``/``l2``
    the integer sensitivities of one summand (:class:`fedsys.secagg.ddp.DdpEncoding`), ``sample_rate`` the
    Poisson rate of records (sample-level) or clients (client-level; 1.0 without client sampling).
    """

    mu: float
    l1: float
    l2: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        for name, value in (("mu", self.mu), ("l1", self.l1), ("l2", self.l2)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"Skellam segment {name} must be finite and > 0, got {value!r}")
        if not (isinstance(self.sample_rate, int | float) and 0 < self.sample_rate <= 1):
            raise ConfigError(f"Skellam segment sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"Skellam segment steps must be an integer >= 0, got {self.steps!r}")


def sensitivity(*, clip: float, gamma: float, dim: int, beta: float = DEFAULT_BETA) -> tuple[float, float]:
    """``(l1, l2)`` of one conditionally rounded summand (the same bound :func:`make_encoding` enforces)."""
    padded = padded_dim_for(dim)
    l2 = rounded_l2_bound(scaled_norm=gamma * clip, padded_dim=padded, beta=beta)
    return l1_bound(l2_bound=l2, padded_dim=padded), l2


@functools.lru_cache(maxsize=4096)
def _skellam_segment_rdp(
    mu: float, l1: float, l2: float, sample_rate: float, orders: tuple[int, ...]
) -> tuple[float, ...]:
    def base(levels: NDArray[np.int64]) -> NDArray[np.float64]:
        return skellam_rdp(levels.tolist(), mu=mu, l1=l1, l2=l2)

    return tuple(subsampled_rdp(orders, base, sample_rate).tolist())


def _check_gaussian(segment: object) -> Segment:
    if not (isinstance(segment, tuple) and len(segment) == 3):
        raise ConfigError(f"a Gaussian segment is (noise_multiplier, sample_rate, steps), got {segment!r}")
    noise_multiplier, sample_rate, steps = segment
    if not (
        isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier) and noise_multiplier > 0
    ):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    if not (isinstance(sample_rate, int | float) and 0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    return float(noise_multiplier), float(sample_rate), steps


def total_rdp(
    gaussian: Sequence[Segment], skellam: Sequence[SkellamSegment], *, orders: Sequence[int] = ORDERS
) -> NDArray[np.float64]:
    """RDP of all segments composed, per order."""
    alphas = tuple(int(a) for a in _as_orders(orders))
    total = np.zeros(len(alphas))
    for triple in gaussian:
        noise_multiplier, sample_rate, steps = _check_gaussian(triple)
        if steps:
            rdp = compute_rdp(
                q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(alphas)
            )
            total += np.asarray(rdp, dtype=np.float64)
    for segment in skellam:
        if not isinstance(segment, SkellamSegment):
            raise ConfigError(f"expected a SkellamSegment, got {type(segment).__name__}")
        if segment.steps:
            per_step = _skellam_segment_rdp(
                float(segment.mu), float(segment.l1), float(segment.l2), float(segment.sample_rate), alphas
            )
            total += segment.steps * np.asarray(per_step)
    return total


def epsilon_of(
    gaussian: Sequence[Segment],
    skellam: Sequence[SkellamSegment],
    delta: float,
    *,
    orders: Sequence[int] = ORDERS,
) -> float:
    """Epsilon at ``delta`` of Gaussian DP-SGD segments and distributed Skellam segments composed by RDP.

    Raises:
        ConfigError: delta out of (0, 1) or a bad segment.
    """
    if not (0 < delta < 1):
        raise ConfigError(f"target_delta must be in (0, 1), got {delta!r}")
    rdp = total_rdp(gaussian, skellam, orders=orders)
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EDGE_ORDER_WARNING, category=UserWarning)
        epsilon, _ = get_privacy_spent(orders=list(orders), rdp=rdp.tolist(), delta=delta)
    return float(epsilon)


def noise_share(mu_total: float, min_survivors: int) -> float:
    """Each client's Skellam parameter so that any ``min_survivors`` shares sum to ``mu_total``.

    Raises:
        ConfigError: ``mu_total`` not > 0 or ``min_survivors`` < 1.
    """
    if not (math.isfinite(mu_total) and mu_total > 0):
        raise ConfigError(f"Skellam mu total must be finite and > 0, got {mu_total!r}")
    if isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or min_survivors < 1:
        raise ConfigError(f"min_survivors must be an integer >= 1, got {min_survivors!r}")
    return mu_total / min_survivors


def noise_multiplier_equivalent(*, mu_total: float, gamma: float, clip: float) -> float:
    """The aggregate noise's standard deviation ``sqrt(2 mu)`` in units of ``gamma * clip`` (for reports)."""
    return math.sqrt(2 * mu_total) / (gamma * clip)


def calibrate_skellam(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    clip: float,
    gamma: float,
    dim: int,
    beta: float = DEFAULT_BETA,
    prior_gaussian: Sequence[Segment] = (),
    prior_skellam: Sequence[SkellamSegment] = (),
    rtol: float = 1e-4,
    orders: Sequence[int] = ORDERS,
) -> float:
    """Smallest total Skellam parameter ``mu`` (to relative ``rtol``) whose epsilon is <= the target.

    Bisection on ``log mu`` (epsilon decreases in mu); the returned ``mu`` is verified to fit and
    ``mu / (1 + rtol)`` not to. Sensitivities are those of :func:`sensitivity` for ``clip, gamma, dim, beta``.

    Args:
        target_epsilon: epsilon to reach after the prior history plus ``steps`` new releases.
        delta: delta of the guarantee.
        sample_rate: Poisson rate of records (sample-level) or clients (client-level).
        steps: releases (rounds) to calibrate for.
        clip: L2 clip of one summand.
        gamma: scale before rounding.
        dim: model dimension.
        beta: conditional-rounding parameter.
        prior_gaussian: Gaussian segments already spent.
        prior_skellam: Skellam segments already spent.
        rtol: relative precision of the result.
        orders: RDP orders.

    Raises:
        ConfigError: a parameter is out of range.
        BudgetExceededError: the prior history alone already reaches the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps to calibrate for must be an integer >= 1, got {steps!r}")
    if not (0 < rtol < 1):
        raise ConfigError(f"rtol must be in (0, 1), got {rtol!r}")
    l1, l2 = sensitivity(clip=clip, gamma=gamma, dim=dim, beta=beta)
    if epsilon_of(prior_gaussian, prior_skellam, delta, orders=orders) >= target_epsilon:
        raise BudgetExceededError(f"the prior history already spends epsilon >= {target_epsilon}")

    def fits(mu: float) -> bool:
        segment = SkellamSegment(mu, l1, l2, sample_rate, steps)
        return epsilon_of(prior_gaussian, [*prior_skellam, segment], delta, orders=orders) <= target_epsilon

    hi = l2 * l2
    while not fits(hi):
        hi *= 4.0
        if hi > 1e300:
            raise ConfigError(f"no Skellam noise reaches epsilon {target_epsilon} with these orders")
    lo = hi
    while fits(lo):
        lo /= 4.0
    while hi > lo * (1 + rtol):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi
