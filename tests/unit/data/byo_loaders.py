"""Users' data loaders for the loader tests, imported as ``byo_loaders:<name>``."""

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

CALLS = {"count": 0}
NOT_CALLABLE = 3


def blobs():
    """120 points of 3 well-separated classes in 4-d, as NumPy arrays."""
    CALLS["count"] += 1
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    return rng.normal(labels[:, None] * 3.0, 0.5, size=(120, 4)), labels


def tensors():
    x, y = blobs()
    return torch.from_numpy(x), torch.from_numpy(y)


class Images(Dataset):
    """A map-style dataset of (1 x 4 x 4 image, label) pairs, like torchvision's."""

    def __len__(self):
        return 30

    def __getitem__(self, index):
        return torch.full((1, 4, 4), index / 30.0), index % 2


def images():
    return Images()


def pixels():
    """8-bit pixels: a public range of 0..255 to be declared in the scenario."""
    return np.array([[0.0, 255.0], [51.0, 300.0], [255.0, 0.0]]), np.array([0, 1, 0])


def ragged_dataset():
    return [(np.zeros(2), 0), (np.zeros(3), 1)]


class Ragged(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return np.zeros(2 + index), 0


class Stream(IterableDataset):
    def __iter__(self):
        yield np.zeros(2), 0


def ragged():
    return Ragged()


def stream():
    return Stream()


def nan_features():
    return np.array([[0.0], [np.nan]]), np.array([0, 1])


def float_labels():
    return np.zeros((3, 2)), np.array([0.0, 0.5, 1.0])


def too_few_labels():
    return np.zeros((3, 2)), np.array([0, 1])


def flat_features():
    return np.zeros(3), np.array([0, 1, 0])


def strings():
    return np.array([["a"], ["b"]]), np.array([0, 1])


def broken():
    raise FileNotFoundError("/data/site.csv")
