"""``topo_pai`` checked against the independent oracles in ``oracles.py``.

For every architecture (random hypothesis specs, a few hand-written ones and
the reference models in ``topo_pai.models``) and both resolutions we compare
the exact path count, its log10, the effective node and parameter totals and
the per-weight effective masks with the explicit-graph DP, and the counts and
effective masks with the float64 torch probes.  The oracles themselves are
cross-checked in ``test_oracles_selfcheck.py``.
"""

from __future__ import annotations

import math
import os
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import topo_pai

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same'"),
    # the fuzzed models use unmasked 2-D parameters as constant factors on purpose
    pytest.mark.filterwarnings("ignore::topo_pai.errors.UncoveredWeightsWarning"),
]

RESOLUTIONS = ("channel", "neuron")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
EXACT_FLOAT = 2**52  # float64 probe totals are exact integers below this


def _as_format(masks: dict, fmt: str) -> dict:
    """The same 0/1 masks as float tensors, bool tensors or numpy int arrays."""
    if fmt == "torch":
        return masks
    if fmt == "bool":
        return {k: v.bool() for k, v in masks.items()}
    return {k: v.numpy().astype(np.int64) for k, v in masks.items()}


def _where(spec, shape, res, what):
    return f"[{res}] {what} for spec={spec} input_shape={shape}"


def check_against_dp(topo, spec, shape, masks, resolutions=RESOLUTIONS):
    """Every topo_pai quantity vs the explicit-graph DP oracle."""
    for res in resolutions:
        want = O.dp_counts(O.unrolled_graph(spec, shape, masks, res))
        pc = topo.count_paths(res)
        got = pc.exact
        assert isinstance(got, int), _where(spec, shape, res, f"exact is {type(got)}")
        assert got == want.count, _where(spec, shape, res, f"path count: expected {want.count}, got {got}")
        want_log = math.log10(want.count) if want.count else -math.inf
        assert pc.log10 == pytest.approx(want_log, rel=1e-9, abs=1e-9), \
            _where(spec, shape, res, f"log10: expected {want_log}, got {pc.log10}")
        n = topo.effective_nodes(res)
        assert n == want.total_effective_nodes, _where(
            spec, shape, res, f"effective nodes: expected {want.total_effective_nodes} "
            f"(per group { {k: len(v) for k, v in want.effective_nodes.items()} }), got {n}")
        p = topo.effective_params(res)
        assert p == want.total_effective_params, _where(
            spec, shape, res, f"effective params: expected {want.total_effective_params}, got {p}")
        _check_masks(topo.effective_masks(res), want.effective_weights, spec, shape, res, "dp")


def check_against_probe(topo, model, masks, shape, spec=None, resolutions=RESOLUTIONS):
    """Counts and effective masks vs the float64 probes (any fx-traceable model)."""
    for res in resolutions:
        probe = O.float64_probe(model, masks, shape, resolution=res)
        pc = topo.count_paths(res)
        if probe.total < EXACT_FLOAT:
            assert pc.exact == int(probe.total), _where(
                spec, shape, res, f"path count vs probe: expected {int(probe.total)}, got {pc.exact}")
        want_log = math.log10(probe.total) if probe.total else -math.inf
        assert pc.log10 == pytest.approx(want_log, rel=1e-9, abs=1e-9), \
            _where(spec, shape, res, f"log10 vs probe: expected {want_log}, got {pc.log10}")
        _check_masks(topo.effective_masks(res), probe.effective_weights, spec, shape, res, "probe")
        want_params = int(sum(int(v.sum()) for v in probe.effective_weights.values()))
        assert topo.effective_params(res) == want_params, _where(
            spec, shape, res, f"effective params vs probe: expected {want_params}, "
            f"got {topo.effective_params(res)}")
        assert topo.effective_nodes(res) == probe.effective_nodes, _where(
            spec, shape, res, f"effective nodes vs probe: expected {probe.effective_nodes}, "
            f"got {topo.effective_nodes(res)}")


def _check_masks(got: dict, want: dict, spec, shape, res, oracle):
    assert set(got) == set(want), _where(
        spec, shape, res, f"effective_masks keys: expected {sorted(want)}, got {sorted(got)}")
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, torch.Tensor) and g.dtype == torch.bool, _where(
            spec, shape, res, f"effective_masks[{name!r}] must be a bool tensor, got {type(g)} "
            f"{getattr(g, 'dtype', None)}")
        assert tuple(g.shape) == w.shape, _where(
            spec, shape, res, f"effective_masks[{name!r}] shape {tuple(g.shape)} != {w.shape}")
        g = g.numpy()
        if not np.array_equal(g, w):
            extra, missing = np.argwhere(g & ~w), np.argwhere(w & ~g)
            raise AssertionError(_where(
                spec, shape, res,
                f"effective_masks[{name!r}] vs {oracle}: {len(extra)} extra (e.g. "
                f"{extra[:3].tolist()}), {len(missing)} missing (e.g. {missing[:3].tolist()})"))


