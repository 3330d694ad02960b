"""What a deployed run is told: its run directory, resume, and the scenario's shape."""

import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import ServerState, save_checkpoint
from fedsys.deploy.runs import deployment_config
from fedsys.errors import ConfigError

NODE = RunConfig().replace({"dataset": "node", "feature-shape": "30", "num-classes": 2})


def test_a_new_run_gets_an_absolute_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    config = deployment_config(NODE, run_dir=tmp_path / "runs" / "a", resume=False)

    assert config.out_dir == str(tmp_path / "runs" / "a") and config.resume_from == ""


def test_resume_points_the_server_app_at_the_checkpoint(tmp_path):
    save_checkpoint(tmp_path, ServerState(1, "r", {"w": np.zeros(2)}, {}))

    config = deployment_config(NODE, run_dir=tmp_path, resume=True)

    assert config.resume_from == config.out_dir == str(tmp_path.resolve())


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint.npz there to continue from"):
        deployment_config(NODE, run_dir=tmp_path, resume=True)


def test_a_finished_run_directory_is_not_reused(tmp_path):
    save_checkpoint(tmp_path, ServerState(1, "r", {"w": np.zeros(2)}, {}))

    with pytest.raises(ConfigError, match="already holds a run; use --resume"):
        deployment_config(NODE, run_dir=tmp_path, resume=False)


def test_deployment_needs_the_data_holders_data(tmp_path):
    with pytest.raises(ConfigError, match='set dataset = "node"'):
        deployment_config(RunConfig(), run_dir=tmp_path, resume=False)
