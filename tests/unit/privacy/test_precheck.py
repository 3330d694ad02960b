"""The pre-run budget check: each simulated holder's whole schedule against its budget, before any round."""

from __future__ import annotations

import math
import re

import pytest
from privacy_builders import oracle_rdp_epsilon

from fedsys.config import RunConfig
from fedsys.data import simulated_client_data
from fedsys.errors import BudgetExceededError, ConfigError
from fedsys.privacy import LocalBudget, compute_epsilon
from fedsys.privacy.budget import grant_steps
from fedsys.privacy.precheck import (
    check_schedule,
    forecast_schedule,
    schedule_problem,
    simulated_train_sizes,
)

# Three holders of unequal size: the smallest has the largest sampling rate and is the most exposed.
SIZES = [400, 60, 200]


def _config(**overrides: object) -> RunConfig:
    base = {"num-rounds": 10, "train.batch-size": 32, "dp.noise-multiplier": 1.0, "budget.max-epsilon": 8.0}
    return RunConfig().replace({**base, **overrides})


def test_a_holders_planned_epsilon_matches_an_independent_rdp_accountant():
    config = _config(**{"dp.noise-multiplier": 1.3, "num-rounds": 4})

    forecast = forecast_schedule(config, [287])

    (holder,) = forecast.holders
    # the run's defaults: 3 local epochs of ceil(287 / 32) = 9 Poisson batches, q = 1/9
    assert holder.schedule.sample_rate == 1 / 9
    assert holder.schedule.steps == 4 * 3 * 9
    oracle = oracle_rdp_epsilon(1.3, 1 / 9, 108, 1e-5)
    assert holder.epsilon == pytest.approx(oracle, rel=1e-4)  # the oracle drops fractional orders


def test_local_steps_replace_epochs_in_the_schedule():
    forecast = forecast_schedule(_config(**{"train.local-steps": 5}), SIZES)

    assert [h.schedule.steps for h in forecast.holders] == [50, 50, 50]
    assert [h.schedule.sample_rate for h in forecast.holders] == [1 / 13, 1 / 2, 1 / 7]


@pytest.mark.parametrize(
    ("noise_multiplier", "max_epsilon"), [(1.0, 8.0), (2.0, 8.0), (1.0, 40.0), (3.0, 2.0)]
)
def test_the_check_agrees_with_the_ledger_that_will_enforce_the_budget(noise_multiplier, max_epsilon):
    config = _config(**{"dp.noise-multiplier": noise_multiplier, "budget.max-epsilon": max_epsilon})
    budget = LocalBudget(max_epsilon=max_epsilon, target_delta=1e-5)

    forecast = forecast_schedule(config, SIZES)

    for holder in forecast.holders:
        schedule = holder.schedule
        try:
            granted = grant_steps(
                [],
                noise_multiplier=noise_multiplier,
                sample_rate=schedule.sample_rate,
                steps=schedule.steps,
                budget=budget,
            )
        except BudgetExceededError:
            granted = 0
        assert (granted == schedule.steps) == (holder.epsilon <= max_epsilon)
    assert forecast.fits == all(h.epsilon <= max_epsilon for h in forecast.holders)


def test_an_over_budget_schedule_names_the_worst_client_and_suggestions_that_fit():
    config = _config(**{"train.local-epochs": 1})

    problem = schedule_problem(config, SIZES)

    forecast = forecast_schedule(config, SIZES)
    worst = forecast.worst
    assert worst.client == 1 and worst.epsilon > 8  # 60 examples: q = 1/2
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"client 1 (60 training examples) would spend epsilon {worst.epsilon:.4f} > ")
    assert (
        "budget.max-epsilon 8 if sampled in all 10 rounds (20 DP-SGD steps at sampling rate 0.5," in problem
    )
    assert "; 2 of 3 clients over budget; fits: " in problem
    sigma = float(re.search(r"--noise-multiplier ([0-9.]+)", problem)[1])
    rounds = int(re.search(r"--rounds (\d+)", problem)[1])
    assert "--target-epsilon 8" in problem
    # the suggested noise fits every holder; a visibly smaller one does not fit the worst
    spent = [h.schedule.epsilon(sigma, target_delta=1e-5, accountant="rdp") for h in forecast.holders]
    assert max(spent) <= 8
    assert worst.schedule.epsilon(sigma - 0.02, target_delta=1e-5, accountant="rdp") > 8
    # the suggested rounds fit every holder, one more does not
    assert 1 <= rounds < 10
    assert all(_epsilon_after(h, rounds) <= 8 for h in forecast.holders)
    assert _epsilon_after(worst, rounds + 1) > 8


