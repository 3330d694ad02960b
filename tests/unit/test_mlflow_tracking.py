import json
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tracking_builders import round_record
from typer.testing import CliRunner

import simulations.harness
from fedsys import results
from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.deploy.server import RUNS_ROOT_ENV
from fedsys.errors import ConfigError
from fedsys.mlflow_tracking import POINTER_FILE, check_mlflow, file_store_path, open_mlflow, tracking_uri
from fedsys.tracking import SCALARS, check_tracking, open_trackers, round_scalars


def _finished_run_dir(run_dir, config, records):
    """What the coordinator leaves behind: config, metrics, model and summary."""
    results.write_config(run_dir, config)
    results.rewrite_metrics(run_dir, records)
    results.write_model(run_dir, {"fc.weight": np.ones((2, 3), dtype=np.float32)})
    results.write_summary(run_dir, {"run-id": "abc", "rounds-completed": len(records), "dp": True})


def _reader(monkeypatch, uri):
    # MLflow's own tools need the opt-in for a file store, as any later reader would
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _history(client, run_id, tag):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, tag)]


def test_a_run_logs_config_per_round_scalars_and_its_files_read_back_by_mlflow(tmp_path, monkeypatch):
    config = RunConfig().replace({"mlflow-uri": str(tmp_path / "mlruns"), "dp.noise-multiplier": 1.3})
    run_dir = tmp_path / "run-a"
    records = [round_record(1), round_record(2, accuracy=None, loss=float("nan"))]
    _finished_run_dir(run_dir, config, records)

    tracker = open_mlflow(config, run_dir)
    for record in records:
        tracker.log_round(record)
    tracker.close(finished=True)

    client = _reader(monkeypatch, (tmp_path / "mlruns").as_uri())
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.tags["fedsys.run-dir"] == str(run_dir)
    assert run.data.params == {key: str(value) for key, value in config.to_flat().items()}
    assert run.data.params["dp.noise-multiplier"] == "1.3"
    assert set(run.data.metrics) == set(SCALARS.values())
    assert _history(client, tracker.run_id, "eval/accuracy") == [(1, pytest.approx(0.6))]  # None skipped
    assert _history(client, tracker.run_id, "eval/loss") == [(1, pytest.approx(1.9))]  # NaN skipped
    assert _history(client, tracker.run_id, "privacy/epsilon-max") == [
        (1, pytest.approx(0.3)),
        (2, pytest.approx(0.6)),
    ]
    artifacts = {f.path for f in client.list_artifacts(tracker.run_id, "run")}
    assert artifacts == {"run/config.toml", "run/metrics.jsonl", "run/summary.json"}
    assert [f.path for f in client.list_artifacts(tracker.run_id, "model")] == ["model/model.pt"]
    assert "report/report.md" in {f.path for f in client.list_artifacts(tracker.run_id, "report")}
    model = client.download_artifacts(tracker.run_id, "model/model.pt", str(tmp_path / "dl"))
    assert open(model, "rb").read() == (run_dir / "model.pt").read_bytes()
    assert json.loads((run_dir / POINTER_FILE).read_text())["run-id"] == tracker.run_id


def test_mlflow_and_tensorboard_log_the_same_scalars():
    record = round_record(3, **{"macro-f1": True, "clients-failed": float("inf")})

    scalars = round_scalars(record)

    assert "eval/macro-f1" not in scalars and "clients/failed" not in scalars  # bool, inf
    assert scalars["privacy/epsilon-max"] == pytest.approx(0.9)
    assert set(scalars) == set(SCALARS.values()) - {"eval/macro-f1", "clients/failed"}


def test_a_resumed_run_continues_its_mlflow_run_and_a_fresh_one_does_not(tmp_path, monkeypatch):
    config = RunConfig().replace({"mlflow-uri": f"file:{tmp_path / 'mlruns'}"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = open_mlflow(config, run_dir)
    first.log_round(round_record(1))
    first.close(finished=False)  # the run crashed

    resumed = open_mlflow(config, run_dir, resume=True)
    resumed.log_round(round_record(2))
    _finished_run_dir(run_dir, config, [round_record(1), round_record(2)])
    resumed.close(finished=True)
    fresh = open_mlflow(config, run_dir)

    client = _reader(monkeypatch, (tmp_path / "mlruns").as_uri())
    assert resumed.run_id == first.run_id != fresh.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert _history(client, first.run_id, "eval/accuracy") == [
        (1, pytest.approx(0.6)),
        (2, pytest.approx(0.7)),
    ]


def test_a_failed_run_is_marked_failed_without_artifacts(tmp_path, monkeypatch):
    config = RunConfig().replace({"mlflow-uri": str(tmp_path / "mlruns")})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tracker,) = open_trackers(config, run_dir)

    tracker.log_round(round_record(1))
    tracker.close(finished=False)

    client = _reader(monkeypatch, (tmp_path / "mlruns").as_uri())
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    assert client.list_artifacts(tracker.run_id) == []


def test_file_store_uris_resolve_to_absolute_file_uris_and_other_schemes_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert tracking_uri(RunConfig().replace({"mlflow-uri": "mlruns"})) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri(RunConfig().replace({"mlflow-uri": "file:./x"})) == (tmp_path / "x").as_uri()
    assert tracking_uri(RunConfig().replace({"mlflow-uri": "sqlite:///m.db"})) == "sqlite:///m.db"
    assert file_store_path("file:///a/b%20c") == "/a/b c"
    assert file_store_path("http://127.0.0.1:5000") is None
    assert file_store_path("file://otherhost/a") is None


def test_under_the_operators_gate_only_a_file_store_inside_the_runs_directory(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv(RUNS_ROOT_ENV, str(runs))

    with pytest.raises(ConfigError, match="mlflow-uri must be a file store .* got 'http://10.1.2.3:5000'"):
        check_tracking(RunConfig().replace({"mlflow-uri": "http://10.1.2.3:5000"}))
    with pytest.raises(ConfigError, match="mlflow-uri must be a file store"):
        check_mlflow(RunConfig().replace({"mlflow-uri": f"sqlite:///{tmp_path}/m.db"}))
    with pytest.raises(ConfigError, match="mlflow-uri must be a directory inside the server's runs"):
        check_mlflow(RunConfig().replace({"mlflow-uri": str(tmp_path / "elsewhere")}))
    with pytest.raises(ConfigError, match="mlflow-uri must be a directory inside"):
        check_mlflow(RunConfig().replace({"mlflow-uri": "file:../escape"}))
    tracker = open_mlflow(RunConfig().replace({"mlflow-uri": "mlruns"}), runs / "run-1")
    assert tracker.tracking_uri == (runs.resolve() / "mlruns").as_uri()


def test_missing_mlflow_is_a_config_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    config = RunConfig().replace({"mlflow-uri": str(tmp_path / "mlruns")})

    with pytest.raises(
        ConfigError, match=r"mlflow-uri needs the mlflow package: pip install 'fedsys\[mlflow\]'"
    ):
        check_tracking(config)
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        open_mlflow(config, tmp_path / "run")
    assert open_trackers(RunConfig(), tmp_path / "run") == []


def test_the_mlflow_flag_reaches_the_run_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run_scenario(config, run_dir, **_):
        seen["config"] = config
        return {"run-dir": str(run_dir), "rounds-completed": 1}

    monkeypatch.setattr(simulations.harness, "run_scenario", fake_run_scenario)
    argv = ["simulate", "--mlflow", "file:./mlruns", "--num-clients", "2", "--rounds", "1"]

    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "run")])

    assert result.exit_code == 0, result.output
    assert seen["config"].mlflow_uri == "file:./mlruns"
