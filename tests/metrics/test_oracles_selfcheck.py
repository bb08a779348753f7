"""The oracles checked against each other and against closed forms.

These tests do not import ``topo_pai``: they establish that the three
independent oracles (explicit-graph DP, networkx path enumeration, float64
torch probe) agree, so that a disagreement with ``topo_pai`` later points at
``topo_pai`` (or at a shared misreading of the semantics, not a coding slip).
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import fx

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

RESOLUTIONS = ("channel", "neuron")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


def _dense(model):
    return {n: torch.ones_like(p) for n, p in model.named_parameters()
            if n in O.prunable_weight_names(model)}


def _assert_same_stats(a: O.PathStats, b: O.PathStats, what: str):
    assert a.count == b.count, f"{what}: count {a.count} != {b.count}"
    assert a.effective_nodes == b.effective_nodes, f"{what}: effective nodes differ"
    assert a.effective_weights.keys() == b.effective_weights.keys()
    for name in a.effective_weights:
        assert np.array_equal(a.effective_weights[name], b.effective_weights[name]), \
            f"{what}: effective weights of {name} differ"


def _assert_probe_matches(p: O.ProbeResult, r: O.PathStats, what: str):
    if r.count < 2**52:  # float64 integers are exact here
        assert p.total == r.count, f"{what}: probe {p.total} != dp {r.count}"
    else:
        assert math.isclose(p.total, r.count, rel_tol=1e-12), what
    for name, eff in r.effective_weights.items():
        assert np.array_equal(p.effective_weights[name], eff), f"{what}: {name}"


# ---------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------

@settings(max_examples=60, **SETTINGS)
@given(O.specs())
def test_build_torch_shapes_names_and_traceable(case):
    spec, shape = case
    model = O.build_torch(spec, shape)
    with torch.no_grad():
        y = model(torch.randn((2,) + shape))
    assert tuple(y.shape) == (2,) + O.chain_out_shape(spec, shape)
    fx.symbolic_trace(model)  # the contract: every built model is fx-traceable
    # The graph names its weights exactly like torch does.
    g = O.unrolled_graph(spec, shape, _dense(model), "channel")
    assert set(g.params) == set(O.prunable_weight_names(model))
    params = dict(model.named_parameters())
    for name, wshape in g.params.items():
        assert tuple(params[name].shape) == wshape


def test_build_torch_uses_sequential_names_for_plain_specs():
    spec = (O.Conv(2, 3, padding=1), O.ReLU(), O.Flatten(), O.Linear(3))
    model = O.build_torch(spec, (1, 4, 4))
    assert isinstance(model, torch.nn.Sequential)
    assert O.prunable_weight_names(model) == ["0.weight", "3.weight"]


@settings(max_examples=30, **SETTINGS)
@given(st.data())
def test_masks_for_shapes_values_and_reproducibility(data):
    spec, shape = data.draw(O.specs())
    model = O.build_torch(spec, shape)
    seed = data.draw(st.integers(0, 1000))
    m1, m2 = O.masks_for(model, seed), O.masks_for(model, np.random.default_rng(seed))
    params = dict(model.named_parameters())
    assert list(m1) == O.prunable_weight_names(model)
    for name, m in m1.items():
        assert m.shape == params[name].shape
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert torch.equal(m, m2[name])


# ---------------------------------------------------------------------------
# oracle vs oracle
# ---------------------------------------------------------------------------

@settings(max_examples=80, **SETTINGS)
@given(st.data())
def test_dp_matches_brute_force_on_tiny_nets(data):
    spec, shape = data.draw(O.specs(max_channels=3, max_spatial=4, max_blocks=2))
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    for res in RESOLUTIONS:
        g = O.unrolled_graph(spec, shape, masks, res)
        dp = O.dp_counts(g)
        assume(dp.count <= 20_000)  # keep enumeration cheap
        _assert_same_stats(dp, O.brute_force_paths(g), f"{res} {spec} {shape}")


@settings(max_examples=80, **SETTINGS)
@given(st.data())
def test_dp_matches_float64_probe(data):
    spec, shape = data.draw(O.specs())
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    for res in RESOLUTIONS:
        r = O.dp_counts(O.unrolled_graph(spec, shape, masks, res))
        p = O.float64_probe(model, masks, shape, resolution=res)
        _assert_probe_matches(p, r, f"{res} {spec} {shape}")


@settings(max_examples=15, **SETTINGS)
@given(st.data())
def test_dp_matches_float64_probe_on_larger_nets(data):
    # hypothesis favours small draws; force wide inputs and several blocks.
    spec, shape = data.draw(O.specs(min_spatial=5, min_blocks=3, kinds=("conv2d",)))
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw, density=0.7)
    for res in RESOLUTIONS:
        r = O.dp_counts(O.unrolled_graph(spec, shape, masks, res))
        p = O.float64_probe(model, masks, shape, resolution=res)
        _assert_probe_matches(p, r, f"{res} {spec} {shape}")


@st.composite
def _grouped_stack(draw):
    """Stacks of grouped convs with several outputs per group.

    Group bookkeeping only shows in counts when channels carry different
    path numbers, hence sparse masks and >= 2 grouped layers.
    """
    nd = draw(st.integers(1, 2))
    shape = (draw(st.sampled_from([2, 4])),) + (draw(st.integers(2, 4)),) * nd
    layers, c = [], shape[0]
    for _ in range(draw(st.integers(2, 3))):
        g = draw(st.sampled_from([d for d in O._divisors(c) if d > 1] or [1]))
        out = g * draw(st.integers(2, 3))
        layers.append(O.Conv(out, draw(st.integers(1, 2)), 1, "same", 1, g))
        c = out
    return tuple(layers), shape


@settings(max_examples=30, **SETTINGS)
@given(_grouped_stack(), st.data())
def test_grouped_convs_against_probes(case, data):
    spec, shape = case
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw, density=0.4)
    for res in RESOLUTIONS:
        r = O.dp_counts(O.unrolled_graph(spec, shape, masks, res))
        p = O.float64_probe(model, masks, shape, resolution=res)
        _assert_probe_matches(p, r, f"{res} {spec} {shape}")


def test_probe_does_not_mutate_the_model():
    spec = (O.Conv(2, 3, padding=1, bias=True), O.BatchNorm(), O.ReLU(True),
            O.Pool("max", 2, functional=True), O.SpatialMean(), O.Linear(3))
    model = O.build_torch(spec, (2, 4, 4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = O.masks_for(model, 3)
    O.float64_probe(model, masks, (2, 4, 4))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)


@settings(max_examples=30, **SETTINGS)
@given(st.data())
def test_invariants_of_dp_results(data):
    spec, shape = data.draw(O.specs())
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    for res in RESOLUTIONS:
        g = O.unrolled_graph(spec, shape, masks, res)
        r = O.dp_counts(g)
        for name, eff in r.effective_weights.items():
            assert not (eff & (masks[name].numpy() == 0)).any()  # pruned is never effective
        if r.count == 0:
            assert r.total_effective_nodes == 0 and r.total_effective_params == 0
        else:
            assert r.effective_nodes["input"]
            out_group = g.outputs[0][0]
            if g.is_real(g.outputs[0]):
                assert r.effective_nodes[out_group]
    # channel-level connectivity is implied by neuron-level connectivity
    rn = O.dp_counts(O.unrolled_graph(spec, shape, masks, "neuron"))
    rc = O.dp_counts(O.unrolled_graph(spec, shape, masks, "channel"))
    if rn.count > 0:
        assert rc.count > 0
    for name in rn.effective_weights:
        assert not (rn.effective_weights[name] & ~rc.effective_weights[name]).any()


@settings(max_examples=20, **SETTINGS)
@given(st.data())
def test_zero_layer_kills_every_path(data):
    spec, shape = data.draw(O.specs())
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    # Zero the last prunable weight on the main path (all outputs depend on it
    # unless it sits inside a residual/concat branch, hence the top-level check).
    top = [i for i, layer in enumerate(spec) if isinstance(layer, O.PARAMETRIC)]
    assume(top)
    name = O._child_prefix("", top[-1], O._is_sequential(spec)) + ".weight"
    masks[name] = torch.zeros_like(masks[name])
    for res in RESOLUTIONS:
        r = O.dp_counts(O.unrolled_graph(spec, shape, masks, res))
        assert r.count == 0 and r.total_effective_nodes == 0 and r.total_effective_params == 0
    p = O.float64_probe(model, masks, shape)
    assert p.total == 0 and not any(v.any() for v in p.effective_weights.values())


# ---------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------

def _all_stats(spec, shape, masks):
    model = O.build_torch(spec, shape)
    out = {res: O.dp_counts(O.unrolled_graph(spec, shape, masks, res)) for res in RESOLUTIONS}
    out["probe"] = O.float64_probe(model, masks, shape)
    out["probe_channel"] = O.float64_probe(model, masks, shape, resolution="channel")
    for res in RESOLUTIONS:  # every closed-form case is also a cross-oracle case
        probe = out["probe" if res == "neuron" else "probe_channel"]
        _assert_probe_matches(probe, out[res], res)
    return out


@pytest.mark.parametrize("widths", [(1, 1), (3, 2), (5, 4, 3), (2, 3, 4, 1), (4, 1, 4, 2)])
def test_dense_mlp_closed_form(widths):
    spec = tuple(layer for w in widths[1:] for layer in (O.Linear(w), O.ReLU()))[:-1]
    shape = (widths[0],)
    model = O.build_torch(spec, shape)
    stats = _all_stats(spec, shape, _dense(model))
    n_weights = sum(a * b for a, b in itertools.pairwise(widths))
    for res in RESOLUTIONS:  # at channel and neuron resolution an MLP is the same graph
        assert stats[res].count == math.prod(widths)
        assert stats[res].total_effective_nodes == sum(widths)
        assert stats[res].total_effective_params == n_weights
    assert stats["probe"].total == math.prod(widths)


@st.composite
def _valid_conv_chain(draw):
    """Dense convs without padding: every window is fully inside its input."""
    nd = draw(st.integers(1, 2))
    shape = (draw(st.integers(1, 4)),) + tuple(draw(st.integers(3, 9)) for _ in range(nd))
    layers, cur = [], shape
    for _ in range(draw(st.integers(1, 3))):
        g = draw(st.sampled_from(O._divisors(cur[0])))
        conv = O.Conv(g * draw(st.integers(1, 2)), tuple(draw(st.integers(1, 3)) for _ in range(nd)),
                      tuple(draw(st.integers(1, 2)) for _ in range(nd)), 0,
                      tuple(draw(st.integers(1, 2)) for _ in range(nd)), g)
        nxt = O.out_shape(conv, cur)
        if min(nxt[1:]) < 1:
            break
        layers.append(conv)
        cur = nxt
    assume(layers)
    return tuple(layers), shape


def _chain_factor(spec, shape):
    """prod_l K_l * C_{l-1} / g_l: paths into one unit of the last conv."""
    f, cur = 1, shape
    for conv in spec:
        f *= math.prod(O._tup(conv.k, len(cur) - 1)) * cur[0] // conv.groups
        cur = O.out_shape(conv, cur)
    return f, cur


@settings(max_examples=40, **SETTINGS)
@given(_valid_conv_chain(), st.sampled_from(["none", "mean", "flatten_linear"]), st.integers(1, 3))
def test_dense_valid_conv_chain_closed_form(chain, head, n_classes):
    spec, shape = chain
    f, last = _chain_factor(spec, shape)
    c_last, positions = last[0], math.prod(last[1:])
    # Without padding every unit of a layer receives the same number of paths,
    # so counts factorise: channel level has one node per channel, neuron
    # level one per position; a mean/flatten+linear only regroups the ends.
    expected = {"channel": c_last * f, "neuron": c_last * positions * f}
    if head == "mean":
        spec = spec + (O.SpatialMean(),)
    elif head == "flatten_linear":
        spec = spec + (O.Flatten(), O.Linear(n_classes))
        expected = {res: n_classes * positions * c_last * f for res in RESOLUTIONS}
    model = O.build_torch(spec, shape)
    stats = _all_stats(spec, shape, _dense(model))
    for res in RESOLUTIONS:
        assert stats[res].count == expected[res], res
        assert stats[res].total_effective_params == sum(
            m.numel() for m in _dense(model).values())
    assert stats["probe"].total == expected["neuron"]


@pytest.mark.parametrize("c,h,w", [(1, 1, 1), (2, 3, 2), (3, 4, 4)])
def test_identity_residual_closed_form(c, h, w):
    # y = x + conv1x1(x): each output channel gets 1 identity path + c conv paths.
    spec = (O.Residual((O.Conv(c, 1),), None),)
    model = O.build_torch(spec, (c, h, w))
    stats = _all_stats(spec, (c, h, w), _dense(model))
    assert stats["channel"].count == c * (c + 1)
    assert stats["neuron"].count == h * w * c * (c + 1)
    assert stats["probe"].total == h * w * c * (c + 1)
    # Only input + conv output units are nodes (the add is not).
    assert stats["channel"].total_effective_nodes == 2 * c
    assert stats["neuron"].total_effective_nodes == 2 * c * h * w


@pytest.mark.parametrize("c,ca,j,hw", [(1, 1, 1, 1), (2, 3, 2, 4), (3, 2, 4, 9)])
def test_concat_closed_form(c, ca, j, hw):
    # cat([conv1x1_a(x), x]) -> conv1x1 to j: j * (ca*c + c) paths per position.
    side = math.isqrt(hw)
    spec = (O.Concat((O.Conv(ca, 1),), ()), O.Conv(j, 1))
    model = O.build_torch(spec, (c, side, side))
    stats = _all_stats(spec, (c, side, side), _dense(model))
    assert stats["channel"].count == j * c * (ca + 1)
    assert stats["neuron"].count == hw * j * c * (ca + 1)
    assert stats["probe"].total == hw * j * c * (ca + 1)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("functional", [False, True])
def test_nonoverlapping_pool_closed_form(kind, functional):
    # 1x1 conv c0->c1, 2x2/2 pool, 1x1 conv c1->c2 on a 4x6 input: each pooled
    # unit sums a window of 4 positions.
    c0, c1, c2, h, w = 2, 3, 2, 4, 6
    spec = (O.Conv(c1, 1), O.Pool(kind, 2, functional=functional), O.Conv(c2, 1))
    model = O.build_torch(spec, (c0, h, w))
    stats = _all_stats(spec, (c0, h, w), _dense(model))
    assert stats["channel"].count == c0 * c1 * c2
    assert stats["neuron"].count == c2 * (h // 2) * (w // 2) * 4 * c1 * c0
    assert stats["probe"].total == stats["neuron"].count


def test_adaptive_pool_windows_overlap_like_torch():
    # L=5 -> 3 outputs: windows [0,2), [1,4), [3,5) (sizes 2, 3, 2): 7 paths
    # per channel; torch's window formula is the reference for both oracles.
    spec = (O.Conv(1, 1), O.Adaptive((1, 3)), O.Conv(1, 1))
    model = O.build_torch(spec, (1, 1, 5))
    stats = _all_stats(spec, (1, 1, 5), _dense(model))
    assert stats["neuron"].count == 2 + 3 + 2
    assert stats["probe"].total == 7
    assert stats["channel"].count == 1


def test_padding_positions_are_not_nodes():
    # A 1-wide input with a 3-tap conv and padding 2: out length 3, but only
    # taps that land on the real input make edges (1 + 1 + 1 = 3 paths).
    spec = (O.Conv(1, 3, padding=2),)
    model = O.build_torch(spec, (1, 1))
    stats = _all_stats(spec, (1, 1), _dense(model))
    assert stats["neuron"].count == 3
    assert stats["neuron"].total_effective_nodes == 1 + 3
    assert stats["channel"].count == 3  # three unpruned taps = multiplicity 3
    assert stats["probe"].total == 3
