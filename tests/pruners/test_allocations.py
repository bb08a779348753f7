"""Layerwise allocations: exact integer counts, jaxpruner's ERK reference values,
uniform+ in topological order, ERK+, ratios:<method> and dict budgets."""

from __future__ import annotations

import math
import os
import re

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.models import resnet20  # noqa: E402
from topo_pai.pruners import (  # noqa: E402
    erk_densities,
    largest_remainder,
    n_keep,
    prune_with_scores,
    uniform_plus_densities,
)

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet20(width=4)


def sizes_of(masks):
    return {k: v.numel() for k, v in masks.items()}


def kept(masks):
    return {k: int(v.sum()) for k, v in masks.items()}


# ---------------------------------------------------------------------------
# rounding
# ---------------------------------------------------------------------------

@given(st.lists(st.integers(1, 500), min_size=1, max_size=12), st.floats(0, 1))
def test_largest_remainder_is_exact_and_within_one(caps, density):
    total_n = sum(caps)
    total = n_keep(total_n, 1 - density) if density < 1 else total_n
    targets = [c * total / total_n for c in caps]
    counts = largest_remainder(targets, caps, total)
    assert sum(counts) == total
    for c, t, cap in zip(counts, targets, caps):
        assert 0 <= c <= cap
        assert abs(c - t) < 1 + 1e-9


def test_largest_remainder_when_targets_overshoot():
    assert largest_remainder([3.0, 3.0], [5, 5], 5) == [3, 2]  # the later layer gives way
    assert largest_remainder([2.2, 1.9], [5, 5], 4) == [2, 2]  # the larger remainder
    with pytest.raises(ValueError, match="cannot place"):
        largest_remainder([1.0], [1], 2)


def test_n_keep_rounds_half_up():
    assert n_keep(10, 0.25) == 8  # 7.5 -> 8
    assert n_keep(270_000, 0.9) == 27_000  # (1 - 0.9) * 270000 = 26999.999999999996
    assert n_keep(100, 0.0) == 100
    assert n_keep(7, 0.99) == 0


# ---------------------------------------------------------------------------
# ERK against jaxpruner's hand-checked values
# ---------------------------------------------------------------------------

# jaxpruner (sparsity_distributions_test.py) gives *sparsities* for Flax shapes a=(2,4),
# b=(3,6), c=(2,4,6) (kernels are HWIO, i.e. (in, out) last); the same layers in PyTorch
# order (out, in, *kernel) are (4,2), (6,3), (6,4,2). include_kernel=False uses the last two
# Flax dims (in, out), which are PyTorch's first two.
TORCH_SHAPES = {"a": (4, 2), "b": (6, 3), "c": (6, 4, 2)}
JAXPRUNER_ERK = [
    # sparsity, include_kernel, power, expected sparsities of a, b, c
    (0.5, True, 1.0, (0.0, 0.31, 0.655)),
    (0.5, False, 1.0, (0.21, 0.47, 0.56)),
    (0.8, True, 1.0, (0.556, 0.70, 0.85)),
    (0.5, True, 2.0, (0.0, 0.033, 0.758)),
]


def jaxpruner_density(shapes, sparsity):
    """jaxpruner's budget: every layer rounds its zeros down, floor(sparsity * n_l), so it
    keeps sum(n_l - floor(sparsity * n_l)) weights -- 16 of 74 at 80 %, where topo_pai keeps
    round(0.2 * 74) = 15. Only the budget differs; the ERK solve is the same."""
    n = [math.prod(s) for s in shapes.values()]
    return sum(k - math.floor(sparsity * k) for k in n) / sum(n)


