"""NPB driver: budgets, order, per-layer optimality against HiGHS, repair, spread, grouped
convs, the official variant and option validation."""

import re

import numpy as np
import pytest
import torch
from torch import nn

import topo_pai
from topo_pai.models import lenet_300_100, resnet20, vgg11
from topo_pai.npb.milp import solve_layer_milp
from topo_pai.npb.pruner import npb_masks, repair_masks
from topo_pai.npb.solver import evaluate, solve_layer
from topo_pai.pruners import prune_with_scores
from topo_pai.pruners.allocation import counts_from_densities, erk_densities, n_keep

SHAPE = (3, 32, 32)


def _setup(model, sparsity):
    topo = topo_pai.from_torch(model, None, SHAPE)
    shapes = {layer.param: layer.weight_shape for layer in topo.layers}
    sizes = {k: int(np.prod(v)) for k, v in shapes.items()}
    budgets = counts_from_densities(sizes, erk_densities(shapes, 1 - sparsity),
                                    n_keep(sum(sizes.values()), sparsity))
    weights = {n: p.detach().abs().double().numpy() for n, p in model.named_parameters()
               if n in shapes}
    return topo, budgets, weights


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_budgets_exact_and_every_kept_weight_effective(sparsity):
    model = resnet20(width=8)
    topo, budgets, weights = _setup(model, sparsity)
    masks, report = npb_masks(topo, weights, budgets)
    for name, b in budgets.items():
        assert int(masks[name].sum()) == b
    assert [r.name for r in report] == [layer.param for layer in topo.layers]  # topological
    tm = topo.with_masks(masks)
    kept = sum(b for b in budgets.values())
    # repair moves ineffective weights onto paths; ResNet-20 has room in every layer
    assert tm.effective_params() == kept
    assert all(r.optimal for r in report)


@pytest.mark.parametrize("variant, solver_opts", [
    ("balanced", {}),
    ("official", {"tau": 1, "node_norm": "channels", "path_norm": "official"}),
])
def test_every_layer_matches_highs(variant, solver_opts):
    model = resnet20(width=4)
    topo, budgets, weights = _setup(model, 0.9)
    _, report = npb_masks(topo, weights, budgets, repair=False, variant=variant)
    for r, layer in zip(report, topo.layers):
        mil = solve_layer_milp(r.p_in, layer.weight_shape[0], r.budget, r.K, 0.01, 1.0,
                               time_limit=30, **solver_opts)
        assert r.objective >= mil.objective - 1e-9 * max(1.0, mil.objective)
        if mil.optimal:
            assert r.objective - mil.objective <= 1e-7 * max(1.0, r.objective)


def test_repair_keeps_budgets_and_only_adds_effectiveness():
    model = vgg11()
    topo, budgets, weights = _setup(model, 0.995)
    raw, _ = npb_masks(topo, weights, budgets, repair=False)
    fixed = repair_masks(topo, raw, weights)
    before = topo.with_masks(raw)
    after = topo.with_masks(fixed)
    for name in raw:
        assert int(fixed[name].sum()) == int(raw[name].sum())
    assert after.effective_params() >= before.effective_params()
    assert after.count_paths().log10 >= before.count_paths().log10
    again = repair_masks(topo, raw, weights)  # deterministic
    assert all(np.array_equal(again[k], fixed[k]) for k in fixed)


def test_options_and_report_through_prune():
    model = resnet20(width=4)
    res = prune_with_scores(model, "npb", 0.95, input_shape=SHAPE, p_in="neuron",
                            node="paths", placement="random", K=3, seed=1)
    assert res.report is not None and len(res.report) == 22
    assert all(r.K <= 3 for r in res.report)
    assert "budget" in str(res.report)
    again = prune_with_scores(model, "npb", 0.95, input_shape=SHAPE, p_in="neuron",
                              node="paths", placement="random", K=3, seed=1)
    assert all(np.array_equal(res.masks[k].numpy(), again.masks[k].numpy()) for k in res.masks)
    with pytest.raises(ValueError, match="p_in"):
        topo_pai.prune(model, "npb", 0.9, input_shape=SHAPE, p_in="pixels")


# ---------------------------------------------------------------------------
# Spread: degree statistics on the networks the study singled out
# ---------------------------------------------------------------------------


def _fan_out(mask):
    """Kept elements reading each input unit (independent of topo_pai.metrics.degrees)."""
    m = np.asarray(mask, dtype=np.int64)
    return m.reshape(m.shape[0], m.shape[1], -1).sum(axis=(0, 2))


