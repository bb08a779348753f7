"""ResNets in plain torch.

* ``resnet20/32/56``: the CIFAR ResNets of He et al. (2016), three stages of
  basic blocks with 16/32/64 channels and 1x1 projection shortcuts where the
  shape changes (the convention of the lottery-ticket and NPB code bases).
* ``resnet18``: the ImageNet ResNet-18 with a 3x3 stride-1 stem and no stem
  max-pool, as used for 64x64 Tiny-ImageNet inputs.
* ``resnet50``: the ImageNet ResNet-50 with bottleneck blocks (stride on the
  3x3 conv, as in torchvision's v1.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from topo_pai.models._common import check_input_size, check_positive_int


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Three-stage ResNet for small images (depth = 6n + 2).

    The global average pool makes the classifier independent of the input
    size; ``input_size`` is only checked to be at least 4, the smallest size
    at which both stride-2 stages still halve a map (the last stage then works
    on 1x1 maps).
    """

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 *, input_size=32):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth!r}")
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        try:
            width = check_positive_int("width", width)
        except ValueError as exc:
            raise ValueError(f"{exc} (the first stage's channels, default 16: not a "
                             "multiplier as for the LeNets and Conv-N)") from None
        check_input_size(input_size, 4, f"resnet{depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks = []
        in_planes = width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = torch.flatten(out, 1)
        return self.fc(out)


class ImageNetResNet(nn.Module):
    """Four-stage ResNet; ``small_stem`` uses a 3x3 stride-1 stem without max-pool.

    The classifier follows a global average pool, so any input size works;
    ``input_size`` is checked to be at least the total stride (8 with the
    small stem, 32 with the ImageNet stem), below which some stride-2 layer
    would no longer halve its map.
    """

    def __init__(self, block, layers, in_channels: int = 3, num_classes: int = 1000,
                 small_stem: bool = False, *, input_size=224, name: str = "this ResNet"):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        check_input_size(input_size, 8 if small_stem else 32, name)
        if small_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1))
        in_planes = 64
        stages = []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for b in range(count):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16, *,
             input_size=32) -> CifarResNet:
    """ResNet-20 (CIFAR); ``width`` is the first stage's channel count (16).

    Examples
    --------
    >>> import torch
    >>> resnet20(in_channels=1, input_size=8)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    return CifarResNet(20, in_channels, num_classes, width, input_size=input_size)


def resnet32(in_channels: int = 3, num_classes: int = 10, width: int = 16, *,
             input_size=32) -> CifarResNet:
    """ResNet-32 (CIFAR); ``width`` is the first stage's channel count (16)."""
    return CifarResNet(32, in_channels, num_classes, width, input_size=input_size)


def resnet56(in_channels: int = 3, num_classes: int = 10, width: int = 16, *,
             input_size=32) -> CifarResNet:
    """ResNet-56 (CIFAR); ``width`` is the first stage's channel count (16)."""
    return CifarResNet(56, in_channels, num_classes, width, input_size=input_size)


def resnet18(in_channels: int = 3, num_classes: int = 200, *, input_size=64) -> ImageNetResNet:
    """ResNet-18 with a 3x3 stride-1 stem (Tiny-ImageNet style); ``input_size`` >= 8."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, small_stem=True,
                          input_size=input_size, name="resnet18")


def resnet50(in_channels: int = 3, num_classes: int = 1000, *, input_size=224) -> ImageNetResNet:
    """ResNet-50 (ImageNet stem, bottlenecks); ``input_size`` >= 32.

    Examples
    --------
    >>> resnet50(input_size=16)
    Traceback (most recent call last):
    ...
    ValueError: input_size=16 is too small for resnet50: height and width must be at least 32
    """
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes,
                          input_size=input_size, name="resnet50")
