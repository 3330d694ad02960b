"""Client-enforced privacy budgets through the real Flower simulation engine."""

from pathlib import Path

import pytest

from fedsys.config import RunConfig
from fedsys.privacy import PrivacyLedger
from fedsys.results import read_metrics
from simulations.harness import run_scenario

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).parents[2] / "simulations" / "digits.toml"
# A fixed noise multiplier and small batches: every round spends the same, a few rounds fit in 2.5.
FIXED_NOISE = {"dp.target-epsilon": 0.0, "dp.noise-multiplier": 1.2, "train.batch-size": 16, "train.lr": 0.3}


def _spent(run: Path) -> list[float]:
    spent = []
    for path in sorted((run / "ledgers").glob("*.sqlite")):
        with PrivacyLedger(path) as ledger:
            summaries = ledger.summary()
        assert all(s.open_reservations == 0 for s in summaries)  # every reservation committed
        spent.extend(s.epsilon for s in summaries)
    return spent


def test_clients_refuse_past_their_budget_and_the_run_stops(tmp_path):
    config = RunConfig.from_toml(SCENARIO).replace(
        {**FIXED_NOISE, "num-rounds": 6, "budget.max-epsilon": 2.5}
    )

    summary = run_scenario(config, tmp_path / "run")

    records = read_metrics(tmp_path / "run")
    declined_round = next(r for r in records if r["clients-declined"])
    assert declined_round["clients-declined"] == 5 and declined_round["status"] == "abandoned"
    assert all(r["status"] == "ok" for r in records if r["round"] < declined_round["round"])
    assert "exhausted their privacy budget" in summary["stop-reason"]
    # the declined round released nothing: it is abandoned, not completed
    assert summary["rounds-completed"] == declined_round["round"] - 1 < 5
    assert summary["rounds-abandoned"] == 1
    spent = _spent(tmp_path / "run")
    assert len(spent) == 5 and max(spent) <= 2.5


def test_truncate_spends_up_to_the_budget_exactly_never_beyond(tmp_path):
    config = RunConfig.from_toml(SCENARIO).replace(
        {
            **FIXED_NOISE,
            "num-rounds": 4,
            "budget.max-epsilon": 2.5,
            "budget.policy": "truncate",
            "secagg.enabled": False,
        }
    )

    run_scenario(config, tmp_path / "run")

    spent = _spent(tmp_path / "run")
    assert len(spent) == 5
    assert max(spent) <= 2.5 and min(spent) > 2.4  # the last round ran the steps that still fit
