"""What a stranger on the network can reach: real `fedsys server start` with three data holders.

The stranger holds only ``ca.crt`` (every data holder has it) and reaches the public address.
It must not register a node, list, start or stop runs, or call the Runtime API, while the
three legitimate nodes train a run the operator submitted.
"""

from __future__ import annotations

import json
import re
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
from deploy_support import Cluster, Proc, child_env, scenario, write_holder_csvs

from fedsys.deploy.app import stage_app
from fedsys.deploy.certs import generate_node_key
from fedsys.deploy.process import executable
from fedsys.results import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODES = ["hospital-a", "hospital-b", "hospital-c"]
STRANGER = "target"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("exposure")
    cluster = Cluster(root)
    cluster.app_hash = stage_app(cluster.app).fab_hash
    cluster.data = dict(zip(NODES, write_holder_csvs(root), strict=True))
    cluster.make_certs(NODES)
    try:
        cluster.start_server()
        for name in NODES:
            cluster.start_node(name, approve=cluster.app_hash)
        for proc in cluster.nodes.values():
            proc.wait_for(r"app gate ready", timeout=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def legit_run(cluster: Cluster) -> tuple[Proc, int, Path]:
    """The operator's one-round run, started before the stranger acts and checked at the end."""
    out = cluster.runs("legit")
    proc = cluster.start_run(scenario(secagg=True, rounds=1), out, app=cluster.app)
    proc.wait_for(r"started run \d+", timeout=120)
    run_id = int(re.findall(r"started run (\d+)", proc.text())[0])
    return proc, run_id, out


@pytest.fixture(scope="module")
def stranger(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stranger's FLWR_HOME: a connection to the public address trusting only ca.crt."""
    home = tmp_path_factory.mktemp("stranger")
    ca = home / "ca.crt"
    ca.write_bytes((cluster.certs / "ca.crt").read_bytes())
    connection = {"address": cluster.address, "root-certificates": str(ca)}
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": STRANGER, STRANGER: connection}})
    )
    return home


def _flwr(home: Path, *args: str) -> dict[str, object]:
    env = child_env()
    env["FLWR_HOME"] = str(home)
    completed = subprocess.run(
        [executable("flwr"), *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    start = completed.stdout.find("{")
    assert start >= 0, completed.stdout + completed.stderr
    answer: dict[str, object] = json.loads(completed.stdout[start:])
    return answer


def test_a_stranger_cannot_register_its_own_node_key(stranger, legit_run):
    key = generate_node_key(stranger / "stranger.key", name="stranger")

    answer = _flwr(stranger, "supernode", "register", str(key.public_key), STRANGER)

    assert answer.get("success") is False, answer


def test_a_stranger_cannot_list_runs(stranger, legit_run):
    answer = _flwr(stranger, "ls", STRANGER)

    assert answer.get("success") is False, answer


def test_a_stranger_cannot_start_the_approved_app_without_dp_and_secagg(cluster, stranger, legit_run):
    overrides = stranger / "evil.toml"
    evil = {
        "num-rounds": 100000,
        "dp.enabled": False,
        "secagg.enabled": False,
        "out-dir": str(stranger / "anywhere"),
    }
    overrides.write_text(tomli_w.dumps(evil))

    answer = _flwr(stranger, "run", str(cluster.app), STRANGER, "--run-config", str(overrides))

    assert answer.get("success") is False, answer


def test_a_stranger_cannot_stop_the_operators_run(stranger, legit_run):
    _, run_id, _ = legit_run

    answer = _flwr(stranger, "stop", str(run_id), STRANGER)

    assert answer.get("success") is False, answer


@pytest.mark.parametrize("path", ["/v1/runtime/get-nodes", "/v1/runtime/acquire-task", "/docs", "/health"])
def test_a_stranger_cannot_reach_the_runtime_api_or_anything_but_the_fleet_api(cluster, stranger, path):
    trust = ssl.create_default_context(cafile=str(stranger / "ca.crt"))
    with httpx.Client(verify=trust, timeout=30) as client:
        response = client.post(f"https://{cluster.address}{path}", content=b"")

    assert response.status_code == 403, (response.status_code, response.text)
    assert "only the Fleet API" in response.text


def test_the_three_data_holders_train_the_operators_run(cluster, legit_run):
    proc, _, out = legit_run

    code = proc.popen.wait(timeout=400)

    assert code == 0, proc.tail()
    [record] = read_metrics(out)
    assert record["status"] == "ok" and record["clients-succeeded"] == 3, record
    print(f"\n[exposure] seconds per round through the Fleet proxy: {record['round-seconds']:.1f}")


def test_only_the_operators_run_exists(cluster, legit_run):
    answer = _flwr(cluster.state / "flwr-home", "ls", "fedsys")

    runs = answer.get("runs")
    assert isinstance(runs, list) and [int(r["run-id"]) for r in runs] == [legit_run[1]], answer


def test_server_state_and_runs_are_owner_only(cluster, legit_run):
    state = cluster.state
    private = [state / "superlink.db", *sorted(p for p in (state / "runs").rglob("*") if p.is_file())]

    assert _mode(state) == 0o700 and _mode(state / "runs") == 0o700 and _mode(legit_run[2]) == 0o700
    assert len(private) > 3 and {p.name: _mode(p) for p in private} == {p.name: 0o600 for p in private}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_holders_decline_a_plaintext_run_by_default_and_the_operator_sees_why(cluster, legit_run):
    legit_run[0].popen.wait(timeout=400)  # after the operator's run, which test_only_... counts
    out = cluster.runs("plaintext")

    result = cluster.run(scenario(secagg=False, rounds=1), out, app=cluster.app)

    [record] = read_metrics(out)
    assert record["clients-declined"] == 3 and record["clients-succeeded"] == 0, record
    logs = result.stdout + result.stderr + "".join(p.read_text() for p in cluster.state.rglob("*.log"))
    assert "policy-secagg-required" in logs