def _run_case(spec, shape, masks, fmt="torch"):
    model = O.build_torch(spec, shape)
    topo = topo_pai.from_torch(model, _as_format(masks, fmt), input_shape=shape)
    check_against_dp(topo, spec, shape, masks)
    check_against_probe(topo, model, masks, shape, spec)


# ---------------------------------------------------------------------------
# random architectures
# ---------------------------------------------------------------------------

@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_random_specs_match_oracles(data):
    spec, shape = data.draw(O.specs(), label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    fmt = data.draw(st.sampled_from(["torch", "bool", "numpy"]), label="mask format")
    topo = topo_pai.from_torch(model, _as_format(masks, fmt), input_shape=shape)
    check_against_dp(topo, spec, shape, masks)
    check_against_probe(topo, model, masks, shape, spec)


@settings(max_examples=25, **SETTINGS)
@given(st.data())
def test_larger_random_specs_match_oracles(data):
    # hypothesis favours small draws; these force 5..7 wide inputs, >= 3 blocks.
    spec, shape = data.draw(O.specs(min_spatial=5, min_blocks=3, kinds=("conv2d",)), label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw, density=0.6)
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    check_against_dp(topo, spec, shape, masks)
    check_against_probe(topo, model, masks, shape, spec)


# ---------------------------------------------------------------------------
# fuzzing: every supported op, constants and optional forward arguments
# ---------------------------------------------------------------------------

#: Examples per fuzz test: a fixed number in CI; ``TOPO_PAI_FUZZ_EXAMPLES=5000`` for a
#: long run (see the README's "Tests" paragraph).
FUZZ_EXAMPLES = int(os.environ.get("TOPO_PAI_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_fuzz_every_op_matches_probe_and_dp(data):
    """Random fx-traceable models from every supported op, products/divisions/offsets
    by constants (scalars, buffers, parameters, literals; per unit or per position),
    ``a - b`` merges and blocks that depend on optional forward arguments, with random
    masks: both resolutions against the float64 all-ones probe (counts, effective
    params, nodes and masks) and the explicit-graph DP."""
    spec, shape = data.draw(O.specs(extras=True), label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    check_against_probe(topo, model, masks, shape, spec)
    check_against_dp(topo, spec, shape, masks)


def _log10(a):
    with np.errstate(divide="ignore"):
        return np.log10(a)


@FUZZ
@given(st.data())
def test_fuzz_flows_with_constants_match_weighted_probe(data):
    """Weighted flows (SynFlow's R and its per-weight scores) with constant factors:
    a factor ``c`` scales the flow through its units by ``|c|`` (``1/|c|`` for a
    division), against a float64 forward/backward with ``|w|`` and ``|c|``. At channel
    resolution a factor whose non-zero magnitudes vary within a channel is refused."""
    spec, shape = data.draw(O.specs(extras=True, uniform=data.draw(st.booleans())),
                            label="spec")
    model = O.build_torch(spec, shape)
    masks = O.masks_for(model, data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    absw = {n: np.abs(rng.standard_normal(tuple(m.shape))) + 0.1 for n, m in masks.items()}
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    for res in RESOLUTIONS:
        try:
            probe = O.float64_probe(model, masks, shape, res, weights=absw)
        except ValueError as exc:
            assert res == "channel" and "varies within a channel" in str(exc)
            with pytest.raises(topo_pai.UnsupportedOpError, match="resolution='neuron'"):
                topo.flows(absw, res)
            continue
        flows = topo.flows(absw, res)
        want = math.log10(probe.total) if probe.total > 0 else -math.inf
        assert flows.log10_total == pytest.approx(want, rel=1e-9, abs=1e-9), \
            _where(spec, shape, res, f"log10 R: expected {want}, got {flows.log10_total}")
        scores = flows.log10_through_weights()
        for name, got in scores.items():
            expect = _log10(probe.flows[name])
            finite = np.isfinite(expect)
            assert np.array_equal(np.isfinite(got), finite), _where(
                spec, shape, res, f"scores of {name}: flow-carrying weights differ")
            np.testing.assert_allclose(got[finite], expect[finite], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------
# hand-written architectures (each exercises a named feature deterministically)
# ---------------------------------------------------------------------------

HAND_WRITTEN = {
    "mini_resnet": ((O.Conv(3, 3, padding=1), O.BatchNorm(), O.ReLU(True),
                     O.Residual((O.Conv(3, 3, padding=1), O.BatchNorm(), O.ReLU(),
                                 O.Conv(3, 3, padding=1)), None),
                     O.ReLU(True),
                     O.Residual((O.Conv(4, 3, stride=2, padding=1), O.ReLU(True),
                                 O.Conv(4, 3, padding=1)), O.Conv(4, 1, stride=2), add="torch"),
                     O.SpatialMean("keepdim"), O.Flatten("view"), O.Linear(3)), (2, 6, 6)),
    "mini_vgg": ((O.Conv(3, 3, padding=1), O.ReLU(), O.Unary("dropout"), O.Pool("max", 2),
                  O.Conv(4, 3, padding=1), O.BatchNorm(), O.ReLU(True),
                  O.Pool("avg", 3, 2, 1, ceil_mode=True, functional=True),
                  O.Adaptive(1), O.Flatten(), O.Linear(2)), (2, 7, 7)),
    "depthwise_separable": ((O.Conv(4, 3, stride=2, padding=1),
                             O.Conv(4, 3, padding="same", groups=4), O.ReLU(),
                             O.Conv(2, 1), O.Conv(4, (1, 3), padding=(0, 1), groups=2),
                             O.Flatten("torch"), O.Linear(3)), (3, 7, 5)),
    "conv1d": ((O.Conv(3, 3, padding="same", dilation=2), O.ReLU(True),
                O.Conv(4, 2, stride=2, groups=1), O.BatchNorm(),
                O.Conv(4, 3, padding=2, groups=2), O.SpatialMean("torch"), O.Linear(2)), (2, 7)),
    "inception": ((O.Conv(2, 1),
                   O.Concat((O.Conv(2, 3, padding=1),), (O.Pool("max", 3, 1, 1),)),
                   O.Concat((O.Conv(3, 1, stride=2),), (O.Pool("avg", 1, 2, functional=True),)),
                   O.Adaptive((2, 1), kind="max", functional=True), O.Flatten(),
                   O.Linear(3)), (1, 6, 5)),
    "flatten_spatial": ((O.Conv(2, 2, stride=2), O.Flatten(), O.ReLU(), O.Linear(3),
                         O.Linear(2)), (1, 5, 5)),
    "mlp": ((O.Linear(4), O.ReLU(True), O.BatchNorm(), O.Linear(3), O.ReLU(), O.Linear(2)),
            (5,)),
    "assorted_unary_ops": ((O.Conv(3, 3, padding=1), O.Unary("groupnorm"), O.Unary("gelu"),
                            O.Conv(3, 3, padding=1), O.Unary("layernorm"), O.Unary("sigmoid"),
                            O.Unary("identity"), O.Flatten("torch"), O.Linear(2),
                            O.Unary("dropout")), (1, 4, 4)),
}


@pytest.mark.parametrize("density", [1.0, 0.5])
@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_architectures(name, density):
    spec, shape = HAND_WRITTEN[name]
    model = O.build_torch(spec, shape)
    if density == 1.0:
        masks = {n: torch.ones_like(p) for n, p in model.named_parameters()
                 if n in O.prunable_weight_names(model)}
    else:  # no all-zero layer: partial masks give non-trivial effective sets
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        masks = {n: torch.as_tensor(rng.random(tuple(p.shape)) < density, dtype=torch.float32)
                 for n, p in model.named_parameters() if n in O.prunable_weight_names(model)}
    _run_case(spec, shape, masks)


# ---------------------------------------------------------------------------
# reference models shipped with topo_pai (probes only: no spec exists)
# ---------------------------------------------------------------------------

def _sparse_masks(model, seed):
    """Per-layer Bernoulli masks with densities in [0.05, 0.6] (never all-zero layers)."""
    rng = np.random.default_rng(seed)
    params = dict(model.named_parameters())
    return {n: torch.as_tensor(rng.random(tuple(params[n].shape)) < rng.uniform(0.05, 0.6),
                               dtype=torch.float32)
            for n in O.prunable_weight_names(model)}


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 8, 8)), ("vgg11", (3, 16, 16)),
                                        ("resnet18", (3, 16, 16))])
def test_reference_models_against_probes(name, shape):
    from topo_pai import models

    model = getattr(models, name)(in_channels=shape[0], num_classes=10)
    if name != "resnet20":
        model.eval()  # BN on 1x1 maps cannot run in train mode (resnet20 stays in train mode)
    masks = _sparse_masks(model, seed=7)
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    check_against_probe(topo, model, masks, shape, spec=name)


# ---------------------------------------------------------------------------
# contract details
# ---------------------------------------------------------------------------

def test_from_torch_mutates_neither_model_nor_masks():
    spec, shape = HAND_WRITTEN["mini_resnet"]
    model = O.build_torch(spec, shape).train()
    masks = O.masks_for(model, 11)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved = {k: v.clone() for k, v in masks.items()}
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    for res in RESOLUTIONS:
        _ = topo.count_paths(res).exact  # force the lazy computations
        _ = topo.effective_masks(res)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(saved[k], v) for k, v in masks.items())


def test_zero_paths_gives_minus_infinity_and_empty_sets():
    spec = (O.Conv(2, 3, padding=1), O.ReLU(), O.Conv(2, 1), O.SpatialMean(), O.Linear(2))
    shape = (1, 4, 4)
    model = O.build_torch(spec, shape)
    masks = {n: torch.ones_like(p) for n, p in model.named_parameters()
             if n in O.prunable_weight_names(model)}
    masks[O.prunable_weight_names(model)[1]].zero_()
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    for res in RESOLUTIONS:
        pc = topo.count_paths(res)
        assert pc.exact == 0 and pc.log10 == -math.inf
        assert topo.effective_nodes(res) == 0 and topo.effective_params(res) == 0
        assert not any(m.any() for m in topo.effective_masks(res).values())
