"""What a deployed run is told: its run directory, resume, and the scenario's shape."""

import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import ServerState, save_checkpoint
from fedsys.deploy.runs import confined_run_dir, deployment_config, submit_run
from fedsys.deploy.server import RUNS_ROOT_ENV, ServerLayout
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


def _paths(out="", resume=""):
    return NODE.replace({"out-dir": out, "resume-from": resume})


def test_a_run_directory_inside_the_runs_root_is_accepted(tmp_path):
    root = tmp_path / "runs"

    assert confined_run_dir(_paths(str(root / "a")), runs_root=root, run_id=3) == root.resolve() / "a"
    assert confined_run_dir(_paths("b"), runs_root=root, run_id=3) == root.resolve() / "b"
    assert confined_run_dir(_paths(), runs_root=root, run_id=3) == root.resolve() / "run-3"
    assert confined_run_dir(_paths(resume=str(root / "c")), runs_root=root, run_id=3) == root.resolve() / "c"


@pytest.mark.parametrize(
    ("out", "resume"),
    [
        ("/etc/cron.d", ""),
        ("../elsewhere", ""),
        ("a/../../elsewhere", ""),
        (".", ""),
        ("", "/home/operator/.ssh"),
        ("a", "../b"),  # out-dir fine, resume-from not
        ("~/x", ""),
    ],
)
def test_run_paths_outside_the_runs_root_are_refused(tmp_path, out, resume):
    with pytest.raises(ConfigError, match="must be a directory inside the server's runs directory"):
        confined_run_dir(_paths(out, resume), runs_root=tmp_path / "runs", run_id=1)


def test_a_symlink_out_of_the_runs_root_is_refused(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)

    with pytest.raises(ConfigError, match="got 'link/x'"):
        confined_run_dir(_paths("link/x"), runs_root=root, run_id=1)


def test_the_server_app_confines_run_directories_when_the_gate_says_so(tmp_path, monkeypatch):
    from server.app import _run_dir

    monkeypatch.setenv(RUNS_ROOT_ENV, str(tmp_path / "runs"))

    assert _run_dir(_paths("ok"), 1) == (tmp_path / "runs").resolve() / "ok"
    with pytest.raises(ConfigError, match="out-dir must be a directory inside"):
        _run_dir(_paths(str(tmp_path / "evil")), 1)
    monkeypatch.delenv(RUNS_ROOT_ENV)
    assert _run_dir(_paths(str(tmp_path / "sim")), 1) == tmp_path / "sim"  # simulation: the user's machine


def test_submitting_a_run_outside_the_runs_root_is_refused_before_contacting_the_superlink(tmp_path):
    layout = ServerLayout(tmp_path / "state")
    layout.flwr_home.mkdir(parents=True)
    (layout.flwr_home / "config.toml").write_text("")

    with pytest.raises(ConfigError, match="out-dir must be a directory inside"):
        submit_run(_paths(str(tmp_path / "elsewhere")), state=layout.state, sink=print)
