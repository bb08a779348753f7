"""The torch engine (``engine="torch"``) and the per-layer mix (``engine="auto"``) against
the Numba engine, at neuron resolution.

Counts and flows must agree up to float64 rounding, reachability exactly, on the
oracles' random architectures (every supported op) and on both extremes of depth: a
chain whose counts pass float64's range, and wide shallow nets. The Numba engine is
itself checked against the independent oracles in ``test_against_oracles.py``; the
deep chains here also have closed forms. CUDA tests skip without a GPU.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import replace
from unittest import mock
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import oracles as O  # noqa: E402
import topo_pai  # noqa: E402
from own_models import CatNet, ResDepthNet  # noqa: E402
from topo_pai.metrics import torch_neuron, torch_sparse  # noqa: E402
from topo_pai.metrics.neuron import NeuronEngine  # noqa: E402
from topo_pai.metrics.torch_neuron import (  # noqa: E402
    AutoNeuronEngine,
    TorchNeuronEngine,
    work_density,
)
from topo_pai.models import resnet20  # noqa: E402
from topo_pai.pruners import prune_with_scores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from baselines import float64_synflow  # noqa: E402

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
RTOL = 1e-9  # relative, on counts: float64 rounding over a few hundred ops


def _same_log10(a, b, what: str, atol: float = 1e-9):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, what
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=what)
    finite = np.isfinite(a)
    np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=atol, err_msg=what)


def _same_counts(a, b, what: str):
    """Two NodeCounts dicts/tuples agree up to rounding (compared as log10)."""
    _same_log10(a.log10, b.log10, what)


def assert_engines_agree(model, masks, shape, weights=None, other="torch"):
    """Every neuron-resolution answer of ``engine=other`` equals the Numba engine's:
    counts and flows up to rounding, reachability and effectiveness exactly."""
    with warnings.catch_warnings():  # some oracle models hold uncovered weights, on purpose
        warnings.simplefilter("ignore", topo_pai.UncoveredWeightsWarning)
        ref = topo_pai.from_torch(model, masks, shape, engine="numba")
        got = topo_pai.from_torch(model, masks, shape, engine=other)
    r = "neuron"
    _same_log10(ref.count_paths(r).log10, got.count_paths(r).log10, "log10 paths")
    assert ref.effective_nodes(r) == got.effective_nodes(r)
    assert ref.effective_params(r) == got.effective_params(r)
    e_ref, e_got = ref.effective_masks(r), got.effective_masks(r)
    for k in e_ref:
        np.testing.assert_array_equal(e_ref[k], e_got[k], err_msg=k)
    for direction in ("forward_counts", "backward_counts"):
        a, b = getattr(ref, direction)(r), getattr(got, direction)(r)
        for k in a:
            _same_counts(a[k], b[k], f"{direction} {k}")
    for i in range(len(ref.layers)):
        for x, y in zip(ref.layer_reach(i, r), got.layer_reach(i, r)):
            np.testing.assert_array_equal(x, y)
        _same_counts(ref.layer_input_counts(i, r), got.layer_input_counts(i, r), f"P_in {i}")
    fa, fb = ref.flows(weights, r), got.flows(weights, r)
    _same_log10(fa.log10_total, fb.log10_total, "log10 R")
    sa, sb = fa.log10_through_weights(), fb.log10_through_weights()
    assert set(sa) == set(sb)
    for k in sa:
        _same_log10(sa[k], sb[k], f"scores {k}")
    for i in range(len(ref.layers)):
        for x, y in zip(fa.layer_flows(i), fb.layer_flows(i)):
            _same_counts(x, y, f"layer flows {i}")
    return ref, got


def _abs_weights(model, masks, rng):
    return {n: np.abs(rng.standard_normal(tuple(m.shape))) + 0.05 for n, m in masks.items()}


# ---------------------------------------------------------------------------
# the oracles' architectures, every supported op (Hypothesis over masks)
# ---------------------------------------------------------------------------

@SETTINGS
@given(st.data())
def test_torch_engine_equals_numba_on_random_architectures(data):
    spec, shape = data.draw(O.specs(extras=True, uniform=data.draw(st.booleans())),
                            label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    assert_engines_agree(model, masks, shape, _abs_weights(model, masks, rng))


@SETTINGS
@given(st.data())
def test_auto_equals_numba_on_random_architectures(data):
    """``engine="auto"`` with the crossover at 0.5: masks on both sides of it."""
    spec, shape = data.draw(O.specs(min_spatial=3, min_blocks=2), label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    with mock.patch.object(torch_neuron, "TORCH_MIN_DENSITY", 0.5), \
            mock.patch.object(torch_neuron, "TORCH_LAYER_WORK", 0):
        assert_engines_agree(model, masks, shape, _abs_weights(model, masks, rng), other="auto")


@pytest.mark.parametrize("make, shape", [(ResDepthNet, (3, 9, 7)), (CatNet, (2, 8, 8))])
@pytest.mark.parametrize("density", [1.0, 0.4, 0.05])
def test_own_models_agree(make, shape, density):
    """Residual, depthwise (grouped), cat and max-pool models, wide relative to depth."""
    torch.manual_seed(0)
    model = make().eval()
    masks = O.masks_for(model, np.random.default_rng(3), density)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    assert_engines_agree(model, masks, shape, absw)


def test_wide_shallow_net_agrees():
    """Wide and shallow: 48 channels at 20x20, strides, asymmetric 'same' padding and
    dilation, then a Linear head."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 48, 4, padding="same"), nn.ReLU(),
        nn.Conv2d(48, 48, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(48, 32, 2, stride=(2, 1)), nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(), nn.Linear(32 * 3 * 5, 10))
    masks = O.masks_for(model, np.random.default_rng(0), 0.5)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    assert_engines_agree(model, masks, (3, 20, 20), absw)