def test_lenet_300_100_hidden_layers_spread_at_90():
    """Both hidden Linear layers at 90 % (ERK): median fan-out >= half the mean. The
    official objective (tau = 1) piles the second layer's spare budget on the hidden
    units with 63 instead of 62 incoming paths (median fan-out 1)."""
    model = lenet_300_100()
    res = prune_with_scores(model, "npb", 0.9, input_shape=(1, 28, 28))
    for name in ("fc1.weight", "fc2.weight"):
        fo = _fan_out(res.masks[name].numpy())
        assert np.median(fo) >= fo.mean() / 2, (name, np.median(fo), fo.mean())
        assert fo.max() - fo.min() <= 1  # every input within one edge of its fair share
    rep = {r.name: r for r in res.report}
    assert rep["fc2.weight"].fan_out_median == 23 and rep["fc2.weight"].fan_out_max == 24
    off = prune_with_scores(model, "npb", 0.9, input_shape=(1, 28, 28), variant="official")
    fo = _fan_out(off.masks["fc2.weight"].numpy())
    assert np.median(fo) == 1 and np.median(fo) < fo.mean() / 2


def test_resnet20_with_batchnorm_spreads_over_near_equal_inputs():
    """ResNet-20 (BatchNorm, width 8) at 90 %: inputs whose P_in agree within 1 % get
    fan-outs within 2 of each other in every layer (within one for equal P_in), so no
    input holds full kernels to every output while its near-equal neighbours get one
    edge per kernel (the official objective gives blocks.1.conv1 fan-outs 72/50 and 8)."""
    model = resnet20(width=8)
    res = prune_with_scores(model, "npb", 0.9, input_shape=SHAPE)
    for rep in res.report:
        fo = _fan_out(res.masks[rep.name].numpy())
        P = rep.p_in
        near = np.abs(P[:, None] - P[None, :]) <= 0.01 * np.maximum(P[:, None], P[None, :])
        spread = np.abs(fo[:, None] - fo[None, :])
        assert spread[near].max() <= 2, rep.name
        assert spread[P[:, None] == P[None, :]].max() <= 1, rep.name
        assert rep.relocated == 0
    b1 = {r.name: r for r in res.report}["blocks.1.conv1.weight"]
    assert b1.fan_out_max <= b1.fan_out_median + 1
    off = prune_with_scores(model, "npb", 0.9, input_shape=SHAPE, variant="official")
    fo = _fan_out(off.masks["blocks.1.conv1.weight"].numpy())
    assert fo.max() >= 50 and np.median(fo) == 8


# ---------------------------------------------------------------------------
# Grouped and depthwise convs, exclude
# ---------------------------------------------------------------------------


def _grouped_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),        # depthwise
        nn.Conv2d(8, 12, 3, padding=1, groups=2), nn.ReLU(),       # grouped
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))