def _epsilon_after(holder, rounds: int) -> float:
    schedule = holder.schedule
    steps = rounds * schedule.steps_per_round
    return compute_epsilon([(1.0, schedule.sample_rate, steps)], target_delta=1e-5, accountant="rdp")


def test_the_budgets_accountant_and_delta_count():
    rdp_config = _config(**{"dp.noise-multiplier": 2.0})
    prv_config = _config(**{"dp.noise-multiplier": 2.0, "budget.accountant": "prv"})
    loose = _config(**{"dp.noise-multiplier": 2.0, "budget.target-delta": 1e-3})

    by_rdp, by_prv, by_delta = (
        forecast_schedule(c, [60]).worst.epsilon for c in (rdp_config, prv_config, loose)
    )

    assert by_prv < by_rdp  # PRV is the tighter accountant
    assert by_delta < by_rdp


def test_a_schedule_within_budget_and_a_run_without_dp_pass():
    assert schedule_problem(_config(**{"dp.noise-multiplier": 3.0}), SIZES) is None
    assert schedule_problem(_config(**{"dp.enabled": False, "dp.noise-multiplier": 0.1}), SIZES) is None
    assert check_schedule(_config(**{"dp.noise-multiplier": 3.0}), sizes=SIZES) is None


@pytest.mark.parametrize(("target", "fits"), [(8.0, True), (3.0, True), (8.5, False)])
def test_with_a_target_epsilon_the_run_fits_when_the_target_is_within_the_budget(target, fits):
    # each holder calibrates its noise to the target; no data needs to be read (no sizes given)
    config = _config(**{"dp.target-epsilon": target, "dp.noise-multiplier": 0.1})

    problem = schedule_problem(config, sizes=None)

    assert (problem is None) == fits
    if not fits:
        assert problem == (
            "dp.target-epsilon 8.5 exceeds budget.max-epsilon 8: each client would calibrate its noise "
            "to spend 8.5 over the 10 rounds; fits: --target-epsilon 8"
        )


def test_without_allow_partial_an_over_budget_schedule_raises_and_with_it_is_returned():
    config = _config()

    with pytest.raises(BudgetExceededError, match=r"^client 0 .*; --allow-partial runs anyway"):
        check_schedule(config, sizes=[60])
    warning = check_schedule(config, allow_partial=True, sizes=[60])

    assert warning is not None and warning.startswith("client 0 (60 training examples)")
    assert "--allow-partial" not in warning


def test_no_noise_is_a_config_error_that_echoes_the_value():
    with pytest.raises(ConfigError, match="dp.noise-multiplier must be > 0 .* got 0.0"):
        forecast_schedule(_config(**{"dp.noise-multiplier": 0.0}), SIZES)


def test_when_not_even_one_round_fits_no_rounds_are_suggested():
    config = _config(**{"budget.max-epsilon": 0.5, "dp.noise-multiplier": 0.6})

    problem = schedule_problem(config, SIZES)

    assert problem is not None and "--rounds" not in problem
    assert math.isfinite(float(re.search(r"--noise-multiplier ([0-9.]+)", problem)[1]))


def test_a_budget_exactly_at_the_planned_epsilon_fits_as_the_ledger_grants_it():
    spent = forecast_schedule(_config(), [60]).worst.epsilon

    assert forecast_schedule(_config(**{"budget.max-epsilon": spent}), [60]).fits
    assert not forecast_schedule(_config(**{"budget.max-epsilon": spent * (1 - 1e-9)}), [60]).fits


def test_no_holders_is_a_config_error():
    with pytest.raises(ConfigError, match="no clients"):
        forecast_schedule(_config(), [])


def test_without_sizes_the_check_reads_each_simulated_holders_training_set():
    config = _config(**{"dataset": "digits", "simulation.num-clients": 3, "train.local-epochs": 1})
    sizes = [len(simulated_client_data(config, partition_id=p, num_partitions=3).train) for p in range(3)]

    assert simulated_train_sizes(config) == sizes
    assert schedule_problem(config) == schedule_problem(config, sizes)
