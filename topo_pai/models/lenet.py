"""LeNet-300-100 and LeNet-5 in plain torch.

* ``lenet_300_100``: the fully connected network of LeCun et al. (1998) used
  throughout the pruning literature (Han et al. 2015; Frankle & Carbin 2019):
  flatten, 300 and 100 hidden ReLU units, one output per class.
* ``lenet5``: the convolutional LeNet-5 with ReLU and max-pooling (the modern
  reading of the original tanh/subsampling net): conv5x5(6), pool, conv5x5(16),
  pool, fc120, fc84, classes.
"""

from __future__ import annotations

import torch
from torch import nn

from topo_pai.models._common import check_input_size, check_positive_int, check_width, scaled


class LeNet300100(nn.Module):
    """Fully connected ``C*H*W -> 300w -> 100w -> num_classes`` with ReLU."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size=28,
                 width: float = 1.0):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        h, w = check_input_size(input_size, 1, "lenet_300_100")
        width = check_width(width)
        h1, h2 = scaled(300, width), scaled(100, width)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * h * w, h1)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(h1, h2)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


def _lenet5_geometry(size: int) -> tuple[int, int]:
    """Padding of conv2 and the final map size along one spatial axis.

    conv1 is 'same'-padded (padding 2), so a 28x28 input reaches conv2 as a
    14x14 map exactly like the classic unpadded net on 32x32. conv2 stays
    unpadded (classic) when its input is at least 6 wide; on smaller inputs
    (e.g. the 8x8 digits) it is 'same'-padded so the second pool still has a
    map to pool.
    """
    s1 = size // 2
    pad2 = 0 if s1 >= 6 else 2
    return pad2, (s1 - 4 + 2 * pad2) // 2


class LeNet5(nn.Module):
    """LeNet-5: conv5x5(6w), pool, conv5x5(16w), pool, fc120w, fc84w, classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size=28,
                 width: float = 1.0):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes)
        h, w = check_input_size(input_size, 4, "lenet5")
        width = check_width(width)
        c1, c2, f1, f2 = (scaled(c, width) for c in (6, 16, 120, 84))
        (ph, oh), (pw, ow) = _lenet5_geometry(h), _lenet5_geometry(w)
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=(ph, pw))
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * oh * ow, f1)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(f1, f2)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc3(self.relu4(self.fc2(x)))


def lenet_300_100(in_channels: int = 1, num_classes: int = 10, input_size=28,
                  width: float = 1.0) -> LeNet300100:
    """LeNet-300-100: a 300-100 ReLU MLP on the flattened image.

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and number of classes.
    input_size : int or (int, int)
        Spatial input size; fixes the width of the first layer (``C*H*W``).
    width : float
        Multiplier of the hidden widths (300 and 100), rounded, at least 1.

    Examples
    --------
    >>> import torch
    >>> net = lenet_300_100()
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> net.fc1.weight.shape, lenet_300_100(width=0.5).fc2.weight.shape
    (torch.Size([300, 784]), torch.Size([50, 150]))
    """
    return LeNet300100(in_channels, num_classes, input_size, width)


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size=28,
           width: float = 1.0) -> LeNet5:
    """LeNet-5 with ReLU and max-pooling.

    conv1 is padded to keep the input size, so on 28x28 the classifier sees
    16x5x5 features as the classic design does on 32x32. Any input of at
    least 4x4 works: inputs smaller than 12 also pad conv2 (see
    ``_lenet5_geometry``).

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and number of classes.
    input_size : int or (int, int)
        Spatial input size (at least 4); fixes the width of fc1.
    width : float
        Multiplier of all hidden widths (6, 16, 120, 84), rounded, at least 1.

    Examples
    --------
    >>> import torch
    >>> net = lenet5()
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> net.fc1.in_features  # 16 x 5 x 5, as LeNet-5 on 32x32
    400
    >>> lenet5(input_size=8, width=0.5)(torch.zeros(1, 1, 8, 8)).shape
    torch.Size([1, 10])
    """
    return LeNet5(in_channels, num_classes, input_size, width)
