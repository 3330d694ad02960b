import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.data import central_test_data, simulated_client_data
from fedsys.data.builtin import synthetic_device
from fedsys.data.federated import check_scenario_data
from fedsys.errors import ConfigError, DataError


def _all_clients(config):
    n = config.simulation.num_clients
    return [simulated_client_data(config, partition_id=i, num_partitions=n) for i in range(n)]


def _rows(data):
    return {row.tobytes() for row in data.x.reshape(len(data), -1)}


def test_iid_partitions_are_disjoint_and_cover_the_pool():
    config = RunConfig(dataset="digits").replace({"simulation.num-clients": 5})
    clients = _all_clients(config)
    central = central_test_data(config)

    seen: set[bytes] = set()
    total = 0
    for c in clients:
        rows = _rows(c.train) | _rows(c.test)
        assert not rows & seen
        seen |= rows
        total += len(c.train) + len(c.test)
    assert not seen & _rows(central)
    assert total + len(central) == 1797


def test_same_seed_same_partition_other_seed_differs():
    a = RunConfig(dataset="digits", partition="dirichlet:0.3", seed=1)
    b = RunConfig(dataset="digits", partition="dirichlet:0.3", seed=2)
    one = simulated_client_data(a, partition_id=3, num_partitions=10)
    again = simulated_client_data(a, partition_id=3, num_partitions=10)
    other = simulated_client_data(b, partition_id=3, num_partitions=10)

    assert np.array_equal(one.train.x, again.train.x)
    assert one.train.x.shape != other.train.x.shape or not np.array_equal(one.train.x, other.train.x)


def test_dirichlet_skews_labels_and_shards_limit_classes():
    skewed = simulated_client_data(RunConfig(partition="dirichlet:0.1"), partition_id=0, num_partitions=10)
    shards = simulated_client_data(RunConfig(partition="shards:2"), partition_id=0, num_partitions=10)
    iid = simulated_client_data(RunConfig(partition="iid"), partition_id=0, num_partitions=10)

    def top_share(d):
        counts = np.bincount(np.concatenate([d.train.y, d.test.y]), minlength=10)
        return counts.max() / counts.sum()

    assert len(np.unique(np.concatenate([shards.train.y, shards.test.y]))) <= 2
    assert top_share(skewed) > 2 * top_share(iid)


def test_too_many_clients_for_the_data_is_a_clear_error():
    config = RunConfig(dataset="breast-cancer").replace({"simulation.num-clients": 400})

    with pytest.raises(DataError, match="too small for 400 clients"):
        check_scenario_data(config)


def test_synthetic_is_per_device_deterministic_and_non_iid():
    a = synthetic_device(0.5, 0.5, device=0, seed=0)
    b = synthetic_device(0.5, 0.5, device=0, seed=0)
    c = synthetic_device(0.5, 0.5, device=1, seed=0)

    assert np.array_equal(a.x, b.x) and a.feature_shape == (60,)
    assert not np.allclose(a.x.mean(axis=0), c.x.mean(axis=0), atol=0.1)
    with pytest.raises(ConfigError, match="must be natural"):
        simulated_client_data(
            RunConfig(dataset="synthetic:0.5,0.5", partition="iid"), partition_id=0, num_partitions=2
        )


def test_tabular_clients_are_scaled_by_public_ranges_not_their_own_statistics():
    client = simulated_client_data(RunConfig(dataset="breast-cancer"), partition_id=0, num_partitions=3)

    assert client.train.x.min() >= -1.0 and client.train.x.max() <= 1.0
    assert not np.allclose(client.train.x.mean(axis=0), 0, atol=1e-3)
