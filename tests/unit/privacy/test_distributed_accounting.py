"""Tests for distributed Skellam accounting, checked against independent computations."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy.special import ive

from fedsys.errors import BudgetExceededError, ConfigError
from fedsys.privacy import ddp_plan
from fedsys.privacy import distributed as dist
from fedsys.privacy.accounting import compute_epsilon
from fedsys.secagg import ddp

DELTA = 1e-5


def _log_skellam_pmf(k: np.ndarray, mu: float) -> np.ndarray:
    # Sk(mu, mu) pmf = exp(-2 mu) I_|k|(2 mu) = ive(|k|, 2 mu); independent of scipy.stats.skellam
    with np.errstate(divide="ignore"):
        return np.log(ive(np.abs(k), 2 * mu))


def _exact_renyi(alpha: int, mu: float, shift: int) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)) by direct summation over the integers."""
    k = np.arange(-4000, 4001)
    log_p, log_q = _log_skellam_pmf(k - shift, mu), _log_skellam_pmf(k, mu)
    finite = np.isfinite(log_p) & np.isfinite(log_q)
    terms = alpha * log_p[finite] + (1 - alpha) * log_q[finite]
    top = terms.max()
    assert terms[0] < top - 40 and terms[-1] < top - 40  # the truncated tails are negligible
    return float((top + math.log(np.exp(terms - top).sum())) / (alpha - 1))


# --- Skellam RDP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.5, 2.0, 10.0, 60.0, 400.0])
@pytest.mark.parametrize("shift", [1, 2, 4])
def test_skellam_rdp_bounds_the_exact_renyi_divergence(mu: float, shift: int) -> None:
    orders = [2, 3, 5, 10, 30]

    bound = dist.skellam_rdp(orders, mu=mu, l1=shift, l2=shift)

    exact = np.array([_exact_renyi(alpha, mu, shift) for alpha in orders])
    assert np.all(bound >= exact)
    if mu >= 400:  # the bound is sharp when the noise is large
        np.testing.assert_allclose(bound, exact, rtol=0.05)


def test_skellam_rdp_bounds_a_two_dimensional_shift() -> None:
    mu, orders = 3.0, [2, 4, 8]
    # independent coordinates: the divergence of a product is the sum of the coordinates' divergences
    exact = np.array([_exact_renyi(a, mu, 2) + _exact_renyi(a, mu, 1) for a in orders])

    bound = dist.skellam_rdp(orders, mu=mu, l1=3.0, l2=math.sqrt(5.0))

    assert np.all(bound >= exact)


@pytest.mark.parametrize(
    ("alpha", "mu", "l1", "l2"),
    [(2, 1.0, 3.0, 2.0), (7, 50.0, 10.0, 4.0), (30, 1e4, 3000.0, 150.0), (5, 0.3, 1.0, 1.0)],
)
def test_skellam_rdp_is_agarwal_et_al_closed_form(alpha: int, mu: float, l1: float, l2: float) -> None:
    # Agarwal, Kairouz, Liu 2021 with their parameter (the variance) written as 2 mu
    variance = 2 * mu
    expected = alpha * l2**2 / (2 * variance) + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
    )

    assert dist.skellam_rdp([alpha], mu=mu, l1=l1, l2=l2)[0] == pytest.approx(expected, rel=1e-14)


def test_skellam_rdp_tends_to_the_gaussian_rdp_with_variance_two_mu() -> None:
    orders = np.arange(2, 200)
    mu, l2 = 1e9, 300.0
    sigma_squared = 2 * mu

    bound = dist.skellam_rdp(orders.tolist(), mu=mu, l1=32 * l2, l2=l2)

    np.testing.assert_allclose(bound, orders * l2**2 / (2 * sigma_squared), rtol=1e-4)
    assert _exact_renyi(4, 1e4, 1) == pytest.approx(4 / (2 * 2e4), rel=1e-3)


