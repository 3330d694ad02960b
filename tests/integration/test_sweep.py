"""`fedsys sweep` end to end: one real simulation per target epsilon, one report over them."""

import json

import pytest
from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.privacy import PrivacyLedger
from fedsys.report.sweep import EPSILON_TOLERANCE

pytestmark = pytest.mark.integration


def _ledger_noise_multipliers(run_dir):
    sigmas = set()
    for path in sorted((run_dir / "ledgers").glob("client-*.sqlite")):
        with PrivacyLedger(path) as ledger:
            sigmas |= {e.noise_multiplier for s in ledger.summary() for e in ledger.entries(s.budget_key)}
    return sorted(sigmas)


def _ledger_epsilon(run_dir):
    epsilons = []
    for path in sorted((run_dir / "ledgers").glob("client-*.sqlite")):
        with PrivacyLedger(path) as ledger:
            epsilons += [s.epsilon for s in ledger.summary()]
    return max(epsilons)


def test_a_tiny_sweep_runs_each_budget_and_reports_the_ledgers_epsilon(tmp_path):
    out = tmp_path / "sweep"

    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "simulations/breast-cancer.toml",
            "--target-epsilon",
            "1,inf",
            "--rounds",
            "2",
            "--num-clients",
            "3",
            "--no-secagg",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {row["run"]: row for row in report["runs"]}
    assert set(rows) == {"eps-1", "eps-inf"}
    assert rows["eps-1"]["final-epsilon"] == _ledger_epsilon(out / "eps-1")
    # every client trains every round here, so the most exposed one lands on the target
    assert 1.0 - EPSILON_TOLERANCE <= rows["eps-1"]["final-epsilon"] <= 1.0
    # each holder calibrated its own noise: the report shows the ledgers' multipliers, not the config's
    assert rows["eps-1"]["noise-multipliers"] == _ledger_noise_multipliers(out / "eps-1")
    assert rows["eps-1"]["rounds"] == "2/2" and rows["eps-1"]["clients"] == "3 (3 per round)"
    assert RunConfig.from_toml(out / "eps-1" / "config.toml").partition != "auto"
    assert rows["eps-inf"]["final-epsilon"] is None and rows["eps-inf"]["dp"] == "off"
    assert not (out / "eps-inf" / "ledgers").exists() or not any((out / "eps-inf" / "ledgers").iterdir())
    assert (out / "privacy-utility.png").stat().st_size > 1000
    assert "privacy-utility.png" in (out / "report.md").read_text()
    # --central is the default: the central reference sits next to each federated row
    private, baseline = report["comparison"]
    assert private["federated-epsilon"]["mean"] == rows["eps-1"]["final-epsilon"]
    assert 1.0 - EPSILON_TOLERANCE <= private["central-epsilon"]["mean"] <= 1.0
    assert baseline["target-epsilon"] == "inf" and baseline["central-epsilon"] is None
    assert baseline["central-accuracy"]["mean"] > 0.8  # breast cancer: majority class ~63%
    assert "| central accuracy | central ε |" in (out / "report.md").read_text()
