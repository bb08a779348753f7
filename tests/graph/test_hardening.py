"""Issue 12 (core): no silently wrong count.

Each test pins one item: optional forward arguments, products and divisions by
constants (at both resolutions and in every engine: counts, exact counts,
effective nodes/params/masks and weighted flows), weight tying, a bare layer as
the model, masks without dense values, the memory of exact counts, and layers of
2**31 or more elements. Expected numbers are closed forms or the float64 probe
of ``oracles.py``; the random version of the constant and optional-argument
checks is the fuzz test in ``test_against_oracles.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import topo_pai
from topo_pai import MaskError, PathCountTooLarge, TraceError, UnsupportedOpError

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O

RESOLUTIONS = ("channel", "neuron")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def counts(topo) -> dict:
    """Every count of a Topology at both resolutions, exact included."""
    return {res: (topo.count_paths(res).exact, topo.effective_nodes(res),
                  topo.effective_params(res)) for res in RESOLUTIONS}


def assert_matches_probe(model, masks, shape):
    """Counts, effective params/nodes/masks at both resolutions vs the float64 probe."""
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    for res in RESOLUTIONS:
        probe = O.float64_probe(model, masks, shape, res)
        assert topo.count_paths(res).exact == int(probe.total), res
        assert topo.effective_nodes(res) == probe.effective_nodes, res
        assert topo.effective_params(res) == sum(int(v.sum())
                                                 for v in probe.effective_weights.values())
        for name, eff in topo.effective_masks(res).items():
            np.testing.assert_array_equal(eff.numpy(), probe.effective_weights[name])
    return topo


# ---------------------------------------------------------------------------
# 1. optional forward arguments: what model(x) computes is what is counted
# ---------------------------------------------------------------------------

class FeaturesOnly(nn.Module):
    """The issue's example: the head runs when ``features_only`` is left at None."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 5)

    def forward(self, x, features_only=None):
        x = F.relu(self.body(x))
        if features_only is None:
            x = self.head(x)
        return x


class BoolDefault(FeaturesOnly):
    def forward(self, x, return_features=False):
        x = F.relu(self.body(x))
        return x if return_features else self.head(x)


class IntDefault(FeaturesOnly):
    def forward(self, x, depth=2):
        x = F.relu(self.body(x))
        if depth == 2:
            x = self.head(x)
        return x


class KeywordOnly(FeaturesOnly):
    def forward(self, x, *, skip_head=False):
        x = F.relu(self.body(x))
        return x if skip_head else self.head(x)


class VarArgs(FeaturesOnly):
    def forward(self, x, *args, **kwargs):
        x = F.relu(self.body(x))
        if not args and kwargs.get("features_only") is None:
            x = self.head(x)
        return x


class TensorDefault(FeaturesOnly):
    def forward(self, x, gate=torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0])):
        return self.head(F.relu(self.body(x))) * gate


@pytest.mark.parametrize("cls", [FeaturesOnly, BoolDefault, IntDefault, KeywordOnly, VarArgs])
def test_optional_arguments_take_their_defaults(cls):
    """3 inputs -> 4 hidden -> 5 outputs: 60 paths, as model(x) computes (not 12)."""
    model = cls()
    topo = topo_pai.from_torch(model, input_shape=(3,))
    assert counts(topo) == {res: (60, 12, 32) for res in RESOLUTIONS}
    assert [layer.name for layer in topo.layers] == ["body", "head"]
    if cls is not VarArgs:  # fx's concrete_args (the probe's tracing) cannot bind *args
        assert_matches_probe(model, {}, (3,))


def test_tensor_default_argument_is_a_constant_gate():
    """A tensor default is a constant: its zero entries remove output units 1 and 3."""
    topo = topo_pai.from_torch(TensorDefault(), input_shape=(3,))
    assert counts(topo) == {res: (36, 10, 24) for res in RESOLUTIONS}


def test_required_extra_argument_is_refused_by_name():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x, mask):
            return self.fc(x)

    with pytest.raises(TraceError, match="'mask'") as exc:
        topo_pai.from_torch(TwoInputs(), input_shape=(3,))
    assert "default" in str(exc.value)