@pytest.mark.parametrize("kwargs", [{"mu": 0.0, "l1": 1, "l2": 1}, {"mu": 1.0, "l1": -1, "l2": 1}])
def test_skellam_rdp_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        dist.skellam_rdp([2, 3], **kwargs)


def test_skellam_rdp_rejects_fractional_orders() -> None:
    with pytest.raises(ConfigError):
        dist.skellam_rdp([1.5, 2], mu=1.0, l1=1.0, l2=1.0)


# --- Poisson subsampling --------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.001, 0.01, 64 / 287, 0.5])
@pytest.mark.parametrize("sigma", [0.7, 1.1, 3.0])
def test_subsampled_bound_is_above_the_tight_subsampled_gaussian(q: float, sigma: float) -> None:
    orders = list(range(2, 257))

    bound = dist.subsampled_rdp(orders, lambda alphas: alphas / (2 * sigma**2), q)

    tight = np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, sigma, orders))
    assert np.all(bound >= tight * (1 - 1e-9))  # float rounding only
    assert np.all(bound <= np.asarray(orders) / (2 * sigma**2) + 1e-12)  # never worse than no sampling


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "max_gap"),
    [(256 / 60000, 1.1, 14062, 0.08), (0.01, 1.0, 1000, 0.17), (0.05, 1.5, 500, 0.26)],
)
def test_subsampled_bound_is_close_to_the_tight_one_at_small_rates(
    q: float, sigma: float, steps: int, max_gap: float
) -> None:
    orders = list(dist.ORDERS)
    general = dist.subsampled_rdp(orders, lambda alphas: alphas / (2 * sigma**2), q) * steps
    tight = np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)) * steps

    epsilon = get_privacy_spent(orders=orders, rdp=general.tolist(), delta=DELTA)[0]
    tight_epsilon = get_privacy_spent(orders=orders, rdp=tight.tolist(), delta=DELTA)[0]

    assert tight_epsilon <= epsilon <= tight_epsilon * (1 + max_gap)


def _zhu_wang_general_bound(alpha: int, q: float, eps: dict[int, float]) -> float:
    """Zhu & Wang (ICML 2019) Thm 5, term by term with exact integer binomials (an independent loop)."""
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += math.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * math.exp(eps[2])
    for level in range(3, alpha + 1):
        total += (
            3
            * math.comb(alpha, level)
            * q**level
            * (1 - q) ** (alpha - level)
            * math.exp((level - 1) * eps[level])
        )
    return math.log(total) / (alpha - 1)


@pytest.mark.parametrize("q", [0.003, 0.05, 64 / 287])
def test_subsampled_skellam_matches_the_general_bound_term_by_term(q: float) -> None:
    mu, l1, l2 = 4e4, 3000.0, 150.0
    orders = [2, 3, 4, 8, 16, 40]
    eps = dict(zip(range(2, 41), dist.skellam_rdp(list(range(2, 41)), mu=mu, l1=l1, l2=l2), strict=True))

    bound = dist.subsampled_rdp(
        orders, lambda alphas: dist.skellam_rdp(alphas.tolist(), mu=mu, l1=l1, l2=l2), q
    )

    expected = [min(_zhu_wang_general_bound(alpha, q, eps), eps[alpha]) for alpha in orders]
    np.testing.assert_allclose(bound, expected, rtol=1e-9)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_subsampling_rejects_a_bad_rate(q: float) -> None:
    with pytest.raises(ConfigError):
        dist.subsampled_rdp([2, 3], lambda alphas: alphas * 0.1, q)


def test_subsampling_at_rate_one_returns_the_base_curve() -> None:
    orders = [2, 7, 64]

    bound = dist.subsampled_rdp(orders, lambda alphas: alphas * 0.3, 1.0)

    np.testing.assert_allclose(bound, [0.6, 2.1, 19.2])


# --- composition and conversion -------------------------------------------------------------------


