"""Central DP-SGD reference: pooled data, noise for the target, the accountant's epsilon."""

import math

import pytest
from privacy_builders import oracle_rdp_epsilon

from fedsys.config import RunConfig
from fedsys.data import central_test_data, simulated_client_data
from fedsys.errors import ConfigError
from fedsys.privacy.central import central_epochs, pooled_training_data, train_central
from fedsys.privacy.planning import EPSILON_TOLERANCE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _breast_cancer(**extra):
    return RunConfig().replace(
        {
            "dataset": "breast-cancer",
            "model": "logreg",
            "partition": "dirichlet:1.0",
            "num-rounds": 3,
            "simulation.num-clients": 3,
            "train.batch-size": 32,
            "train.local-epochs": 1,
            "train.lr": 1.0,
            "train.momentum": 0.0,
            **extra,
        }
    )


def test_the_spent_epsilon_matches_an_independent_rdp_accountant():
    config = _breast_cancer()

    result = train_central(config, target_epsilon=2.0, simulation_seed=0)

    n = len(pooled_training_data(config))
    assert result.sample_rate == 1 / math.ceil(n / 32)  # what Opacus samples and accounts
    assert result.steps == 3 * math.ceil(n / 32)  # rounds x local epochs, whole epochs
    oracle = oracle_rdp_epsilon(result.noise_multiplier, result.sample_rate, result.steps, 1e-5)
    assert result.epsilon == pytest.approx(oracle, rel=0.01)
    assert 2.0 - EPSILON_TOLERANCE <= result.epsilon <= 2.0


def test_the_budgets_accountant_chooses_the_noise_and_records_the_spend():
    config = _breast_cancer(**{"budget.accountant": "prv", "dp.accountant": "rdp"})

    result = train_central(config, target_epsilon=2.0, simulation_seed=0)

    assert result.accountant == "prv"
    assert 2.0 - EPSILON_TOLERANCE <= result.epsilon <= 2.0
    # PRV is tighter than RDP here, so the same target affords less noise
    assert result.noise_multiplier < train_central(_breast_cancer(), target_epsilon=2.0).noise_multiplier


def test_the_pool_is_the_clients_training_data_and_the_test_set_the_servers():
    config = _breast_cancer()
    parts = [simulated_client_data(config, partition_id=p, num_partitions=3).train for p in range(3)]

    pooled = pooled_training_data(config)
    result = train_central(config, target_epsilon=math.inf, epochs=1, simulation_seed=0)

    assert len(pooled) == sum(len(p) for p in parts) == result.num_examples
    assert sorted(map(bytes, pooled.x)) == sorted(bytes(row) for p in parts for row in p.x)
    assert result.test_examples == len(central_test_data(config))


def test_the_non_private_reference_trains_with_the_same_schedule():
    config = _breast_cancer()

    result = train_central(config, target_epsilon=math.inf, simulation_seed=0)

    assert result.epsilon is None and result.noise_multiplier is None and not result.private
    assert result.steps == 3 * math.ceil(result.num_examples / 32)
    assert result.accuracy > 0.85  # the majority class is ~63% of the test set


def test_a_tiny_digits_run_reaches_well_above_chance():
    config = RunConfig().replace(
        {"dataset": "digits", "model": "mlp", "partition": "iid", "simulation.num-clients": 5}
    )
    config = config.replace({"train.batch-size": 16, "train.lr": 0.3, "train.momentum": 0.0})

    result = train_central(config, target_epsilon=8.0, epochs=3, simulation_seed=0)

    assert result.accuracy > 0.5  # ten classes: chance is 10%
    assert result.epsilon <= 8.0


def test_one_simulation_seed_gives_one_result():
    config = _breast_cancer()

    first = train_central(config, target_epsilon=1.0, simulation_seed=7)
    again = train_central(config, target_epsilon=1.0, simulation_seed=7)

    assert (first.accuracy, first.loss, first.epsilon) == (again.accuracy, again.loss, again.epsilon)


def test_with_local_steps_the_epochs_match_the_visits_per_record():
    config = _breast_cancer(**{"train.local-steps": 7, "train.batch-size": 10})

    # clients of 100 and 200 examples: q = 1/10 and 1/20, 7 steps visit 0.7 and 0.35 times
    assert central_epochs(config, [100, 200]) == round(3 * 7 * (0.1 + 0.05) / 2)
    assert central_epochs(_breast_cancer(), [100, 200]) == 3


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_a_target_that_is_not_positive_is_refused_and_echoed(bad):
    with pytest.raises(ConfigError, match=f"got {bad!r}"):
        train_central(_breast_cancer(), target_epsilon=bad)


def test_epochs_below_one_are_refused_and_echoed():
    with pytest.raises(ConfigError, match="got 0"):
        train_central(_breast_cancer(), target_epsilon=1.0, epochs=0)
