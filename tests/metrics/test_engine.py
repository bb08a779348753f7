"""The engine interface (topo_pai.metrics.engine): Topology asks an engine only what
the protocol names, so another engine drops in; and the helpers both engines share."""

from __future__ import annotations

import inspect
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import topo_pai
from topo_pai import topology
from topo_pai.metrics.channel import ChannelEngine
from topo_pai.metrics.engine import Engine
from topo_pai.metrics.neuron import NeuronEngine
from topo_pai.metrics.torch_neuron import AutoNeuronEngine, TorchNeuronEngine
from topo_pai.metrics.scaled import NodeCounts, Scaled, log10_scaled

PROTOCOL = sorted(name for name, _ in inspect.getmembers(Engine, inspect.isfunction)
                  if not name.startswith("_"))


class Net(nn.Module):
    """A grouped conv, a pool, a residual add, a product by a constant and a Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)
        self.register_buffer("gate", torch.tensor([1.0, 0.0, 2.0, -3.0]).view(4, 1, 1))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.c2(h) + h
        return self.fc(torch.flatten(self.pool(h * self.gate), 1))


SHAPE = (2, 4, 4)


def _masks(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=g) < density).float()
            for n, p in model.named_parameters() if n.endswith("weight")}


class ProtocolOnly:
    """Exposes exactly the protocol's names of a real engine: any other attribute that
    Topology or Flows reached for would raise AttributeError."""

    def __init__(self, engine):
        self._engine = engine
        self.resolution = engine.resolution

    def __getattr__(self, name):
        if name not in PROTOCOL:
            raise AttributeError(f"{name} is not part of the engine protocol")
        attr = getattr(self._engine, name)
        if name == "with_weights":
            return lambda weights: ProtocolOnly(attr(weights))
        return attr


def _answers(topo, resolution, absw):
    flows = topo.flows(absw, resolution)
    out = {
        "paths": topo.count_paths(resolution).log10,
        "exact": topo.count_paths(resolution).exact,
        "nodes": topo.effective_nodes(resolution),
        "n_nodes": topo.n_nodes(resolution),
        "params": topo.effective_params(resolution),
        "flops": topo.effective_flops(resolution),
        "summary": str(topo.summary(resolution)),
        "flow": flows.log10_total,
    }
    for k, v in topo.effective_masks_numpy(resolution).items():
        out[f"eff {k}"] = v
    for what, table in (("fc", topo.forward_counts(resolution)),
                        ("bc", topo.backward_counts(resolution)),
                        ("ff", flows.forward), ("fb", flows.backward)):
        for name, c in table.items():
            out[f"{what} {name}"] = (c.mantissa, c.exponent)
    for k, v in flows.log10_through_weights().items():
        out[f"score {k}"] = v
    for i in range(len(topo.layers)):
        out[f"reach {i}"] = topo.layer_reach(i, resolution)
        c = topo.layer_input_counts(i, resolution)
        out[f"in {i}"] = (c.mantissa, c.exponent)
        fin, bout = flows.layer_flows(i)
        out[f"flows {i}"] = (fin.mantissa, fin.exponent, bout.mantissa, bout.exponent)
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, tuple):
            assert len(x) == len(y), k
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v, err_msg=k)
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            assert x == y, k


@pytest.mark.parametrize("resolution", ["channel", "neuron"])
def test_topology_asks_engines_only_what_the_protocol_names(monkeypatch, resolution):
    torch.manual_seed(0)
    model = Net()
    masks = _masks(model, 0.6, 1)
    absw = {k: model.get_submodule(k[:-7]).weight.detach().abs() for k in masks}
    want = _answers(topo_pai.from_torch(model, masks, SHAPE), resolution, absw)
    real = topology.ENGINES[resolution]
    monkeypatch.setitem(topology.ENGINES, resolution,
                        lambda *args, **kwargs: ProtocolOnly(real(*args, **kwargs)))
    got = _answers(topo_pai.from_torch(model, masks, SHAPE), resolution, absw)
    _same(want, got)


@pytest.mark.parametrize("resolution, engine, choice", [
    ("channel", ChannelEngine, "auto"), ("neuron", NeuronEngine, "numba"),
    ("neuron", AutoNeuronEngine, "auto"), ("neuron", TorchNeuronEngine, "torch")])
def test_engines_implement_the_protocol(resolution, engine, choice):
    for name in PROTOCOL:
        assert callable(getattr(engine, name, None)), f"{engine.__name__} lacks {name}"
        want = list(inspect.signature(getattr(Engine, name)).parameters)
        assert list(inspect.signature(getattr(engine, name)).parameters) == want, name
    topo = topo_pai.from_torch(Net(), None, SHAPE, engine=choice)
    assert topo.engine(resolution).resolution == resolution
    assert type(topo.engine(resolution)) is engine
    assert topo.engine(resolution) is topo.engine(resolution)  # built once
    with pytest.raises(ValueError, match="resolution"):
        topo.engine("pixel")


def test_layer_flows_give_the_scores_at_channel_resolution():
    """``Flows.layer_flows`` and ``Layer.input_units`` are what SynFlow's fast path
    assembles its scores from: they reproduce ``log10_through_weights``."""
    torch.manual_seed(0)
    model = Net()
    masks = _masks(model, 0.7, 2)
    absw = {k: model.get_submodule(k[:-7]).weight.detach().abs().double().numpy()
            for k in masks}
    topo = topo_pai.from_torch(model, masks, SHAPE)
    flows = topo.flows(absw, "channel")
    scores = flows.log10_through_weights()
    for i, layer in enumerate(topo.layers):
        fin, bout = flows.layer_flows(i)
        assert fin.mantissa.shape == (layer.weight_shape[1] * layer.groups,)
        assert bout.mantissa.shape == (layer.weight_shape[0],)
        kept = masks[layer.param].numpy() > 0
        with np.errstate(divide="ignore"):
            logw = np.log10(absw[layer.param])
        pair = bout.log10[:, None] + fin.log10[layer.input_units()]
        want = logw + pair.reshape(pair.shape + (1,) * (logw.ndim - 2))
        np.testing.assert_allclose(scores[layer.param][kept], want[kept], rtol=1e-12)
        assert np.all(np.isneginf(scores[layer.param][~kept]))


def test_layer_flows_at_neuron_resolution_have_the_value_shapes():
    topo = topo_pai.from_torch(Net(), None, SHAPE)
    flows = topo.flows(None, "neuron")
    fin, bout = flows.layer_flows(1)  # c2: input and output are 4 x 4 x 4
    assert fin.mantissa.shape == bout.mantissa.shape == (4, 4, 4)
    fin, bout = flows.layer_flows(2)  # fc: 16 features in, 3 out
    assert fin.mantissa.shape == (16,) and bout.mantissa.shape == (3,)
    # unit weights (and no constant factor before c2): the flow into c2's input elements,
    # summed per channel, is the path count into its input channels
    fin, _ = flows.layer_flows(1)
    counts = topo.layer_input_counts(1, "neuron")
    np.testing.assert_allclose(np.ldexp(fin.mantissa.reshape(4, -1).sum(axis=1), fin.exponent),
                               counts.to_float(), rtol=1e-15)


@pytest.mark.parametrize("groups,O,per_group", [(1, 3, 5), (2, 4, 3), (4, 8, 1), (3, 3, 2)])
def test_input_units_is_the_grouped_conv_index(groups, O, per_group):
    layer = topo_pai.from_torch(nn.Conv2d(per_group * groups, O, 1, groups=groups), None,
                                (per_group * groups, 2, 2)).layers[0]
    assert layer.out_per_group == O // groups
    got = layer.input_units()
    assert got.shape == (O, per_group)
    for o, i in itertools.product(range(O), range(per_group)):  # the definition, by loops
        group = o // (O // groups)
        assert got[o, i] == group * per_group + i


@pytest.mark.parametrize("e", [-3000, -70, 0, 5, 1100, 40000])
def test_scaled_log10_against_exact_arithmetic(e):
    m = np.array([0.0, 0.5, 0.75, 1.0, 3.0, 2.0 ** 60, 1e-300])
    got = Scaled(m, e).log10()
    assert np.isneginf(got[0])
    for x, y in zip(m[1:], got[1:]):
        exact = Fraction(float(x)) * Fraction(2) ** e  # the value as an exact rational
        want = (math.log10(exact.numerator) - math.log10(exact.denominator))
        assert y == pytest.approx(want, rel=1e-12, abs=1e-9)
    np.testing.assert_array_equal(NodeCounts(m, e).log10, got)
    assert log10_scaled(0.0, e) == -math.inf
    assert Scaled(m, e).log10_total() == log10_scaled(float(m.sum()), e)


@pytest.mark.parametrize("resolution", ["channel", "neuron"])
@pytest.mark.parametrize("density", [0.3, 0.8])
def test_both_reachabilities_agree(resolution, density):
    """Each graph's 0/1 reachability (``reach_forward``/``reach_backward``, the
    fallback when counts are risky) marks exactly the units with a non-zero count."""
    torch.manual_seed(0)
    model = Net()
    engine = topo_pai.from_torch(model, _masks(model, density, 3), SHAPE).engine(resolution)
    fwd, bwd = engine.forward(), engine.backward()
    assert not any(s.risky for s in fwd + bwd)  # so reachability is read off the counts
    rf, rb = engine.graph.reach_forward(), engine.graph.reach_backward()
    for g, key in enumerate(engine.group_keys):
        for counts, reach in ((fwd[g], rf[key]), (bwd[g], rb[key])):
            assert set(np.unique(reach)) <= {0.0, 1.0}
            np.testing.assert_array_equal(reach > 0, counts.m > 0)