_GLOBAL_GATE = torch.tensor([1.0, 0.0, 1.0, 1.0])


def test_tracing_never_adds_attributes_to_the_model():
    """fx stores tensor constants it meets on the traced root: never the caller's model."""
    class UsesGlobal(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) * _GLOBAL_GATE)

    model = UsesGlobal()
    before = set(vars(model)) | set(model._buffers) | set(model._modules)
    topo = topo_pai.from_torch(model, input_shape=(3,))
    assert set(vars(model)) | set(model._buffers) | set(model._modules) == before
    assert topo.count_paths().exact == 3 * 3 * 2  # the gate keeps 3 of 4 hidden units


# ---------------------------------------------------------------------------
# 2. products and divisions by constants
# ---------------------------------------------------------------------------

class Gated(nn.Module):
    """Linear(3, 6) -> op -> Linear(6, 1), ``op`` a function of the hidden tensor and
    the module (for buffers and parameters)."""

    def __init__(self, op, **buffers):
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 1)
        self.op = op
        for k, v in buffers.items():
            if isinstance(v, nn.Parameter):
                setattr(self, k, v)
            else:
                self.register_buffer(k, v)

    def forward(self, x):
        return self.b(self.op(self, self.a(x)))


GATE = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # keeps 2 of 6 units


_CONSTANT_CASES = [
    (lambda m, h: h * m.gate, {"gate": GATE}, 2),  # the issue's example
    (lambda m, h: m.gate * h, {"gate": GATE}, 2),
    (lambda m, h: h.mul(m.gate), {"gate": GATE}, 2),
    (lambda m, h: torch.mul(h, m.gate[None]), {"gate": GATE}, 2),  # (1, 6): per unit
    (lambda m, h: h * m.scale, {"scale": nn.Parameter(GATE * -3.0)}, 2),  # unmasked param
    (lambda m, h: h * torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 1.0]), {}, 2),  # literal
    (lambda m, h: h * torch.sigmoid(m.gate), {"gate": GATE}, 6),  # sigmoid(0) = 0.5: kept
    (lambda m, h: h * (m.gate > 0), {"gate": GATE}, 2),  # a computed bool constant
    (lambda m, h: h * 0.0, {}, 0),  # exact zero: no path
    (lambda m, h: h * 0, {}, 0),
    (lambda m, h: h * 2.5, {}, 6),
    (lambda m, h: -3 * h, {}, 6),
    (lambda m, h: -h, {}, 6),
    (lambda m, h: h / 4.0, {}, 6),
    (lambda m, h: h / (GATE + 2.0), {}, 6),  # division by a non-zero constant
    (lambda m, h: torch.div(h, -2.0), {}, 6),
    (lambda m, h: h + m.gate, {"gate": GATE}, 6),  # offsets keep units
    (lambda m, h: h - 1.0, {}, 6),
    (lambda m, h: 1.0 - h, {}, 6),
]
_CONSTANT_IDS = ["buffer", "buffer_left", "method", "batch_dim", "unmasked_param", "literal",
                 "sigmoid_of_buffer", "bool_constant", "zero", "int_zero", "scalar", "neg_scalar",
                 "neg", "div_scalar", "div_tensor", "torch_div", "offset_buffer", "offset",
                 "reversed_offset"]


@pytest.mark.parametrize("op,buffers,kept", _CONSTANT_CASES, ids=_CONSTANT_IDS)
def test_constant_factors(op, buffers, kept):
    model = Gated(op, **buffers)
    topo = assert_matches_probe(model, {}, (3,))
    want = (3 * kept, 3 + kept + 1 if kept else 0, 3 * kept + kept)  # paths, nodes, params
    assert counts(topo) == {res: want for res in RESOLUTIONS}
    eff = topo.effective_masks()["a.weight"].numpy()
    assert eff.any(axis=1).sum() == kept


