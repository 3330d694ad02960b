"""Who holds which data: a client's local train/test split and the server's central test set.

In simulation every virtual client derives its partition from the same scenario (data set,
partition spec, seed), so no data travels and nothing is held for clients not sampled: the
full data set and partitioner are cached once per worker process; a partition is sliced
only when its client is sampled. In deployment a client reads its own file. A user loader
(``package.module:loader``, :mod:`fedsys.data.custom`) and a text file (``[text]``,
:mod:`fedsys.data.text`) give a whole data set that is split and partitioned the same way.

Features are scaled with public ranges only (:mod:`fedsys.data.scaling`): the built-in
data sets' documented ranges, or the range a data file's holder declares. Nothing is
fitted to the rows, so no statistic of a holder's data shapes training or leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsys.config import FeatureRange, RunConfig, TextConfig, is_dataset_loader
from fedsys.data.builtin import (
    load_breast_cancer,
    load_digits,
    load_mnist_5k,
    parse_synthetic,
    synthetic_device,
)
from fedsys.data.dataset import ArrayDataset
from fedsys.data.files import load_file
from fedsys.data.partition import make_partitioner, partition_indices
from fedsys.data.scaling import declared_bounds, scale
from fedsys.data.text import load_text_file
from fedsys.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

LOCAL_TEST_FRACTION = 0.2
_CENTRAL_SYNTHETIC_DEVICES = 20


@dataclass(frozen=True)
class ClientData:
    """A client's local training and test examples."""

    train: ArrayDataset
    test: ArrayDataset


def load_source(
    dataset: str,
    *,
    label_column: str = "label",
    feature_range: FeatureRange | None = None,
    text: TextConfig | None = None,
    labels: tuple[str, ...] = (),
) -> ArrayDataset:
    """Load a whole built-in data set, user loader or file (not for ``synthetic``), scaled.

    Raises:
        ConfigError: a data file without a declared ``feature_range``, or a loader that does
            not resolve.
        DataError: the data cannot be read, or a loader returned something unusable.
    """
    if text is not None and text.column:
        return load_text_file(
            Path(dataset),
            text_column=text.column,
            label_column=label_column,
            max_length=text.max_length,
            tokenizer=text.tokenizer,
            labels=labels,
        )
    if is_dataset_loader(dataset):
        from fedsys.data.custom import load_user_data

        _, bounds = declared_bounds(feature_range) if feature_range else ([], None)
        return scale(load_user_data(dataset), bounds)
    if dataset == "digits":
        return load_digits()
    if dataset == "mnist-5k":
        return load_mnist_5k()
    if dataset == "breast-cancer":
        return load_breast_cancer()
    if dataset.startswith("synthetic"):
        raise ConfigError("synthetic data is generated per client; it has no whole data set")
    return load_scaled_file(
        Path(dataset), label_column=label_column, feature_range=feature_range, labels=labels
    )


def load_scaled_file(
    path: Path,
    *,
    label_column: str,
    feature_range: FeatureRange | None,
    num_classes: int = 0,
    labels: tuple[str, ...] = (),
) -> ArrayDataset:
    """A data file, clipped to its declared public range and mapped to [-1, 1].

    Raises:
        ConfigError: no range is declared (``none`` must be said explicitly).
        DataError: the file or the range table cannot be read, or they do not match.
    """
    columns, bounds = declared_bounds(feature_range) if feature_range else ([], None)
    data = load_file(
        path, label_column=label_column, feature_columns=columns, num_classes=num_classes, labels=labels
    )
    if feature_range is None:
        raise ConfigError(
            f"no feature-range declared for {path}: give the public range of its values "
            '("LO,HI", or a .csv table of column,low,high), or "none" to use them as given'
        )
    return scale(data, bounds)