@pytest.mark.parametrize("sparsity,include_kernel,power,expected", JAXPRUNER_ERK)
def test_erk_matches_jaxpruner(sparsity, include_kernel, power, expected):
    density = jaxpruner_density(TORCH_SHAPES, sparsity)
    d = erk_densities(TORCH_SHAPES, density, power=power, include_kernel=include_kernel)
    got = [1 - d[k] for k in "abc"]
    np.testing.assert_allclose(got, expected, atol=0.005)  # the reference's 2 decimals
    # the budget is met exactly in reals
    n = {k: math.prod(s) for k, s in TORCH_SHAPES.items()}
    assert sum(n[k] * d[k] for k in n) == pytest.approx(density * sum(n.values()))


@pytest.mark.parametrize("sparsity,include_kernel,power,expected", JAXPRUNER_ERK)
def test_erk_through_prune_on_the_reference_shapes(sparsity, include_kernel, power, expected):
    """The same shapes as torch layers: exact counts within one weight of the reference."""
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(3, 6), nn.Conv1d(4, 6, 2))
    masks = topo_pai.prune(model, "random", sparsity, input_shape=(2,), allocation="erk",
                           erk_power=power, erk_include_kernel=include_kernel)
    counts = kept(masks)
    n = sizes_of(masks)
    assert sum(counts.values()) == n_keep(sum(n.values()), sparsity)
    for (name, c), exp in zip(counts.items(), expected):
        assert abs(c - n[name] * (1 - exp)) <= 1.0 + 0.006 * n[name]


def test_erk_power_zero_is_uniform():
    d = erk_densities({"a": (10, 10), "b": (20, 5, 3, 3)}, 0.3, power=0.0)
    assert d == pytest.approx({"a": 0.3, "b": 0.3})


@pytest.mark.parametrize("kwargs, name", [
    (dict(power=float("nan")), "erk_power"),  # used to give every layer density 0
    (dict(power=float("inf")), "erk_power"),  # used to raise ZeroDivisionError
    (dict(power=-0.5), "erk_power"),
    (dict(power=1200.0), "erk_power=1200 makes the ERK ratio of layer 'a'"),  # 2**1200
    (dict(power=500.0), "erk_power=500 makes the ERK ratio of layer 'b'"),  # 0.2**500
    (dict(include_kernel="no"), "erk_include_kernel"),
])
def test_erk_options_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        erk_densities({"a": (1, 1), "b": (10, 10)}, 0.5, **kwargs)
    with pytest.raises(ValueError, match="density"):
        erk_densities({"a": (1, 1)}, float("nan"))
    # a large power that float64 represents is fine: the budget is still met exactly
    d = erk_densities({"a": (1, 1), "b": (10, 10), "c": (30, 30)}, 0.5, power=20.0)
    assert 1 * d["a"] + 100 * d["b"] + 900 * d["c"] == pytest.approx(0.5 * 1001)


def test_uniform_plus_options_are_validated():
    for bad in (float("nan"), 1.5, "0.2", None):
        with pytest.raises(ValueError, match="last_layer_min_density"):
            uniform_plus_densities({"a": 10, "b": 10}, 0.5, first="a", last="b",
                                   last_min_density=bad)


def test_erk_dense_layers_are_resolved(model):
    r = prune_with_scores(model, "random", 0.5, input_shape=SHAPE, allocation="erk")
    n = sizes_of(r.masks)
    shapes = {k: tuple(v.shape) for k, v in r.masks.items()}
    d = erk_densities(shapes, n_keep(sum(n.values()), 0.5) / sum(n.values()))
    assert max(d.values()) == 1.0  # the stem and the 1x1 shortcuts go dense at 50 %
    for name, dens in d.items():
        if dens == 1.0:
            assert r.budgets[name] == n[name]
        assert abs(r.budgets[name] - dens * n[name]) < 1


@pytest.mark.parametrize("alloc", ["uniform", "uniform+", "erk", "erk+"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.6838, 0.9, 0.9684, 0.99])
def test_allocations_give_exact_counts(model, alloc, sparsity):
    r = prune_with_scores(model, "random", sparsity, input_shape=SHAPE, allocation=alloc)
    n = sizes_of(r.masks)
    assert sum(kept(r.masks).values()) == n_keep(sum(n.values()), sparsity)
    assert kept(r.masks) == r.budgets
    assert all(0 <= r.budgets[k] <= n[k] for k in n)