def test_difference_of_two_branches_is_a_merge():
    """``h - h`` merges like ``h + h``: counts add (documented), nothing cancels."""
    topo = topo_pai.from_torch(Gated(lambda m, h: h - h), input_shape=(3,))
    assert counts(topo) == {res: (36, 10, 24) for res in RESOLUTIONS}
    alpha = topo_pai.from_torch(Gated(lambda m, h: torch.sub(h, F.relu(h), alpha=0.0)),
                                input_shape=(3,))
    assert alpha.count_paths().exact == 18  # alpha = 0 removes the second operand


class ConvGated(nn.Module):
    """Conv2d(2, 3, 3) on 5x5 -> * constant -> Conv2d(3, 2, 1)."""

    def __init__(self, gate):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 1)
        self.register_buffer("gate", gate)

    def forward(self, x):
        return self.b(self.a(x) * self.gate)


@pytest.mark.parametrize("gate", [
    torch.tensor([1.0, 0.0, -2.0]).reshape(3, 1, 1),  # per channel
    torch.tensor([0.0, 0.0, 5.0]).reshape(1, 3, 1, 1),  # per channel, batch dim
    torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]] * 5),  # per position: (H, W)
    torch.cat([torch.zeros(1, 5, 5), torch.eye(5)[None], torch.ones(1, 5, 5)]),  # (C, H, W)
], ids=["channel", "channel_batch", "positions", "mixed"])
def test_constant_gates_on_convolutions_match_the_probe(gate):
    """Neuron resolution gates elements; channel resolution removes a channel only
    where the constant is zero at every one of its positions."""
    model = ConvGated(gate)
    rng = np.random.default_rng(3)
    masks = {"a.weight": torch.as_tensor(rng.random((3, 2, 3, 3)) < 0.6),
             "b.weight": torch.ones(2, 3, 1, 1)}
    topo = assert_matches_probe(model, masks, (2, 5, 5))
    full = torch.broadcast_to(gate, (1, 3, 5, 5))[0]
    live = (full != 0).reshape(3, -1).any(1)
    taps = masks["a.weight"].reshape(3, -1).sum(1)
    assert topo.count_paths().exact == int((taps * live).sum()) * 2


@pytest.mark.parametrize("op,named", [
    (lambda m, h: h * m.a(torch.ones(1, 3)), "module 'a'"),  # a layer applied to a constant
    (lambda m, h: h * h, "fx node 'mul'"),  # two input-dependent tensors
    (lambda m, h: h / F.relu(h), "fx node 'truediv'"),
    (lambda m, h: 2.0 / h, "fx node 'truediv'"),
    (lambda m, h: h / 0.0, "fx node 'truediv'"),
    (lambda m, h: h / m.gate, "fx node 'truediv'"),  # the gate holds zeros
    (lambda m, h: torch.div(h, 2.0, rounding_mode="floor"), "fx node 'div'"),
    (lambda m, h: h * torch.ones(6, 6), "fx node 'mul'"),  # broadcasts the tensor: mixes units
    (lambda m, h: h * torch.ones(2, 1, 6), "fx node 'mul'"),
    (lambda m, h: h * float("inf"), "fx node 'mul'"),
    (lambda m, h: h * torch.full((6,), float("nan")), "fx node 'mul'"),
    (lambda m, h: h * torch.ones(6, device="meta"), "fx node 'mul'"),
    (lambda m, h: h * torch.ones(6).to_sparse(), "fx node 'mul'"),
    (lambda m, h: h * torch.ones(6, dtype=torch.complex64), "fx node 'mul'"),
], ids=["module_on_constant", "product_of_inputs", "quotient_of_inputs", "constant_over_input",
        "div_zero", "div_gate_with_zero", "rounding_mode", "mixes_units", "adds_a_dim", "inf",
        "nan", "meta", "sparse", "complex"])
def test_undefined_products_are_refused_naming_the_op(op, named):
    with pytest.raises(UnsupportedOpError) as exc:
        topo_pai.from_torch(Gated(op, gate=GATE), input_shape=(3,))
    assert named in str(exc.value)


