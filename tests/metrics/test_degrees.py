"""Degree statistics (fan-in / fan-out of kept units) in Topology.summary(), against a
plain-loop oracle over the weight elements."""

import numpy as np
import pytest
import torch
from torch import nn

import topo_pai
from topo_pai.metrics.degrees import fan_stats


def _oracle(mask, groups):
    """Loop over every kept weight element: one edge from its input unit to its output unit."""
    mask = np.asarray(mask)
    c_out, per_group = mask.shape[:2]
    fin = [0] * c_out
    fout = [0] * (per_group * groups)
    for idx in zip(*np.nonzero(mask)):
        o, i = int(idx[0]), int(idx[1])
        fin[o] += 1
        fout[(o // (c_out // groups)) * per_group + i] += 1
    out = {}
    for side, fan in (("fan_in", fin), ("fan_out", fout)):
        kept = sorted(v for v in fan if v > 0)
        if not kept:
            out[f"{side}_median"], out[f"{side}_max"] = 0.0, 0
            continue
        mid = len(kept) // 2
        med = kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2
        out[f"{side}_median"], out[f"{side}_max"] = float(med), kept[-1]
    return out


def _net():
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 1, groups=6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


@pytest.mark.parametrize("density", [1.0, 0.3, 0.05])
@pytest.mark.parametrize("resolution", ["channel", "neuron"])
def test_summary_fan_columns_match_oracle(density, resolution):
    torch.manual_seed(0)
    model = _net()
    g = torch.Generator().manual_seed(int(density * 100))
    masks = {n: (torch.rand(p.shape, generator=g) < density).float()
             for n, p in model.named_parameters() if p.dim() > 1}
    topo = topo_pai.from_torch(model, masks, (2, 4, 4))
    s = topo.summary(resolution)
    assert all(s.rows[0][k] is None for k in ("fan_in_median", "fan_out_max"))
    groups = {layer.param: layer.groups for layer in topo.layers}
    for row, layer in zip(s.rows[1:], topo.layers):
        want = _oracle(masks[layer.param].numpy(), groups[layer.param])
        got = {k: row[k] for k in want}
        assert got == want, layer.param
        assert fan_stats(masks[layer.param].numpy(), layer.groups) == want
    text = str(s)
    assert "fan-in med/max" in text and "fan-out med/max" in text


def test_fan_stats_of_an_empty_layer():
    assert fan_stats(np.zeros((3, 4))) == {"fan_in_median": 0.0, "fan_in_max": 0,
                                           "fan_out_median": 0.0, "fan_out_max": 0}
