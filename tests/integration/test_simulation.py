"""The real Flower simulation engine (Ray) running fedsys' ServerApp and ClientApp."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
            "train.momentum": 0.0,
            "train.local-epochs": 1,
            **extra,
        }
    )


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in records]


def _ray_sessions_of_this_process() -> set[Path]:
    """Ray names a session after the driver's pid; fedsys' own Ray folder carries it too."""
    pid = os.getpid()
    return set(Path("/tmp/ray").glob(f"session_*_{pid}")) | set(Path("/tmp").glob(f"fedsys-ray-{pid}-*"))


def test_simulation_writes_a_complete_run_directory_and_learns(tmp_path):
    sessions_before = _ray_sessions_of_this_process()

    summary = run_scenario(_plain(), tmp_path / "run")

    assert _ray_sessions_of_this_process() <= sessions_before  # Ray's session folder went with it

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


def _digits_with_word_labels(path: Path) -> tuple[str, ...]:
    """The digits as a CSV whose label column holds words; the declared order is not alphabetical."""
    from sklearn.datasets import load_digits

    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    x, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    frame["label"] = [words[i] for i in y]
    frame.to_csv(path, index=False)
    return words


def test_same_seed_gives_identical_metrics_with_string_labels_from_a_csv(tmp_path):
    words = _digits_with_word_labels(tmp_path / "digits.csv")
    config = _plain(seed=3, dataset=str(tmp_path / "digits.csv"), labels=list(words))
    config = config.replace({"feature-range": "0,16", "partition": "iid"})

    first = run_scenario(config, tmp_path / "a")
    second = run_scenario(config, tmp_path / "b")

    assert _comparable(read_metrics(tmp_path / "a")) == _comparable(read_metrics(tmp_path / "b"))
    assert first["final-accuracy"] == second["final-accuracy"]
    assert first["final-accuracy"] > 0.5  # every holder mapped the words to the same classes
    assert RunConfig.from_toml(tmp_path / "a" / "config.toml").labels == words


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


def test_defaults_reach_90_percent_without_dp(tmp_path):
    config = RunConfig().replace({"dp.enabled": False, "secagg.enabled": False})
    assert (config.num_rounds, config.simulation.num_clients, config.resolved_partition()) == (
        10,
        10,
        "dirichlet:0.5",
    )

    summary = run_scenario(config, tmp_path / "run")

    assert summary["final-accuracy"] >= 0.90


def test_flwr_run_drives_the_same_apps(tmp_path):
    """Flower's own `flwr run .` with the local simulation federation (pyproject's app config)."""
    repo = Path(__file__).parents[2]
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    out = tmp_path / "run"
    overrides = f'out-dir="{out}" ledger-dir="{tmp_path / "ledgers"}" num-rounds=2'
    before = set(_superlinks())
    try:
        done = subprocess.run(
            ["flwr", "run", ".", "--stream", "--run-config", overrides],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for pid in set(_superlinks()) - before:  # `flwr run` leaves a detached local SuperLink behind
            os.kill(pid, signal.SIGTERM)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = read_metrics(out)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["clients-succeeded"] == 2 for r in records)
    assert records[-1]["epsilon-max"] > 0  # pyproject's app config keeps DP-SGD and SecAgg+ on
    assert len(list((tmp_path / "ledgers").glob("*.sqlite"))) == 2


def _superlinks() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "flower-superlink"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]
