"""User model factories for the model-factory tests, imported by ``fixtures_models:<name>``."""

import math
from collections import OrderedDict

from torch import nn

NOT_CALLABLE = 3


def tanh_net(feature_shape, num_classes):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(feature_shape), 8), nn.Tanh(), nn.Linear(8, num_classes)
    )


def bn_net(feature_shape, num_classes):
    return nn.Sequential(
        OrderedDict(
            flat=nn.Flatten(),
            fc=nn.Linear(math.prod(feature_shape), 16),
            bn=nn.BatchNorm1d(16),
            act=nn.Tanh(),
            out=nn.Linear(16, num_classes),
        )
    )


def inplace_bn_cnn(feature_shape, num_classes):
    channels, height, width = feature_shape
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(channels, 4, kernel_size=3, padding=1),
            bn=nn.BatchNorm2d(4),
            act=nn.ReLU(inplace=True),
            flat=nn.Flatten(),
            out=nn.Linear(4 * height * width, num_classes),
        )
    )


def not_a_module(feature_shape, num_classes):
    return "a model"


def broken(feature_shape, num_classes):
    raise RuntimeError("this net needs images")
