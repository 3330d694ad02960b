"""A user's own model factory trained end to end through the Python API, with TensorBoard on."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import fedsys
from fedsys.data import central_test_data
from fedsys.tracking import SCALARS
from fedsys.training import evaluate

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FACTORY = "tests.integration.byo_models:bn_cnn"


def test_a_user_factory_trains_under_dp_via_the_python_api_and_logs_to_tensorboard(tmp_path, monkeypatch):
    # Ray workers import the factory by name from the driver's working directory
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    overrides = {
        "dataset": "digits",
        "num-rounds": 3,
        "simulation.num-clients": 3,
        "sampling.min-clients": 2,
        "dp.enabled": True,
        "secagg.enabled": False,
        "fix-model": True,  # the factory has BatchNorm: server and clients both swap in GroupNorm
        "tensorboard-dir": str(tmp_path / "tb"),
        "train.lr": 0.5,
        "train.momentum": 0.0,
        "train.local-epochs": 1,
    }

    run = fedsys.simulate(overrides=overrides, out=tmp_path / "run", model=FACTORY)

    metrics = run.metrics
    assert list(metrics["round"]) == [1, 2, 3]
    assert list(metrics["clients-succeeded"]) == [3, 3, 3]  # every client built the same model
    assert metrics["accuracy"].iloc[-1] > 0.4  # 10 classes: chance is 0.1
    assert run.summary["rounds-completed"] == 3 and run.config.model == FACTORY
    assert set(run.epsilon_by_client) == {"0", "1", "2"}
    assert max(run.epsilon_by_client.values()) == pytest.approx(run.summary["epsilon-max"])
    assert isinstance(run.model.bn, nn.GroupNorm) and not run.model.training
    final = evaluate(run.model, central_test_data(run.config), device=torch.device("cpu"))
    assert final.metrics["accuracy"] == pytest.approx(run.summary["final-accuracy"])

    events = EventAccumulator(str(tmp_path / "tb" / "run"))
    events.Reload()
    assert set(SCALARS.values()) <= set(events.Tags()["scalars"])
    for key, tag in SCALARS.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = zip(metrics["round"], metrics[key], strict=True)
        assert logged == [(r, pytest.approx(v, rel=1e-5)) for r, v in expected], tag
