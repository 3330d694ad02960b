"""Model zoo. Every model is Opacus-compatible: GroupNorm instead of BatchNorm, and no
in-place activations (they break Opacus' per-sample gradient hooks)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedsys.errors import ConfigError


def _flat_dim(feature_shape: tuple[int, ...]) -> int:
    return int(math.prod(feature_shape))


def logistic_regression(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(feature_shape), num_classes))


def mlp(feature_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Module:
    """Two hidden layers with ReLU."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_dim(feature_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class SmallCNN(nn.Module):
    """Two conv blocks with GroupNorm, then a linear head; for ``C x H x W`` inputs."""

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ConfigError(f"model 'cnn' needs image inputs C x H x W, got shape {feature_shape}")
        channels, height, width = feature_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.GroupNorm(4, 32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((min(4, height), min(4, width))),
        )
        self.head = nn.Linear(32 * min(4, height) * min(4, width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return out


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": logistic_regression,
    "mlp": mlp,
    "cnn": SmallCNN,
}


def build_model(name: str, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a fresh model by name, sized for the data.

    Raises:
        ConfigError: unknown model name or input shape unsuitable for the model.
    """
    try:
        factory = MODELS[name]
    except KeyError as err:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {name!r}") from err
    return factory(feature_shape, num_classes)
