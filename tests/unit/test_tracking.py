import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tracking_builders import round_record

from fedsys.config import RunConfig
from fedsys.deploy.server import RUNS_ROOT_ENV
from fedsys.errors import ConfigError
from fedsys.tracking import SCALARS, check_tracking, open_tracker


def _scalars(log_dir):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_each_round_becomes_scalars_at_its_round_number(tmp_path):
    config = RunConfig().replace({"tensorboard-dir": str(tmp_path / "tb")})
    tracker = open_tracker(config, tmp_path / "run-a")

    tracker.log_round(round_record(1))
    tracker.log_round(round_record(2, accuracy=None, loss=float("nan"), **{"macro-f1": True}))
    tracker.close()

    scalars = _scalars(tmp_path / "tb" / "run-a")
    assert set(scalars) == set(SCALARS.values())
    assert scalars["eval/accuracy"] == [(1, pytest.approx(0.6))]  # None is skipped
    assert scalars["eval/loss"] == [(1, pytest.approx(1.9))]  # so is NaN
    assert scalars["eval/macro-f1"] == [(1, pytest.approx(0.4))]  # and a bool
    assert scalars["privacy/epsilon-max"] == [(1, pytest.approx(0.3)), (2, pytest.approx(0.6))]
    assert scalars["clients/failed"] == [(1, 1.0), (2, 1.0)]
    assert scalars["time/round-seconds"] == [(1, 1.5), (2, 1.5)]


def test_a_resumed_run_replaces_the_rounds_it_repeats(tmp_path):
    config = RunConfig().replace({"tensorboard-dir": str(tmp_path / "tb")})
    first = open_tracker(config, tmp_path / "run")
    for rnd in (1, 2, 3):
        first.log_round(round_record(rnd))
    first.close()

    resumed = open_tracker(config, tmp_path / "run")
    resumed.log_round(round_record(3, accuracy=0.99))
    resumed.close()

    assert _scalars(tmp_path / "tb" / "run")["eval/accuracy"] == [
        (1, pytest.approx(0.6)),
        (2, pytest.approx(0.7)),
        (3, pytest.approx(0.99)),
    ]


def test_no_tensorboard_dir_means_no_tracker(tmp_path):
    assert open_tracker(RunConfig(), tmp_path / "run") is None
    check_tracking(RunConfig())


def test_missing_tensorboard_is_a_config_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = RunConfig().replace({"tensorboard-dir": str(tmp_path / "tb")})

    with pytest.raises(ConfigError, match=r"tensorboard-dir needs the tensorboard package: pip install"):
        check_tracking(config)
    with pytest.raises(ConfigError, match="fedsys\\[tensorboard\\]"):
        open_tracker(config, tmp_path / "run")


def test_under_the_operators_gate_events_stay_inside_the_runs_directory(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv(RUNS_ROOT_ENV, str(runs))

    with pytest.raises(ConfigError, match="tensorboard-dir must be a directory inside the server's runs"):
        open_tracker(RunConfig().replace({"tensorboard-dir": str(tmp_path / "elsewhere")}), runs / "run-1")
    with pytest.raises(ConfigError, match="tensorboard-dir must be a directory inside"):
        check_tracking(RunConfig().replace({"tensorboard-dir": "../escape"}))
    tracker = open_tracker(RunConfig().replace({"tensorboard-dir": "tb"}), runs / "run-1")
    assert tracker.log_dir == runs.resolve() / "tb" / "run-1"
