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
