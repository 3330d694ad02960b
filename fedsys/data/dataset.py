"""In-memory labelled arrays: the one data type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedsys.errors import DataError


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, ``N x feature_shape``) and labels ``y`` (int64, ``N``)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"features and labels differ in length: {len(self.x)} != {len(self.y)}")
        if self.num_classes < 2:
            raise DataError(f"need at least 2 classes, got {self.num_classes}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at ``indices``."""
        return ArrayDataset(self.x[indices], self.y[indices], self.num_classes)

    def to_torch(self) -> TensorDataset:
        """A ``TensorDataset`` sharing memory with the arrays."""
        return TensorDataset(torch.from_numpy(self.x), torch.from_numpy(self.y))

    def split(self, test_fraction: float, rng: np.random.Generator) -> tuple[ArrayDataset, ArrayDataset]:
        """Shuffle and split into ``(train, test)``; both keep at least one example."""
        if len(self) < 2:
            raise DataError(f"cannot split {len(self)} example(s) into train and test")
        order = rng.permutation(len(self))
        n_test = min(max(1, round(len(self) * test_fraction)), len(self) - 1)
        return self.subset(order[n_test:]), self.subset(order[:n_test])
