from pathlib import Path

import pytest

from fedsys.config import RunConfig
from fedsys.errors import ConfigError


def test_defaults_turn_on_dp_and_secure_aggregation():
    config = RunConfig()

    assert config.dp.enabled and config.secagg.enabled
    assert config.dataset == "digits"


def test_flat_and_nested_keys_build_the_same_config():
    flat = RunConfig.from_mapping({"num-rounds": 4, "dp.noise-multiplier": 1.3, "train.batch-size": 64})
    nested = RunConfig.from_mapping(
        {"num-rounds": 4, "dp": {"noise-multiplier": 1.3}, "train": {"batch-size": 64}}
    )

    assert flat == nested
    assert RunConfig.from_mapping(flat.to_flat()) == flat


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"num-round": 3}, "unknown config key 'num-round'"),
        ({"dp.nosie-multiplier": 1.0}, "unknown config key 'dp.nosie-multiplier'"),
        ({"dp.max-grad-norm": 0}, "dp.max-grad-norm must be > 0, got 0"),
        ({"budget.target-delta": 2.0}, "budget.target-delta must be in (0, 1), got 2.0"),
        ({"simulation.num-clients": 0}, "simulation.num-clients must be >= 1, got 0"),
        ({"partition": "dirichlet"}, "got 'dirichlet'"),
        ({"num-rounds": "3"}, "num-rounds must be an integer, got '3'"),
        ({"dp.accountant": "gdp"}, "dp.accountant must be one of rdp, prv, got 'gdp'"),
        ({"train.strategy": "fedprox"}, "needs train.proximal-mu > 0"),
        ({"secagg.clip-range": float("nan")}, "secagg.clip-range must be a finite number > 0"),
        ({"server.optimizer": "adamw"}, "server.optimizer must be one of sgd, momentum, adagrad, adam, yogi"),
        ({"server.lr": 0.0}, "server.lr must be a finite number > 0, got 0.0"),
        ({"server.lr": float("inf")}, "server.lr must be a finite number > 0, got inf"),
        ({"server.momentum": 1.0}, "server.momentum must be in [0, 1), got 1.0"),
        ({"server.beta1": -0.1}, "server.beta1 must be in [0, 1), got -0.1"),
        ({"server.beta2": 1}, "server.beta2 must be in [0, 1), got 1.0"),
        ({"server.beta2": float("nan")}, "server.beta2 must be in [0, 1), got nan"),
        ({"server.tau": 0}, "server.tau must be a finite number > 0, got 0.0"),
        ({"server.learning-rate": 0.1}, "unknown config key 'server.learning-rate'"),
        ({"server": 1.0}, "server is a section, got 1.0"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_echo_the_value(mapping, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(mapping)

    assert fragment in str(info.value)


def test_replace_validates_overrides():
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        RunConfig().replace({"train.lr": -1.0})


def test_scenario_files_in_the_repo_all_load():
    scenarios = sorted((Path(__file__).parents[2] / "simulations").glob("*.toml"))

    assert len(scenarios) >= 3
    for path in scenarios:
        RunConfig.from_toml(path)


def test_partition_auto_resolves_per_dataset():
    assert RunConfig(dataset="synthetic:0.5,0.5").resolved_partition() == "natural"
    assert RunConfig(dataset="digits").resolved_partition() == "dirichlet:0.5"


def test_missing_or_invalid_scenario_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("num-rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(bad)


def test_secagg_mode_is_a_checked_literal_and_reaches_the_secagg_params():
    from fedsys.coordinator.secure import secagg_params

    config = RunConfig().replace({"secagg.mode": "malicious"})

    assert RunConfig().secagg.mode == "semi-honest"
    assert secagg_params(config).mode == "malicious"
    with pytest.raises(ConfigError, match="secagg.mode must be one of"):
        RunConfig().replace({"secagg.mode": "honest-but-curious"})
    with pytest.raises(ConfigError, match="complete graph"):
        RunConfig().replace({"secagg.mode": "malicious", "secagg.degree": 4})


def test_server_optimizer_defaults_to_plain_fedavg_and_reads_flat_and_nested_keys():
    server = RunConfig().server
    flat = RunConfig.from_mapping({"server.optimizer": "yogi", "server.lr": 0.03, "server.tau": 1e-2})
    nested = RunConfig.from_mapping({"server": {"optimizer": "yogi", "lr": 0.03, "tau": 0.01}})

    assert (server.optimizer, server.lr) == ("sgd", 1.0)
    assert (server.momentum, server.beta1, server.beta2, server.tau) == (0.9, 0.9, 0.99, 1e-3)
    assert flat == nested and flat.server.beta2 == 0.99
    assert RunConfig.from_mapping(flat.to_flat()) == flat
    assert {k for k in RunConfig().to_flat() if k.startswith("server.")} == {
        "server.optimizer",
        "server.lr",
        "server.momentum",
        "server.beta1",
        "server.beta2",
        "server.tau",
        "server.average",
        "server.ema-decay",
    }
