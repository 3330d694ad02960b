"""The data holder's SuperNode command line and its fail-fast checks."""

import os
from pathlib import Path

import pandas as pd
import pytest
from flwr.common.config import parse_config_args

from fedsys.config import RunConfig
from fedsys.deploy.certs import create_node_key, init_certs
from fedsys.deploy.client import ClientOptions, check_options, gate_argv, node_config, supernode_argv
from fedsys.errors import ConfigError, DeploymentError, LedgerError
from fedsys.node.settings import holder_settings
from fedsys.privacy import PrivacyLedger


def _options(tmp_path: Path, **changes) -> ClientOptions:
    certs = init_certs(tmp_path / "certs", server_host="h")
    key = create_node_key(tmp_path / "certs", "site").private_key
    data = tmp_path / "my data.csv"
    pd.DataFrame({"a": range(20), "y": [0, 1] * 10}).to_csv(data, index=False)
    base = {
        "superlink": "link.example:9093",
        "ca_cert": certs.ca_cert,
        "key": key,
        "data": data,
        "label_column": "y",
        "max_epsilon": 8.0,
        "target_delta": 1e-5,
        "ledger": tmp_path / "l" / "ledger.sqlite",
        "home": tmp_path / "home",
        "approved": ["ab" * 32],
        "num_classes": 2,
        "feature_range": "0,20",
    }
    options = ClientOptions(**{**base, **changes})
    if not options.ledger.exists():
        PrivacyLedger.init(options.ledger)  # `fedsys ledger init`, once per holder
    return options


def test_node_config_reaches_the_client_app_as_the_data_holder_set_it(tmp_path):
    options = _options(tmp_path)

    parsed = parse_config_args([node_config(options)])  # exactly how flower-supernode parses it
    settings = holder_settings(parsed, RunConfig())

    assert settings.data_path == options.data.resolve()
    assert settings.label_column == "y" and settings.num_classes == 2
    assert (settings.budget.max_epsilon, settings.budget.target_delta) == (8.0, 1e-5)
    assert settings.ledger_path == options.ledger.resolve()
    assert settings.policy.local_noise_multiplier == 0.0


def test_a_holders_local_noise_floor_reaches_its_policy(tmp_path):
    options = _options(tmp_path, local_noise_multiplier=2.5)

    settings = holder_settings(parse_config_args([node_config(options)]), RunConfig())

    assert settings.policy.local_noise_multiplier == 2.5


def test_supernode_verifies_the_server_authenticates_and_executes_nothing_itself(tmp_path):
    options = _options(tmp_path)
    secret = tmp_path / "secret"

    argv = supernode_argv(options, runtime_port=9555, secret_file=secret)

    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--root-certificates"] == str(options.ca_cert)
    assert flags["--auth-supernode-private-key"] == str(options.key)
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--superexec-auth-secret-file") + 1] == str(secret)
    assert "--insecure" not in argv and "--max-retries" not in argv  # reconnect forever
    gate = gate_argv(options.approved, runtime_port=9555, secret_file=secret)
    assert gate[1:3] == ["-m", "clients.node"] and gate[gate.index("--approve") + 1] == "ab" * 32


def test_the_node_key_must_not_be_readable_by_others(tmp_path):
    options = _options(tmp_path)
    os.chmod(options.key, 0o644)

    with pytest.raises(DeploymentError, match="readable by other users; run `chmod 600"):
        check_options(options)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"target_delta": 1.5}, ConfigError, "--target-delta must be in (0, 1), got 1.5"),
        ({"max_epsilon": 0.0}, ConfigError, "--max-epsilon must be > 0"),
        ({"budget_policy": "ignore"}, ConfigError, "--budget-policy must be refuse or truncate"),
        ({"ca_cert": Path("/nonexistent/ca.crt")}, DeploymentError, "CA certificate not found"),
        ({"ca_cert": None}, DeploymentError, "--ca is required"),
        ({"approved": []}, DeploymentError, "no approved app"),
        ({"superlink": "nohost"}, DeploymentError, "address must be HOST:PORT"),
        ({"feature_range": ""}, ConfigError, "no feature-range declared for"),
    ],
)
def test_bad_options_fail_before_connecting(tmp_path, changes, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_options(_options(tmp_path, **changes))


def test_a_quote_in_a_path_cannot_smuggle_node_config_keys(tmp_path):
    options = _options(tmp_path, ledger=tmp_path / 'x" max-epsilon=1e9 y="')

    with pytest.raises(ConfigError, match="ledger-path cannot contain quotes"):
        node_config(options)


@pytest.mark.parametrize("content", [None, b""])
def test_client_start_refuses_a_missing_or_empty_ledger_and_creates_none(tmp_path, content):
    ledger = tmp_path / "state" / "ledger.sqlite"
    options = _options(tmp_path, ledger=ledger)
    ledger.unlink()
    if content is not None:
        ledger.write_bytes(content)

    with pytest.raises(LedgerError, match="fedsys ledger init"):
        check_options(options)
    assert (ledger.read_bytes() if ledger.exists() else None) == content


def test_the_declared_dataset_name_reaches_the_client_app(tmp_path):
    options = _options(tmp_path, dataset_name="clinic-2024")

    settings = holder_settings(parse_config_args([node_config(options)]), RunConfig())

    assert settings.dataset_name == "clinic-2024"
    with pytest.raises(ConfigError, match="dataset-name must be .*got 'bad name'"):
        check_options(_options(tmp_path / "other", dataset_name="bad name"))


def test_a_target_delta_at_or_above_one_over_n_is_warned_about(tmp_path):
    assert check_options(_options(tmp_path)) == []

    [warning] = check_options(_options(tmp_path / "loose", target_delta=0.1))  # 16 training rows

    assert "target-delta 0.1 >= 1/n = 1/16" in warning


def test_the_node_key_and_peers_file_reach_the_client_app_as_its_secagg_identity(tmp_path):
    options = _options(tmp_path)
    peers = tmp_path / "peers.txt"
    other = create_node_key(tmp_path / "certs", "other-site")
    peers.write_text(other.public_key.read_text())
    with_peers = ClientOptions(**{**options.__dict__, "peers": peers})

    check_options(with_peers)
    settings = holder_settings(parse_config_args([node_config(with_peers)]), RunConfig())
    without = holder_settings(parse_config_args([node_config(options)]), RunConfig())

    assert (settings.identity_key, settings.peers) == (options.key.resolve(), peers.resolve())
    assert settings.policy.require_malicious_secagg  # on by default once the holder names its peers
    assert without.identity_key == options.key.resolve() and not without.policy.require_malicious_secagg


def test_a_peers_file_that_lists_no_key_fails_before_connecting(tmp_path):
    peers = tmp_path / "peers.txt"
    peers.write_text("# the other hospitals' keys go here\n")

    with pytest.raises(ConfigError, match="lists no keys"):
        check_options(_options(tmp_path, peers=peers))