# ---------------------------------------------------------------------------
# deep: counts past float64's range, and dynamic ranges that underflow
# ---------------------------------------------------------------------------

def _chain(depth: int, width: int):
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])


def test_deep_chain_past_float64_agrees_with_closed_form():
    depth, width = 260, 16  # 16**261 paths, about 1e314
    model = _chain(depth, width)
    ref, got = assert_engines_agree(model, {}, (width,))
    want = (depth + 1) * math.log10(width)
    assert got.count_paths("neuron").log10 == pytest.approx(want, rel=1e-12)
    assert got.count_paths("neuron").exact == width ** (depth + 1)


def test_deep_conv_chain_agrees():
    """200 conv1d layers (2 channels, length 6, kernel 3, padding 1): counts ~10^150,
    with positions near the border counted less; weighted by |w|."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Conv1d(2, 2, 3, padding=1) for _ in range(200)])
    masks = O.masks_for(model, np.random.default_rng(1), 0.8)
    for m in masks.values():  # keep every layer connected: tap 1 of every kernel stays
        m[:, :, 1] = 1
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    ref, got = assert_engines_agree(model, masks, (2, 6), absw)
    assert got.count_paths("neuron").log10 > 100


@pytest.mark.filterwarnings("ignore:.*a node group spans more than:RuntimeWarning")  # by design
def test_reachability_is_exact_when_counts_span_more_than_float64():
    """Unit 0 of every layer is fed by unit 0 alone (one path), units 1-15 by each other
    (15**depth paths): a dynamic range past 2**900, where a scaled count of 1 would
    underflow next to the others. Every unit stays effective, and a cut lane is not."""
    depth = 240
    model = _chain(depth, 16)
    lane = torch.zeros(16, 16)
    lane[0, 0] = 1
    lane[1:, 1:] = 1
    masks = {f"{i}.weight": lane.clone() for i in range(depth)}
    ref, got = assert_engines_agree(model, masks, (16,))
    assert got.effective_nodes("neuron") == 16 * (depth + 1)
    engine = got.engine("neuron")
    assert any(s.risky for s in engine.forward())
    cut = dict(masks)
    cut["200.weight"] = lane.clone()
    cut["200.weight"][0, 0] = 0  # the one-path lane ends at layer 200
    got = topo_pai.from_torch(model, cut, (16,), engine="torch")
    assert got.effective_nodes("neuron") == 15 * (depth + 1)  # the whole lane is cut off
    assert got.effective_params("neuron") == 15 * 15 * depth


# ---------------------------------------------------------------------------
# selection, devices, refusals
# ---------------------------------------------------------------------------

def _bernoulli(model, density, seed=0):
    rng = np.random.default_rng(seed)
    return {n: torch.from_numpy((rng.random(tuple(model.get_parameter(n).shape)) < density)
                                .astype(np.float32)) for n in O.prunable_weight_names(model)}


@mock.patch.object(torch_neuron, "TORCH_LAYER_WORK", 0)  # tiny layers: density alone
def test_engine_option_selects_the_implementation():
    model = ResDepthNet()
    masks = _bernoulli(model, 0.6)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    numba = topo_pai.from_torch(model, masks, (3, 6, 6), engine="numba")
    assert type(numba.engine("neuron")) is NeuronEngine
    assert type(numba.flows(absw, "neuron")._engine) is NeuronEngine
    auto = topo_pai.from_torch(model, masks, (3, 6, 6))
    assert type(auto.engine("neuron")) is AutoNeuronEngine  # counts on Numba
    flows = auto.flows(absw, "neuron")._engine
    assert type(flows) is TorchNeuronEngine and flows.device == torch.device("cpu")
    sparse = topo_pai.from_torch(model, _bernoulli(model, 0.005), (3, 6, 6))
    assert type(sparse.flows(absw, "neuron")._engine) is NeuronEngine
    with_masks = auto.with_masks(masks)  # the choice travels with the trace
    assert type(with_masks.engine("neuron")) is AutoNeuronEngine
    torch_topo = topo_pai.from_torch(model, masks, (3, 6, 6), engine="torch")
    assert type(torch_topo.with_masks(masks).engine("neuron")) is TorchNeuronEngine
    assert type(torch_topo.engine("channel")).__name__ == "ChannelEngine"


def test_bad_engine_is_refused_before_tracing():
    with pytest.raises(ValueError, match="engine must be one of 'auto', 'numba', 'torch'"):
        topo_pai.from_torch(ResDepthNet(), None, (3, 6, 6), engine="gpu")


def test_an_op_the_engine_cannot_propagate_is_refused_naming_its_node():
    topo = topo_pai.from_torch(CatNet(), None, (2, 8, 8), engine="torch")
    program = topo.program
    i = next(k for k, op in enumerate(program.ops) if op.kind == "pool")
    program.ops[i] = replace(program.ops[i], kind="mystery")
    with pytest.raises(topo_pai.UnsupportedOpError, match=program.ops[i].fx_node):
        topo.count_paths("neuron")


def test_inputs_are_not_modified():
    model = CatNet()
    masks = O.masks_for(model, np.random.default_rng(2), 0.5)
    absw = {n: model.get_parameter(n).detach().abs().numpy().copy() for n in masks}
    before = {n: w.copy() for n, w in absw.items()}
    topo = topo_pai.from_torch(model, masks, (2, 8, 8), engine="torch")
    topo.flows(absw, "neuron").log10_through_weights()
    for n in absw:
        np.testing.assert_array_equal(absw[n], before[n])


@CUDA
def test_cuda_model_runs_the_torch_engine_on_its_device():
    torch.manual_seed(0)
    model = ResDepthNet().eval()
    masks = O.masks_for(model, np.random.default_rng(0), 0.6)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    cpu = topo_pai.from_torch(model, masks, (3, 9, 7), engine="torch")
    gpu_model = model.cuda()
    gpu = topo_pai.from_torch(gpu_model, masks, (3, 9, 7), engine="torch")
    assert gpu.engine("neuron").device.type == "cuda"
    assert gpu.effective_nodes("neuron") == cpu.effective_nodes("neuron")
    assert gpu.effective_params("neuron") == cpu.effective_params("neuron")
    _same_log10(cpu.count_paths("neuron").log10, gpu.count_paths("neuron").log10, "paths")
    sa = cpu.flows(absw, "neuron").log10_through_weights()
    sb = gpu.flows(absw, "neuron").log10_through_weights()
    for k in sa:
        _same_log10(sa[k], sb[k], k)
    auto = topo_pai.from_torch(gpu_model, _bernoulli(model, 0.01), (3, 9, 7))
    engine = auto.flows(absw, "neuron")._engine  # sparse, but on the GPU: torch
    assert type(engine) is TorchNeuronEngine and engine.device.type == "cuda"


@CUDA
def test_cuda_deep_chain_is_overflow_free():
    model = _chain(600, 4).cuda()
    topo = topo_pai.from_torch(model, None, (4,), engine="torch")
    assert topo.count_paths("neuron").log10 == pytest.approx(601 * math.log10(4), rel=1e-12)


# ---------------------------------------------------------------------------
# published SynFlow against the benchmark's float64 torch loop
# ---------------------------------------------------------------------------

def test_single_shot_synflow_masks_equal_the_float64_torch_loop():
    torch.manual_seed(0)
    model = resnet20(width=4)
    ours = topo_pai.prune(model, "synflow", 0.95, input_shape=(3, 16, 16), rounds=1)
    ref = float64_synflow(model, 0.95, (3, 16, 16), rounds=1)
    assert set(ours) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ours[k].bool().numpy(), ref[k].numpy(), err_msg=k)


def test_synflow_on_a_deep_chain_overflows_the_float64_loop_but_not_ours():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(400)])
    for layer in model:
        nn.init.uniform_(layer.weight, 0.5, 1.0)  # R ~ 6**400 ~ 1e311 > 1.8e308
    net = model.double()
    with torch.no_grad():
        r = net(torch.ones(1, 8, dtype=torch.float64)).sum()
    assert torch.isinf(r)  # the premise: plain float64 overflows
    ref = float64_synflow(model, 0.5, (8,), rounds=1)
    res = prune_with_scores(model, "synflow", 0.5, input_shape=(8,), rounds=1)
    kept = sum(int(m.sum()) for m in res.masks.values())
    assert kept == 400 * 64 // 2
    assert all(np.isfinite(s).all() for s in res.scores.values())
    # the loop's scores are nan (inf * 0 in the backward pass), so its top-k is arbitrary
    assert sum(int(m.sum()) for m in ref.values()) == kept
    absw = {n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("weight")}
    log10_r = topo_pai.from_torch(model, None, (8,)).flows(absw, "neuron").log10_total
    assert 308.3 < log10_r < 400  # R itself, past float64, held overflow-free


def test_work_density_weights_layers_by_their_output_positions():
    """A 1x1 conv over 8x8 positions (64 weights, 64 positions) at density 1/4 and a
    Linear head (2 x 512 weights, 1 position) dense: (16*64 + 1024) / (64*64 + 1024)."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 2))
    mask = torch.zeros(8, 8, 1, 1)
    mask[:, :2] = 1
    topo = topo_pai.from_torch(model, {"0.weight": mask}, (8, 8, 8))
    assert work_density(topo.program, topo._layer_masks) == (16 * 64 + 1024) / (64 * 64 + 1024)