@pytest.mark.parametrize("sparsity", [0.7, 0.95])
def test_grouped_and_depthwise_convs_are_solved_per_group(sparsity):
    model = _grouped_net()
    shape = (3, 8, 8)
    res = prune_with_scores(model, "npb", sparsity, input_shape=shape)
    total = sum(m.numel() for m in res.masks.values())
    kept = sum(int(m.sum()) for m in res.masks.values())
    assert kept == n_keep(total, sparsity)  # exact over every prunable weight, no exclude
    raw = prune_with_scores(model, "npb", sparsity, input_shape=shape, repair=False)
    rep = {r.name: r for r in raw.report}
    for name, G in (("3.weight", 8), ("5.weight", 2)):
        r = rep[name]
        assert r.groups == G and r.optimal and int(raw.masks[name].sum()) == r.budget
        assert int(res.masks[name].sum()) == r.budget  # repair keeps the layer budget
        m = raw.masks[name].numpy()
        O, pg = m.shape[:2]
        per_group = m.reshape(G, O // G, -1).sum(axis=(1, 2))
        assert per_group.max() - per_group.min() <= 1  # budget split evenly over groups
        # each group is the exact optimum of its own problem (re-solved with HiGHS)
        M = m.reshape(O, pg, -1).sum(axis=2)
        for g in range(G):
            rows = slice(g * O // G, (g + 1) * O // G)
            P = r.p_in[g * pg:(g + 1) * pg]
            mil = solve_layer_milp(P, O // G, int(per_group[g]), r.K, 0.01, 1.0, time_limit=30)
            ours = evaluate(mil.problem, M[rows])["objective"]
            assert ours >= mil.objective - 1e-9 * max(1.0, mil.objective)
            if mil.optimal:
                assert ours - mil.objective <= 1e-7 * max(1.0, ours)


def test_exclude_keeps_the_count_over_pruned_weights_exact():
    """Like every method, NPB prunes ``sparsity`` of the non-excluded weights (the
    excluded layer stays dense and is left out of the count)."""
    model = _grouped_net()
    shape = (3, 8, 8)
    npb = topo_pai.prune(model, "npb", 0.9, input_shape=shape, exclude=["3"])
    rnd = topo_pai.prune(model, "random", 0.9, input_shape=shape, exclude=["3"])
    assert bool(npb["3.weight"].all())
    active = [k for k in npb if k != "3.weight"]
    total = sum(npb[k].numel() for k in active)
    for masks in (npb, rnd):
        assert sum(int(masks[k].sum()) for k in active) == n_keep(total, 0.9)


# ---------------------------------------------------------------------------
# Official variant, repair report, option validation
# ---------------------------------------------------------------------------


def test_official_variant_settings_and_no_linear_repair():
    model = lenet_300_100()
    res = prune_with_scores(model, "npb", 0.99, input_shape=(1, 28, 28), variant="official")
    rep = {r.name: r for r in res.report}
    assert all(r.tau_in == 1.0 and r.tau_out == 1.0 for r in res.report)
    assert all(r.relocated == 0 for r in res.report)  # Linear layers are never repaired
    # its fc2 feeds only the 10 hidden units with 7 incoming paths, so fc1 keeps weights
    # into dead units; the balanced variant's repair moves them (and reports how many)
    topo = topo_pai.from_torch(model, {k: v for k, v in res.masks.items()}, (1, 28, 28))
    assert topo.effective_params() < sum(r.budget for r in res.report)
    bal = prune_with_scores(model, "npb", 0.99, input_shape=(1, 28, 28))
    raw = prune_with_scores(model, "npb", 0.99, input_shape=(1, 28, 28), repair=False)
    moved = {r.name: r.relocated for r in bal.report}
    assert moved["fc1.weight"] > 0
    topo = topo_pai.from_torch(model, dict(bal.masks), (1, 28, 28))
    eff = topo.effective_masks_numpy()
    for name in moved:  # every kept weight is effective after the repair
        assert int(eff[name].sum()) == int(bal.masks[name].sum())
    # fc1 is the first layer: its relocated weights are exactly the ones that moved
    changed = int((bal.masks["fc1.weight"] & ~raw.masks["fc1.weight"]).sum())
    assert changed == moved["fc1.weight"]
    # the official problem with the official normalisers, solved layer by layer
    r = rep["fc2.weight"]
    sol = solve_layer(r.p_in, 100, r.budget, 1, 0.01, 1.0, tau=1, node_norm="channels",
                      path_norm="official")
    assert close_rel(sol.objective, r.objective)


def close_rel(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("opts, match", [
    ({"alpha": float("nan")}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"alpha": True}, "alpha"),
    ({"beta": -1.0}, "beta"), ({"beta": float("inf")}, "beta"), ({"tau": 0}, "tau"),
    ({"tau": -2.0}, "tau"), ({"tau": float("nan")}, "tau"), ({"tau": "half"}, "tau"),
    ({"K": 0}, "K"), ({"K": 2.5}, "K"), ({"K": {"conv1.weight": 0}}, "K"),
    ({"K": {"nope": 3}}, "K"), ({"variant": "paper"}, "variant"),
    ({"variant": "official", "tau": 2.0}, "tau"), ({"repair": "yes"}, "repair"),
    ({"node": "nodes"}, "node"), ({"placement": "best"}, "placement"),
    ({"p_in": "pixels"}, "p_in"),
])
def test_numeric_options_are_validated(opts, match):
    with pytest.raises(ValueError, match=match):
        topo_pai.prune(resnet20(width=2), "npb", 0.9, input_shape=SHAPE, **opts)


def test_tau_one_reproduces_the_coverage_objective():
    model = resnet20(width=4)
    topo, budgets, weights = _setup(model, 0.95)
    _, report = npb_masks(topo, weights, budgets, tau=1, repair=False)
    for r in report:
        assert r.tau_in == r.tau_out == 1.0
        # node term = covered inputs + covered outputs over the achievable normaliser
        den = min(r.n_in, r.budget) + min(r.n_out, r.budget)
        assert close_rel(r.node_term, (r.effective_in + r.effective_out) / den)


# ---------------------------------------------------------------------------
# Found by review: the repair and K, neuron resolution, huge tau, the report
# ---------------------------------------------------------------------------


def _narrow_convs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.parametrize("sparsity, K", [(0.97, 1), (0.99, 1), (0.995, 1), (0.99, 2)])
def test_repair_keeps_at_most_K_elements_per_kernel(sparsity, K):
    """The repair moves weights (relocated > 0 here) but never past K in a kernel."""
    res = prune_with_scores(_narrow_convs(), "npb", sparsity, input_shape=(3, 8, 8), K=K)
    assert sum(r.relocated for r in res.report) > 0
    for r in res.report:
        m = res.masks[r.name].numpy()
        assert m.reshape(m.shape[0], m.shape[1], -1).sum(-1).max() <= r.K == min(
            K, m[0, 0].size)


def test_neuron_repair_moves_weights_onto_paths():
    """3x3 kernels with padding 1 on a 1x1 input: only the centre element touches an
    input, so the first layer's corner weights lie on no path (nor, then, the second
    layer's centres); the neuron-resolution repair moves every corner to a centre (per
    element, not per kernel), and all 12 weights end up on paths."""
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))
    topo = topo_pai.from_torch(m, None, (2, 1, 1))
    w = {n: p.detach().abs().double().numpy() for n, p in m.named_parameters()
         if n.endswith("weight")}
    corners = {"0.weight": np.zeros((3, 2, 3, 3), bool), "2.weight": np.zeros((2, 3, 3, 3), bool)}
    corners["0.weight"][:, :, 0, 0] = True
    corners["2.weight"][:, :, 1, 1] = True
    before = {k: v.copy() for k, v in corners.items()}
    fixed = repair_masks(topo, corners, w, resolution="neuron")
    assert all(np.array_equal(corners[k], before[k]) for k in corners)  # inputs untouched
    eff = topo.with_masks(fixed).effective_masks_numpy("neuron")
    for k, v in fixed.items():
        assert int(v.sum()) == 6 and np.array_equal(eff[k], v)
        assert v[:, :, 1, 1].all()


def test_a_huge_tau_equals_the_largest_meaningful_one():
    """tau above every fan-in/fan-out changes no min(., tau): same solution as
    tau = K * max(C_in, C_out) (tau = 1e19 overflowed int64)."""
    P = np.array([4.0, 1.0, 0.5])
    ref = solve_layer(P, c_out=2, n=5, K=3, alpha=0.5, beta=1.0, tau=9.0)
    for tau in (1e19, 1e300):
        sol = solve_layer(P, c_out=2, n=5, K=3, alpha=0.5, beta=1.0, tau=tau)
        assert np.array_equal(sol.M, ref.M) and sol.objective == ref.objective


def test_a_K_too_small_names_the_layer_and_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))
    with pytest.raises(ValueError, match=r"K=1 is too small for layer '0\.weight'") as exc:
        topo_pai.prune(model, "npb", 0.5, input_shape=(3, 8, 8), K=1)
    k_min = int(re.search(r"pass K=\{'0\.weight': (\d+)\}", str(exc.value)).group(1))
    assert k_min > 1
    with pytest.raises(ValueError, match=f"K={k_min - 1} is too small"):
        topo_pai.prune(model, "npb", 0.5, input_shape=(3, 8, 8), K={"0.weight": k_min - 1})
    masks = topo_pai.prune(model, "npb", 0.5, input_shape=(3, 8, 8), K={"0.weight": k_min})
    assert masks["0.weight"].reshape(16, 3, 9).sum(-1).max() <= k_min


