"""The Conv-2/4/6 networks of the lottery-ticket paper (Frankle & Carbin, 2019).

VGG-like stacks of 3x3 convolutions (padding 1, ReLU) with a 2x2 max-pool
after every pair, followed by two 256-unit ReLU layers and the classifier:

* Conv-2: ``64, 64, pool`` + fc256, fc256, classes
* Conv-4: ``64, 64, pool, 128, 128, pool`` + fc256, fc256, classes
* Conv-6: ``64, 64, pool, 128, 128, pool, 256, 256, pool`` + fc256, fc256, classes

``width`` scales every hidden width (conv channels and the two fc layers) so
the same architectures can be trained on a small CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from topo_pai.models._common import check_input_size, check_positive_int, check_width, scaled

_CONFIGS = {
    2: (64, 64, "M"),
    4: (64, 64, "M", 128, 128, "M"),
    6: (64, 64, "M", 128, 128, "M", 256, 256, "M"),
}


class ConvNet(nn.Module):
    """Conv-``depth`` (2, 4 or 6 conv layers) with a three-layer fc head."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, input_size=32,
                 width: float = 1.0):
        super().__init__()
        if depth not in _CONFIGS:
            raise ValueError(f"depth must be one of {sorted(_CONFIGS)}, got {depth!r}")
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        n_pools = _CONFIGS[depth].count("M")
        h, w = check_input_size(input_size, 2 ** n_pools, f"conv{depth}")
        width = check_width(width)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
                continue
            out = scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        hidden = scaled(256, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * h * w, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv2(in_channels: int = 3, num_classes: int = 10, input_size=32,
          width: float = 1.0) -> ConvNet:
    """Conv-2 (Frankle & Carbin 2019); ``input_size`` at least 2.

    Examples
    --------
    >>> import torch
    >>> conv2(in_channels=1, input_size=28, width=0.25)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    return ConvNet(2, in_channels, num_classes, input_size, width)


def conv4(in_channels: int = 3, num_classes: int = 10, input_size=32,
          width: float = 1.0) -> ConvNet:
    """Conv-4 (Frankle & Carbin 2019); ``input_size`` at least 4.

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and number of classes.
    input_size : int or (int, int)
        Spatial input size; fixes the width of the first fc layer.
    width : float
        Multiplier of the conv channels (64, 128) and fc widths (256).

    Examples
    --------
    >>> import torch
    >>> net = conv4()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> net.classifier[1].in_features  # 128 channels x 8 x 8
    8192
    """
    return ConvNet(4, in_channels, num_classes, input_size, width)


def conv6(in_channels: int = 3, num_classes: int = 10, input_size=32,
          width: float = 1.0) -> ConvNet:
    """Conv-6 (Frankle & Carbin 2019); ``input_size`` at least 8.

    Examples
    --------
    >>> import torch
    >>> net = conv6(in_channels=1, num_classes=3, input_size=28, width=0.125)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 3])
    >>> net.classifier[1].in_features  # 32 channels x 3 x 3 (28 -> 14 -> 7 -> 3)
    288
    """
    return ConvNet(6, in_channels, num_classes, input_size, width)
