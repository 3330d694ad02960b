"""Split a data set across clients with flwr-datasets partitioners.

Specs: ``iid``, ``dirichlet:ALPHA`` (label skew), ``shards:K`` (pathological: K classes
per client). The partitioners see only an index column and the labels, so partitioning
costs no copy of the features. Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

from fedsys.errors import DataError


def make_partitioner(spec: str, *, num_partitions: int, labels: np.ndarray, seed: int) -> object:
    """A flwr-datasets partitioner bound to a (index, label) table of ``labels``."""
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if 2 * num_partitions > len(labels):
        raise DataError(
            f"data set of {len(labels)} training examples is too small for "
            f"{num_partitions} clients (each client needs at least 2 for a local train/test split)"
        )
    kind, _, arg = spec.partition(":")
    partitioner: IidPartitioner | DirichletPartitioner | PathologicalPartitioner
    if kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(arg),
            min_partition_size=min(10, len(labels) // num_partitions),
            self_balancing=True,
            seed=seed,
        )
    elif kind == "shards":
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=int(arg),
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    else:
        raise DataError(f"partition {spec!r} does not apply to this data set")
    table = datasets.Dataset.from_dict({"idx": np.arange(len(labels)), "label": labels.tolist()})
    partitioner.dataset = table
    return partitioner


def partition_indices(partitioner: object, partition_id: int) -> np.ndarray:
    """Row indices of one partition; a partitioner that cannot satisfy its spec is a DataError."""
    try:
        part = partitioner.load_partition(partition_id)  # type: ignore[attr-defined]
    except ValueError as err:
        raise DataError(f"cannot partition the data as asked: {err}") from err
    return np.asarray(part["idx"], dtype=np.int64)