# ---------------------------------------------------------------------------
# conv layers on their kept elements (CSR products)
# ---------------------------------------------------------------------------

def _all_sparse():
    """Every one-group conv on its kept elements, whatever its size and density."""
    return mock.patch.multiple(torch_sparse, SPARSE_MAX_DENSITY=1.0, SPARSE_MIN_WORK=1)


@SETTINGS
@given(st.data())
def test_kept_element_convs_equal_numba_on_random_architectures(data):
    """Strides, dilations, asymmetric and cropping pads, pools, adds and cats: the
    sparse products give the Numba engine's counts, flows and exact reachability."""
    spec, shape = data.draw(O.specs(extras=True, uniform=data.draw(st.booleans())),
                            label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    with _all_sparse():
        assert_engines_agree(model, masks, shape, _abs_weights(model, masks, rng))


@pytest.mark.parametrize("make, shape", [(ResDepthNet, (3, 9, 7)), (CatNet, (2, 8, 8))])
def test_kept_element_convs_on_own_models(make, shape):
    torch.manual_seed(0)
    model = make().eval()
    masks = O.masks_for(model, np.random.default_rng(5), 0.15)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    with _all_sparse():
        _, got = assert_engines_agree(model, masks, shape, absw)
    engine = got.engine("neuron")
    assert any(engine._is_sparse(i) for i in range(len(got.layers)))


def test_kept_element_convs_on_a_deep_chain_past_float64():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Conv1d(2, 2, 3, padding=1) for _ in range(200)])
    masks = O.masks_for(model, np.random.default_rng(1), 0.8)
    for m in masks.values():
        m[:, :, 1] = 1
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    with _all_sparse():
        _, got = assert_engines_agree(model, masks, (2, 6), absw)
    assert got.count_paths("neuron").log10 > 100