def test_gaussian_segments_match_dp_accounting_at_the_same_orders() -> None:
    segments = [(1.1, 0.01, 300), (0.9, 0.02, 100)]
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in dist.ORDERS])
    for noise_multiplier, rate, steps in segments:
        event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise_multiplier))
        accountant.compose(event, steps)

    epsilon = dist.epsilon_of(segments, [], DELTA)

    assert epsilon == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert epsilon == pytest.approx(compute_epsilon(segments, target_delta=DELTA, accountant="rdp"), rel=0.02)


def test_skellam_without_sampling_is_close_to_the_gaussian_with_the_same_variance() -> None:
    mu, l2 = 5e7, 1000.0
    sigma = math.sqrt(2 * mu) / l2
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in dist.ORDERS])
    accountant.compose(dp_accounting.GaussianDpEvent(sigma), 50)

    epsilon = dist.epsilon_of([], [dist.SkellamSegment(mu, 32 * l2, l2, 1.0, 50)], DELTA)

    assert accountant.get_epsilon(DELTA) <= epsilon <= accountant.get_epsilon(DELTA) * 1.001


def test_composition_adds_segments() -> None:
    first = dist.SkellamSegment(2e5, 9000.0, 300.0, 0.05, 40)
    second = dist.SkellamSegment(2e5, 9000.0, 300.0, 0.05, 60)
    merged = dist.SkellamSegment(2e5, 9000.0, 300.0, 0.05, 100)
    gaussian = [(1.2, 0.05, 70)]

    both = dist.epsilon_of(gaussian, [first, second], DELTA)

    assert both == pytest.approx(dist.epsilon_of(gaussian, [merged], DELTA), rel=1e-12)
    assert both > max(dist.epsilon_of(gaussian, [], DELTA), dist.epsilon_of([], [merged], DELTA))
    assert dist.epsilon_of([], [], DELTA) == 0.0


@pytest.mark.parametrize(
    "fields",
    [
        (0.0, 1.0, 1.0, 0.1, 1),
        (1.0, float("nan"), 1.0, 0.1, 1),
        (1.0, 1.0, -2.0, 0.1, 1),
        (1.0, 1.0, 1.0, 0.0, 1),
        (1.0, 1.0, 1.0, 1.5, 1),
        (1.0, 1.0, 1.0, 0.1, -1),
        (1.0, 1.0, 1.0, 0.1, 2.5),
    ],
)
def test_skellam_segment_validates_its_fields(fields: tuple[float, float, float, float, int]) -> None:
    with pytest.raises(ConfigError):
        dist.SkellamSegment(*fields)


@pytest.mark.parametrize(
    "segment",
    [(0.0, 0.1, 1), (float("nan"), 0.1, 1), (1.0, 0.0, 1), (1.0, 0.1, -1), (1.0, 0.1, True), (1.0, 0.1)],
)
def test_epsilon_of_validates_gaussian_segments(segment: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        dist.epsilon_of([segment], [], DELTA)  # type: ignore[list-item]


def test_epsilon_of_rejects_misplaced_segments() -> None:
    with pytest.raises(ConfigError):
        dist.epsilon_of([dist.SkellamSegment(1.0, 1.0, 1.0, 0.1, 1)], [], DELTA)  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        dist.epsilon_of([], [(1.0, 0.1, 1)], DELTA)  # type: ignore[list-item]


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_epsilon_of_rejects_a_bad_delta(delta: float) -> None:
    with pytest.raises(ConfigError):
        dist.epsilon_of([], [], delta)


# --- calibration ----------------------------------------------------------------------------------


def _calibrate(**overrides: object) -> float:
    params: dict[str, object] = {"clip": 1.0, "gamma": 200.0, "dim": 650}
    params.update(overrides)
    return dist.calibrate_skellam(3.0, DELTA, 0.05, 200, **params)  # type: ignore[arg-type]


def test_calibration_reaches_the_target_and_not_above() -> None:
    l1, l2 = dist.sensitivity(clip=1.0, gamma=200.0, dim=650)

    mu = _calibrate(rtol=1e-4)

    epsilon = dist.epsilon_of([], [dist.SkellamSegment(mu, l1, l2, 0.05, 200)], DELTA)
    less_noise = dist.epsilon_of([], [dist.SkellamSegment(mu / 1.0002, l1, l2, 0.05, 200)], DELTA)
    assert epsilon <= 3.0 < less_noise
    assert epsilon == pytest.approx(3.0, abs=1e-3)


def test_calibration_charges_the_prior_history() -> None:
    fresh = _calibrate()

    after_gaussian = _calibrate(prior_gaussian=[(2.0, 0.05, 100)])

    assert after_gaussian > fresh
    with pytest.raises(BudgetExceededError):
        _calibrate(prior_gaussian=[(0.5, 0.5, 1000)])


def test_calibration_matches_the_gaussian_noise_when_sampling_is_off() -> None:
    # no subsampling and tiny rounding loss: the Skellam noise multiplier is the Gaussian one
    mu = dist.calibrate_skellam(3.0, DELTA, 1.0, 10, clip=1.0, gamma=1e4, dim=4, rtol=1e-5)
    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in dist.ORDERS]),
        lambda s: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), 10),
        3.0,
        DELTA,
        tol=1e-7,
    )

    multiplier = dist.noise_multiplier_equivalent(mu_total=mu, gamma=1e4, clip=1.0)

    assert multiplier == pytest.approx(sigma, rel=2e-3)


