"""PHEW's masks are pinned: the hashes below were computed before ``pruners/phew.py``
was split into a package (issue 13), and must not change for the same inputs and seed.

The cases reach every code path of the walks: the fast whole-kernel draw (ResNet-20),
grouped and depthwise convs (``ResDepthNet``), a Linear reading the flattened
features of a channel (LeNet-5: the structure map), a topology that carries masks
(the walks skip pruned weights), the ``largest`` element mode, and the stall rule
with the deterministic fill. A hash covers every mask's name, shape and bits and the
walk statistics, so a different draw anywhere changes it.
"""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import own_models  # noqa: E402
import topo_pai  # noqa: E402
from topo_pai.models import lenet5, resnet20  # noqa: E402
from topo_pai.pruners.phew import phew_run  # noqa: E402


def _digest(masks, stats) -> str:
    h = hashlib.sha256()
    for name in sorted(masks):
        m = np.asarray(masks[name], dtype=bool)
        h.update(f"{name}:{m.shape}:".encode())
        h.update(np.packbits(m.reshape(-1)).tobytes())
    h.update(repr((stats.walks, stats.forward_walks, stats.backward_walks, stats.stop_reason,
                   stats.added_by_walks, stats.refreshes, stats.steps,
                   sorted(stats.filled.items()), sorted(stats.full_after.items()))).encode())
    return h.hexdigest()[:24]


def _model(name):
    torch.manual_seed(0)
    if name == "resnet20":
        return resnet20(width=8), (3, 32, 32)
    if name == "resdepth":
        return own_models.ResDepthNet(width=6), (3, 8, 8)
    return lenet5(), (1, 28, 28)


def _case(name, density, seed, *, premask=False, **options):
    model, shape = _model(name)
    params = dict(model.named_parameters())
    dense = topo_pai.from_torch(model, None, shape)
    aw = {layer.param: params[layer.param].detach().abs().double().numpy()
          for layer in dense.layers}
    topo = dense
    if premask:  # keep a random 60% of every layer: PHEW may only walk on those
        rng = np.random.default_rng(seed)
        masks = {k: rng.random(v.shape) < 0.6 for k, v in aw.items()}
        topo = topo_pai.from_torch(model, masks, shape)
        allowed = {k: int(m.sum()) for k, m in masks.items()}
        budgets = {k: int(round(n * density)) for k, n in allowed.items()}
    else:
        budgets = {k: int(round(v.size * density)) for k, v in aw.items()}
    masks, stats = phew_run(topo, aw, budgets, seed, **options)
    assert {k: int(m.sum()) for k, m in masks.items()} == budgets
    return _digest(masks, stats)


# (model, density, seed, options) -> digest, computed on main at 5ca9c63 (before the split)
PINNED = [
    (("resnet20", 0.1, 0, {}), "ec032943b44b2847879341b2"),
    (("resnet20", 0.02, 7, {}), "bea3a3dfb230ee451a277b65"),
    (("resdepth", 0.3, 1, {}), "80f9b486187f00860b23d281"),
    (("lenet5", 0.05, 2, {}), "b47946d12e1122cb85e57004"),
    (("resdepth", 0.5, 3, {"element": "largest"}), "91c8033ee06a21896a1c5237"),
    (("resnet20", 0.2, 4, {"premask": True}), "a4dce10166f8ce4700ac0a43"),
    (("lenet5", 0.9, 5, {"stall_window": 20, "min_yield": 0.5}), "d66bc4f716f62af12b907a17"),
]


@pytest.mark.parametrize("case,digest", PINNED, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c, _ in PINNED])
def test_phew_masks_are_pinned(case, digest):
    name, density, seed, options = case
    assert _case(name, density, seed, **options) == digest
