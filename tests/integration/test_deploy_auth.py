"""Who may connect: TLS server authentication and SuperNode authentication, with real processes."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import FEDSYS, Cluster, Proc, child_env, free_port, spawn

from fedsys.deploy.certs import (
    cert_pem,
    default_ca_dir,
    init_certs,
    issue_server_cert,
    load_ca,
    private_pem,
    write_private,
)
from fedsys.deploy.process import executable
from fedsys.deploy.server import ServerLayout, ServerOptions, superlink_argv
from fedsys.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.integration
APPROVE = "0" * 64  # these nodes never get a run; any well-formed hash will do


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A SuperLink (fedsys server start) that allowlists one node, ``member``."""
    cluster = Cluster(tmp_path_factory.mktemp("auth"), app_hash=APPROVE)
    cluster.make_certs(["member"])
    data = cluster.root / "tiny.csv"
    data.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    cluster.data = {"member": data, "outsider": data}
    try:
        cluster.start_server()
        yield cluster
    finally:
        cluster.stop()


def _client(
    cluster: Cluster,
    name: str,
    *,
    key: Path | None = None,
    ca: Path | None = None,
    address: str | None = None,
) -> subprocess.CompletedProcess[str]:
    home = cluster.root / "nodes" / name
    argv = [
        FEDSYS,
        "client",
        "start",
        "--superlink",
        address or cluster.address,
        "--ca",
        str(ca or cluster.certs / "ca.crt"),
        "--key",
        str(key or cluster.certs / "nodes" / f"{name}.key"),
        "--data",
        str(cluster.data["member"]),
        "--label-column",
        "y",
        "--feature-range",
        "0,20",
        "--max-epsilon",
        "1",
        "--ledger",
        str(home / "ledger.sqlite"),
        "--home",
        str(home),
        "--approve",
        APPROVE,
        "--max-wait-time",
        "20",
    ]
    if not (home / "ledger.sqlite").exists():  # a holder creates its ledger once (`fedsys ledger init`)
        PrivacyLedger.init(home / "ledger.sqlite")
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=child_env(), cwd=cluster.root
    )


def _raw_superlink(root: Path, certs: Path) -> tuple[Proc, str]:
    """A bare TLS SuperLink (no node registration, which would itself fail TLS here)."""
    options = ServerOptions(certs=certs, state=root / "state", local_port=free_port())
    address = options.local_address
    layout = ServerLayout(options.state)
    layout.state.mkdir(parents=True, exist_ok=True)
    layout.secret_file.write_bytes(b"s" * 32)
    argv = superlink_argv(options, layout)
    proc = spawn("superlink", argv, root / "superlink.log", root, flwr_home=layout.flwr_home)
    proc.wait_for(r"Uvicorn running", timeout=60)
    return proc, address


def _with_server_cert(directory: Path, source: Path, **issue: object) -> Path:
    """A copy of ``source``'s CA with a new server certificate."""
    directory.mkdir()
    (directory / "ca.crt").write_bytes((source / "ca.crt").read_bytes())
    ca_key, ca_cert = load_ca(default_ca_dir(source))
    key, cert = issue_server_cert(ca_key, ca_cert, **issue)  # type: ignore[arg-type]
    write_private(directory / "server.key", private_pem(key))
    (directory / "server.crt").write_bytes(cert_pem(cert))
    return directory


def test_an_allowlisted_node_connects(link):
    PrivacyLedger.init(link.root / "member" / "ledger.sqlite")
    proc = spawn(
        "member",
        [
            FEDSYS,
            "client",
            "start",
            "--superlink",
            link.address,
            "--ca",
            str(link.certs / "ca.crt"),
            "--key",
            str(link.certs / "nodes" / "member.key"),
            "--data",
            str(link.data["member"]),
            "--label-column",
            "y",
            "--feature-range",
            "0,20",
            "--max-epsilon",
            "1",
            "--ledger",
            str(link.root / "member" / "ledger.sqlite"),
            "--home",
            str(link.root / "member"),
            "--approve",
            APPROVE,
        ],
        link.root / "member.log",
        link.root,
    )
    try:
        proc.wait_for(r"SuperNode ID: \d+", timeout=90)
    finally:
        proc.kill(signal.SIGTERM)


def test_a_node_whose_key_is_not_registered_is_refused(link, tmp_path):
    outsider = init_certs(tmp_path / "elsewhere", server_host="x").directory
    from fedsys.deploy.certs import create_node_key

    key = create_node_key(outsider, "outsider").private_key

    result = _client(link, "outsider", key=key)

    assert result.returncode != 0, result.stdout
    assert "Failed to activate SuperNode" in result.stdout


def test_a_node_trusting_another_ca_cannot_connect(link, tmp_path):
    other_ca = init_certs(tmp_path / "other", server_host="fedsys.test").ca_cert

    result = _client(link, "member", ca=other_ca)

    assert result.returncode != 0, result.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout


def test_a_supernode_without_the_ca_certificate_does_not_trust_the_server(link, tmp_path):
    argv = [
        executable("flower-supernode"),
        "--superlink",
        link.address,
        "--isolation",
        "process",
        "--auth-supernode-private-key",
        str(link.certs / "nodes" / "member.key"),
        "--max-retries",
        "1",
    ]

    proc = spawn("bare-supernode", argv, tmp_path / "supernode.log", tmp_path, flwr_home=tmp_path / "home")
    try:
        code = proc.popen.wait(timeout=120)
    finally:
        proc.kill(signal.SIGTERM)

    assert code != 0, proc.text()
    assert "Using system certificates" in proc.text() and "CERTIFICATE_VERIFY_FAILED" in proc.text()


def test_a_server_certificate_for_another_host_is_rejected(link, tmp_path):
    now = dt.datetime.now(dt.UTC)
    certs = _with_server_cert(
        tmp_path / "certs", link.certs, names=["elsewhere.example"], ips=[], not_before=now, valid_days=30
    )
    proc, address = _raw_superlink(tmp_path, certs)
    try:
        result = _client(link, "member", address=address)
    finally:
        proc.kill(signal.SIGTERM)

    assert result.returncode != 0, result.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout and "mismatch" in result.stdout


def test_an_expired_server_certificate_is_rejected(link, tmp_path):
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    certs = _with_server_cert(
        tmp_path / "certs",
        link.certs,
        names=["localhost"],
        ips=["127.0.0.1"],
        not_before=long_ago,
        valid_days=2,
    )
    proc, address = _raw_superlink(tmp_path, certs)
    try:
        result = _client(link, "member", address=address)
    finally:
        proc.kill(signal.SIGTERM)

    assert result.returncode != 0, result.stdout
    assert "certificate has expired" in result.stdout
