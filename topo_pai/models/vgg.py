"""CIFAR-style VGG networks in plain torch (3x3 convs, max-pools, one linear head)."""

from __future__ import annotations

import torch
from torch import nn

_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class VGG(nn.Module):
    """VGG with four max-pools, a global average pool and a linear classifier."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10,
                 batch_norm: bool = True):
        super().__init__()
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


def vgg11(in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True) -> VGG:
    return VGG(11, in_channels, num_classes, batch_norm)


def vgg16(in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True) -> VGG:
    return VGG(16, in_channels, num_classes, batch_norm)


def vgg19(in_channels: int = 3, num_classes: int = 100, batch_norm: bool = True) -> VGG:
    return VGG(19, in_channels, num_classes, batch_norm)
