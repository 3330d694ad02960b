"""Sweep planning: noise multipliers that reach each target epsilon, and one run per target."""

import json
import math

import dp_accounting
import pytest
from dp_accounting import rdp
from opacus.accountants.rdp import RDPAccountant
from report_builders import round_record, write_run
from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.privacy.central import CentralResult
from fedsys.report.document import write_report
from fedsys.report.runs import load_runs
from fedsys.report.sweep import (
    EPSILON_TOLERANCE,
    apply_plan,
    client_workloads,
    load_comparison,
    parse_seeds,
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

    assert private.dp.enabled and private.budget.max_epsilon == private.dp.target_epsilon == 1.0
    assert private.dp.noise_multiplier == plan_budget(config, 1.0).noise_multiplier
    assert not baseline.dp.enabled
    assert private.ledger_dir == baseline.ledger_dir == ""  # each run keeps its own ledgers


def test_each_client_calibrates_to_the_target_even_when_the_scenario_names_its_own():
    config = _scenario(**{"dp.target-epsilon": 3.0})  # clients ignore dp.noise-multiplier

    private = apply_plan(config, plan_budget(config, 1.0))

    assert private.dp.target_epsilon == 1.0 and private.budget.max_epsilon == 1.0
    assert private.dp.noise_multiplier == plan_budget(config, 1.0).noise_multiplier  # the most exposed


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


def test_seeds_parse_distinct_in_order():
    assert parse_seeds("2, 0,2,1") == [2, 0, 1]


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", ""])
def test_a_seed_that_is_not_a_natural_number_is_refused_and_echoed(bad):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(f"0,{bad}")


def _fake_run(config, run_dir):
    """A one-round run whose accuracy and epsilon encode its seed and target."""
    accuracy = 0.5 + 0.1 * config.seed + (0.0 if config.dp.enabled else 0.3)
    extra = {"epsilon-max": config.budget.max_epsilon - 0.01 * config.seed} if config.dp.enabled else {}
    write_run(run_dir, [round_record(1, accuracy=accuracy, **extra)], dp=config.dp.enabled, seed=config.seed)
    return {}


def _fake_central(config, target):
    private = math.isfinite(target)
    return CentralResult(
        target_epsilon=target,
        accuracy=0.7 + 0.1 * config.seed + (0.0 if private else 0.2),
        macro_f1=0.5,
        loss=1.0,
        epsilon=target - 0.001 if private else None,
        noise_multiplier=1.0 if private else None,
        target_delta=1e-5,
        accountant="rdp",
        sample_rate=0.1,
        batch_size=16,
        epochs=3,
        steps=30,
        num_examples=100,
        test_examples=20,
        simulation_seed=config.seed,
        seconds=0.1,
    )


def test_several_seeds_run_every_target_per_seed_and_the_comparison_spans_them(tmp_path):
    run_dirs = run_sweep(
        _scenario(), [1.0, math.inf], tmp_path, simulate=_fake_run, seeds=[0, 1], central=_fake_central
    )

    assert [str(d.relative_to(tmp_path)) for d in run_dirs] == [
        "seed-0/eps-1",
        "seed-0/eps-inf",
        "seed-1/eps-1",
        "seed-1/eps-inf",
    ]
    private, baseline = load_comparison(tmp_path)
    assert private.seeds == baseline.seeds == (0, 1)
    assert (private.federated_accuracy.low, private.federated_accuracy.high) == pytest.approx((0.5, 0.6))
    assert private.federated_accuracy.mean == pytest.approx(0.55)
    assert private.federated_epsilon.high == pytest.approx(1.0)
    assert private.central_accuracy.mean == pytest.approx(0.75)
    assert private.central_epsilon.mean == pytest.approx(0.999)
    assert baseline.federated_epsilon is None and baseline.central_epsilon is None
    assert baseline.central_accuracy.mean == pytest.approx(0.95)


def test_one_seed_keeps_the_flat_layout_and_the_report_puts_central_next_to_federated(tmp_path):
    run_dirs = run_sweep(_scenario(), [1.0, math.inf], tmp_path, simulate=_fake_run, central=_fake_central)

    report = write_report(load_runs(run_dirs), tmp_path, comparison=load_comparison(tmp_path))

    assert [d.name for d in run_dirs] == ["eps-1", "eps-inf"]
    text = report.markdown.read_text()
    assert "| 1 | 1 | 50.00% | 1.000 | 70.00% | 0.999 |" in text
    assert "| ∞ (no DP) | 1 | 80.00% | ∞ (no DP) | 90.00% | ∞ (no DP) |" in text
    assert (tmp_path / "federated-vs-central.png").stat().st_size > 1000
    rows = json.loads(report.numbers.read_text())["comparison"]
    assert [r["target-epsilon"] for r in rows] == [1.0, "inf"]
    assert rows[0]["central-epsilon"]["mean"] == pytest.approx(0.999)


def test_without_central_the_table_leaves_its_cells_empty(tmp_path):
    run_sweep(_scenario(), [1.0], tmp_path, simulate=_fake_run)

    (row,) = load_comparison(tmp_path)

    assert row.central_accuracy is None and row.central_epsilon is None
    assert not (tmp_path / "central.json").exists()


def test_the_sweep_command_refuses_seed_and_seeds_together(tmp_path):
    scenario = "simulations/breast-cancer.toml"
    args = ["sweep", scenario, "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path)]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2
    assert "--seed or --seeds" in result.output
    assert not any(tmp_path.iterdir())
