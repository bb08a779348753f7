"""NPB driver: budgets, order, per-layer optimality against HiGHS, repair, options."""

import numpy as np
import pytest

import topo_pai
from topo_pai.models import resnet20, vgg11
from topo_pai.npb.milp import solve_layer_milp
from topo_pai.npb.pruner import npb_masks, repair_masks
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


def test_every_layer_matches_highs():
    model = resnet20(width=4)
    topo, budgets, weights = _setup(model, 0.9)
    _, report = npb_masks(topo, weights, budgets, repair=False)
    for r, layer in zip(report, topo.layers):
        mil = solve_layer_milp(r.p_in, layer.weight_shape[0], r.budget, r.K, 0.01, 1.0,
                               time_limit=30)
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
