"""Distributed DP inside SecAgg+ through the real Flower simulation engine (``dp.mode = "distributed"``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsys.cli import load_scenario
from fedsys.privacy import PrivacyLedger
from fedsys.privacy.distributed import epsilon_of
from fedsys.results import read_metrics
from simulations.harness import SCENARIO_DIR, run_scenario

pytestmark = pytest.mark.integration
TARGET = 2.0


def test_distributed_dp_fedsgd_learns_and_each_ledger_ends_at_the_target(tmp_path: Path) -> None:
    config = load_scenario(
        SCENARIO_DIR / "digits-distributed.toml",
        {},
        ["num-rounds=4", f"dp.target-epsilon={TARGET}", "secagg.threshold=3"],
    )
    summary = run_scenario(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run")

    assert summary["rounds-completed"] == 4 and not summary["stop-reason"]
    assert all(r["status"] == "ok" and r["dp-mode"] == "distributed" for r in records)
    assert records[-1]["accuracy"] > max(0.5, records[0]["accuracy"])
    noise = {r["ddp-noise-multiplier"] for r in records}
    assert len(noise) == 1 and noise.pop() > 1  # one public aggregate noise level, resolved from the target
    assert {r["ddp-min-survivors"] for r in records} == {3}
    ledgers = sorted((tmp_path / "run" / "ledgers").glob("*.sqlite"))
    assert len(ledgers) == 5
    for path in ledgers:
        with PrivacyLedger(path) as ledger:
            (summary_row,) = ledger.summary()
            history = ledger.history(summary_row.budget_key)
            entries = ledger.entries(summary_row.budget_key)
        assert [e.mechanism for e in entries] == ["skellam"] * 4 and {e.status for e in entries} == {
            "committed"
        }
        epsilon = epsilon_of([], history, 1e-5)  # type: ignore[arg-type]
        assert summary_row.epsilon == pytest.approx(epsilon)
        assert TARGET * 0.98 <= epsilon <= TARGET  # calibrated for the most exposed holder, never above
