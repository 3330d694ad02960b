"""A 1,000-client simulation fits CI (2 cores): virtual clients cost nothing until sampled."""

import time

import pytest

from fedsys.config import RunConfig
from fedsys.results import read_metrics
from simulations.harness import run_scenario

pytestmark = pytest.mark.integration

CI_SECONDS = 150  # measured ~60 s on 2 cores, most of it the one-off node discovery


def test_a_thousand_virtual_clients_run_two_rounds(tmp_path):
    config = RunConfig().replace(
        {
            "dataset": "synthetic:0.5,0.5",
            "model": "logreg",
            "num-rounds": 2,
            "simulation.num-clients": 1000,
            "sampling.clients-per-round": 5,
            "sampling.min-clients": 5,
            "train.batch-size": 16,
            "train.lr": 0.05,
            "train.local-epochs": 1,
            "train.momentum": 0.0,
            "dp.enabled": False,
            "secagg.enabled": False,
        }
    )
    started = time.perf_counter()

    summary = run_scenario(config, tmp_path / "run")

    elapsed = time.perf_counter() - started
    records = read_metrics(tmp_path / "run")
    assert [r["clients-succeeded"] for r in records] == [5, 5]
    assert summary["rounds-completed"] == 2
    assert elapsed < CI_SECONDS, f"1,000 clients took {elapsed:.0f} s"
