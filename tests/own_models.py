"""Home-made models, as a user would write them: loaded by the tests as
``tests/own_models.py:NAME`` (a file) and ``own_models:NAME`` (a module)."""

import torch
from torch import nn


class ResDepthNet(nn.Module):
    """Conv + BatchNorm stem, a residual block, a depthwise-separable block, a head."""

    def __init__(self, width: int = 6, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(width)
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.bn3 = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, 2 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        r = torch.relu(self.bn1(self.c1(h)))
        h = torch.relu(self.bn2(self.c2(r)) + h)
        h = torch.relu(self.bn3(self.dw(h)))
        h = torch.relu(self.pw(h))
        return self.fc(torch.flatten(self.pool(h), 1))


class CatNet(nn.Module):
    """Two branches joined by ``torch.cat``, then a conv, max-pool and two Linear layers."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Conv2d(2, width, 3, padding=1)
        self.b = nn.Conv2d(2, width + 1, 1)
        self.bn = nn.BatchNorm2d(2 * width + 1)
        self.c = nn.Conv2d(2 * width + 1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 4 * 4, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        h = torch.relu(self.c(self.bn(h)))
        h = torch.flatten(self.pool(h), 1)
        return self.fc2(torch.relu(self.fc1(h)))


class WithPosition(nn.Module):
    """An MLP with a learned additive input embedding and an attention module it never
    calls: weight tensors no mask covers."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 12))
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 3)
        self.attn = nn.MultiheadAttention(4, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x + self.pos)))


def small_mlp(hidden: int = 5, classes: int = 3):
    """A factory function (not a class) with arguments."""
    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, classes))


NOT_A_MODEL = 3


def returns_a_number():
    return 4
