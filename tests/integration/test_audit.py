"""`fedsys audit` end to end: canaries reach the holders through the normal simulation path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsys.audit.federated import audit_federated
from fedsys.cli import app
from fedsys.config import RunConfig

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).parents[2] / "simulations" / "digits.toml"
SMALL = [
    "--set",
    "num-rounds=5",
    "--set",
    "simulation.num-clients=2",
    "--set",
    "sampling.clients-per-round=2",
]


def test_cli_audit_without_dp_finds_the_canaries(tmp_path: Path) -> None:
    out = tmp_path / "audit"

    done = CliRunner().invoke(
        app, ["audit", str(SCENARIO), "--no-dp", "--out", str(out), "--audit-seed", "1", *SMALL]
    )

    assert done.exit_code == 0, done.output
    doc = json.loads((out / "audit.json").read_text())
    assert {"epsilon", "epsilon-lower-bound", "canaries", "confidence"} <= set(doc)
    assert doc["epsilon"] is None and doc["canaries"] == 100 and doc["confidence"] == 0.95
    assert doc["epsilon-lower-bound"] > 0.5  # the canaries were trained on: the hook reached the holders
    assert "epsilon lower bound" in done.output


def test_dp_audit_stays_below_the_holders_epsilon(tmp_path: Path) -> None:
    config = RunConfig.from_toml(SCENARIO).replace(
        {"num-rounds": 5, "simulation.num-clients": 2, "sampling.clients-per-round": 2}
    )

    result = audit_federated(config, tmp_path / "audit", audit_seed=2)

    assert math.isfinite(result.epsilon) and result.epsilon == pytest.approx(3.0, rel=0.05)
    assert not result.violated, result


def test_bad_confidence_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app, ["audit", str(SCENARIO), "--confidence", "1.5", "--out", str(tmp_path / "x")]
    )

    assert done.exit_code == 2
    assert "--confidence must be in (0, 1), got 1.5" in done.output
    assert not (tmp_path / "x").exists()


CLIENT_SCENARIO = Path(__file__).parents[2] / "simulations" / "synthetic-client-dp.toml"


def test_cli_audits_a_client_level_scenario_with_canary_clients(tmp_path: Path) -> None:
    out = tmp_path / "client-audit"
    small = [
        "num-rounds=6",
        "simulation.num-clients=12",
        "sampling.clients-per-round=12",
        "sampling.min-clients=10",
    ]

    done = CliRunner().invoke(
        app,
        ["audit", str(CLIENT_SCENARIO), "--no-dp", "--out", str(out), "--audit-seed", "6", "--canaries", "12",
         *[arg for pair in small for arg in ("--set", pair)]],
    )  # fmt: skip

    assert done.exit_code == 0, done.output
    doc = json.loads((out / "audit.json").read_text())
    assert doc["level"] == "client" and doc["canaries"] == 12 and doc["epsilon"] is None
    assert doc["epsilon-lower-bound"] > 0.3  # the canary clients' directions reached the released models
    assert doc["correct"] == doc["guesses"] == 12  # audit seed 6 includes exactly 6 of the 12
    assert "Gaussian-fit estimate" in done.output
