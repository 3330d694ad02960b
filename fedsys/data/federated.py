"""Who holds which data: a client's local train/test split and the server's central test set.

In simulation every virtual client derives its partition from the same scenario (data set,
partition spec, seed), so no data travels and nothing is held for clients not sampled: the
full data set and partitioner are cached once per worker process; a partition is sliced
only when its client is sampled. In deployment a client reads its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedsys.config import RunConfig
from fedsys.data.builtin import (
    load_breast_cancer,
    load_digits,
    parse_synthetic,
    synthetic_device,
)
from fedsys.data.dataset import ArrayDataset, standardize
from fedsys.data.files import load_file
from fedsys.data.partition import make_partitioner, partition_indices
from fedsys.errors import ConfigError, DataError

LOCAL_TEST_FRACTION = 0.2
_CENTRAL_SYNTHETIC_DEVICES = 20


@dataclass(frozen=True)
class ClientData:
    """A client's local training and test examples."""

    train: ArrayDataset
    test: ArrayDataset


def load_source(dataset: str, *, label_column: str = "label") -> ArrayDataset:
    """Load a whole built-in data set or file (not for ``synthetic``)."""
    if dataset == "digits":
        return load_digits()
    if dataset == "breast-cancer":
        return load_breast_cancer()
    if dataset.startswith("synthetic"):
        raise ConfigError("synthetic data is generated per client; it has no whole data set")
    return load_file(Path(dataset), label_column=label_column)


def _is_tabular(data: ArrayDataset) -> bool:
    return data.x.ndim == 2


@lru_cache(maxsize=4)
def _pool_and_central(
    dataset: str, label_column: str, seed: int, test_fraction: float
) -> tuple[ArrayDataset, ArrayDataset]:
    full = load_source(dataset, label_column=label_column)
    pool, central = full.split(test_fraction, np.random.default_rng([seed, 1]))
    return pool, central


@lru_cache(maxsize=4)
def _partitioner(
    dataset: str, label_column: str, seed: int, test_fraction: float, spec: str, num_partitions: int
) -> object:
    pool, _ = _pool_and_central(dataset, label_column, seed, test_fraction)
    return make_partitioner(spec, num_partitions=num_partitions, labels=pool.y, seed=seed)


def simulated_client_data(config: RunConfig, *, partition_id: int, num_partitions: int) -> ClientData:
    """The local data of virtual client ``partition_id`` of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    rng = np.random.default_rng([config.seed, 2, partition_id])
    spec = config.resolved_partition()
    if config.dataset.startswith("synthetic"):
        if spec != "natural":
            raise ConfigError(
                f"synthetic data is partitioned by device; partition must be natural, got {spec!r}"
            )
        alpha, beta = parse_synthetic(config.dataset)
        local = synthetic_device(alpha, beta, device=partition_id, seed=config.seed)
    else:
        if spec == "natural":
            raise ConfigError(f"partition 'natural' applies only to synthetic data, not {config.dataset!r}")
        pool, _ = _pool_and_central(config.dataset, config.label_column, config.seed, config.test_fraction)
        part = _partitioner(
            config.dataset, config.label_column, config.seed, config.test_fraction, spec, num_partitions
        )
        local = pool.subset(partition_indices(part, partition_id))
    return _split_local(local, rng)


def holder_client_data(path: Path, *, label_column: str, num_classes: int, seed: int = 0) -> ClientData:
    """A real data holder's local data from its own file."""
    local = load_file(path, label_column=label_column, num_classes=num_classes)
    return _split_local(local, np.random.default_rng([seed, 3]))


def _split_local(local: ArrayDataset, rng: np.random.Generator) -> ClientData:
    if len(local) < 2:
        raise DataError(f"a client's partition holds {len(local)} example(s); it needs at least 2")
    train, test = local.split(LOCAL_TEST_FRACTION, rng)
    if _is_tabular(train):
        train, test = standardize(train, test)
    return ClientData(train=train, test=test)


def central_test_data(config: RunConfig) -> ArrayDataset:
    """The server's held-out test set for global evaluation."""
    if config.dataset.startswith("synthetic"):
        alpha, beta = parse_synthetic(config.dataset)
        devices = [
            synthetic_device(alpha, beta, device=1_000_000 + i, seed=config.seed)
            for i in range(_CENTRAL_SYNTHETIC_DEVICES)
        ]
        data = ArrayDataset(
            np.concatenate([d.x for d in devices]),
            np.concatenate([d.y for d in devices]),
            devices[0].num_classes,
        )
    else:
        _, data = _pool_and_central(config.dataset, config.label_column, config.seed, config.test_fraction)
    return standardize(data)[0] if _is_tabular(data) else data


def data_signature(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """``(feature_shape, num_classes)`` of the scenario's data, to size the model."""
    data = central_test_data(config)
    return data.feature_shape, data.num_classes


def check_scenario_data(config: RunConfig) -> None:
    """Fail fast, before any process starts, if the scenario's data cannot be loaded or split."""
    central_test_data(config)
    last = config.simulation.num_clients - 1
    for pid in sorted({0, last}):
        simulated_client_data(config, partition_id=pid, num_partitions=config.simulation.num_clients)
