"""`fedsys simulate --ray-address` against a real Ray head node started for the test."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedsys.results import read_metrics

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HEAD_START_SECONDS = 90


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port, process, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Ray head did not listen on port {port} within {timeout} s")


def _stop(process):
    """Stop the head by its own process group: `ray stop` would kill every Ray on the machine."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # `ray start --block` tears down its processes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def ray_head():
    # Ray's socket paths must fit in 107 bytes: a short folder, not pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(temp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", None)  # Ray's FutureWarning must be hidden by fedsys
    port = _free_port()
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--port",
        str(port),
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
    ]
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, head, HEAD_START_SECONDS)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_short_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path):
    address, env, temp = ray_head
    run_dir = tmp_path / "run"

    result = subprocess.run(
        [
            str(BIN / "fedsys"),
            "simulate",
            "--ray-address",
            address,
            "--rounds",
            "2",
            "--num-clients",
            "4",
            "--clients-per-round",
            "4",
            "--no-dp",
            "--no-secagg",
            "--out",
            str(run_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    # without --verbose: neither Flower's run_simulation notice nor Ray's FutureWarning
    assert "DEPRECATED" not in result.stderr and "FutureWarning" not in result.stderr, result.stderr
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["clients-succeeded"] == 4 and r["clients-failed"] == 0 for r in records)
    assert records[1]["loss"] < records[0]["loss"]
    # the driver joined the head's session rather than starting a Ray of its own
    (session,) = (temp / "ray").glob("session_2*")
    assert list((session / "logs").glob("python-core-driver-*"))