def test_flows_scale_by_the_magnitude_of_constants():
    """R = sum over hidden j of |g_j| * (sum_i |w1_ji|) * |w2_0j|, at both resolutions."""
    g = torch.tensor([2.0, 0.0, -0.5, 1.0, 0.0, 3.0], dtype=torch.float64)
    model = Gated(lambda m, h: h * m.gate, gate=g.float())
    absw = {"a.weight": model.a.weight.detach().double().abs(),
            "b.weight": model.b.weight.detach().double().abs()}
    want = float((g.abs() * absw["a.weight"].sum(1) * absw["b.weight"][0]).sum())
    topo = topo_pai.from_torch(model, input_shape=(3,))
    for res in RESOLUTIONS:
        flows = topo.flows(absw, res)
        assert flows.log10_total == pytest.approx(math.log10(want), rel=1e-12)
        score = flows.log10_through_weights()["a.weight"]
        assert np.isneginf(score[[1, 4]]).all() and np.isfinite(score[[0, 2, 3, 5]]).all()
    divided = Gated(lambda m, h: h / m.d, d=torch.tensor([0.5, 1.0, -4.0, 1.0, 2.0, 1.0]))
    topo = topo_pai.from_torch(divided, input_shape=(3,))
    wd = {"a.weight": divided.a.weight.detach().double().abs(),
          "b.weight": divided.b.weight.detach().double().abs()}
    want = float((wd["a.weight"].sum(1) * wd["b.weight"][0]
                  / torch.tensor([0.5, 1.0, 4.0, 1.0, 2.0, 1.0], dtype=torch.float64)).sum())
    for res in RESOLUTIONS:
        assert topo.flows(wd, res).log10_total == pytest.approx(math.log10(want), rel=1e-12)


def test_channel_flows_refuse_a_gate_whose_magnitude_varies_within_a_channel():
    gate = torch.ones(3, 5, 5)
    gate[1, 0, 0] = 2.0  # channel 1: magnitudes 1 and 2
    topo = topo_pai.from_torch(ConvGated(gate), input_shape=(2, 5, 5))
    with pytest.raises(UnsupportedOpError, match="fx node 'mul'.*resolution='neuron'"):
        topo.flows(None, "channel")
    assert math.isfinite(topo.flows(None, "neuron").log10_total)
    assert topo.count_paths().exact == 3 * 18 * 2  # counts need no magnitudes


def test_synflow_never_keeps_weights_a_constant_gate_removes():
    model = Gated(lambda m, h: h * m.gate, gate=GATE)
    for resolution in RESOLUTIONS:
        masks = topo_pai.prune(model, "synflow", 0.7, input_shape=(3,), rounds=3,
                               resolution=resolution)
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == round(0.3 * 24)
        assert not masks["a.weight"][[1, 2, 4, 5]].any()
        assert not masks["b.weight"][:, [1, 2, 4, 5]].any()


# ---------------------------------------------------------------------------
# 3. weight tying: refused, naming both layers
# ---------------------------------------------------------------------------

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(F.relu(self.enc(x)))


class SharedStorage(Tied):
    def __init__(self):
        super().__init__()
        self.dec.weight = nn.Parameter(self.enc.weight.data)  # another Parameter, same memory


@pytest.mark.parametrize("cls", [Tied, SharedStorage])
@pytest.mark.parametrize("call", [
    lambda m: topo_pai.from_torch(m, input_shape=(4,)),
    lambda m: topo_pai.prune(m, "random", 0.5, input_shape=(4,)),
    lambda m: topo_pai.prune(m, "magnitude", 0.5, input_shape=(4,)),
    lambda m: topo_pai.prune(m, "synflow", 0.5, input_shape=(4,)),
], ids=["from_torch", "random", "magnitude", "synflow"])
def test_tied_weights_are_refused_naming_both_layers(cls, call):
    with pytest.raises(UnsupportedOpError, match="tied") as exc:
        call(cls())
    assert "'enc.weight'" in str(exc.value) and "'dec.weight'" in str(exc.value)