@lru_cache(maxsize=4)
def _pool_and_central(
    dataset: str,
    label_column: str,
    feature_range: FeatureRange | None,
    seed: int,
    test_fraction: float,
    text: TextConfig,
    labels: tuple[str, ...] = (),
) -> tuple[ArrayDataset, ArrayDataset]:
    full = load_source(
        dataset, label_column=label_column, feature_range=feature_range, text=text, labels=labels
    )
    pool, central = full.split(test_fraction, np.random.default_rng([seed, 1]))
    return pool, central


@lru_cache(maxsize=4)
def _partitioner(
    dataset: str,
    label_column: str,
    feature_range: FeatureRange | None,
    seed: int,
    test_fraction: float,
    text: TextConfig,
    labels: tuple[str, ...],
    spec: str,
    num_partitions: int,
) -> object:
    pool, _ = _pool_and_central(dataset, label_column, feature_range, seed, test_fraction, text, labels)
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
        pool, _ = _pool_and_central(*_source_key(config))
        part = _partitioner(*_source_key(config), spec, num_partitions)
        local = pool.subset(partition_indices(part, partition_id))
    data = _split_local(local, rng)
    if config.audit_canaries:  # a holder's own setting (never the server's): `fedsys audit` only
        return _add_audit_canaries(data, Path(config.audit_canaries), partition_id)
    return data


def _add_audit_canaries(data: ClientData, path: Path, partition_id: int) -> ClientData:
    """Append this holder's included audit canaries (:mod:`fedsys.audit.canaries`) to its training split."""
    from fedsys.audit.canaries import CanarySet, with_canaries

    return ClientData(train=with_canaries(data.train, CanarySet.load(path), partition_id), test=data.test)


def _source_key(
    config: RunConfig,
) -> tuple[str, str, FeatureRange | None, int, float, TextConfig, tuple[str, ...]]:
    return (
        config.dataset,
        config.label_column,
        config.declared_feature_range(),
        config.seed,
        config.test_fraction,
        config.text,
        config.labels,
    )


def holder_client_data(
    path: Path,
    *,
    label_column: str,
    num_classes: int,
    feature_range: FeatureRange | None,
    seed: int = 0,
) -> ClientData:
    """A real data holder's local data from its own file, scaled with its own declared range.

    Raises:
        ConfigError: the holder declared no ``feature-range``.
    """
    local = load_scaled_file(
        path, label_column=label_column, feature_range=feature_range, num_classes=num_classes
    )
    return _split_local(local, np.random.default_rng([seed, 3]))


def _split_local(local: ArrayDataset, rng: np.random.Generator) -> ClientData:
    if len(local) < 2:
        raise DataError(f"a client's partition holds {len(local)} example(s); it needs at least 2")
    train, test = local.split(LOCAL_TEST_FRACTION, rng)
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
        _, data = _pool_and_central(*_source_key(config))
    return data


def data_signature(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """``(feature_shape, num_classes)`` of the scenario's data, to size the model."""
    data = central_test_data(config)
    return data.feature_shape, data.num_classes


def check_model_on_data(model: nn.Module, config: RunConfig) -> None:
    """Run ``model`` on two central test examples, so that a model that does not fit the data
    (its shape or dtype, token ids beyond its vocabulary) fails before any round, not at every client.

    Raises:
        ConfigError: the forward pass fails.
    """
    import torch

    sample = torch.from_numpy(central_test_data(config).x[:2])
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(sample)
    except Exception as err:  # user code or user data: report it as this scenario's problem
        raise ConfigError(
            f"model {config.model!r} fails on examples of dataset {config.dataset!r} (shape "
            f"{tuple(sample.shape[1:])}): {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(training)


def check_scenario_data(config: RunConfig) -> None:
    """Fail fast, before any process starts, if the scenario's data cannot be loaded or split."""
    central_test_data(config)
    last = config.simulation.num_clients - 1
    for pid in sorted({0, last}):
        simulated_client_data(config, partition_id=pid, num_partitions=config.simulation.num_clients)
