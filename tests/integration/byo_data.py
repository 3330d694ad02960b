"""A user's data loader for the end-to-end test, imported by the Ray workers as
``tests.integration.byo_data:clusters`` (Ray puts the driver's working directory on their path)."""

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = 3


class Clusters(Dataset):
    """600 points of 3 Gaussian clusters in 8-d, served one (tensor, label) pair at a time."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.labels = np.arange(600) % CLASSES
        centres = rng.normal(0.0, 1.0, size=(CLASSES, 8))
        self.points = centres[self.labels] + rng.normal(0.0, 0.6, size=(600, 8))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.tensor(self.points[index], dtype=torch.float32), int(self.labels[index])


def clusters():
    return Clusters()
