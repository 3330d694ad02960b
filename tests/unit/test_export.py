import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsys import results
from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.data import central_test_data
from fedsys.errors import ConfigError, ModelError
from fedsys.export import export_run
from fedsys.export.card import read_audit, read_holders
from fedsys.export.formats import write_model
from fedsys.models import build_model, to_arrays
from fedsys.privacy import PrivacyLedger
from fedsys.privacy.settings import LocalBudget
from fedsys.training import evaluate

sys.path.insert(0, str(Path(__file__).parent / "privacy"))
from privacy_builders import oracle_rdp_epsilon  # noqa: E402

# torch 2.13 deprecates torch.jit and torch.ao.quantization (both still work); the export's
# TorchScript and int8 paths call them on purpose, and torch's ONNX exporter trips pytree's
# own deprecation. Third-party warnings, listed here rather than hidden in fedsys.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]
RUN_ID = "run-under-test"
BUDGET = LocalBudget(max_epsilon=50.0, target_delta=1e-5)


def _spend(path, *, run_id=RUN_ID, rounds=(1, 2), noise_multiplier=1.1, sample_rate=0.05, steps=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    with PrivacyLedger(path, create=True) as ledger:
        for rnd in rounds:
            reservation = ledger.reserve(
                budget_key="default",
                fingerprint="data",
                run_id=run_id,
                server_round=rnd,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                budget=BUDGET,
            )
            ledger.commit(reservation.entry_id, actual_steps=steps, epsilon_after=reservation.epsilon_after)


def _ledger_epsilon(path):
    with PrivacyLedger(path) as ledger:
        (summary,) = ledger.summary()
    return summary.epsilon


def _run_dir(tmp_path, *, dp=True, secagg=True, model="mlp"):
    """A finished run of `digits` as the coordinator leaves it, with an untrained-but-seeded model."""
    run_dir = tmp_path / "run"
    config = RunConfig().replace(
        {"dataset": "digits", "model": model, "dp.enabled": dp, "secagg.enabled": secagg, "num-rounds": 2}
    )
    central = central_test_data(config)
    torch.manual_seed(3)
    model_ = build_model(config.model, central.feature_shape, central.num_classes)
    final = evaluate(model_, central, device=torch.device("cpu"))
    results.write_config(run_dir, config)
    results.rewrite_metrics(run_dir, [{"round": 1, "accuracy": 0.1}, {"round": 2, **final.metrics}])
    results.write_model(run_dir, to_arrays(model_))
    results.write_summary(
        run_dir,
        {
            "run-id": RUN_ID,
            "rounds-completed": 2,
            "rounds-planned": 2,
            "final-accuracy": final.metrics["accuracy"],
            "final-macro-f1": final.metrics["macro-f1"],
            "final-loss": final.loss,
            "epsilon-by-client": {"0": 9.99, "1": 9.99},  # what clients reported: not what the card shows
        },
    )
    return run_dir


def _card_epsilons(card_text):
    """holder -> epsilon from the card's holder table."""
    rows = re.findall(r"^\| (client-\d+|\d+) \| [^|]+ \| ([0-9.e+-]+) \|", card_text, flags=re.M)
    return {holder: float(eps) for holder, eps in rows}


def test_the_card_takes_each_holders_epsilon_from_its_ledger_and_counts_only_this_runs_steps(tmp_path):
    ledgers = tmp_path / "ledgers"
    _spend(ledgers / "client-00000.sqlite")
    _spend(ledgers / "client-00001.sqlite", rounds=(1,))
    _spend(ledgers / "client-00001.sqlite", run_id="an-earlier-run", rounds=(1, 2, 3))

    holders = read_holders(sorted(ledgers.glob("*.sqlite")), run_id=RUN_ID, reported={}, delta=1e-5)

    first, second = holders
    assert first.epsilon == _ledger_epsilon(ledgers / "client-00000.sqlite")
    assert first.epsilon == pytest.approx(oracle_rdp_epsilon(1.1, 0.05, 60, 1e-5), rel=1e-4)
    assert (first.steps, first.other_runs, first.target_delta, first.accountant) == (60, 0, 1e-5, "rdp")
    # the other run's 90 steps are in the ledger's epsilon (whole spend), not in this run's steps
    assert second.epsilon == pytest.approx(oracle_rdp_epsilon(1.1, 0.05, 120, 1e-5), rel=1e-4)
    assert (second.steps, second.other_runs) == (30, 3)


def test_without_ledgers_the_card_shows_reported_epsilon_labelled_as_such(tmp_path):
    holders = read_holders([], run_id=RUN_ID, reported={"10": 1.5, "2": 0.5}, delta=1e-6)

    assert [(h.holder, h.epsilon, h.target_delta, h.source) for h in holders] == [
        ("2", 0.5, 1e-6, "reported"),
        ("10", 1.5, 1e-6, "reported"),
    ]


def test_exported_torchscript_reproduces_the_runs_accuracy_and_the_card_the_ledgers(tmp_path):
    run_dir = _run_dir(tmp_path)
    _spend(run_dir / "ledgers" / "client-00000.sqlite")
    _spend(run_dir / "ledgers" / "client-00001.sqlite", rounds=(2,))
    summary = json.loads((run_dir / "summary.json").read_text())

    result = export_run(run_dir, fmt="torchscript")

    (measured,) = result.measurements
    assert measured.metrics["accuracy"] == summary["final-accuracy"]
    assert measured.size_bytes == result.model_path.stat().st_size
    # independently: load the file with torch and score it the way the coordinator does
    loaded = torch.jit.load(str(result.model_path))
    rescored = evaluate(loaded, central_test_data(RunConfig.from_toml(run_dir / "config.toml")), device="cpu")
    assert rescored.metrics["accuracy"] == summary["final-accuracy"]
    card = result.card_path.read_text()
    assert _card_epsilons(card) == {
        "client-00000": pytest.approx(_ledger_epsilon(run_dir / "ledgers" / "client-00000.sqlite"), rel=1e-5),
        "client-00001": pytest.approx(_ledger_epsilon(run_dir / "ledgers" / "client-00001.sqlite"), rel=1e-5),
    }
    assert "9.99" not in card  # the clients' own reports do not replace their ledgers
    assert "SecAgg+" in card and "`digits`" in card and "`dirichlet:0.5` over 10 simulated holders" in card
    assert "No empirical audit" in card


def test_exported_onnx_reproduces_the_runs_accuracy_under_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run_dir = _run_dir(tmp_path, model="cnn")
    central = central_test_data(RunConfig.from_toml(run_dir / "config.toml"))

    result = export_run(run_dir, fmt="onnx", out=tmp_path / "onnx")

    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"features": central.x})[0]
    accuracy = float((logits.argmax(axis=1) == central.y).mean())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert accuracy == summary["final-accuracy"]
    assert result.measurements[0].metrics["accuracy"] == summary["final-accuracy"]
    assert session.run(None, {"features": central.x[:1]})[0].shape == (1, 10)  # batch size is free


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_int8_reports_size_and_accuracy_before_and_after(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    run_dir = _run_dir(tmp_path, model="mlp")

    result = export_run(run_dir, fmt=fmt, quantize="int8")

    before, after = result.measurements
    assert result.model_path.name == f"model.int8.{'torchscript.pt' if fmt == 'torchscript' else 'onnx'}"
    assert after.size_bytes == result.model_path.stat().st_size
    assert after.size_bytes < 0.5 * before.size_bytes  # int8 weights: about a quarter of float32
    assert abs(after.metrics["accuracy"] - before.metrics["accuracy"]) < 0.05
    card = result.card_path.read_text()
    assert f"| {before.label} | {before.size_bytes:,} |" in card
    assert f"| {after.label} | {after.size_bytes:,} | {after.metrics['accuracy']:.4f} |" in card


def test_an_audit_next_to_the_run_puts_its_lower_bound_on_the_card(tmp_path):
    run_dir = _run_dir(tmp_path)
    audit = {"epsilon": 3.0, "epsilon-lower-bound": 0.82, "canaries": 1000, "confidence": 0.95}
    (run_dir / "audit.json").write_text(json.dumps(audit))

    card = export_run(run_dir).card_path.read_text()

    assert "ε lower bound **0.82** at 0.95 confidence from 1000 canaries, against the accounted ε = 3" in card
    assert "No empirical audit" not in card


def test_the_card_reads_what_fedsys_audit_writes_and_flags_a_violated_bound(tmp_path):
    from fedsys.audit.result import AuditResult

    run_dir = _run_dir(tmp_path, dp=False)
    AuditResult(
        epsilon=float("inf"),  # no DP: audit.json holds epsilon = null
        epsilon_lower_bound=2.5,
        canaries=500,
        confidence=0.95,
        delta=1e-5,
        guesses=50,
        correct=50,
        attack="loss",
        attacks=("loss",),
        setting="federated",
        dp=False,
        seed=0,
        seconds=1.0,
    ).write(run_dir)
    violated = tmp_path / "violated.json"
    violated.write_text(
        json.dumps({"epsilon": 1.0, "epsilon-lower-bound": 1.7, "canaries": 100, "confidence": 0.9})
    )

    card = export_run(run_dir).card_path.read_text()
    flagged = export_run(run_dir, audit=violated, out=tmp_path / "v").card_path.read_text()

    assert (
        "ε lower bound **2.5** (δ = 1e-05) at 0.95 confidence from 500 canaries, against the accounted no DP"
        in card
    )
    assert "does not hold" not in card
    assert "ε lower bound **1.7** at 0.9 confidence" in flagged
    assert "**The lower bound exceeds the accounted ε: the guarantee does not hold.**" in flagged


def test_a_malformed_audit_is_a_one_line_error(tmp_path):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"epsilon": 3.0, "canaries": 10, "confidence": 0.95}))

    with pytest.raises(ConfigError, match="'epsilon-lower-bound' must be a number, got None"):
        read_audit(path)
    assert read_audit(tmp_path / "absent.json") is None