def test_shares_of_t_survivors_carry_the_calibrated_noise() -> None:
    l1, l2 = dist.sensitivity(clip=1.0, gamma=200.0, dim=650)
    mu_total, survivors = _calibrate(), 4
    share = dist.noise_share(mu_total, survivors)

    def epsilon(contributors: int) -> float:
        return dist.epsilon_of([], [dist.SkellamSegment(contributors * share, l1, l2, 0.05, 200)], DELTA)

    assert epsilon(survivors) <= 3.0 < epsilon(survivors - 1)  # below t survivors the guarantee fails
    assert epsilon(survivors + 2) < epsilon(survivors)  # extra survivors only add noise


@pytest.mark.parametrize(("mu_total", "survivors"), [(0.0, 3), (10.0, 0), (10.0, True)])
def test_noise_share_rejects_bad_input(mu_total: float, survivors: int) -> None:
    with pytest.raises(ConfigError):
        dist.noise_share(mu_total, survivors)


def test_plan_refuses_a_budget_no_gamma_fits() -> None:
    with pytest.raises(ConfigError, match="ring bits"):
        ddp_plan.plan_skellam(
            target_epsilon=3.0,
            delta=DELTA,
            sample_rate=0.05,
            steps=100,
            clip=1.0,
            dim=650,
            max_ring_bits=8,
            min_survivors=3,
            max_summands=300,
        )


def test_plan_fits_the_bit_budget_and_the_target() -> None:
    plan = ddp_plan.plan_skellam(
        target_epsilon=3.0,
        delta=DELTA,
        sample_rate=0.05,
        steps=100,
        clip=1.0,
        dim=650,
        max_ring_bits=16,
        min_survivors=3,
        max_summands=300,
        max_contributors=5,
    )

    encoding = ddp.make_encoding(
        dim=650,
        clip=1.0,
        gamma=plan.gamma,
        noise_mu_total=plan.mu_total,
        min_survivors=3,
        max_contributors=5,
        max_summands=300,
    )
    assert encoding.ring_bits == plan.ring_bits <= 16
    assert plan.epsilon <= 3.0
    assert (encoding.l1_bound, encoding.l2_bound) == (plan.l1, plan.l2)
    assert plan.noise_multiplier == pytest.approx(math.sqrt(2 * plan.mu_total) / plan.gamma)
    wider = ddp.make_encoding(
        dim=650,
        clip=1.0,
        gamma=plan.gamma * 1.05,
        noise_mu_total=dist.calibrate_skellam(
            3.0, DELTA, 0.05, 100, clip=1.0, gamma=plan.gamma * 1.05, dim=650
        ),
        min_survivors=3,
        max_contributors=5,
        max_summands=300,
    )
    assert wider.ring_bits > 16  # the planned gamma is (to 5%) the largest that fits
