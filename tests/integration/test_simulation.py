"""The real Flower simulation engine (Ray) running fedsys' ServerApp and ClientApp."""

import json

import numpy as np
import pytest
import torch

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.results import read_metrics
from simulations.harness import run_scenario

pytestmark = pytest.mark.integration

_TIMING = {"train-seconds", "aggregate-seconds", "eval-seconds", "round-seconds"}


def _plain(**extra):
    return RunConfig().replace(
        {
            "num-rounds": 3,
            "simulation.num-clients": 6,
            "sampling.clients-per-round": 4,
            "sampling.min-clients": 2,
            "dp.enabled": False,
            "secagg.enabled": False,
            "train.lr": 0.5,
            **extra,
        }
    )


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in records]


def test_simulation_writes_a_complete_run_directory_and_learns(tmp_path):
    summary = run_scenario(_plain(), tmp_path / "run")

    run = tmp_path / "run"
    records = read_metrics(run)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["clients-sampled"] == 4 and r["clients-succeeded"] == 4 for r in records)
    assert records[-1]["accuracy"] > 0.5 > records[0]["loss"] * 0 + 0.1
    assert records[-1]["loss"] < records[0]["loss"]
    assert {"macro-f1", "recall-0", "round-seconds", "train-seconds"} <= set(records[0])
    assert RunConfig.from_toml(run / "config.toml").num_rounds == 3
    weights = torch.load(run / "model.pt", weights_only=True)
    assert np.allclose(weights["1.weight"].numpy(), load_checkpoint(run).weights["1.weight"])
    assert json.loads((run / "summary.json").read_text())["final-accuracy"] == summary["final-accuracy"]


def test_same_seed_gives_identical_metrics(tmp_path):
    first = run_scenario(_plain(seed=3), tmp_path / "a")
    second = run_scenario(_plain(seed=3), tmp_path / "b")

    assert _comparable(read_metrics(tmp_path / "a")) == _comparable(read_metrics(tmp_path / "b"))
    assert first["final-accuracy"] == second["final-accuracy"]


def test_a_crashed_run_resumes_to_the_same_result(tmp_path):
    reference = run_scenario(_plain(seed=4), tmp_path / "ref")

    def crash_after_round_2(record):
        if record["round"] == 2:
            raise RuntimeError("simulated server crash")

    with pytest.raises(RuntimeError, match="simulated server crash"):
        run_scenario(_plain(seed=4), tmp_path / "crash", on_round=crash_after_round_2)
    assert load_checkpoint(tmp_path / "crash").round == 2

    resumed = run_scenario(_plain(seed=4), tmp_path / "crash", resume=True)

    assert resumed["final-accuracy"] == reference["final-accuracy"]
    assert [r["round"] for r in read_metrics(tmp_path / "crash")] == [1, 2, 3]
    assert _comparable(read_metrics(tmp_path / "crash")) == _comparable(read_metrics(tmp_path / "ref"))
