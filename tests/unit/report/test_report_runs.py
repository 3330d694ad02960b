"""Reading run directories back: metrics, config, and per-client epsilon from the ledgers."""

import math

import pytest
from report_builders import BUDGET, round_record, spend, write_run

from fedsys.errors import ConfigError
from fedsys.privacy import PrivacyLedger
from fedsys.report.runs import load_run, load_runs


def test_per_round_epsilon_follows_each_clients_ledger(tmp_path):
    run_dir = write_run(tmp_path / "run", [round_record(r) for r in (1, 2, 3)])
    first = spend(run_dir / "ledgers" / "client-00000.sqlite", [1, 3])
    second = spend(run_dir / "ledgers" / "client-00001.sqlite", [2])

    run = load_run(run_dir)

    curves = {c.client: c.epsilons for c in run.clients}
    assert curves["client-00000"] == (0.0, first[0], first[0], first[1])
    assert curves["client-00001"] == (0.0, 0.0, second[0], second[0])
    assert run.epsilon_source == "ledger"


def test_final_epsilon_is_the_largest_ledger_summary(tmp_path):
    run_dir = write_run(tmp_path / "run", [round_record(1), round_record(2)])
    spend(run_dir / "ledgers" / "client-00000.sqlite", [1])
    spend(run_dir / "ledgers" / "client-00001.sqlite", [1, 2])

    run = load_run(run_dir)

    ledger_epsilons = []
    for path in sorted((run_dir / "ledgers").glob("*.sqlite")):
        with PrivacyLedger(path) as ledger:
            ledger_epsilons += [s.epsilon for s in ledger.summary()]
    assert run.final_epsilon() == max(ledger_epsilons)
    assert 0 < run.final_epsilon() < BUDGET.max_epsilon


def test_entries_of_other_runs_set_the_starting_point_but_not_the_curve(tmp_path):
    run_dir = write_run(tmp_path / "run", [round_record(1), round_record(2)])
    earlier = spend(run_dir / "ledgers" / "client-00000.sqlite", [1, 2], run_id="an-earlier-run")
    now = spend(run_dir / "ledgers" / "client-00000.sqlite", [2])

    (client,) = load_run(run_dir).clients

    assert client.epsilons == (earlier[-1], earlier[-1], now[0])
    assert client.final == pytest.approx(now[0])


def test_without_ledgers_epsilon_comes_from_round_metrics(tmp_path):
    records = [
        round_record(1, **{"epsilon-min": 0.1, "epsilon-median": 0.2, "epsilon-max": 0.3}),
        round_record(2, **{"epsilon-min": 0.3, "epsilon-median": 0.5, "epsilon-max": 0.7}),
    ]
    run = load_run(write_run(tmp_path / "run", records))

    assert run.epsilon_source == "metrics"
    assert run.final_epsilon() == 0.7


def test_a_non_private_run_has_no_epsilon_and_nan_for_missing_values(tmp_path):
    run = load_run(write_run(tmp_path / "run", [round_record(1), round_record(2, accuracy=None)], dp=False))

    assert not run.private
    assert run.epsilon_source == "none"
    assert run.final_epsilon() is None
    assert math.isnan(run.series("accuracy")[1])
    assert run.last("accuracy") == pytest.approx(0.4)


def test_a_folder_without_metrics_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        load_run(tmp_path)


def test_runs_with_the_same_folder_name_get_their_parent_as_prefix(tmp_path):
    a = write_run(tmp_path / "a" / "run", [round_record(1)])
    b = write_run(tmp_path / "b" / "run", [round_record(1)])

    assert [r.name for r in load_runs([a, b])] == ["a/run", "b/run"]


def test_noise_multipliers_are_those_of_this_runs_entries_only(tmp_path):
    run_dir = write_run(tmp_path / "run", [round_record(1), round_record(2)])
    spend(run_dir / "ledgers" / "client-00000.sqlite", [1], run_id="an-earlier-run", noise_multiplier=3.0)
    spend(run_dir / "ledgers" / "client-00000.sqlite", [1, 2], noise_multiplier=0.9)
    spend(run_dir / "ledgers" / "client-00001.sqlite", [2], noise_multiplier=1.1)

    run = load_run(run_dir)

    assert run.noise_multipliers() == (0.9, 1.1)
    assert run.target_deltas() == (BUDGET.target_delta,)


def test_a_run_directory_without_the_simulated_flag_is_deployed_when_its_data_is_the_holders(tmp_path):
    node = {"dataset": "node", "feature-shape": "2", "num-classes": 2}
    deployed = load_run(write_run(tmp_path / "deployed", [round_record(1)], **node))
    simulated = load_run(write_run(tmp_path / "simulated", [round_record(1)]))
    flagged = load_run(write_run(tmp_path / "flagged", [round_record(1)], summary={"simulated": False}))

    assert (deployed.simulated, simulated.simulated, flagged.simulated) == (False, True, False)
    assert deployed.clients_seen() is None and simulated.clients_seen() == 10
