"""A real simulation (DP-SGD + SecAgg+) logged to MLflow, then exported with its model card."""

import re

import pytest
import torch
from mlflow.tracking import MlflowClient

import fedsys
from fedsys.config import RunConfig
from fedsys.data import central_test_data
from fedsys.export import export_run
from fedsys.privacy import PrivacyLedger
from fedsys.tracking import SCALARS
from fedsys.training import evaluate

pytestmark = [
    pytest.mark.integration,
    # torch 2.13 deprecates torch.jit (still works; TorchScript export uses it on purpose), and
    # its ONNX exporter trips pytree's own deprecation: third-party warnings
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    overrides = {
        "dataset": "digits",
        "model": "mlp",
        "num-rounds": 2,
        "simulation.num-clients": 3,
        "sampling.min-clients": 2,
        "dp.enabled": True,
        "dp.noise-multiplier": 1.0,
        "secagg.enabled": True,
        "mlflow-uri": str(root / "mlruns"),
        "train.lr": 0.5,
        "train.momentum": 0.0,
        "train.local-epochs": 1,
    }
    return fedsys.simulate(overrides=overrides, out=root / "run"), root


def test_the_mlflow_run_holds_the_config_every_rounds_scalars_and_the_model(run, monkeypatch):
    result, root = run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for file stores
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())

    (experiment,) = client.search_experiments(filter_string="name = 'fedsys'")
    (logged,) = client.search_runs([experiment.experiment_id])

    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params == {k: str(v) for k, v in result.config.to_flat().items()}
    metrics = result.metrics
    for key, tag in SCALARS.items():
        history = [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, tag)]
        expected = zip(metrics["round"], metrics[key], strict=True)
        assert history == [(r, pytest.approx(v, rel=1e-6)) for r, v in expected], tag
    downloaded = client.download_artifacts(logged.info.run_id, "model/model.pt", str(root / "dl"))
    assert open(downloaded, "rb").read() == (result.run_dir / "model.pt").read_bytes()
    report = {f.path for f in client.list_artifacts(logged.info.run_id, "report")}
    assert {"report/report.md", "report/accuracy.png", "report/epsilon.png"} <= report


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_exported_model_reproduces_the_runs_final_accuracy(run, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    result, root = run

    exported = export_run(result.run_dir, fmt=fmt, out=root / fmt)

    (measured,) = exported.measurements
    assert measured.metrics["accuracy"] == result.summary["final-accuracy"]
    if fmt == "torchscript":  # and scored the coordinator's way, from the file alone
        config = RunConfig.from_toml(result.run_dir / "config.toml")
        loaded = torch.jit.load(str(exported.model_path))
        final = evaluate(loaded, central_test_data(config), device=torch.device("cpu"))
        assert final.metrics["accuracy"] == result.summary["final-accuracy"]


def test_the_model_card_epsilon_is_each_holders_ledger_epsilon(run):
    result, root = run

    exported = export_run(result.run_dir, out=root / "card")

    card = exported.card_path.read_text()
    row = r"^\| (client-\d+) \| default \| ([0-9.e+-]+) \| 1e-05 \| rdp \|"
    rows = dict(re.findall(row, card, flags=re.M))
    ledgers = sorted((result.run_dir / "ledgers").glob("client-*.sqlite"))
    assert len(ledgers) == 3 and set(rows) == {p.stem for p in ledgers}
    for path in ledgers:
        with PrivacyLedger(path) as ledger:
            (spent,) = ledger.summary()
        assert float(rows[path.stem]) == pytest.approx(spent.epsilon, rel=1e-5)
        # the same number each client reported to the server at its last round
        reported = result.epsilon_by_client[str(int(path.stem.removeprefix("client-")))]
        assert spent.epsilon == pytest.approx(reported, rel=1e-9)
    assert f"Largest ε of any holder: **{max(result.epsilon_by_client.values()):.6g}**" in card
    assert "SecAgg+ (Bell et al., CCS 2020), mode `semi-honest`" in card
