"""A user's model factory for the end-to-end test, imported by the Ray workers as
``tests.integration.byo_models:bn_cnn`` (Ray puts the driver's working directory on their path)."""

from collections import OrderedDict

from torch import nn

CHANNELS = 8


def bn_cnn(feature_shape, num_classes):
    """Conv, BatchNorm (which --fix-model turns into GroupNorm), tanh, pool, linear head."""
    channels, height, width = feature_shape
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(channels, CHANNELS, kernel_size=3, padding=1),
            bn=nn.BatchNorm2d(CHANNELS),
            act=nn.Tanh(),
            pool=nn.MaxPool2d(2),
            flat=nn.Flatten(),
            out=nn.Linear(CHANNELS * (height // 2) * (width // 2), num_classes),
        )
    )
