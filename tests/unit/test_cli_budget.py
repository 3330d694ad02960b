"""The budget is checked before it is spent: exit code 2 before any round, 3 for a run that stops early."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import simulations.harness
from fedsys.cli import EXIT_STOPPED_EARLY, app
from fedsys.config import RunConfig
from fedsys.privacy.precheck import forecast_schedule
from fedsys.results import rewrite_metrics, write_config, write_summary

runner = CliRunner()
# digits, 4 clients, the run's defaults (10 rounds of 3 local epochs, batches of 32) at noise 0.8
OVER_BUDGET = [
    "simulate",
    "--dataset",
    "digits",
    "--num-clients",
    "4",
    "--no-secagg",
    "--noise-multiplier",
    "0.8",
]
STOP_REASON = (
    "stopped before round 3: only 1 client(s) can still train (sampling.min-clients = 2); "
    "3 exhausted their privacy budget"
)


def _no_simulation(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a simulation was started")


def _fake_simulation(summary: dict[str, Any], calls: list[RunConfig]):
    def run_scenario(config: RunConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
        calls.append(config)
        run_dir.mkdir(parents=True)
        write_config(run_dir, config)
        rewrite_metrics(run_dir, [{"round": 1, "status": "ok", "accuracy": 0.5, "loss": 1.0}])
        full = {"run-id": "fake", "run-dir": str(run_dir), "rounds-completed": 1, **summary}
        write_summary(run_dir, full)
        return full

    return run_scenario


def test_a_schedule_over_budget_fails_before_any_round_with_exit_2_and_what_fits(monkeypatch, tmp_path):
    monkeypatch.setattr(simulations.harness, "run_scenario", _no_simulation)

    result = runner.invoke(app, [*OVER_BUDGET, "--out", str(tmp_path / "run")])

    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert re.match(
        r"error: client \d \(\d+ training examples\) would spend epsilon \d+\.\d{4} > budget\.max-epsilon 8 "
        r"if sampled in all 10 rounds \(\d+ DP-SGD steps at sampling rate [0-9.]+, noise multiplier 0\.8; "
        r"rdp, delta 1e-05\)",
        line,
    )
    assert "fits: --noise-multiplier " in line and "--target-epsilon 8" in line
    assert line.endswith("; --allow-partial runs anyway, until budgets run out")
    assert not (tmp_path / "run").exists()  # nothing was written, no ledger touched


def test_a_target_epsilon_over_the_budget_fails_before_any_round(monkeypatch):
    monkeypatch.setattr(simulations.harness, "run_scenario", _no_simulation)

    result = runner.invoke(app, ["simulate", "--dataset", "digits", "--target-epsilon", "9"])

    assert result.exit_code == 2
    assert "dp.target-epsilon 9 exceeds budget.max-epsilon 8" in result.output
    assert "fits: --target-epsilon 8" in result.output


def test_allow_partial_warns_and_runs(monkeypatch, tmp_path):
    calls: list[RunConfig] = []
    monkeypatch.setattr(simulations.harness, "run_scenario", _fake_simulation({"stop-reason": ""}, calls))

    result = runner.invoke(app, [*OVER_BUDGET, "--allow-partial", "--out", str(tmp_path / "run")])

    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0].dp.noise_multiplier == 0.8
    assert "warning: client " in result.output and "running anyway (--allow-partial)" in result.output


def test_a_run_that_stops_early_exits_3_and_its_last_line_says_why(monkeypatch, tmp_path):
    calls: list[RunConfig] = []
    fake = _fake_simulation({"stop-reason": STOP_REASON}, calls)
    monkeypatch.setattr(simulations.harness, "run_scenario", fake)

    result = runner.invoke(
        app, ["simulate", "--dataset", "digits", "--no-dp", "--out", str(tmp_path / "run")]
    )

    assert EXIT_STOPPED_EARLY == 3
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == f"run stopped early, exit code 3: {STOP_REASON}"


def test_a_run_that_finishes_exits_0(monkeypatch, tmp_path):
    monkeypatch.setattr(simulations.harness, "run_scenario", _fake_simulation({"stop-reason": ""}, []))

    result = runner.invoke(
        app, ["simulate", "--dataset", "digits", "--no-dp", "--out", str(tmp_path / "run")]
    )

    assert result.exit_code == 0, result.output
    assert "stopped early" not in result.output


def test_a_sweep_checks_each_run_before_it_starts_and_exits_3_when_one_stopped_early(monkeypatch, tmp_path):
    events: list[str] = []
    calls: list[RunConfig] = []
    fake = _fake_simulation({"stop-reason": STOP_REASON}, calls)
    monkeypatch.setattr(
        simulations.harness, "run_scenario", lambda *a, **k: events.append("run") or fake(*a, **k)
    )
    monkeypatch.setattr(
        "fedsys.privacy.precheck.check_schedule", lambda config, **kwargs: events.append("check") or None
    )
    args = [
        "sweep",
        "simulations/digits.toml",
        "--target-epsilon",
        "inf",
        "--no-central",
        "--out",
        str(tmp_path),
    ]

    result = runner.invoke(app, args)

    assert events == ["check", "run"]
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == f"run stopped early, exit code 3: {STOP_REASON}"


def test_the_sweep_accepts_allow_partial(monkeypatch, tmp_path):
    seen: list[bool] = []
    monkeypatch.setattr(simulations.harness, "run_scenario", _fake_simulation({"stop-reason": ""}, []))
    monkeypatch.setattr(
        "fedsys.privacy.precheck.check_schedule", lambda config, allow_partial: seen.append(allow_partial)
    )
    args = [
        "sweep",
        "simulations/digits.toml",
        "--target-epsilon",
        "inf",
        "--no-central",
        "--out",
        str(tmp_path),
    ]

    result = runner.invoke(app, [*args, "--allow-partial"])

    assert result.exit_code == 0, result.output
    assert seen == [True]


def test_privacy_plan_assumes_the_runs_default_local_epochs():
    dataset_size = 287
    args = ["privacy", "plan", "--target-epsilon", "3", "--delta", "1e-5", "--rounds", "10"]
    result = runner.invoke(app, [*args, "--dataset-size", str(dataset_size), "--batch-size", "32", "--json"])

    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    run = RunConfig()
    assert plan["steps_per_round"] == run.train.local_epochs * math.ceil(dataset_size / 32)
    # the same schedule the pre-run check forecasts for a holder of that size under the run's defaults
    (holder,) = forecast_schedule(run.replace({"num-rounds": 10}), [dataset_size]).holders
    assert (plan["sample_rate"], plan["steps_per_round"], plan["steps"]) == (
        holder.schedule.sample_rate,
        holder.schedule.steps_per_round,
        holder.schedule.steps,
    )
