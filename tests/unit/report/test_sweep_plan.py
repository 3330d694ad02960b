"""Sweep planning: noise multipliers that reach each target epsilon, and one run per target."""

import json
import math

import dp_accounting
import pytest
from dp_accounting import rdp
from opacus.accountants.rdp import RDPAccountant

from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.report.sweep import (
    EPSILON_TOLERANCE,
    apply_plan,
    client_workloads,
    parse_targets,
    plan_budget,
    run_sweep,
)


def _scenario(**extra):
    return RunConfig().replace(
        {
            "dataset": "breast-cancer",
            "model": "logreg",
            "num-rounds": 3,
            "simulation.num-clients": 3,
            "partition": "dirichlet:1.0",
            "train.batch-size": 16,
            "ledger-dir": "/somewhere/shared",
            **extra,
        }
    )


def _oracle_rdp_epsilon(noise_multiplier, sample_rate, steps, delta):
    event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def test_targets_parse_sorted_and_distinct_with_inf():
    assert parse_targets("8, 0.5,inf,1,8") == [0.5, 1.0, 8.0, math.inf]


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "one", ""])
def test_a_target_that_is_not_a_positive_number_is_refused_and_echoed(bad):
    with pytest.raises(ConfigError, match="--target-epsilon"):
        parse_targets(f"1,{bad}")


@pytest.mark.parametrize("target", [0.5, 3.0])
def test_planned_noise_reaches_the_target_from_below_per_an_independent_accountant(target):
    config = _scenario()

    plan = plan_budget(config, target)

    delta = config.budget.target_delta
    oracle = _oracle_rdp_epsilon(plan.noise_multiplier, plan.sample_rate, plan.steps, delta)
    assert target - EPSILON_TOLERANCE <= oracle <= target
    assert plan.planned_epsilon == pytest.approx(oracle, rel=1e-4)  # the oracle drops orders


def test_the_most_exposed_client_sets_the_noise_and_no_client_exceeds_the_target():
    config = _scenario()
    workloads = client_workloads(config)
    assert len(workloads) > 1  # unequal partitions: the planning has a choice to make

    plan = plan_budget(config, 1.0)

    epsilons = [
        _oracle_rdp_epsilon(plan.noise_multiplier, q, steps, config.budget.target_delta)
        for q, steps in workloads
    ]
    assert max(epsilons) == pytest.approx(plan.planned_epsilon, rel=1e-4)
    assert max(epsilons) <= 1.0


def test_steps_count_every_round_and_every_local_step():
    config = _scenario(**{"train.local-steps": 7})

    plan = plan_budget(config, 2.0)

    assert plan.steps == 3 * 7


def test_a_finite_target_sets_noise_and_budget_and_inf_turns_dp_off():
    config = _scenario(**{"dp.enabled": False})

    private = apply_plan(config, plan_budget(config, 1.0))
    baseline = apply_plan(config, plan_budget(config, math.inf))

    assert private.dp.enabled and private.budget.max_epsilon == 1.0
    assert private.dp.noise_multiplier == plan_budget(config, 1.0).noise_multiplier
    assert not baseline.dp.enabled
    assert private.ledger_dir == baseline.ledger_dir == ""  # each run keeps its own ledgers


def test_run_sweep_simulates_one_run_per_target_and_records_the_plans(tmp_path):
    seen = []

    def fake_simulate(config, run_dir):
        seen.append((run_dir.name, config.dp.enabled, config.budget.max_epsilon))
        return {}

    run_dirs = run_sweep(_scenario(), [1.0, math.inf], tmp_path, simulate=fake_simulate)

    assert [d.name for d in run_dirs] == ["eps-1", "eps-inf"]
    assert seen[0] == ("eps-1", True, 1.0)
    assert seen[1][:2] == ("eps-inf", False)
    plans = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["target-epsilon"] for p in plans] == [1.0, "inf"]
    assert plans[0]["noise-multiplier"] > 0
