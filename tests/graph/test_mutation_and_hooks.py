"""What a forward changes outside the values fx records: in-place ops read again
later, hooks on leaf modules, and a few ops whose arguments were dropped.

Each was a silently wrong count before (found by the review of 2026-12-04): the
count disagreed with the float64 probe of ``oracles.py`` in both engines. Now the
forward is refused, naming the fx node, or counted as the probe counts it.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from torch import nn

import topo_pai
from topo_pai import TraceError, UnsupportedOpError

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O

SHAPE = (2, 5, 5)


class TwoBranches(nn.Module):
    """``h = a(x)``, ``g = b(x)``; ``combine`` says what happens to them, ``f`` reads
    its result."""

    def __init__(self, combine):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 3, 3, padding=1)
        self.f = nn.Conv2d(3, 2, 1)
        self.combine = combine

    def forward(self, x):
        return self.f(self.combine(self.a(x), self.b(x)))


def _masks(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) < 0.6 for n, p in model.named_parameters()
            if p.dim() > 1}


def _counts_like_probe(model):
    masks = _masks(model)
    topo = topo_pai.from_torch(model, masks, input_shape=SHAPE)
    for engine in ("numba", "torch"):
        got = topo_pai.from_torch(model, masks, input_shape=SHAPE, engine=engine)
        assert got.count_paths("neuron").exact == int(O.float64_probe(model, masks, SHAPE).total)
    return topo


def _iadd_alias(h, g):
    identity = h
    h += g  # changes the tensor `identity` names too
    return identity


def _add_unbound(h, g):
    h.add_(g)
    return h


def _mul_through_view(h, g):
    v = h.view(h.shape)
    h.mul_(0.0)
    return v + g


def _out_kwarg(h, g):
    torch.add(h, g, out=h)
    return h


@pytest.mark.parametrize("combine, node", [(_iadd_alias, "iadd"), (_add_unbound, "add_"),
                                           (_mul_through_view, "mul_"), (_out_kwarg, "add")])
def test_an_in_place_change_read_again_later_is_refused(combine, node):
    model = TwoBranches(combine)
    with pytest.raises(UnsupportedOpError, match=f"fx node '{node}' changes 'a' in place"):
        topo_pai.from_torch(model, input_shape=SHAPE)
    with pytest.raises(UnsupportedOpError, match="in place"):
        topo_pai.prune(model, "synflow", 0.5, input_shape=SHAPE)


def _iadd_rebound(h, g):
    h += g  # a ResNet's `out += identity`: only the result is used afterwards
    return torch.relu(h)


def _add_then_new_name(h, g):
    y = h + g  # not in place: reading h afterwards is fine
    return y + h


@pytest.mark.parametrize("combine", [_iadd_rebound, _add_then_new_name])
def test_in_place_changes_whose_result_is_used_count_like_the_probe(combine):
    _counts_like_probe(TwoBranches(combine))


def test_the_zoo_resnets_in_place_adds_are_traced():
    from topo_pai.models import resnet20
    topo_pai.from_torch(resnet20(), input_shape=(3, 8, 8))


def test_hooks_on_leaf_modules_are_refused_naming_the_module():
    model = TwoBranches(lambda h, g: h + g)
    model.b.register_forward_hook(lambda mod, inp, out: out * 0)
    with pytest.raises(UnsupportedOpError, match="module 'b' .*forward hook"):
        topo_pai.from_torch(model, input_shape=SHAPE)
    model = TwoBranches(lambda h, g: h + g)
    model.f.register_forward_pre_hook(lambda mod, inp: (inp[0] * 0,))
    with pytest.raises(UnsupportedOpError, match="module 'f' .*forward hook"):
        topo_pai.from_torch(model, input_shape=SHAPE)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::topo_pai.UncoveredWeightsWarning")
def test_a_hook_on_the_model_runs_and_weight_hooks_are_allowed():
    model = TwoBranches(lambda h, g: h + g)
    model.register_forward_hook(lambda mod, inp, out: out * 0)  # fx traces through it
    assert topo_pai.from_torch(model, input_shape=SHAPE).count_paths("neuron").exact == 0
    model = TwoBranches(lambda h, g: h + g)
    torch.nn.utils.prune.random_unstructured(model.a, "weight", amount=0.5)
    torch.nn.utils.weight_norm(model.b)  # the old, hook-based weight norm
    torch.nn.utils.spectral_norm(model.f)
    topo_pai.from_torch(model, input_shape=SHAPE)


class ConstantFirst(nn.Module):
    def __init__(self, alpha, method):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.f = nn.Conv2d(3, 2, 1)
        self.register_buffer("c", torch.ones(3, 5, 5))
        self.alpha, self.method = alpha, method

    def forward(self, x):
        h = self.a(x)
        y = self.c.add(h, alpha=self.alpha) if self.method else torch.add(self.c, h,
                                                                          alpha=self.alpha)
        return self.f(y)


@pytest.mark.parametrize("method", [False, True], ids=["torch.add", "Tensor.add"])
def test_alpha_scales_the_tensor_when_the_constant_comes_first(method):
    # a factor of 0 removes every unit (README), here every unit of the one branch
    for engine in ("numba", "torch"):
        topo = topo_pai.from_torch(ConstantFirst(0, method), input_shape=SHAPE, engine=engine)
        assert topo.count_paths("neuron").exact == 0
        assert topo.count_paths("channel").exact == 0
    model = ConstantFirst(1, method)
    masks = _masks(model)
    absw = {n: p.detach().abs() for n, p in model.named_parameters() if p.dim() > 1}
    one = topo_pai.from_torch(model, masks, input_shape=SHAPE).flows(absw, "neuron")
    model.alpha = 0.25
    quarter = topo_pai.from_torch(model, masks, input_shape=SHAPE).flows(absw, "neuron")
    assert quarter.log10_total == pytest.approx(one.log10_total + math.log10(0.25), abs=1e-12)


def test_a_weight_parametrized_from_several_tensors_is_refused():
    model = TwoBranches(lambda h, g: h + g)
    torch.nn.utils.parametrizations.weight_norm(model.a)
    with pytest.raises(UnsupportedOpError, match="remove_parametrizations"):
        topo_pai.from_torch(model, input_shape=SHAPE)


def test_flatten_with_start_after_end_is_refused():
    model = TwoBranches(lambda h, g: (h + g).flatten(2, 1))
    with pytest.raises(TraceError, match="fx node 'flatten'.*start_dim comes after end_dim"):
        topo_pai.from_torch(model, input_shape=SHAPE)


def test_fx_errors_get_the_control_flow_hint_only_for_control_flow():
    class BuildsAModuleInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(nn.Flatten()(x))

    class Branches(BuildsAModuleInForward):
        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else self.fc(-x)

    with pytest.raises(TraceError) as exc:
        topo_pai.from_torch(BuildsAModuleInForward(), input_shape=(4,))
    assert "control flow" not in str(exc.value)
    with pytest.raises(TraceError, match="control flow"):
        topo_pai.from_torch(Branches(), input_shape=(4,))
