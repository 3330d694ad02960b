"""The ``privacy plan`` and ``ledger show`` commands: numbers, JSON, one-line errors, exit code 2."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import typer
from privacy_builders import oracle_rdp_epsilon
from typer.testing import CliRunner

from fedsys.config import TrainConfig
from fedsys.errors import ConfigError
from fedsys.privacy import LocalBudget, PrivacyLedger, compute_epsilon
from fedsys.privacy.commands import register
from fedsys.privacy.planning import noise_for_target, resolve_schedule

runner = CliRunner()
app = typer.Typer()
register(app)

PLAN = ["privacy", "plan", "--target-epsilon", "3", "--delta", "1e-5", "--rounds", "20"]


def _plan_json(*extra: str) -> dict[str, Any]:
    result = runner.invoke(app, [*PLAN, *extra, "--json"])
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def test_plan_reaches_the_target_from_below_with_rdp_and_prv():
    payload = _plan_json("--sample-rate", "0.05", "--local-steps", "10")

    assert payload["steps"] == 200 and payload["sample_rate"] == 0.05
    plans = {row["accountant"]: row for row in payload["plans"]}
    assert set(plans) == {"rdp", "prv"}
    for accountant, row in plans.items():
        epsilon = compute_epsilon(
            [(row["noise_multiplier"], 0.05, 200)], target_delta=1e-5, accountant=accountant
        )
        assert 3 - 1e-2 < epsilon <= 3
        assert row["epsilon"] == pytest.approx(epsilon)
    # PRV is the tighter accountant: it needs less noise for the same target.
    assert plans["prv"]["noise_multiplier"] < plans["rdp"]["noise_multiplier"]


def test_plan_table_shows_both_accountants():
    result = runner.invoke(app, [*PLAN, "--sample-rate", "0.05", "--local-steps", "10"])

    assert result.exit_code == 0, result.output
    assert "rdp" in result.stdout and "prv" in result.stdout
    sigma = noise_for_target(
        target_epsilon=3, target_delta=1e-5, sample_rate=0.05, steps=200, accountant="rdp"
    )
    assert f"{sigma:.4f}" in result.stdout


@pytest.mark.parametrize("local", [["--local-steps", "7"], ["--local-epochs", "2"], []])
def test_dataset_size_form_equals_sample_rate_form(local):
    # N = 1000, B = 64: ceil(N / B) = 16 batches, so q = 1/16 and one epoch is 16 steps.
    by_size = _plan_json("--dataset-size", "1000", "--batch-size", "64", *local)
    by_rate = _plan_json("--sample-rate", str(1 / math.ceil(1000 / 64)), *local)

    assert by_size["sample_rate"] == 1 / 16
    assert by_size == by_rate
    per_round = {"--local-steps": 7, "--local-epochs": 32}
    run_default = TrainConfig().local_epochs * 16  # no local option: a run's train.local-epochs default
    expected_steps = 20 * per_round.get(local[0] if local else "", run_default)
    assert by_size["steps"] == expected_steps


@pytest.mark.parametrize(
    ("args", "echo"),
    [
        (["--target-epsilon", "-1", "--delta", "1e-5", "--rounds", "5", "--sample-rate", "0.1"], "-1.0"),
        (["--target-epsilon", "3", "--delta", "1.5", "--rounds", "5", "--sample-rate", "0.1"], "1.5"),
        (["--target-epsilon", "3", "--delta", "1e-5", "--rounds", "5", "--sample-rate", "1.2"], "1.2"),
        (["--target-epsilon", "3", "--delta", "1e-5", "--rounds", "0", "--sample-rate", "0.1"], "got 0"),
        (["--target-epsilon", "3", "--delta", "1e-5", "--rounds", "5"], "give --sample-rate"),
        (
            [
                "--target-epsilon",
                "3",
                "--delta",
                "1e-5",
                "--rounds",
                "5",
                "--dataset-size",
                "0",
                "--batch-size",
                "8",
            ],
            "got 0",
        ),
        (
            [
                "--target-epsilon",
                "3",
                "--delta",
                "1e-5",
                "--rounds",
                "5",
                "--sample-rate",
                "0.1",
                "--batch-size",
                "8",
            ],
            "batch size 8",
        ),
        (
            ["--target-epsilon", "3", "--delta", "1e-5", "--rounds", "5", "--sample-rate", "0.1"]
            + ["--local-steps", "2", "--local-epochs", "1"],
            "not both",
        ),
    ],
)
def test_plan_rejects_bad_inputs_with_exit_2_and_the_value(args, echo):
    result = runner.invoke(app, ["privacy", "plan", *args])

    assert result.exit_code == 2, result.output
    assert echo in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_noise_for_target_validates_and_reports_unreachable_targets():
    with pytest.raises(ConfigError, match="got 0"):
        noise_for_target(target_epsilon=1, target_delta=1e-5, sample_rate=0.1, steps=0, accountant="rdp")
    with pytest.raises(ConfigError, match="'gdp'"):
        noise_for_target(target_epsilon=1, target_delta=1e-5, sample_rate=0.1, steps=1, accountant="gdp")
    with pytest.raises(ConfigError, match="no noise multiplier reaches epsilon 1e-09"):
        noise_for_target(target_epsilon=1e-9, target_delta=1e-5, sample_rate=1.0, steps=10, accountant="rdp")


def test_bare_sample_rate_epoch_rounds_up_unless_whole():
    assert resolve_schedule(rounds=1, sample_rate=1 / 16).steps_per_round == 16
    assert resolve_schedule(rounds=1, sample_rate=0.03).steps_per_round == 34


def _ledger_with_entries(path):
    budget = LocalBudget(max_epsilon=50.0, target_delta=1e-5)
    with PrivacyLedger(path, create=True) as ledger:
        first = ledger.reserve_within_budget(
            budget_key="site-a",
            fingerprint="a" * 64,
            run_id="run-one",
            server_round=1,
            noise_multiplier=1.1,
            sample_rate=0.1,
            steps=10,
            budget=budget,
        )
        ledger.commit(first.entry_id, actual_steps=8, epsilon_after=first.epsilon_after)
        ledger.reserve_within_budget(
            budget_key="site-a",
            fingerprint="a" * 64,
            run_id="run-one",
            server_round=2,
            noise_multiplier=1.1,
            sample_rate=0.1,
            steps=10,
            budget=budget,
        )
        other = ledger.reserve_within_budget(
            budget_key="site-b",
            fingerprint="b" * 64,
            run_id="run-two",
            server_round=1,
            noise_multiplier=2.0,
            sample_rate=0.05,
            steps=4,
            budget=budget,
        )
        ledger.commit(other.entry_id, actual_steps=4, epsilon_after=other.epsilon_after)
        return ledger.summary()


def test_ledger_show_json_lists_every_entry_and_the_totals(tmp_path):
    path = tmp_path / "ledger.sqlite"
    totals = _ledger_with_entries(path)

    result = runner.invoke(app, ["ledger", "show", str(path), "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["entries"]
    assert [(r["id"], r["run_id"], r["round"], r["status"], r["steps"]) for r in rows] == [
        (1, "run-one", 1, "committed", 8),
        (2, "run-one", 2, "reserved", 10),
        (3, "run-two", 1, "committed", 4),
    ]
    assert rows[0]["committed_at"] is not None and rows[1]["committed_at"] is None
    assert [
        (t["budget_key"], t["entries"], t["steps"], t["open_reservations"]) for t in payload["totals"]
    ] == [
        ("site-a", 2, 18, 1),
        ("site-b", 1, 4, 0),
    ]
    assert [t["epsilon"] for t in payload["totals"]] == [s.epsilon for s in totals]


def test_ledger_show_table_lists_entries_and_totals(tmp_path):
    path = tmp_path / "ledger.sqlite"
    totals = _ledger_with_entries(path)

    result = runner.invoke(app, ["ledger", "show", str(path)])

    assert result.exit_code == 0, result.output
    for text in ("run-one", "run-two", "committed", "reserved", "8/10", "total per budget", "aaaaaaaa"):
        assert text in result.stdout
    for total in totals:
        assert f"{total.epsilon:.4f}" in result.stdout


@pytest.mark.parametrize("content", [b"this is not a sqlite database " * 40, b"", None])
def test_ledger_show_rejects_corrupt_empty_or_missing_files_in_one_line(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    if content is not None:
        path.write_bytes(content)

    result = runner.invoke(app, ["ledger", "show", str(path)])

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "privacy ledger" in lines[0] and "Traceback" not in result.output
    assert path.exists() == (content is not None)  # showing never creates a ledger
    if content is not None:
        assert path.read_bytes() == content  # nor writes into the file


def test_ledger_init_creates_an_empty_ledger_that_clients_can_open(tmp_path):
    path = tmp_path / "holder" / "ledger.sqlite"

    result = runner.invoke(app, ["ledger", "init", str(path)])

    assert result.exit_code == 0, result.output
    assert "created privacy ledger" in result.stdout
    with PrivacyLedger(path) as ledger:  # no create: the file is a real ledger now
        assert ledger.summary() == []


@pytest.mark.parametrize("content", [b"", None])
def test_ledger_init_never_replaces_an_existing_file(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    if content is None:
        _ledger_with_entries(path)
    else:
        path.write_bytes(content)
    before = path.read_bytes()

    result = runner.invoke(app, ["ledger", "init", str(path)])

    assert result.exit_code == 2, result.output
    assert "already exists" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before


def test_ledger_show_flags_a_budget_whose_data_changed(tmp_path):
    path = tmp_path / "ledger.sqlite"
    budget = LocalBudget(max_epsilon=50.0, target_delta=1e-5)
    with PrivacyLedger(path, create=True) as ledger:
        for fingerprint in ("a" * 64, "c" * 64):
            ledger.reserve_within_budget(
                budget_key="default",
                fingerprint=fingerprint,
                run_id="run",
                server_round=1,
                noise_multiplier=1.0,
                sample_rate=0.1,
                steps=5,
                budget=budget,
            )

    table = runner.invoke(app, ["ledger", "show", str(path)])
    as_json = runner.invoke(app, ["ledger", "show", str(path), "--json"])

    assert table.exit_code == 0, table.output
    assert "2 (changed)" in table.stdout and "WARNING: the data of budget 'default' changed" in table.stdout
    [total] = json.loads(as_json.stdout)["totals"]
    assert (total["budget_key"], total["entries"], total["fingerprints"]) == ("default", 2, 2)


def test_without_a_batch_size_plan_suggests_batch_sizes_best_first_each_meeting_the_target():
    payload = _plan_json("--dataset-size", "287", "--local-epochs", "2")

    rows = payload["candidates"]
    # powers of two from 8 while an epoch keeps at least 4 steps: ceil(287 / 64) = 5, / 128 = 3
    assert sorted(r["batch_size"] for r in rows) == [8, 16, 32, 64]
    for row in rows:
        assert row["sample_rate"] == 1 / math.ceil(287 / row["batch_size"])
        assert row["steps"] == 20 * 2 * math.ceil(287 / row["batch_size"])
        epsilon = oracle_rdp_epsilon(row["noise_multiplier"], row["sample_rate"], row["steps"], 1e-5)
        assert 3 - 1e-2 < epsilon <= 3 + 1e-9
        assert row["signal_to_noise"] == pytest.approx(
            math.sqrt(row["steps"]) * row["batch_size"] / row["noise_multiplier"]
        )
    ratios = [r["signal_to_noise"] for r in rows]
    assert ratios == sorted(ratios, reverse=True)
    assert payload["suggested"] == rows[0] and rows[0]["batch_size"] == 64


def test_plan_suggestion_table_names_the_choice_and_a_tiny_data_set_is_a_clear_error():
    table = runner.invoke(app, [*PLAN, "--dataset-size", "287"])
    tiny = runner.invoke(app, [*PLAN, "--dataset-size", "20"])  # ceil(20 / 8) = 3 steps

    assert table.exit_code == 0, table.output
    assert "suggested: --batch-size 64" in table.stdout
    assert tiny.exit_code == 2
    assert "20 records is too small" in tiny.output


def _ledger_with_a_flower_run_id(path):
    budget = LocalBudget(max_epsilon=50.0, target_delta=1e-5)
    with PrivacyLedger(path, create=True) as ledger:
        for server_round in (1, 2, 3):
            step = ledger.reserve_within_budget(
                budget_key="hospital-records",
                fingerprint="f" * 64,
                run_id="10655336991243890644",  # Flower's run ids are 20 digits
                server_round=server_round,
                noise_multiplier=1.1,
                sample_rate=0.1,
                steps=10,
                budget=budget,
            )
            ledger.commit(step.entry_id, actual_steps=10, epsilon_after=step.epsilon_after)


def test_ledger_show_fits_the_declared_width_and_keeps_every_value(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    _ledger_with_a_flower_run_id(path)
    monkeypatch.setenv("COLUMNS", "80")

    result = runner.invoke(app, ["ledger", "show", str(path)])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    for text in ("10655336991243890644", "hospital-records", "ffffffff", "committed", "rdp", "1e-05", "→"):
        assert text in result.stdout  # split into tables, never cut or wrapped inside a cell
    assert sum("10655336991243890644" in line for line in lines) == 3


def test_piped_ledger_show_keeps_each_entry_on_one_line(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    _ledger_with_a_flower_run_id(path)
    monkeypatch.delenv("COLUMNS", raising=False)

    result = runner.invoke(app, ["ledger", "show", str(path)])

    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "10655336991243890644" in line]
    assert len(rows) == 3 and all("hospital-records" in row and "→" in row for row in rows)


def test_a_distributed_plan_shows_what_one_holders_vectors_reveal_alone_and_a_floor_lowers_it():
    common = ["--mode", "distributed", "--dataset-size", "287", "--batch-size", "300", "--dim", "650",
              "--clients", "5", "--threshold", "4"]  # fmt: skip
    plain = _plan_json(*common)
    floored = _plan_json(*common, "--local-noise-multiplier", "10")
    for plan in (plain, floored):
        assert 2.97 <= plan["epsilon"] <= 3.0  # the aggregate meets the target either way
    # without a floor one vector carries a quarter of the noise variance: sigma z/2 over 20 rounds
    z = plain["noise_multiplier"]
    assert plain["local_epsilon"] == pytest.approx(oracle_rdp_epsilon(z / 2, 1.0, 20, 1e-5), rel=0.05)
    assert floored["local_epsilon"] == pytest.approx(oracle_rdp_epsilon(10.0, 1.0, 20, 1e-5), rel=0.05)
    assert floored["local_epsilon"] < plain["local_epsilon"]
    text = runner.invoke(app, [*PLAN, *common, "--local-noise-multiplier", "10"]).stdout
    assert "alone, if SecAgg+ failed" in text and "local floor 10" in text
