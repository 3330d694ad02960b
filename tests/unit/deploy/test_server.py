"""The SuperLink command line and the operator's flwr connection."""

import stat

import pytest
from flwr.cli.flower_config import read_superlink_connection

from fedsys.deploy.certs import default_ca_dir, init_certs
from fedsys.deploy.server import (
    CONNECTION,
    ServerLayout,
    ServerOptions,
    control_address,
    gate_argv,
    make_private_dirs,
    make_private_files,
    parse_address,
    proxy_argv,
    start_server,
    superlink_argv,
    write_connection,
)
from fedsys.errors import DeploymentError


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_superlink_runs_with_tls_node_auth_persistent_state_and_no_installs(tmp_path):
    certs = init_certs(tmp_path / "certs", server_host="h")
    layout = ServerLayout(tmp_path / "state")

    argv = superlink_argv(
        ServerOptions(certs=certs.directory, state=layout.state, address="0.0.0.0:9093", local_port=9094),
        layout,
    )

    assert _flag(argv, "--ssl-certfile") == str(certs.server_cert.resolve())
    assert _flag(argv, "--ssl-keyfile") == str(certs.server_key.resolve())
    assert _flag(argv, "--ssl-ca-certfile") == str(certs.ca_cert.resolve())
    assert _flag(argv, "--database") == str(layout.database)
    assert _flag(argv, "--isolation") == "process"  # only the fedsys app gate starts ServerApps
    assert _flag(argv, "--superexec-auth-secret-file") == str(layout.secret_file)
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("127.0.0.1", "9094")  # loopback only
    assert "--enable-supernode-auth" in argv and "--disable-runtime-dependency-installation" in argv
    assert "--insecure" not in argv


def test_the_app_gate_reaches_the_superlink_over_tls_on_loopback(tmp_path):
    certs = init_certs(tmp_path / "certs", server_host="h")
    options = ServerOptions(
        certs=certs.directory, state=tmp_path, approved=["ab" * 32], address="0.0.0.0:9", local_port=10
    )

    argv = gate_argv(options, ServerLayout(tmp_path))

    assert argv[1:3] == ["-m", "server.daemon"]
    assert _flag(argv, "--runtime-api-address") == "127.0.0.1:10"
    assert _flag(argv, "--root-certificates") == str(certs.ca_cert.resolve())
    assert _flag(argv, "--approve") == "ab" * 32


def test_a_server_without_an_approved_app_does_not_start(tmp_path):
    with pytest.raises(DeploymentError, match="no approved app"):
        start_server(ServerOptions(certs=None, state=tmp_path, insecure=True), print)


def test_the_public_address_is_served_by_the_fleet_proxy_in_front_of_the_loopback_superlink(tmp_path):
    certs = init_certs(tmp_path / "certs", server_host="h")
    options = ServerOptions(certs=certs.directory, state=tmp_path, address="0.0.0.0:9093", local_port=40000)

    argv = proxy_argv(options)

    assert argv[1:3] == ["-m", "server.proxy"]
    assert (_flag(argv, "--listen"), _flag(argv, "--upstream")) == ("0.0.0.0:9093", "127.0.0.1:40000")
    assert _flag(argv, "--certfile") == str(certs.server_cert.resolve())
    assert _flag(argv, "--ca-certfile") == str(certs.ca_cert.resolve())


def test_the_server_refuses_to_start_beside_the_ca_key(tmp_path, monkeypatch):
    certs = init_certs(tmp_path / "certs", server_host="h")
    (certs.directory / "ca.key").write_bytes((default_ca_dir(certs.directory) / "ca.key").read_bytes())
    options = ServerOptions(certs=certs.directory, state=tmp_path / "state", approved=["ab" * 32])
    monkeypatch.setattr("fedsys.deploy.server._serve", lambda *_: pytest.fail("the server started"))

    with pytest.raises(DeploymentError, match="ca.key must not be on the server: move it offline"):
        start_server(options, print)
    assert not (tmp_path / "state").exists()


def test_state_directories_are_created_owner_only_and_tightened(tmp_path):
    layout = ServerLayout(tmp_path / "state")
    layout.state.mkdir(mode=0o755)
    layout.database.write_bytes(b"")
    layout.database.chmod(0o644)

    make_private_dirs(layout)
    make_private_files(layout)

    for path in (layout.state, layout.runs_dir, layout.flwr_home):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.database.stat().st_mode) == 0o600


def test_the_superlink_port_must_be_chosen_and_differ_from_the_public_one(tmp_path):
    with pytest.raises(DeploymentError, match="loopback port must be in 1..65535, got 0"):
        ServerOptions(certs=None, state=tmp_path).local_address  # noqa: B018
    with pytest.raises(DeploymentError, match="--local-port 9093 must differ"):
        start_server(
            ServerOptions(certs=None, state=tmp_path, insecure=True, approved=["ab" * 32], local_port=9093),
            print,
        )


def test_insecure_superlink_has_neither_tls_nor_node_auth(tmp_path):
    layout = ServerLayout(tmp_path)

    argv = superlink_argv(ServerOptions(certs=None, state=tmp_path, insecure=True, local_port=1), layout)

    assert "--insecure" in argv
    assert not any(a.startswith("--ssl") or a == "--enable-supernode-auth" for a in argv)


def test_missing_certificates_are_named(tmp_path):
    with pytest.raises(DeploymentError, match="ca.crt is missing; create it with `fedsys certs init"):
        superlink_argv(ServerOptions(certs=tmp_path, state=tmp_path, local_port=1), ServerLayout(tmp_path))
    with pytest.raises(DeploymentError, match="--certs DIR is required"):
        superlink_argv(ServerOptions(certs=None, state=tmp_path, local_port=1), ServerLayout(tmp_path))


def test_flwr_reads_the_written_connection(tmp_path, monkeypatch):
    layout = ServerLayout(tmp_path)
    ca = init_certs(tmp_path / "certs", server_host="h").ca_cert
    write_connection(layout, address="0.0.0.0:9093", ca_cert=ca)
    monkeypatch.setenv("FLWR_HOME", str(layout.flwr_home))

    connection = read_superlink_connection(CONNECTION)

    assert connection.address == "127.0.0.1:9093"
    assert connection.root_certificates == str(ca.resolve())
    assert not connection.insecure


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9093", ("127.0.0.1", 9093)),
        ("[::1]:80", ("::1", 80)),
        ("link.example:1", ("link.example", 1)),
    ],
)
def test_addresses_parse(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9093", "host:", "host:99999", ":80", "host:port"])
def test_bad_addresses_are_named(address):
    with pytest.raises(DeploymentError, match="address must be HOST:PORT"):
        parse_address(address)


def test_wildcard_binds_are_reached_on_loopback():
    assert control_address("0.0.0.0:1") == "127.0.0.1:1"
    assert control_address("[::1]:2") == "[::1]:2"