@pytest.mark.parametrize("repair", [False, True])
def test_report_describes_the_returned_masks(repair):
    """log10_paths_out and effective_out against a float64 product of the returned
    masks (exact: counts below 2^53); with repair=False they are the solve's own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(),
                          nn.Linear(5, 3))
    res = prune_with_scores(model, "npb", 0.5, input_shape=(6,), repair=repair)
    v = np.ones(6)
    for r in res.report:
        w = res.masks[r.name].numpy().astype(float)
        v = w @ v
        assert r.log10_paths_out == pytest.approx(np.log10(v.sum()), abs=1e-12)
        assert r.effective_out == int(np.count_nonzero(w.sum(axis=1)))
        assert r.nonempty_kernels == int(w.sum())
    assert (sum(r.relocated for r in res.report) > 0) == repair


def test_open_positions_at_channel_resolution_is_the_opened_layers_effective_mask():
    """The channel shortcut of open_positions (reach flags) against its definition: the
    layer's effective mask with the layer itself dense, on random sparse ResNet masks."""
    from topo_pai.npb.pruner import open_positions

    model = resnet20(width=4)
    topo = topo_pai.from_torch(model, None, SHAPE)
    rng = np.random.default_rng(0)
    masks = {layer.param: rng.random(layer.weight_shape) < 0.03 for layer in topo.layers}
    partial = 0
    for idx in range(len(topo.layers)):
        layer = topo.layers[idx]
        opened = topo.with_masks({**masks, layer.param: np.ones(layer.weight_shape, bool)})
        want = opened.effective_masks_numpy("channel")[layer.param]
        got = open_positions(topo, masks, idx, "channel")
        assert np.array_equal(got, want)
        partial += 0 < want.sum() < want.size
    assert partial >= 2
