"""Model zoo. Every model is Opacus-compatible: GroupNorm instead of BatchNorm, and no
in-place activations (they break Opacus' per-sample gradient hooks).

``tanh-mlp`` and ``tanh-cnn`` are ``mlp`` and ``cnn`` with tanh, a tempered sigmoid
(Papernot et al., "Tempered Sigmoid Activations for Deep Learning with Differential
Privacy", AAAI 2021): bounded activations keep activations, and so per-sample gradient
norms, from exploding, so DP-SGD's clipping and noise destroy less signal; they report tanh
beating ReLU under DP-SGD on MNIST, FashionMNIST and CIFAR-10. Without DP, ReLU is the
usual choice.

``lstm`` and ``transformer`` classify token sequences (:mod:`fedsys.models.sequence`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedsys.errors import ConfigError
from fedsys.models.sequence import lstm, transformer

Activation = Callable[[], nn.Module]

CNN_CHANNELS = (16, 32)
CNN_HEAD = 32  # hidden units of the CNN's head, as in Papernot et al. 2021's MNIST network


def _flat_dim(feature_shape: tuple[int, ...]) -> int:
    return int(math.prod(feature_shape))


def logistic_regression(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(feature_shape), num_classes))


def mlp(
    feature_shape: tuple[int, ...], num_classes: int, hidden: int = 128, activation: Activation = nn.ReLU
) -> nn.Module:
    """Two hidden layers with ReLU (or ``activation``)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_dim(feature_shape), hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, num_classes),
    )


def tanh_mlp(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``mlp`` with tanh activations (Papernot et al. 2021)."""
    return mlp(feature_shape, num_classes, activation=nn.Tanh)


def _pooled(size: int) -> int:
    """Side length after two 2x2 max-pools with ``ceil_mode``: 28 -> 14 -> 7, 8 -> 4 -> 2."""
    return -(-size // 4)


def _conv_block(in_channels: int, out_channels: int, activation: Activation) -> list[nn.Module]:
    """3x3 conv, GroupNorm, activation, then a 2x2 max-pool that halves the side (rounding up)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(4, out_channels),
        activation(),
        nn.MaxPool2d(2, ceil_mode=True),
    ]


class SmallCNN(nn.Module):
    """Two conv-GroupNorm-act-maxpool blocks (28x28 -> 7x7), then a one-hidden-layer head.

    For ``C x H x W`` inputs of any size (8x8 digits become 2x2 before the head). About 55k
    parameters for 1x28x28, most in the head's first layer. Plain SGD at lr 0.3 (tuned for
    the MLP on digits) can silence all 32 hidden ReLUs for some seeds; lr <= 0.2 trained it.
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_classes: int,
        *,
        activation: Activation = nn.ReLU,
        name: str = "cnn",
    ) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ConfigError(f"model {name!r} needs image inputs C x H x W, got shape {feature_shape}")
        channels, height, width = feature_shape
        first, second = CNN_CHANNELS
        self.features = nn.Sequential(
            *_conv_block(channels, first, activation), *_conv_block(first, second, activation)
        )
        self.head = nn.Sequential(
            nn.Linear(second * _pooled(height) * _pooled(width), CNN_HEAD),
            activation(),
            nn.Linear(CNN_HEAD, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return out


def tanh_cnn(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``cnn`` with tanh activations (Papernot et al. 2021)."""
    return SmallCNN(feature_shape, num_classes, activation=nn.Tanh, name="tanh-cnn")


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": logistic_regression,
    "mlp": mlp,
    "cnn": SmallCNN,
    "tanh-mlp": tanh_mlp,
    "tanh-cnn": tanh_cnn,
    "lstm": lstm,
    "transformer": transformer,
}