def test_kept_elements_follow_shrinking_masks_and_fall_back_otherwise():
    """From the previous list when the new mask keeps a subset of it, from the mask
    when it does not (a revived element): the same lists as from scratch."""
    rng = np.random.default_rng(0)
    rows, cols = 7, 30
    first = (rng.random(rows * cols) < 0.5).astype(np.uint8)
    prev = torch_sparse.kept_elements(first, rows, cols)
    shrunk = first & (rng.random(rows * cols) < 0.6)
    revived = shrunk.copy()
    revived[np.flatnonzero(first == 0)[0]] = 1
    for mask in (shrunk, revived, np.zeros_like(first)):
        got = torch_sparse.kept_elements(mask, rows, cols, prev)
        want = torch_sparse.kept_elements(mask, rows, cols)
        for a, b in zip(vars(got).values(), vars(want).values()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(want.flat, np.flatnonzero(mask))
        by_col = np.flatnonzero(mask.reshape(rows, cols).T.reshape(-1))
        np.testing.assert_array_equal(want.by_column, (by_col % rows) * cols + by_col // rows)


def test_synflow_rounds_on_kept_elements_keep_the_dense_masks():
    """Many rounds (each list read off the previous one): the masks of the dense path."""
    torch.manual_seed(0)
    model = resnet20(width=4)
    dense = topo_pai.prune(model, "synflow", 0.9, input_shape=(3, 16, 16), rounds=8)
    with _all_sparse():
        sparse = topo_pai.prune(model, "synflow", 0.9, input_shape=(3, 16, 16), rounds=8)
    for k in dense:
        np.testing.assert_array_equal(dense[k].numpy(), sparse[k].numpy(), err_msg=k)


def test_a_conv_with_no_kept_element_runs_on_its_empty_lists():
    """A pruned-away conv (a ResNet shortcut SynFlow empties) costs no convolution and
    counts as the dense path does, whatever its size."""
    torch.manual_seed(0)
    model = ResDepthNet().eval()
    masks = O.masks_for(model, np.random.default_rng(2), 0.5)
    name = next(n for n, m in masks.items() if m.dim() == 4 and model.get_parameter(n).shape[1] > 1)
    masks[name] = torch.zeros_like(masks[name])
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    _, got = assert_engines_agree(model, masks, (3, 9, 7), absw)
    engine = got.flows(absw, "neuron")._engine
    index = [layer.param for layer in got.layers].index(name)
    assert engine._is_sparse(index)
