"""SynFlow as published: our single-shot masks against an independent float64 torch SynFlow.

The oracle follows Tanaka et al. (2020) and the Synaptic-Flow code: the model in float64
and eval mode, every weight replaced by ``|w|``, one all-ones input, ``R = sum(outputs)``,
score ``|w * dR/dw|``, one global threshold. Two choices make it an *exact* oracle of our
bias-free semantics (biases and normalisation layers carry no flow):

* biases are zeroed (the published code takes ``|b|``, which adds flow that starts at a bias);
* each BatchNorm gets ``eps = 0``: with fresh statistics (mean 0, variance 1, weight 1,
  bias 0; unchanged by ``|.|``) an eval-mode BatchNorm is then exactly the identity. With
  the default ``eps`` it multiplies by ``1/sqrt(1 + 1e-5)``, once per BatchNorm on a path,
  which reweights residual branches against shortcuts by ~1e-5.

With non-negative weights and an all-ones input every ReLU is the identity, and ResNet-20's
global average pool divides every path by the same 64, which rescales all scores alike.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from torch import nn

from topo_pai.models import resnet20
from topo_pai.pruners import n_keep, prune_with_scores

SHAPE = (3, 32, 32)


def float64_synflow_scores(model, shape):
    """``|w| * dR/d|w|`` of every Linear/Conv weight (see the module docstring)."""
    net = copy.deepcopy(model).double().eval()
    leaves = {}
    with torch.no_grad():
        for name, mod in net.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eps = 0.0
                mod.running_mean.abs_()
                mod.running_var.abs_()
                mod.weight.abs_()
                mod.bias.abs_()
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                mod.weight.abs_()
                if mod.bias is not None:
                    mod.bias.zero_()
                leaves[f"{name}.weight"] = mod.weight
    for p in net.parameters():
        p.requires_grad_(False)
    for w in leaves.values():
        w.requires_grad_(True)
    net(torch.ones((1,) + tuple(shape), dtype=torch.float64)).sum().backward()
    return {k: (w.grad * w).detach().abs().numpy() for k, w in leaves.items()}


def global_top(scores, sparsity):
    names = list(scores)
    flat = np.concatenate([scores[k].ravel() for k in names])
    keep = n_keep(flat.size, sparsity)
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(-flat, kind="stable")[:keep]] = True
    out, start = {}, 0
    for k in names:
        out[k] = chosen[start:start + scores[k].size].reshape(scores[k].shape)
        start += scores[k].size
    return out, flat


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_single_shot_masks_equal_float64_torch_synflow(sparsity):
    torch.manual_seed(0)
    model = resnet20(width=8)  # BatchNorm after every conv, projection shortcuts
    ref, flat = global_top(float64_synflow_scores(model, SHAPE), sparsity)
    kth = np.sort(flat)[::-1][n_keep(flat.size, sparsity) - 1:][:2]
    assert kth[0] > kth[1]  # no tie at the threshold: the oracle's mask is unique
    ours = prune_with_scores(model, "synflow", sparsity, input_shape=SHAPE, rounds=1)
    assert set(ours.masks) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ours.masks[k].numpy(), ref[k], err_msg=k)


def test_channel_resolution_is_a_different_method():
    """The channel variant scores kernels by the channel graph's flow: its single-shot
    masks differ from the published method's (the reason it is not the default)."""
    torch.manual_seed(0)
    model = resnet20(width=8)
    ref, _ = global_top(float64_synflow_scores(model, SHAPE), 0.99)
    ch = prune_with_scores(model, "synflow", 0.99, input_shape=SHAPE, rounds=1,
                           resolution="channel")
    differ = sum(int((ch.masks[k].numpy() != ref[k]).sum()) for k in ref)
    assert differ > 0
