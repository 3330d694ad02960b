"""A user's own data loader (a torch Dataset) trained end to end in simulation, under DP-SGD."""

from pathlib import Path

import pytest
import torch

import fedsys
from fedsys.data import central_test_data
from fedsys.training import evaluate

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_user_loader_is_partitioned_and_trained_under_dp_via_the_python_api(tmp_path, monkeypatch):
    # Ray workers import the loader by name from the driver's working directory
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from tests.integration import byo_data  # the user's module, by the name the workers import

    overrides = {
        "num-rounds": 2,
        "partition": "iid",
        "simulation.num-clients": 3,
        "sampling.min-clients": 2,
        "model": "logreg",
        "dp.enabled": True,
        "secagg.enabled": False,
        "train.lr": 0.5,
        "train.momentum": 0.0,
        "train.local-epochs": 1,
    }

    run = fedsys.simulate(overrides=overrides, out=tmp_path / "run", data=byo_data.clusters)

    assert run.config.dataset == "tests.integration.byo_data:clusters"
    assert list(run.metrics["clients-succeeded"]) == [3, 3]  # every client loaded its partition
    assert run.summary["final-accuracy"] > 0.8  # 3 classes: chance is 1/3
    central = central_test_data(run.config)
    assert len(central) == 120 and central.feature_shape == (8,)
    final = evaluate(run.model, central, device=torch.device("cpu"))
    assert final.metrics["accuracy"] == pytest.approx(run.summary["final-accuracy"])