def test_a_weight_used_outside_its_layer_is_refused():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * self.fc.weight[0]

    with pytest.raises(UnsupportedOpError, match="'fc.weight'"):
        topo_pai.from_torch(Reuse(), input_shape=(4,))

    class ReadsShape(Reuse):
        def forward(self, x):  # the weight's shape is metadata, not its values
            return self.fc(x.view(-1, self.fc.weight.shape[1]))

    assert topo_pai.from_torch(ReadsShape(), input_shape=(4,)).count_paths().exact == 16


# ---------------------------------------------------------------------------
# 4. a bare layer is a model
# ---------------------------------------------------------------------------

BARE = {
    "linear": (lambda: nn.Linear(3, 4), (3,), 12, 12, (8, 4)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3), (2, 5, 5), 54, 54 * 9, (24, 2)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 6), 18, 18 * 6 - 2 * 3 * 2, (12, 3)),
}


@pytest.mark.parametrize("name", sorted(BARE))
def test_bare_layer_counts(name):
    factory, shape, channel, neuron, _ = BARE[name]
    model = factory()
    topo = topo_pai.from_torch(model, input_shape=shape)
    assert topo.count_paths("channel").exact == channel
    assert topo.count_paths("neuron").exact == neuron
    assert list(topo.masks) == ["weight"] and topo.group_names == ["input", "(model)"]
    mask = torch.zeros_like(model.weight)
    mask.view(-1)[0] = 1
    assert topo.with_masks({"weight": mask}).count_paths().exact == 1
    assert_matches_probe(model, {"weight": mask}, shape)


def _bare_data(name, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((6,) + shape, generator=g)
    out = BARE[name][0]()(x)
    y = torch.randint(0, out.shape[1], (6,) + tuple(out.shape[2:]), generator=g)
    return x, y


@pytest.mark.parametrize("method", topo_pai.available_methods())
@pytest.mark.parametrize("name", sorted(BARE))
def test_every_pruner_prunes_a_bare_layer(name, method):
    factory, shape, *_ = BARE[name]
    model = factory()
    options = {}
    if method == "shuffle":
        options["masks"] = topo_pai.prune(model, "random", 0.5, input_shape=shape)
    if method in ("synflow", "synflow_widen", "iter_snip"):
        options["rounds"] = 3
    masks = topo_pai.prune(model, method, 0.5, input_shape=shape,
                           data=_bare_data(name, shape), **options)
    assert list(masks) == ["weight"] and masks["weight"].shape == model.weight.shape
    assert int(masks["weight"].sum()) == round(0.5 * model.weight.numel())
    topo_pai.apply_masks(model, masks)
    assert topo_pai.from_torch(model, input_shape=shape).n_unpruned == int(masks["weight"].sum())


# ---------------------------------------------------------------------------
# 7. masks without dense values are refused, naming the parameter
# ---------------------------------------------------------------------------

BAD_MASKS = {
    "none": lambda: None,
    "sparse_coo": lambda: torch.ones(2, 4).to_sparse(),
    "sparse_csr": lambda: torch.ones(2, 4).to_sparse_csr(),
    "meta": lambda: torch.ones(2, 4, device="meta"),
}


def _mlp():
    return nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3))


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
@pytest.mark.parametrize("call", [
    lambda m, masks: topo_pai.from_torch(m, masks, input_shape=(4,)),
    lambda m, masks: topo_pai.from_torch(m, input_shape=(4,)).with_masks(masks),
    lambda m, masks: topo_pai.from_torch(m, input_shape=(4,)).flows(masks),
    lambda m, masks: topo_pai.apply_masks(m, masks),
    lambda m, masks: topo_pai.save_masks(masks, os.devnull + ".npz"),
    lambda m, masks: topo_pai.prune(m, "shuffle", 0.0, input_shape=(4,), masks=masks),
], ids=["from_torch", "with_masks", "flows", "apply_masks", "save_masks", "shuffle"])
def test_masks_without_values_are_refused(kind, call):
    model = _mlp()
    with pytest.raises(MaskError, match=r"'0\.weight'"):
        call(model, {"0.weight": BAD_MASKS[kind](), "2.weight": torch.ones(3, 2)})
    assert not hasattr(model[0], "weight_mask")  # nothing attached before the error