def test_a_run_without_dp_or_secagg_says_so(tmp_path):
    run_dir = _run_dir(tmp_path, dp=False, secagg=False)

    card = export_run(run_dir).card_path.read_text()

    assert "No differential privacy" in card and "no formal privacy guarantee" in card
    assert "server saw each holder's update in the clear" in card


def test_the_export_command_writes_model_and_card_and_rejects_a_bad_format(tmp_path):
    run_dir = _run_dir(tmp_path)
    runner = CliRunner()

    ok = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "out")])
    bad = runner.invoke(app, ["export", str(run_dir), "--format", "tflite"])
    missing = runner.invoke(app, ["export", str(tmp_path / "nowhere")])

    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.torchscript.pt", "MODEL_CARD.md"}
    assert bad.exit_code == 2 and "--format must be one of torchscript, onnx, got 'tflite'" in bad.output
    assert missing.exit_code == 2 and "holds no summary.json" in missing.output
    assert np.isfinite(json.loads((run_dir / "summary.json").read_text())["final-loss"])


class _DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        if int(x.max()) > 100:  # Python control flow on a value: torch.export cannot follow it
            x = x / 100
        return self.fc(x)


def test_a_model_torch_export_cannot_follow_is_a_model_error_naming_the_cause(tmp_path):
    pytest.importorskip("onnxscript")

    expected = r"cannot export the model to ONNX: \w+: .*--format torchscript"
    with pytest.raises(ModelError, match=expected) as err:
        write_model(_DataDependent(), torch.zeros(2, 4), tmp_path / "m.onnx", fmt="onnx", quantize="none")

    # the root cause, not the exporter's wrapper with its colour codes
    assert "TorchExportError" not in str(err.value) and "\x1b" not in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_deployed_runs_card_counts_the_holders_the_run_saw_not_the_scenarios_clients():
    from fedsys.export.card import CardInputs, _data_section

    config = RunConfig().replace({"dataset": "node", "feature-shape": "64", "num-classes": 10})
    card = CardInputs(
        run_name="study-1",
        config=config,
        summary={"rounds-completed": 3, "clients-seen": 2},
        model_file="model.pt",
        model_format="torchscript",
        parameters=650,
        feature_shape=(64,),
        num_classes=10,
        test_examples=None,
        holders=(),
        ledger_dirs=(),
        measurements=(),
    )

    section = _data_section(card)

    assert "2 holder(s) seen over the run" in section
    assert f"{config.simulation.num_clients} simulated holders" not in section
