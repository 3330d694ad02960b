"""The data holder's own settings win over anything the server sends."""

import math

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.node.handlers import local_settings, server_config
from fedsys.node.settings import holder_settings
from fedsys.node.update import _noise_multiplier
from fedsys.privacy import compute_epsilon, sample_rate_for


def _message(flat):
    return Message(RecordDict({"config": ConfigRecord(flat)}), message_type="train", dst_node_id=5)


def _context(node_config):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_a_server_cannot_raise_a_real_holders_budget_or_choose_its_data(tmp_path):
    data = tmp_path / "site.csv"
    flat = {
        **RunConfig().to_flat(),
        "server-round": 3,
        "run-id": "00ff",
        "partition-id": 7,
        "budget.max-epsilon": 1e9,
        "budget.target-delta": 0.5,
        "ledger-dir": "/tmp/elsewhere",
    }
    message = _message(flat)
    node = {
        "data-path": str(data),
        "max-epsilon": 2.0,
        "target-delta": 1e-6,
        "ledger-path": str(tmp_path / "l.db"),
    }

    server, rnd, run_id = server_config(message)
    config, settings = local_settings(_context(node), server, {}, message)

    assert (rnd, run_id) == (3, "00ff")
    assert settings.budget.max_epsilon == 2.0 and settings.budget.target_delta == 1e-6
    assert settings.data_path == data and settings.partition_id is None
    assert settings.ledger_path == tmp_path / "l.db"


def test_unknown_or_mistyped_node_config_keys_are_named():
    with pytest.raises(ConfigError, match="unknown node config key 'max-epsilom'"):
        holder_settings({"data-path": "x.csv", "max-epsilom": 3}, RunConfig())
    with pytest.raises(ConfigError, match="max-epsilon must be float, got 'lots'"):
        holder_settings({"data-path": "x.csv", "max-epsilon": "lots"}, RunConfig())
    with pytest.raises(ConfigError, match="lacks data-path"):
        holder_settings({"max-epsilon": 3.0}, RunConfig())


def test_a_deployed_holder_must_state_its_budget():
    with pytest.raises(ConfigError, match="node config lacks max-epsilon"):
        holder_settings({"data-path": "x.csv", "target-delta": 1e-5}, RunConfig())


def test_target_epsilon_is_calibrated_once_for_the_whole_schedule():
    config = RunConfig().replace(
        {"dp.target-epsilon": 3.0, "num-rounds": 20, "train.batch-size": 16, "train.local-epochs": 1}
    )
    settings = holder_settings({"partition-id": 0, "num-partitions": 5}, config)

    sigma = _noise_multiplier(config, settings, num_examples=230)

    q, steps = sample_rate_for(230, 16), 20 * math.ceil(230 / 16)
    reached = compute_epsilon([(sigma, q, steps)], target_delta=1e-5, accountant="rdp")
    assert 2.9 < reached <= 3.0
