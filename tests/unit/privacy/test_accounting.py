"""Accounting: Opacus results pinned against Google's dp-accounting as an independent oracle."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.rdp import RDPAccountant
from privacy_builders import CPU, blobs, tiny_mlp
from scipy import integrate

from fedsys.errors import ConfigError
from fedsys.privacy import compute_epsilon, extend_history, max_steps_within
from fedsys.privacy.accounting import normalize_history
from fedsys.privacy.dpsgd import train_dp_sgd

DELTA = 1e-5


def _poisson_gaussian(sample_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(event, steps)


@pytest.mark.parametrize(
    ("sample_rate", "noise_multiplier", "steps"),
    [(256 / 60000, 1.1, 14062), (1.0, 5.0, 10), (0.01, 0.8, 500), (0.1, 1.0, 100)],
)
def test_rdp_matches_dp_accounting_rdp_on_integer_orders(
    sample_rate: float, noise_multiplier: float, steps: int
) -> None:
    # On integer orders both libraries use the closed-form binomial expansion (Mironov et al.
    # 2019, Sec. 3.2), so they must agree to rounding.
    orders = list(range(2, 256))
    oracle = rdp.RdpAccountant(orders=orders)
    oracle.compose(_poisson_gaussian(sample_rate, noise_multiplier, steps))
    opacus = create_accountant("rdp")
    opacus.history = [(noise_multiplier, sample_rate, steps)]

    assert opacus.get_epsilon(DELTA, alphas=orders) == pytest.approx(oracle.get_epsilon(DELTA), rel=1e-6)


@pytest.mark.parametrize(
    ("sample_rate", "noise_multiplier", "steps", "rel"),
    [(256 / 60000, 1.1, 14062, 1e-6), (1.0, 5.0, 10, 1e-6), (0.01, 0.8, 500, 1e-5), (0.1, 1.0, 100, 1e-3)],
)
def test_rdp_is_at_most_dp_accounting_rdp_on_fractional_orders(
    sample_rate: float, noise_multiplier: float, steps: int, rel: float
) -> None:
    # dp-accounting 0.6 bounds fractional orders conservatively (up to ~6e-4 above here);
    # Opacus computes them exactly (see the numerical-integration test below).
    oracle = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    oracle.compose(_poisson_gaussian(sample_rate, noise_multiplier, steps))

    ours = compute_epsilon([(noise_multiplier, sample_rate, steps)], target_delta=DELTA, accountant="rdp")

    assert ours == pytest.approx(oracle.get_epsilon(DELTA), rel=rel)
    assert ours <= oracle.get_epsilon(DELTA) * (1 + 1e-9)


def _rdp_by_integration(sample_rate: float, noise_multiplier: float, order: float) -> float:
    """log E_{z~N(0, s^2)}[((1-q) + q exp((2z-1)/(2 s^2)))^order] / (order-1), by quadrature."""

    def integrand(z: float) -> float:
        ratio = (1 - sample_rate) + sample_rate * math.exp((2 * z - 1) / (2 * noise_multiplier**2))
        return float(ratio**order * math.exp(-(z**2) / (2 * noise_multiplier**2)))

    bound = 40 * noise_multiplier
    value, _error = integrate.quad(
        integrand, -bound, bound, points=[0.0, 0.5, 1.0], epsabs=0, epsrel=1e-13, limit=500
    )
    return math.log(float(value) / (noise_multiplier * math.sqrt(2 * math.pi))) / (order - 1)


@pytest.mark.parametrize(("sample_rate", "noise_multiplier"), [(0.01, 0.8), (0.1, 1.0)])
@pytest.mark.parametrize("order", [1.5, 3.2, 5.1])
def test_fractional_order_rdp_matches_numerical_integration(
    sample_rate: float, noise_multiplier: float, order: float
) -> None:
    exact = _rdp_by_integration(sample_rate, noise_multiplier, order)

    opacus = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=[order]
    )

    assert float(opacus[0]) == pytest.approx(exact, rel=1e-6)


def test_rdp_reproduces_the_published_mnist_setting() -> None:
    ours = compute_epsilon([(1.1, 256 / 60000, 14062)], target_delta=DELTA, accountant="rdp")

    assert ours == pytest.approx(2.597, abs=1e-3)


def test_prv_is_close_to_and_above_dp_accounting_pld() -> None:
    oracle = pld.PLDAccountant()
    oracle.compose(_poisson_gaussian(256 / 60000, 1.1, 14062))
    pld_epsilon = oracle.get_epsilon(DELTA)

    prv_epsilon = compute_epsilon([(1.1, 256 / 60000, 14062)], target_delta=DELTA, accountant="prv")

    assert prv_epsilon == pytest.approx(2.392, abs=1e-3)
    assert abs(prv_epsilon - pld_epsilon) < 0.05
    assert prv_epsilon >= pld_epsilon - 1e-3  # Opacus returns PRV's upper bound


def test_empty_history_spends_nothing() -> None:
    assert compute_epsilon([], target_delta=DELTA, accountant="prv") == 0.0
    assert compute_epsilon([(1.0, 0.1, 0)], target_delta=DELTA, accountant="rdp") == 0.0


@pytest.mark.parametrize("segment", [(0.0, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, 0.1, -1)])
def test_bad_segments_are_rejected(segment: tuple[float, float, int]) -> None:
    with pytest.raises(ConfigError, match="got"):
        compute_epsilon([segment], target_delta=DELTA, accountant="rdp")


@given(
    st.lists(
        st.tuples(st.sampled_from([0.8, 1.0]), st.sampled_from([0.05, 0.1]), st.integers(0, 5)),
        max_size=12,
    )
)
def test_extend_history_merges_like_an_opacus_accountant(segments: list[tuple[float, float, int]]) -> None:
    live = create_accountant("rdp")
    for noise_multiplier, sample_rate, steps in segments:
        for _ in range(steps):
            live.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    assert normalize_history(segments) == live.history


@settings(max_examples=8, deadline=None)
@given(
    noise_multiplier=st.floats(0.8, 3.0),
    sample_rate=st.floats(0.001, 0.2),
    max_epsilon=st.floats(0.5, 10.0),
    prior_steps=st.integers(0, 200),
)
def test_max_steps_within_fits_and_one_more_does_not(
    noise_multiplier: float, sample_rate: float, max_epsilon: float, prior_steps: int
) -> None:
    prior = [(1.0, 0.05, prior_steps)] if prior_steps else []
    upper = 1000

    def epsilon(steps: int) -> float:
        history = extend_history(
            prior, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        return compute_epsilon(history, target_delta=DELTA, accountant="rdp")

    found = max_steps_within(
        prior,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        target_delta=DELTA,
        max_epsilon=max_epsilon,
        accountant="rdp",
        upper=upper,
    )

    if found > 0 or epsilon(0) <= max_epsilon:
        assert epsilon(found) <= max_epsilon
    if found < upper:
        assert epsilon(found + 1) > max_epsilon


def test_max_steps_within_prv_fits_and_one_more_does_not() -> None:
    kwargs = {"noise_multiplier": 1.0, "sample_rate": 0.05, "target_delta": DELTA, "accountant": "prv"}
    found = max_steps_within([], max_epsilon=2.0, upper=500, **kwargs)  # type: ignore[arg-type]

    def epsilon(steps: int) -> float:
        return compute_epsilon([(1.0, 0.05, steps)], target_delta=DELTA, accountant="prv")

    assert 0 < found < 500
    assert epsilon(found) <= 2.0 < epsilon(found + 1)


def _train(
    steps: int, prior: list[tuple[float, float, int]], accountant: str, seed: int
) -> list[tuple[float, float, int]]:
    result = train_dp_sgd(
        model=tiny_mlp(),
        train_set=blobs(n=50),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        batch_size=5,
        steps=steps,
        lr=0.1,
        momentum=0.0,
        proximal_mu=0.0,
        grad_sample_mode="ghost",
        accountant=accountant,  # type: ignore[arg-type]
        prior_history=prior,
        device=CPU,
        generator=torch.Generator().manual_seed(seed),
    )
    return result.history


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_restored_history_over_five_rounds_equals_one_long_accountant(accountant: str) -> None:
    one_engine = _train(25, [], accountant, seed=99)

    history: list[tuple[float, float, int]] = []
    for round_number in range(5):  # a fresh module, optimizer and PrivacyEngine each round
        history = _train(5, history, accountant, seed=round_number)

    assert history == one_engine == [(1.0, 0.1, 25)]
    restored = compute_epsilon(history, target_delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    single = create_accountant(accountant)
    for _ in range(25):
        single.step(noise_multiplier=1.0, sample_rate=0.1)
    assert restored == single.get_epsilon(DELTA)
