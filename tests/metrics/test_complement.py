"""Dense conv layers counted by their complement (``topo_pai.metrics.neuron``).

A layer whose density reaches ``COMPLEMENT_MIN_DENSITY`` is the full layer's box filter
minus its pruned elements. The kernels are checked against exact Python-int convs
(``kernels.reference``), with inputs spanning 60 binary orders of magnitude and masks
that keep only the weakest paths, where the subtraction cancels; the engine, with each
path forced, against the explicit-graph DP oracle.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import topo_pai
from topo_pai import topology
from topo_pai.kernels import reference as R
from topo_pai.metrics import neuron as N

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O
from test_against_oracles import check_against_dp

SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture]}
TOL = N.COMPLEMENT_REL_TOL * (1 + 1e-6)  # relative to the exact value, not the computed one


def _single_conv(C, O_, k, stride, pad, dil, groups, H, W, mask):
    """A NeuronGraph over one conv (every layer by its complement) and its pieces."""
    model = nn.Conv2d(C, O_, k, stride=stride, padding=pad, dilation=dil, groups=groups,
                      bias=False)
    topo = topo_pai.from_torch(model, {"weight": torch.as_tensor(mask, dtype=torch.float32)},
                               input_shape=(C, H, W))
    eng = topo.engine("neuron")
    graph = N.NeuronGraph(eng.program, eng.layer_masks, complement_min_density=0.0)
    return graph, graph.plan(0), graph.dense(0)


def _exact_ints(a: np.ndarray) -> np.ndarray:
    """Float64 values that are integers, as an object array of Python ints."""
    out = np.empty(a.shape, dtype=object)
    out.reshape(-1)[:] = [int(v) for v in a.reshape(-1)]
    return out


def _assert_close_to_exact(got: np.ndarray, want: np.ndarray, what: str):
    for g, w in zip(got.reshape(-1).tolist(), want.reshape(-1).tolist()):
        if w == 0:
            assert g == 0.0, f"{what}: {g!r} where the exact value is 0"
        else:
            err = abs(Fraction(g) - w) / w
            assert err <= TOL, f"{what}: {g!r} vs exact {w} (relative error {float(err):.3g})"


@st.composite
def geometries(draw):
    groups = draw(st.integers(1, 2))
    per_group, opg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride, pad, dil = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    assume(H + 2 * pad > dil * (k - 1) and W + 2 * pad > dil * (k - 1))
    return groups * per_group, groups * opg, k, stride, pad, dil, groups, H, W


@st.composite
def near_full_masks(draw, shape, strong):
    """Per output channel: full, near full, the weakest paths only (every element on a
    ``strong`` input channel pruned), or sparse."""
    O_, per_group = shape[:2]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups_in = strong.shape[0] // per_group
    mask = np.ones(shape, dtype=np.uint8)
    for o in range(O_):
        g = o // (O_ // groups_in)
        kind = draw(st.sampled_from(["full", "near", "weak", "weak", "sparse"]))
        if kind == "near":
            mask[o] = rng.random(shape[1:]) >= draw(st.floats(0.0, 0.3))
        elif kind == "weak":
            mask[o][strong[g * per_group:(g + 1) * per_group]] = 0
            mask[o] &= (rng.random(shape[1:]) >= 0.1).astype(np.uint8)
        elif kind == "sparse":
            mask[o] = rng.random(shape[1:]) < 0.3
    return mask


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_complement_kernels_match_exact_convs(data):
    """Forward and transpose, on inputs whose channels differ by up to 2**60, against
    Python-int convs: within COMPLEMENT_REL_TOL, and zero exactly where the count is."""
    C, O_, k, stride, pad, dil, groups, H, W = data.draw(geometries(), label="geometry")
    exps = np.array(data.draw(st.lists(st.sampled_from([0, 0, 30, 60]), min_size=C,
                                       max_size=C), label="input exponents"))
    mask = data.draw(near_full_masks((O_, C // groups, k, k), exps >= 30), label="mask")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="values"))
    _, plan, dc = _single_conv(C, O_, k, stride, pad, dil, groups, H, W, mask)
    x = rng.integers(0, 4, (C, H, W)) * np.exp2(exps)[:, None, None]
    out, _ = N.complement_conv_forward(plan, dc, plan.to_planes(x.reshape(-1)),
                                       N.complement_factor())
    want = R.conv_forward(_exact_ints(x), mask, groups, plan.stride, plan.pad, plan.dilation,
                          (plan.OH, plan.OW))
    _assert_close_to_exact(out, want, "forward")
    # the numpy twin of the kernels' algorithm, in exact arithmetic, is the conv itself
    twin = R.complement_conv_forward(_exact_ints(x), mask, groups, plan.stride, plan.pad,
                                     plan.dilation, (plan.OH, plan.OW))
    assert (twin == want).all()

    gexp = np.array(data.draw(st.lists(st.sampled_from([0, 0, 30, 60]), min_size=O_,
                                       max_size=O_), label="output exponents"))
    g = rng.integers(0, 4, (O_, plan.OH, plan.OW)) * np.exp2(gexp)[:, None, None]
    gin, _ = N.complement_conv_backward(plan, dc, plan.out_to_rows(g.reshape(-1)),
                                        N.complement_factor())
    want_t = R.conv_backward(_exact_ints(g), mask, groups, plan.stride, plan.pad, plan.dilation,
                             (C, H, W))
    _assert_close_to_exact(gin, want_t, "backward")
    twin_t = R.complement_conv_backward(_exact_ints(g), mask, groups, plan.stride, plan.pad,
                                        plan.dilation, (C, H, W))
    assert (twin_t == want_t).all()


def _weakest_paths_case():
    """One strong input channel (2**60) and three weak ones (1); output channel 0 keeps
    only the weak elements, so its complement is 2**60-sized sums that cancel to ~27."""
    C, O_, k = 4, 3, 3
    mask = np.ones((O_, C, k, k), dtype=np.uint8)
    mask[0, 0] = 0
    mask[2, 0, :2] = 0
    x = np.ones((C, 5, 5))
    x[0] *= 2.0 ** 60
    x[1, 2, 2] = 3.0
    return C, O_, k, mask, x


def test_weakest_paths_fall_back_and_stay_exact():
    C, O_, k, mask, x = _weakest_paths_case()
    _, plan, dc = _single_conv(C, O_, k, 1, 1, 1, 1, 5, 5, mask)
    xq = plan.to_planes(x.reshape(-1))
    want = R.conv_forward(_exact_ints(x), mask, 1, (1, 1), (1, 1), (1, 1), (5, 5))
    out, fell = N.complement_conv_forward(plan, dc, xq, N.complement_factor())
    assert fell == 2  # channels 0 and 2 cancel; channel 1 (full) does not
    _assert_close_to_exact(out, want, "forward")
    # The cancellation is real: the same complement in plain float64 is far off.
    naive = R.complement_conv_forward(x, mask, 1, (1, 1), (1, 1), (1, 1), (5, 5))
    with pytest.raises(AssertionError, match="relative error|exact value is 0"):
        _assert_close_to_exact(naive, want, "forward")


def test_exact_mode_is_bit_exact_on_integer_counts():
    """Factor 0 (integer counts whose sums stay below 2**53): no test, exact results."""
    rng = np.random.default_rng(5)
    C, O_, k = 6, 5, 3
    mask = (rng.random((O_, C, k, k)) < 0.9).astype(np.uint8)
    _, plan, dc = _single_conv(C, O_, k, 2, 1, 1, 1, 7, 6, mask)
    x = rng.integers(0, 2**40, (C, 7, 6)).astype(np.float64)
    out, fell = N.complement_conv_forward(plan, dc, plan.to_planes(x.reshape(-1)), 0.0)
    want = R.conv_forward(_exact_ints(x), mask, 1, plan.stride, plan.pad, plan.dilation,
                          (plan.OH, plan.OW))
    assert fell == 0 and (_exact_ints(out).reshape(want.shape) == want).all()


# ---------------------------------------------------------------------------
# the engine, each path forced, against the DP oracle
# ---------------------------------------------------------------------------

def _force(monkeypatch, min_density: float):
    monkeypatch.setitem(topology.ENGINES, "neuron",
                        functools.partial(N.NeuronEngine, complement_min_density=min_density))


def _near_one_masks(model, rng, weakest: bool):
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        m = (rng.random(p.shape) >= rng.uniform(0.0, 0.15)).astype(np.float32)
        if weakest and p.dim() == 4 and p.shape[1] > 1:
            m[: max(1, p.shape[0] // 2), 0] = 0  # some outputs lose their first input channel
        masks[name] = torch.as_tensor(m)
    return masks


@settings(max_examples=25, **SETTINGS)
@given(st.data(), st.sampled_from(["complement", "sparse"]))
def test_each_path_matches_dp_near_density_one(monkeypatch, data, path):
    spec, shape = data.draw(O.specs(kinds=("conv2d", "conv1d")), label="spec")
    model = O.build_torch(spec, shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="mask seed"))
    masks = _near_one_masks(model, rng, data.draw(st.booleans(), label="weakest"))
    with monkeypatch.context() as mp:
        _force(mp, 0.0 if path == "complement" else 2.0)
        topo = topo_pai.from_torch(model, masks, input_shape=shape)
        check_against_dp(topo, spec, shape, masks, resolutions=("neuron",))
        graph = topo.engine("neuron").graph
        convs = [i for i, layer in enumerate(topo.program.layers) if layer.kind != "Linear"]
        assert all((graph.dense(i) is not None) == (path == "complement") for i in convs)


#: A deep full branch (counts past 2**53, so the complement kernels test their bound)
#: concatenated with the raw input twice; the head's masks keep only weak paths.
WEAK_SPEC = [O.Concat(a=tuple(O.Conv(4, 3, padding=1) for _ in range(10)),
                      b=(O.Concat(a=(), b=()),)),
             O.Conv(4, 3, padding=1)]
WEAK_SHAPE = (4, 5, 5)


def test_weakest_paths_through_a_model_match_dp(monkeypatch):
    model = O.build_torch(WEAK_SPEC, WEAK_SHAPE)
    masks = {n: torch.ones(p.shape) for n, p in model.named_parameters() if p.dim() > 1}
    head = list(masks)[-1]
    masks[head][0, :4] = 0  # only the 8 raw-input channels: 72 kept, 36 pruned
    masks[head][2, :4] = 0
    masks[head][2, 4:, 1, 1] = 0  # and not even their centre taps
    _force(monkeypatch, 0.0)
    topo = topo_pai.from_torch(model, masks, input_shape=WEAK_SHAPE)
    check_against_dp(topo, WEAK_SPEC, WEAK_SHAPE, masks, resolutions=("neuron",))
    graph = topo.engine("neuron").graph
    assert graph.fallbacks[(len(topo.program.layers) - 1, "forward")] > 0
    assert math.isclose(topo.count_paths("neuron").log10,
                        math.log10(topo.count_paths("neuron").exact), rel_tol=1e-12)


def test_the_choice_follows_density_and_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Conv2d(4, 2, 1))
    density = N.COMPLEMENT_MIN_DENSITY
    rng = np.random.default_rng(0)
    masks = {"0.weight": torch.ones(4, 3, 3, 3),
             "2.weight": torch.as_tensor(rng.random((4, 4, 3, 3)) < density / 4,
                                         dtype=torch.float32),
             "4.weight": torch.ones(2, 4, 1, 1)}
    masks["4.weight"][0, 0] = 0  # 7 of 8: still dense
    topo = topo_pai.from_torch(model, masks, input_shape=(3, 8, 8))
    eng = topo.engine("neuron")
    assert [eng.graph.dense(i) is not None for i in range(3)] == [True, False, True]
    weighted = eng.with_weights([np.ones(lm.mask.size) for lm in eng.layer_masks])
    assert all(weighted.graph.dense(i) is None for i in range(3))
    # the two engines answer the same
    assert eng.log10_total() == pytest.approx(weighted.log10_total(), rel=1e-12)


def test_the_threshold_depends_on_the_kernel_size(monkeypatch):
    """Kernels with several taps take the complement from COMPLEMENT_MIN_DENSITY_TAPS,
    1x1 kernels only from COMPLEMENT_MIN_DENSITY; an explicit threshold applies to both."""
    assert N.COMPLEMENT_MIN_DENSITY_TAPS < N.COMPLEMENT_MIN_DENSITY
    density = (N.COMPLEMENT_MIN_DENSITY_TAPS + N.COMPLEMENT_MIN_DENSITY) / 2
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    rng = np.random.default_rng(3)
    masks = {}
    for name, d in {"0.weight": density, "2.weight": density,
                    "4.weight": N.COMPLEMENT_MIN_DENSITY_TAPS / 2}.items():
        shape = dict(model.named_parameters())[name].shape
        m = np.zeros(int(np.prod(shape)), dtype=np.float32)
        m[rng.permutation(m.size)[:round(d * m.size)]] = 1  # exactly that density
        masks[name] = torch.as_tensor(m.reshape(shape))
    topo = topo_pai.from_torch(model, masks, input_shape=(8, 6, 6))
    graph = topo.engine("neuron").graph
    assert [graph.dense(i) is not None for i in range(3)] == [True, False, False]
    for forced, want in ((0.0, [True] * 3), (2.0, [False] * 3)):
        g = N.NeuronGraph(topo.program, graph.layer_masks, complement_min_density=forced)
        assert [g.dense(i) is not None for i in range(3)] == want
    _force(monkeypatch, 2.0)  # every layer on its element lists: the same answers
    lists = topo_pai.from_torch(model, masks, input_shape=(8, 6, 6))
    for query in ("effective_nodes", "effective_params"):
        assert getattr(topo, query)("neuron") == getattr(lists, query)("neuron")
    assert topo.count_paths("neuron").log10 == pytest.approx(
        lists.count_paths("neuron").log10, rel=1e-13)
