"""Dirac canaries: distinct records on rarely used features, fair coins, and the holder hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsys.audit.canaries import (
    DEFAULT_AMPLITUDE,
    SHARED_AMPLITUDE,
    CanarySet,
    default_canary_count,
    make_canaries,
    with_canaries,
)
from fedsys.config import RunConfig
from fedsys.data.dataset import ArrayDataset
from fedsys.data.federated import simulated_client_data
from fedsys.errors import ConfigError


def _data(rare: int = 120, busy: int = 8, n: int = 500) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 1, rare + busy), dtype=np.float32)
    x[:, 0, rare:] = rng.random((n, busy))
    return ArrayDataset(x, rng.integers(0, 10, n).astype(np.int64), 10)


def test_one_canary_per_rare_feature_when_there_are_enough() -> None:
    canaries = make_canaries(_data(), count=120, rng=np.random.default_rng(1))

    assert sorted(canaries.feature.tolist()) == list(range(120))
    assert canaries.amplitude == DEFAULT_AMPLITUDE
    flat = canaries.x.reshape(120, -1)
    assert (np.count_nonzero(flat, axis=1) == 1).all()
    assert (flat[np.arange(120), canaries.feature] == DEFAULT_AMPLITUDE).all()


def test_shared_features_carry_distinct_labels_and_small_amplitude() -> None:
    canaries = make_canaries(_data(rare=5), count=50, rng=np.random.default_rng(1))

    pairs = set(zip(canaries.feature.tolist(), canaries.y.tolist(), strict=True))
    assert len(pairs) == 50  # no two canaries are the same record
    assert set(canaries.feature.tolist()) == set(range(5))
    assert canaries.amplitude == SHARED_AMPLITUDE


def test_inclusion_and_holders_are_fair_coins() -> None:
    canaries = make_canaries(_data(rare=1000, n=50), count=1000, rng=np.random.default_rng(2), holders=4)

    assert 450 < canaries.included.sum() < 550
    assert set(np.unique(canaries.holder).tolist()) == {0, 1, 2, 3}


def test_default_count() -> None:
    assert default_canary_count(_data(rare=120)) == 120
    assert default_canary_count(_data(rare=5)) == 50


@pytest.mark.parametrize("count", [1, 10 * 128 + 1])
def test_count_out_of_range_is_an_error(count: int) -> None:
    with pytest.raises(ConfigError, match="--canaries"):
        make_canaries(_data(), count=count, rng=np.random.default_rng(0))


def test_only_included_canaries_of_the_holder_are_added(tmp_path: Path) -> None:
    data = _data()
    canaries = make_canaries(data, count=100, rng=np.random.default_rng(3), holders=3)
    loaded = CanarySet.load(canaries.save(tmp_path / "c.npz"))

    added = with_canaries(data, loaded, holder=2)

    expected = int((canaries.included & (canaries.holder == 2)).sum())
    assert len(added) == len(data) + expected
    np.testing.assert_array_equal(
        added.x[len(data) :], canaries.x[canaries.included & (canaries.holder == 2)]
    )


def test_simulated_holder_trains_on_its_canaries(tmp_path: Path) -> None:
    config = RunConfig().replace({"dataset": "digits", "simulation.num-clients": 3})
    plain = simulated_client_data(config, partition_id=1, num_partitions=3)
    canaries = make_canaries(plain.train, count=30, rng=np.random.default_rng(4), holders=3)
    path = canaries.save(tmp_path / "canaries.npz")

    audited = simulated_client_data(
        config.replace({"audit-canaries": str(path)}), partition_id=1, num_partitions=3
    )

    mine = canaries.included & (canaries.holder == 1)
    assert len(audited.train) == len(plain.train) + int(mine.sum())
    np.testing.assert_array_equal(audited.test.x, plain.test.x)  # local test split untouched


@pytest.mark.parametrize("key", ["audit-canaries", "audit-client-canaries"])  # records, client level
def test_a_server_cannot_choose_a_holders_canaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """A canary file is a holder's own local setting: one the server sends is dropped, and a real
    holder (or a virtual one without its own) never plays canaries."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsys.node.handlers import local_settings, server_config

    for name in ("_task_id", "_run_id", "_node_id"):  # messages need the identity Flower sets in an app
        monkeypatch.setattr(TaskIdentity, name, 1)
    flat = {
        **RunConfig().to_flat(),
        "server-round": 1,
        "run-id": "00ff",
        key: "/srv/planted.npz",
    }
    message = Message(RecordDict({"config": ConfigRecord(flat)}), message_type="train", dst_node_id=5)
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    field = key.replace("-", "_")

    server, _, _ = server_config(message)
    alone, _ = local_settings(context, server, {}, message)
    own, _ = local_settings(context, server, {key: str(tmp_path / "mine.npz")}, message)

    assert getattr(server, field) == "" and getattr(alone, field) == ""
    assert getattr(own, field) == str(tmp_path / "mine.npz")
