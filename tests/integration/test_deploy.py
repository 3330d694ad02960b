"""Deployment end to end: a TLS SuperLink with node auth and three data-holder SuperNodes.

One cluster is shared by the module (starting it costs ~30 s); the tests that break it
(SuperLink crash, SuperNode crash) run last.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_support import Cluster, files_containing_marker, scenario, write_holder_csvs

from fedsys.config import parse_feature_range
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.data import holder_client_data
from fedsys.data.builtin import load_breast_cancer
from fedsys.deploy.app import directory_fab_hash, stage_app
from fedsys.models import build_model, load_weights
from fedsys.results import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODES = ["hospital-a", "hospital-b", "hospital-c"]
_PERMISSIVE = ("--allow-plaintext", "--min-cohort", "1", "--share-epsilon")
FLOORED = NODES[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("deploy")
    cluster = Cluster(root)
    # One frozen snapshot of the app: what the server submits and what the nodes approve.
    cluster.app_hash = stage_app(cluster.app).fab_hash
    cluster.data = dict(zip(NODES, write_holder_csvs(root), strict=True))
    cluster.make_certs(NODES)
    try:
        # The operator also approves ROGUE, so that the nodes' own refusal can be tested.
        cluster.start_server(approve=[cluster.app_hash, _rogue_app(root / "rogue", root / "rogue-ran")])
        for name in NODES:
            # These holders accept plaintext rounds and share their epsilon, so that both
            # aggregation modes can be compared; test_deploy_exposure.py runs the defaults.
            # FLOORED adds a local noise floor of its own in distributed-DP rounds.
            floor = ("--local-noise-multiplier", "10") if name == FLOORED else ()
            cluster.start_node(name, approve=cluster.app_hash, extra=(*_PERMISSIVE, *floor))
        for proc in cluster.nodes.values():
            proc.wait_for(r"app gate ready", timeout=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def finished_run(cluster: Cluster) -> Callable[[bool], Path]:
    """Run the 2-round DP scenario once per secagg flag (the result is shared by tests)."""
    done: dict[bool, Path] = {}

    def get(secagg: bool) -> Path:
        if secagg not in done:
            out = cluster.runs(f"run-secagg-{secagg}")
            result = cluster.run(scenario(secagg=secagg), out, app=cluster.app)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "finished:completed" in result.stdout
            done[secagg] = out
        return done[secagg]

    return get


def _accuracy_and_loss(weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    data = load_breast_cancer()  # scaled with the documented ranges the holders declare
    x, y = data.x, data.y
    torch.manual_seed(7)
    model = build_model("logreg", (30,), 2)
    if weights:
        load_weights(model, {k: v.numpy() for k, v in weights.items()}, source="test")
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y)).item()
        accuracy = (logits.argmax(1).numpy() == y).mean()
    return float(accuracy), loss


@pytest.mark.parametrize("secagg", [False, True], ids=["plaintext", "secagg"])
def test_three_data_holders_train_two_dp_rounds(cluster, finished_run, secagg):
    run = finished_run(secagg)

    records = read_metrics(run)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["status"] == "ok" and r["clients-succeeded"] == 3 for r in records), records
    assert all(r["epsilon-max"] > 0 for r in records)
    initial_accuracy, initial_loss = _accuracy_and_loss({})
    accuracy, loss = _accuracy_and_loss(torch.load(run / "model.pt", weights_only=True))
    assert loss < initial_loss and accuracy > max(initial_accuracy, 0.8)
    for name in NODES:
        with sqlite3.connect(cluster.ledger(name)) as db:
            rows = db.execute("SELECT run_id, round, steps, epsilon_after, status FROM entries").fetchall()
        assert any(status == "committed" and eps > 0 and steps > 0 for _, _, steps, eps, status in rows), rows
        # one id: Flower's run id is fedsys' run id, in summary.json, the ledgers and Flower's logs
        run_id = json.loads((run / "summary.json").read_text())["run-id"]
        node_log = (cluster.root / "nodes" / name / "supernode.log").read_text()
        assert run_id in {row[0] for row in rows} and f"[RUN {run_id}" in node_log
        # the holder's console leaves out the per-message lines its log file keeps
        assert "Receiving: " in node_log and "Receiving: " not in cluster.nodes[name].text()
    _check_federated_evaluation(cluster, run, records, secagg=secagg)
    print(
        f"\n[deploy {'secagg' if secagg else 'plaintext'}] seconds per round:",
        [round(r["round-seconds"], 1) for r in records],
    )


def _check_federated_evaluation(cluster: Cluster, run: Path, records: list[dict], *, secagg: bool) -> None:
    """The server has no test set; the holders score each model on their held-out splits and, under
    SecAgg+, release only the sums. These holders keep the default share-evaluation = "secure"."""
    summary = json.loads((run / "summary.json").read_text())
    if not secagg:  # plaintext: the holders' policy keeps their sums out of plaintext replies
        assert not any("federated-accuracy" in r for r in records)
        assert summary["final-accuracy"] is None and summary["final-accuracy-source"] is None
        return
    assert all(r["federated-examples"] > 0 and 0 <= r["federated-accuracy"] <= 1 for r in records)
    correct, examples = 0, 0
    weights = {k: v.numpy() for k, v in torch.load(run / "model.pt", weights_only=True).items()}
    ranges = parse_feature_range(str(cluster.data[NODES[0]].parent / "ranges.csv"), key="feature-range")
    for name in NODES:
        test = holder_client_data(
            cluster.data[name], label_column="y", num_classes=2, feature_range=ranges
        ).test
        model = build_model("logreg", (30,), 2)
        load_weights(model, weights, source="test")
        with torch.no_grad():
            correct += int((model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).sum())
        examples += len(test.y)
    assert summary["final-accuracy-source"] == "federated"
    assert summary["final-federated-examples"] == examples
    assert summary["final-accuracy"] == summary["final-federated-accuracy"] == correct / examples


def test_the_server_never_holds_a_data_holders_records(cluster, finished_run):
    runs = [finished_run(False)]

    assert files_containing_marker(cluster.state, *runs) == []
    assert files_containing_marker(cluster.data[NODES[0]])  # the check can see the marker at all


def _rogue_app(directory: Path, canary: Path) -> str:
    """A copy of the app whose ClientApp, if ever imported, touches ``canary``; returns its hash."""
    stage_app(directory)
    with (directory / "clients" / "app.py").open("a") as fh:
        fh.write(f"\nfrom pathlib import Path as _P\n\n_P({str(canary)!r}).touch()\n")
    return directory_fab_hash(directory)


def test_a_run_of_unapproved_code_is_refused_by_every_node(cluster, tmp_path):
    canary = cluster.root / "rogue-ran"
    out = cluster.runs("rogue-run")

    result = cluster.run(scenario(secagg=False, rounds=1), out, app=cluster.root / "rogue")

    assert result.returncode == 0, result.stdout + result.stderr
    [record] = read_metrics(out)
    assert record["status"] == "abandoned" and record["clients-succeeded"] == 0
    for proc in cluster.nodes.values():
        assert "NOT approved, refusing it" in proc.text()
        assert "refused by the data holder" in proc.text()
    assert not canary.exists()


def test_the_superlink_starts_only_server_apps_the_operator_approved(cluster, tmp_path):
    canary = tmp_path / "server-rogue-ran"
    _rogue_app(tmp_path / "server-rogue", canary)
    refusals_before = [p.text().count("NOT approved") for p in cluster.nodes.values()]

    never = cluster.runs("never")
    result = cluster.run(scenario(secagg=False, rounds=1), never, app=tmp_path / "server-rogue")

    assert result.returncode == 2 and "finished:failed" in result.stdout + result.stderr
    assert cluster.server is not None and "refused by the operator" in cluster.server.text()
    assert not never.exists() and not canary.exists()
    assert [p.text().count("NOT approved") for p in cluster.nodes.values()] == refusals_before


def test_a_run_without_dp_is_declined_by_every_holder_before_any_record_is_read(cluster):
    out = cluster.runs("no-dp")
    spent_before = {name: _all_entries(cluster, name) for name in NODES}
    config = scenario(secagg=True, rounds=1, dp={"enabled": False})

    result = cluster.run(config, out, app=cluster.app)

    [record] = read_metrics(out)
    assert record["clients-declined"] == 3 and record["clients-succeeded"] == 0, record
    assert "policy-dp-required" in result.stdout + result.stderr + _server_logs(cluster)
    assert {name: _all_entries(cluster, name) for name in NODES} == spent_before


def test_a_distributed_dp_round_runs_between_real_holders_and_each_charges_skellam(cluster):
    out = cluster.runs("distributed")
    dp = {"enabled": True, "mode": "distributed", "noise-multiplier": 2.0, "max-grad-norm": 1.0}
    config = scenario(secagg=True, rounds=1, dp=dp, train={"lr": 1.0, "batch-size": 64, "momentum": 0.0})

    result = cluster.run(config, out, app=cluster.app)

    assert result.returncode == 0, result.stdout + result.stderr
    [record] = read_metrics(out)
    assert record["status"] == "ok" and record["clients-succeeded"] == 3, record
    run_id = json.loads((out / "summary.json").read_text())["run-id"]
    for name in NODES:  # each holder charged the aggregate Skellam noise it relied on, itself
        with sqlite3.connect(cluster.ledger(name)) as db:
            query = "SELECT mechanism, status FROM entries WHERE run_id = ?"
            rows = db.execute(query, (run_id,)).fetchall()
        assert rows == [("skellam", "committed")], (name, rows)
    # the floor in one holder's own node config reached its ClientApp: its vector alone is the
    # least revealing of the three (the server asked for no floor)
    alone = {name: _logged_local_epsilon(cluster, name, run_id) for name in NODES}
    assert alone[FLOORED] < min(v for name, v in alone.items() if name != FLOORED), alone


def _logged_local_epsilon(cluster: Cluster, name: str, run_id: str) -> float:
    log = (cluster.root / "nodes" / name / "supernode.log").read_text(errors="replace")
    found = re.findall(r"alone, if SecAgg\+ failed: ([0-9.e+-]+)", log.split(f"[RUN {run_id}", 1)[-1])
    assert found, f"{name}: no local epsilon logged for run {run_id}"
    return float(found[-1])


def _ledger_rows(cluster: Cluster, run_id: str) -> dict[str, list[tuple[int, str]]]:
    rows = {}
    for name in NODES:
        with sqlite3.connect(cluster.ledger(name)) as db:
            query = "SELECT round, status FROM entries WHERE run_id = ? ORDER BY id"
            rows[name] = db.execute(query, (run_id,)).fetchall()
    return rows


def test_a_crashed_superlink_resumes_the_run_from_its_round_1_checkpoint(cluster, tmp_path):
    out = cluster.runs("crash-run")
    run = cluster.start_run(scenario(secagg=False), out, app=cluster.app)
    try:
        _wait_for(lambda: (out / "checkpoint.npz").is_file(), timeout=180)
        before = load_checkpoint(out)
        assert cluster.server is not None
        cluster.server.kill(signal.SIGKILL)
    finally:
        run.kill(signal.SIGTERM)
    assert before.round == 1
    after_crash = load_checkpoint(out)
    assert after_crash.round == 1
    assert all(np.array_equal(before.weights[k], after_crash.weights[k]) for k in before.weights)
    cluster.start_server(approve=[cluster.app_hash])  # nodes reconnect by themselves

    result = cluster.run({}, out, app=cluster.app, resume=True)

    # What resume guarantees (DP noise is fresh at every holder, so weights are not replayed):
    # the same run continues at round 2 from the round-1 weights, and no holder pays twice for
    # round 1. An interrupted round-2 attempt may stay charged: the ledger never under-counts.
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_metrics(out)
    assert [r["round"] for r in records] == [1, 2]
    assert records[0] == before.history[0] and records[1]["status"] == "ok"
    assert load_checkpoint(out).run_id == before.run_id
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert any(not np.array_equal(resumed[k].numpy(), before.weights[k]) for k in before.weights)
    for name, rows in _ledger_rows(cluster, before.run_id).items():
        assert [status for rnd, status in rows if rnd == 1] == ["committed"], (name, rows)
        assert "committed" in [status for rnd, status in rows if rnd == 2], (name, rows)


def test_a_supernode_killed_mid_round_leaves_the_round_to_the_others(cluster, tmp_path):
    out = cluster.runs("dropout-run")
    victim = cluster.nodes[NODES[2]]
    node_log = cluster.root / "nodes" / NODES[2] / "supernode.log"  # the console leaves these lines out
    approved_before = node_log.read_text(errors="replace").count("is approved")
    run = cluster.start_run(scenario(secagg=False, min_clients=2), out, app=cluster.app)
    try:
        _wait_for(lambda: node_log.read_text(errors="replace").count("is approved") > approved_before, 180)
        victim.kill(signal.SIGKILL)
        run.popen.wait(timeout=300)
    finally:
        run.kill(signal.SIGTERM)

    assert run.popen.returncode == 0, run.tail()
    records = read_metrics(out)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["status"] == "ok" and r["clients-succeeded"] == 2 for r in records), records
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds-completed"] == 2


def _all_entries(cluster: Cluster, name: str) -> int:
    with sqlite3.connect(cluster.ledger(name)) as db:
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def _server_logs(cluster: Cluster) -> str:
    return "".join(p.read_text(errors="replace") for p in cluster.state.rglob("*.log"))


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
