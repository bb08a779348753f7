"""CIFAR-style VGG networks in plain torch (3x3 convs, max-pools, one linear head)."""

from __future__ import annotations

import torch
from torch import nn

from topo_pai.checks import check_bool
from topo_pai.models._common import check_input_size, check_positive_int

_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class VGG(nn.Module):
    """VGG with four max-pools, a global average pool and a linear classifier.

    The global average pool makes the classifier independent of the input
    size; ``input_size`` must be at least 16 so the fourth 2x2 max-pool still
    has a 2x2 map to pool.
    """

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10,
                 batch_norm: bool = True, *, input_size=32):
        super().__init__()
        if depth not in _CONFIGS:
            raise ValueError(f"depth must be one of {sorted(_CONFIGS)}, got {depth!r}")
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        batch_norm = check_bool("batch_norm", batch_norm)  # "False" is a true string
        check_input_size(input_size, 2 ** _CONFIGS[depth].count("M"), f"vgg{depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True, *,
          input_size=32) -> VGG:
    """VGG-11 (CIFAR style); ``input_size`` >= 16.

    Examples
    --------
    >>> import torch
    >>> vgg11(num_classes=4, input_size=16).eval()(torch.zeros(1, 3, 16, 16)).shape
    torch.Size([1, 4])
    """
    return VGG(11, in_channels, num_classes, batch_norm, input_size=input_size)


def vgg16(in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True, *,
          input_size=32) -> VGG:
    """VGG-16 (CIFAR style); ``input_size`` >= 16."""
    return VGG(16, in_channels, num_classes, batch_norm, input_size=input_size)


def vgg19(in_channels: int = 3, num_classes: int = 100, batch_norm: bool = True, *,
          input_size=32) -> VGG:
    """VGG-19 (CIFAR style); ``input_size`` >= 16."""
    return VGG(19, in_channels, num_classes, batch_norm, input_size=input_size)
