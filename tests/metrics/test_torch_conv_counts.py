"""Middling-density conv layers counted by torch's float64 convolutions (``engine="auto"``).

``TorchConvCounts`` computes the unit-weight products of the conv layers whose cost model
prefers a dense product to the complement kernels. Its forward and transpose (plain
``conv2d_input``, the 1x1 matrix product and the flipped forward conv) are checked
against exact Python-int convs on every geometry the oracles draw, with inputs spanning
60 binary orders of magnitude and masks that keep only the weakest paths; the engine
with every conv layer routed to it, against the explicit-graph DP oracle; and the
choice, against its cost model.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import topo_pai
from topo_pai.kernels import reference as R
from topo_pai.metrics import torch_neuron as T
from topo_pai.metrics.neuron import NeuronEngine

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O
from test_against_oracles import check_against_dp
from test_complement import (
    SETTINGS,
    WEAK_SHAPE,
    WEAK_SPEC,
    _assert_close_to_exact,
    _exact_ints,
    _near_one_masks,
    geometries,
    near_full_masks,
)


def _every_layer(program, layer_masks, shared):
    """A TorchConvCounts that takes every conv layer (its cost model switched off)."""
    return T.TorchConvCounts(program, layer_masks, shared, min_share=0.0, element_work=0.0,
                             layer_work=0.0)


def _single_conv(C, O_, k, stride, pad, dil, groups, H, W, mask):
    model = nn.Conv2d(C, O_, k, stride=stride, padding=pad, dilation=dil, groups=groups,
                      bias=False)
    topo = topo_pai.from_torch(model, {"weight": torch.as_tensor(mask, dtype=torch.float32)},
                               input_shape=(C, H, W), engine="numba")
    eng = topo.engine("neuron")
    counts = _every_layer(eng.program, eng.layer_masks, {})
    return counts, eng.graph.plan(0)


def _route(counts, layer: int) -> str:
    geo = counts._geometry(layer)
    return "pointwise" if geo.pointwise else "flipped" if geo.flips else "input gradient"


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_products_match_exact_convs(data):
    """Forward and transpose (plus a base), on inputs whose channels differ by up to
    2**60, against Python-int convs: within the complement's tolerance (they are direct
    sums, far tighter), and zero exactly where the count is."""
    C, O_, k, stride, pad, dil, groups, H, W = data.draw(geometries(), label="geometry")
    exps = np.array(data.draw(st.lists(st.sampled_from([0, 0, 30, 60]), min_size=C,
                                       max_size=C), label="input exponents"))
    mask = data.draw(near_full_masks((O_, C // groups, k, k), exps >= 30), label="mask")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="values"))
    counts, plan = _single_conv(C, O_, k, stride, pad, dil, groups, H, W, mask)
    x = rng.integers(0, 4, (C, H, W)) * np.exp2(exps)[:, None, None]
    x_in = x.reshape(-1).copy()
    out = counts.forward(0, x_in)
    assert (x_in == x.reshape(-1)).all()  # the input is not touched
    want = R.conv_forward(_exact_ints(x), mask, groups, plan.stride, plan.pad, plan.dilation,
                          (plan.OH, plan.OW))
    _assert_close_to_exact(out, want, "forward")

    g = rng.integers(0, 4, (O_, plan.OH, plan.OW)) * np.exp2(
        np.array(data.draw(st.lists(st.sampled_from([0, 0, 30, 60]), min_size=O_,
                                    max_size=O_), label="output exponents")))[:, None, None]
    want_t = R.conv_backward(_exact_ints(g), mask, groups, plan.stride, plan.pad, plan.dilation,
                             (C, H, W))
    _assert_close_to_exact(counts.backward(0, g.reshape(-1)), want_t,
                           f"backward ({_route(counts, 0)})")
    base = rng.integers(0, 3, C * H * W).astype(np.float64)
    with_base = counts.backward(0, g.reshape(-1), base.copy())
    _assert_close_to_exact(with_base, want_t.reshape(-1) + _exact_ints(base), "backward + base")


@pytest.mark.parametrize("geometry, route", [
    ((6, 5, 1, 1, 0, 1, 1, 7, 6), "pointwise"),
    ((6, 5, 3, 1, 1, 1, 1, 7, 6), "flipped"),
    ((6, 5, 3, 1, 0, 2, 1, 9, 8), "flipped"),          # valid conv, dilated
    ((6, 5, 3, 1, 2, 1, 1, 7, 6), "flipped"),          # 'full' padding: reach 2
    ((6, 5, 3, 1, 3, 1, 1, 7, 6), "input gradient"),   # padding past the reach
    ((6, 4, 3, 1, 1, 1, 2, 7, 6), "input gradient"),   # groups
    ((6, 5, 3, 2, 1, 1, 1, 8, 7), "input gradient"),   # stride 2 (asymmetric padding)
    ((6, 5, 1, 2, 0, 1, 1, 8, 8), "input gradient"),   # strided 1x1
])
def test_each_transpose_route(geometry, route):
    """Every route of the transpose, named, on a random half-density mask."""
    C, O_, k, stride, pad, dil, groups, H, W = geometry
    rng = np.random.default_rng(sum(geometry))
    mask = (rng.random((O_, C // groups, k, k)) < 0.5).astype(np.uint8)
    counts, plan = _single_conv(C, O_, k, stride, pad, dil, groups, H, W, mask)
    assert _route(counts, 0) == route
    g = rng.integers(0, 5, (O_, plan.OH, plan.OW)).astype(np.float64)
    want = R.conv_backward(_exact_ints(g), mask, groups, plan.stride, plan.pad, plan.dilation,
                           (C, H, W))
    got = counts.backward(0, g.reshape(-1))
    assert np.array_equal(got.reshape(want.shape), want.astype(np.float64))  # small ints: exact


def _route_everything(monkeypatch):
    monkeypatch.setattr(T, "TORCH_COUNT_MIN_SHARE", 0.0)
    monkeypatch.setattr(T, "TORCH_COUNT_ELEMENT_WORK", 0.0)
    monkeypatch.setattr(T, "TORCH_COUNT_LAYER_WORK", 0.0)


def _half_masks(model, rng):
    return {name: torch.as_tensor((rng.random(p.shape) < rng.uniform(0.3, 0.7))
                                  .astype(np.float32))
            for name, p in model.named_parameters() if p.dim() > 1}


@settings(max_examples=20, **SETTINGS)
@given(st.data())
def test_routed_engine_matches_dp(monkeypatch, data):
    """engine="auto" with every conv layer on torch: counts, reachability, effective
    nodes and parameters against the DP oracle, at middling densities and near one."""
    spec, shape = data.draw(O.specs(kinds=("conv2d", "conv1d")), label="spec")
    model = O.build_torch(spec, shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="mask seed"))
    masks = (_half_masks(model, rng) if data.draw(st.booleans(), label="half")
             else _near_one_masks(model, rng, weakest=True))
    with monkeypatch.context() as mp:
        _route_everything(mp)
        topo = topo_pai.from_torch(model, masks, input_shape=shape)
        check_against_dp(topo, spec, shape, masks, resolutions=("neuron",))
        graph = topo.engine("neuron").graph
        for i, layer in enumerate(topo.program.layers):
            if layer.kind != "Linear" and graph.dense(i) is not None:
                assert graph._dense_product(i)


def test_weakest_paths_through_a_model_match_dp(monkeypatch):
    """Counts past 2**53 on a full branch beside a head that keeps only weak paths."""
    model = O.build_torch(WEAK_SPEC, WEAK_SHAPE)
    masks = {n: torch.ones(p.shape) for n, p in model.named_parameters() if p.dim() > 1}
    head = list(masks)[-1]
    masks[head][0, :4] = 0
    masks[head][2, :4] = 0
    masks[head][2, 4:, 1, 1] = 0
    _route_everything(monkeypatch)
    topo = topo_pai.from_torch(model, masks, input_shape=WEAK_SHAPE)
    check_against_dp(topo, WEAK_SPEC, WEAK_SHAPE, masks, resolutions=("neuron",))
    assert topo.engine("neuron").graph._dense_product(len(topo.program.layers) - 1)


def test_the_choice_follows_the_cost_model():
    """Torch takes a conv where ``min(kept, pruned) * positions`` reaches
    ``TORCH_COUNT_MIN_SHARE * elements * positions + TORCH_COUNT_ELEMENT_WORK * elements
    + TORCH_COUNT_LAYER_WORK``: a large half-dense conv over many positions, not one near
    density one, not a small one, not one over a few positions, never a Linear;
    engine="numba" and weighted flows never."""
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),   # 64x64, half
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),   # 64x64, 0.95
                          nn.Conv2d(32, 4, 1), nn.ReLU(),               # 64x64, half, small
                          nn.AdaptiveAvgPool2d(2),
                          nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(),    # 2x2, half
                          nn.Flatten(), nn.Linear(128, 10))             # half
    rng = np.random.default_rng(1)
    density = {"0.weight": 0.5, "2.weight": 0.95, "4.weight": 0.5, "7.weight": 0.5,
               "10.weight": 0.5}
    masks = {}
    for name, d in density.items():
        shape = dict(model.named_parameters())[name].shape
        m = np.zeros(int(np.prod(shape)), dtype=np.float32)
        m[rng.permutation(m.size)[:round(d * m.size)]] = 1  # exactly that density
        masks[name] = torch.as_tensor(m.reshape(shape))
    input_shape = (32, 64, 64)
    topo = topo_pai.from_torch(model, masks, input_shape=input_shape)
    eng = topo.engine("neuron")
    assert isinstance(eng, T.AutoNeuronEngine)
    assert [eng.graph._dense_product(i) for i in range(4)] == [True, False, False, False]
    assert not eng.graph.dense_products.takes(4)  # the Linear
    for i in range(5):  # the model of the choice, layer by layer
        lm = eng.layer_masks[i]
        positions = np.prod(topo.program.values[topo.program.layer_ops[i].output][1:])
        modelled = (min(lm.unpruned, lm.mask.size - lm.unpruned) * positions
                    >= (T.TORCH_COUNT_MIN_SHARE * positions + T.TORCH_COUNT_ELEMENT_WORK)
                    * lm.mask.size + T.TORCH_COUNT_LAYER_WORK
                    and topo.program.layers[i].kind != "Linear")
        assert eng.graph.dense_products.takes(i) == modelled
    numba = topo_pai.from_torch(model, masks, input_shape=input_shape, engine="numba")
    assert numba.engine("neuron").graph.dense_products is None
    weighted = eng.with_weights([np.ones(lm.mask.size) for lm in eng.layer_masks])
    if isinstance(weighted, NeuronEngine):
        assert all(weighted.graph.dense(i) is None for i in range(4))
    # both answer the same: counts to rounding, nodes and parameters exactly
    assert topo.count_paths("neuron").log10 == pytest.approx(
        numba.count_paths("neuron").log10, rel=1e-12)
    assert topo.effective_nodes("neuron") == numba.effective_nodes("neuron")
    assert topo.effective_params("neuron") == numba.effective_params("neuron")