def test_uniform_is_uniform_within_one(model):
    r = prune_with_scores(model, "random", 0.9, input_shape=SHAPE, allocation="uniform")
    for k, v in r.masks.items():
        assert abs(r.budgets[k] - 0.1 * v.numel()) < 1


# ---------------------------------------------------------------------------
# uniform+ and ERK+ follow the traced topological order
# ---------------------------------------------------------------------------

class Scrambled(nn.Module):
    """Registers its classifier first and its stem last: only the topology says which
    layer is first and which is last."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.mid(torch.relu(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_uniform_plus_uses_topological_order():
    model = Scrambled()
    r = prune_with_scores(model, "random", 0.8, input_shape=(3, 8, 8), allocation="uniform+")
    n = sizes_of(r.masks)
    assert r.budgets["stem.weight"] == n["stem.weight"]  # first in topological order: dense
    # last in topological order: sparsity capped at 80 %
    assert r.budgets["head.weight"] >= math.floor(0.2 * n["head.weight"])
    assert r.budgets["mid.weight"] < 0.2 * n["mid.weight"]


def test_uniform_plus_without_cap_when_dense_enough(model):
    r = prune_with_scores(model, "random", 0.5, input_shape=SHAPE, allocation="uniform+")
    first, last = "conv1.weight", "fc.weight"
    n = sizes_of(r.masks)
    assert r.budgets[first] == n[first]
    rest = [k for k in n if k != first]
    d = (n_keep(sum(n.values()), 0.5) - n[first]) / sum(n[k] for k in rest)
    for k in rest:
        assert abs(r.budgets[k] - d * n[k]) < 1
    assert d > 0.2 and abs(r.budgets[last] - d * n[last]) < 1


def test_uniform_plus_floor_option_and_infeasible():
    d = uniform_plus_densities({"a": 10, "b": 1000, "c": 100}, 0.1, first="a", last="c",
                               last_min_density=0.5)
    assert d["a"] == 1.0 and d["c"] == 0.5 and d["b"] == pytest.approx((111 - 10 - 50) / 1000)
    with pytest.raises(ValueError, match="first layer"):
        uniform_plus_densities({"a": 500, "b": 100}, 0.1, first="a", last="b")
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    with pytest.raises(ValueError, match="uniform\\+"):
        topo_pai.prune(model, "random", 0.99, input_shape=(100,), allocation="uniform+")


def test_erk_plus_keeps_the_last_layer_dense():
    model = Scrambled()
    r = prune_with_scores(model, "magnitude", 0.8, input_shape=(3, 8, 8), allocation="erk+")
    n = sizes_of(r.masks)
    assert r.budgets["head.weight"] == n["head.weight"]
    assert sum(r.budgets.values()) == n_keep(sum(n.values()), 0.8)
    plain = prune_with_scores(model, "magnitude", 0.8, input_shape=(3, 8, 8), allocation="erk")
    assert plain.budgets["head.weight"] < n["head.weight"]


def test_erk_plus_infeasible_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1000))
    with pytest.raises(ValueError, match="dense"):
        topo_pai.prune(model, "random", 0.9, input_shape=(4,), allocation="erk+")


# ---------------------------------------------------------------------------
# ratios:<method>, dicts, exclusions
# ---------------------------------------------------------------------------

def test_ratios_take_layer_counts_from_the_global_ranking(model):
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    snip = topo_pai.prune(model, "snip", 0.9, input_shape=SHAPE, data=(x, y))
    r = prune_with_scores(model, "random", 0.9, input_shape=SHAPE, data=(x, y),
                          allocation="ratios:snip")
    assert kept(r.masks) == kept(snip)
    assert any(not torch.equal(r.masks[k], snip[k]) for k in snip)  # placed at random
    mag = topo_pai.prune(model, "magnitude", 0.9, input_shape=SHAPE)
    r2 = prune_with_scores(model, "random", 0.9, input_shape=SHAPE, allocation="ratios:magnitude")
    assert kept(r2.masks) == kept(mag)


def test_ratios_errors(model):
    with pytest.raises(ValueError, match="snip.*needs data"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation="ratios:snip")
    with pytest.raises(ValueError, match="unknown pruning method"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation="ratios:nope")
    with pytest.raises(ValueError, match="ranks weights globally"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation="ratios:shuffle")


def test_dict_allocation(model):
    names = [k for k in topo_pai.prune(model, "random", 0.0, input_shape=SHAPE)]
    dens = {k.removesuffix(".weight"): (1.0 if k == "conv1.weight" else 0.25) for k in names}
    n = {k: v.numel() for k, v in topo_pai.prune(model, "random", 0.0, input_shape=SHAPE).items()}
    target = sum(n[k] * dens[k.removesuffix(".weight")] for k in n)
    sparsity = 1 - target / sum(n.values())
    r = prune_with_scores(model, "magnitude", sparsity, input_shape=SHAPE, allocation=dens)
    assert r.budgets["conv1.weight"] == n["conv1.weight"]
    assert sum(r.budgets.values()) == n_keep(sum(n.values()), sparsity)
    with pytest.raises(ValueError, match="no density"):
        topo_pai.prune(model, "magnitude", sparsity, input_shape=SHAPE,
                       allocation={"conv1": 1.0})
    with pytest.raises(ValueError, match="keep"):
        topo_pai.prune(model, "magnitude", 0.99, input_shape=SHAPE, allocation=dens)
    bad = dict(dens, conv1=1.5)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        topo_pai.prune(model, "magnitude", sparsity, input_shape=SHAPE, allocation=bad)
    with pytest.raises(ValueError, match="not a prunable weight"):
        topo_pai.prune(model, "magnitude", sparsity, input_shape=SHAPE,
                       allocation=dict(dens, **{"bn1": 0.5}))


def test_excluded_layers_are_dense_and_outside_the_budget(model):
    r = prune_with_scores(model, "random", 0.9, input_shape=SHAPE, allocation="erk",
                          exclude=["conv1", "fc.weight", "blocks.*.shortcut.*"])
    n = sizes_of(r.masks)
    excluded = [k for k in n if k in ("conv1.weight", "fc.weight") or ".shortcut." in k]
    assert len(excluded) == 4
    for k in excluded:
        assert bool(r.masks[k].all()) and k not in r.budgets
    pruned = sum(n[k] for k in n if k not in excluded)
    assert sum(r.budgets.values()) == n_keep(pruned, 0.9)


def test_allocation_validation(model):
    with pytest.raises(ValueError, match="unknown allocation"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation="erdos")
    with pytest.raises(ValueError, match="erk_power"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation="uniform",
                       erk_power=2.0)
    with pytest.raises(ValueError, match="last_layer_min_density"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, last_layer_min_density=0.3)
    with pytest.raises(ValueError, match="allocation must be"):
        topo_pai.prune(model, "random", 0.9, input_shape=SHAPE, allocation=3)


# ---------------------------------------------------------------------------
# Found by review: ratios options, dict densities 0/1 and names, uniform+'s minimum
# ---------------------------------------------------------------------------


def _three_linears():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                         nn.Linear(10, 10))


def test_ratios_of_the_method_itself_use_its_options():
    """allocation="ratios:synflow" with rounds=2 at channel resolution ranked with the
    defaults (100 rounds, neuron resolution); its budgets are now the per-layer counts
    of the method run with the same options."""
    net = resnet20(width=4)
    opts = {"input_shape": (3, 16, 16), "rounds": 2, "resolution": "channel"}
    ratio = prune_with_scores(net, "synflow", 0.9, allocation="ratios:synflow", **opts)
    plain = topo_pai.prune(net, "synflow", 0.9, **opts)
    assert ratio.budgets == {k: int(v.sum()) for k, v in plain.items()}


def test_dict_densities_of_0_and_1_are_kept_exactly():
    """Up to one weight per layer of slack was taken from (or given to) the layers whose
    density is exactly 0 or 1: {0.5, 0.5, 1.0} keeping 199 made the dense layer 99. Each
    layer now stays within one weight of its density, or the sparsity is refused."""
    net = _three_linears()
    with pytest.raises(ValueError, match=r"keep 200 weights .* but sparsity=0\.336667 keeps "
                                         r"199 of 300; pass sparsity=0\.333333"):
        topo_pai.prune(net, "magnitude", 1 - 199 / 300, input_shape=(10,),
                       allocation={"0": 0.5, "2": 0.5, "4": 1.0})
    with pytest.raises(ValueError, match=r"keep 100 weights .* but sparsity=0\.66 keeps 102 "
                                         r"of 300; pass sparsity=0\.666667"):
        topo_pai.prune(net, "magnitude", 0.66, input_shape=(10,),
                       allocation={"0": 0.0, "2": 0.5, "4": 0.5})
    got = prune_with_scores(net, "magnitude", 1 - 199 / 300, input_shape=(10,),
                            allocation={"0": 0.495, "2": 0.5, "4": 1.0}).budgets
    assert got == {"0.weight": 49, "2.weight": 50, "4.weight": 100}
    got = prune_with_scores(net, "magnitude", 1 - 101 / 300, input_shape=(10,),
                            allocation={"0": 0.0, "2": 0.505, "4": 0.5}).budgets
    assert got == {"0.weight": 0, "2.weight": 51, "4.weight": 50}


def test_dict_allocation_naming_a_layer_twice_or_a_tensor_density_is_refused():
    net = _three_linears()
    with pytest.raises(ValueError, match=r"names layer '0\.weight' twice \('0' and '0\.weight'\)"):
        topo_pai.prune(net, "magnitude", 0.5, input_shape=(10,),
                       allocation={"0": 0.9, "0.weight": 0.5, "2": 0.5, "4": 0.5})
    with pytest.raises(ValueError, match="must be a number .* got Tensor"):
        topo_pai.prune(net, "magnitude", 0.5, input_shape=(10,),
                       allocation={"0": torch.tensor(0.5), "2": 0.5, "4": 0.5})


@given(st.integers(2, 12), st.integers(20, 60), st.floats(0.5, 0.97))
def test_uniform_plus_keeps_the_last_layer_at_its_minimum(last_in, hidden, sparsity):
    """The last layer's count was rounded down below last_layer_min_density (2 of 12
    at 0.2); it now keeps at least ceil(0.2 * n) whenever uniform+ is feasible."""
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, hidden), nn.ReLU(),
                        nn.Linear(hidden, last_in), nn.ReLU(), nn.Linear(last_in, 2))
    try:
        got = prune_with_scores(net, "random", sparsity, input_shape=(4,),
                                allocation="uniform+").budgets
    except ValueError as exc:  # infeasible: the first layer or the minimum does not fit
        assert "uniform+ keeps the" in str(exc)
        return
    n_last = 2 * last_in
    assert got["6.weight"] >= math.ceil(0.2 * n_last - 1e-9) and got["0.weight"] == 40


def test_phew_on_a_model_with_attached_masks():
    """A conv pruned with torch.nn.utils.prune: phew refused it with a budget error
    ('outside [0, 22]'); like every method it now reads the masked weights as zero."""
    from torch.nn.utils import prune as torch_prune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    torch_prune.random_unstructured(net[0], "weight", amount=0.8)
    for alloc in ("erk", "uniform"):
        res = prune_with_scores(net, "phew", 0.5, input_shape=(3, 8, 8), allocation=alloc)
        assert {k: int(v.sum()) for k, v in res.masks.items()} == res.budgets
    res = prune_with_scores(net, "phew", 0.5, input_shape=(3, 8, 8), exclude=["0"])
    assert int(res.masks["0.weight"].sum()) == 108