# ---------------------------------------------------------------------------
# 8. exact counts: memory estimated from what is allocated, refused past the limit
# ---------------------------------------------------------------------------

def test_exact_count_of_a_huge_sparse_layer_allocates_little():
    """A 1e8-element conv with 3 unpruned weights: the exact count reads the mask in
    place (main converted the whole weight to Python ints: 1.6 GB)."""
    conv = nn.Conv2d(10_000, 10_000, 1, bias=False, device="meta")  # no weight values
    mask = np.zeros((10_000, 10_000, 1, 1), dtype=np.uint8)
    mask[0, 0] = mask[5, 7] = mask[9_999, 9_999] = 1
    topo = topo_pai.from_torch(conv, {"weight": mask}, input_shape=(10_000, 1, 1))
    for res in RESOLUTIONS:
        pc = topo.count_paths(res)
        tracemalloc.start()
        try:
            assert pc.exact == 3
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 * 2 ** 20, (res, peak)
        assert pc.cost[1] >= peak  # the estimate bounds what was allocated


def test_exact_count_refuses_past_the_memory_limit(monkeypatch):
    """Large activations, one unpruned weight: little edge work but many Python ints."""
    from topo_pai.metrics import exact as X

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.Conv2d(2, 1, 1))
    topo = topo_pai.from_torch(model, input_shape=(1, 300, 300))
    pc = topo.count_paths("neuron")
    work, memory = pc.cost
    assert work >= 300 * 300 and memory >= 300 * 300 * 36  # every value entry is charged
    with pytest.raises(PathCountTooLarge, match="max_memory"):
        pc.exact_value(max_memory=memory / 2)
    monkeypatch.setattr(X, "EXACT_MAX_MEMORY", memory / 2)
    with pytest.raises(PathCountTooLarge, match="GiB"):
        topo.count_paths("neuron").exact  # noqa: B018
    monkeypatch.undo()
    assert pc.exact == 2 * 150 * 150 * 4  # 4 window positions per pooled output


# ---------------------------------------------------------------------------
# 9. a layer past 2**31 elements
# ---------------------------------------------------------------------------

_BIG_LAYER = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch, topo_pai
    O, I = 65536, 32769  # 2**31 + 65536 elements
    conv = torch.nn.Conv2d(I, O, 1, bias=False, device="meta")  # shapes only
    mask = np.zeros((O, I, 1, 1), dtype=np.uint8)  # calloc: untouched pages cost nothing
    ones = [(0, 0), (O - 1, 5), (O - 1, I - 1)]  # the last flat index is 2**31 + 65535
    for o, i in ones:
        mask[o, i] = 1
    topo = topo_pai.from_torch(conv, {"weight": mask}, input_shape=(I, 1, 1))
    del mask
    out = {"flat": [o * I + i for o, i in ones]}
    for res in ("neuron", "channel"):
        eff = topo.effective_masks_numpy(res)["weight"]
        out[res] = dict(paths=topo.count_paths(res).exact, nodes=topo.effective_nodes(res),
                        params=topo.effective_params(res),
                        eff=[int(v) for v in np.flatnonzero(eff.reshape(-1))])
        del eff
        if out[res]["eff"] != out["flat"]:  # stop before a wrong engine allocates more
            sys.exit(f"{res}: effective elements {out[res]['eff']}, expected {out['flat']}")
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))
""")


@pytest.mark.bigmem
def test_layer_past_2_31_elements():
    """BIGMEM: one 1x1 conv of 2**31 + 65536 elements, 3 unpruned. Its uint8 mask copy
    (2 GiB) is the only large allocation; the run happens in a child process whose peak
    RSS must stay under 3 GiB (main wrapped the flat index at neuron resolution and
    allocated 16 GiB of int64 for the channel effective masks)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-c", _BIG_LAYER], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["flat"][-1] > 2 ** 31
    for res in RESOLUTIONS:
        assert out[res] == dict(paths=3, nodes=3 + 2, params=3, eff=out["flat"]), res
    assert out["maxrss"] < 3 * 2 ** 30, out["maxrss"] / 2 ** 30
