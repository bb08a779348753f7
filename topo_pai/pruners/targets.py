"""The prunable weights of a model: what every pruner and mask helper iterates over."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from topo_pai.errors import NoPrunableLayerError
from topo_pai.graph.modules import check_untied, param_name, prunable_modules, weight_shape


@dataclass(frozen=True)
class Target:
    """One prunable weight: the ``weight`` of a Linear or Conv1d/Conv2d module."""

    param: str  # e.g. "layer1.0.conv1.weight"
    module: str  # e.g. "layer1.0.conv1"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


def prunable_targets(model) -> list[Target]:
    """Prunable weights of ``model`` in ``named_modules`` order."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = prunable_modules(model)
    check_untied(modules)  # tied weights would get one mask per layer: refused, as in from_torch
    out = []
    for name, mod in modules.items():
        out.append(Target(param_name(name), name, tuple(int(s) for s in weight_shape(mod))))
    if not out:
        raise NoPrunableLayerError(
            f"{type(model).__name__} has no Linear or Conv1d/Conv2d layer, so there is no weight "
            "to prune")
    return out
