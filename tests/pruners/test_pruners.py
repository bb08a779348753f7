"""The pruning suite: invariants every registered method must satisfy, the method
oracles (SNIP, GraSP, SynFlow), SynFlow's overflow-free scores and layer collapse.

``METHOD_CONFIGS`` holds how each registered method is exercised; the suite fails
when a method is registered without an entry (``test_every_method_has_a_config``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import sys
import types

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.models import resnet20, vgg11, vgg19  # noqa: E402
from topo_pai.models.resnet import CifarResNet  # noqa: E402
from topo_pai.pruners import (  # noqa: E402
    available_methods,
    get_method,
    n_keep,
    prune_with_scores,
)
from topo_pai.pruners.select import rng_for, select_top  # noqa: E402

SHAPE = (3, 32, 32)
HAS_PHEW = importlib.util.find_spec("topo_pai.pruners.phew") is not None


# ---------------------------------------------------------------------------
# how each registered method is exercised
# ---------------------------------------------------------------------------

def _shuffle_options(model, sparsity, data):
    del data
    return {"masks": topo_pai.prune(model, "magnitude", sparsity, input_shape=SHAPE)}


METHOD_CONFIGS = {
    # name: (needs data, extra options or a function (model, sparsity, data) -> options)
    "random": (False, {}),
    "magnitude": (False, {}),
    "snip": (True, {}),
    "iter_snip": (True, {"rounds": 3}),
    "grasp": (True, {}),
    "synflow": (False, {"rounds": 5}),
    "phew": (False, {}),
    "shuffle": (False, _shuffle_options),
    "npb": (False, {}),
    "synflow_widen": (False, {"rounds": 5, "delta_t": 2}),
}
# Methods whose masks are scored and thresholded (not built directly).
SCORED = {"random", "magnitude", "snip", "iter_snip", "grasp", "synflow", "synflow_widen"}


def _require(method):
    if method == "phew" and not HAS_PHEW:
        pytest.skip("topo_pai.pruners.phew is not there yet")


def make_data(n=8, classes=10, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def loader(x, y, batch_size=4):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=False)


def run(method, model, sparsity, seed=0, data=None, shape=SHAPE, **kw):
    needs_data, opts = METHOD_CONFIGS[method]
    if callable(opts):
        opts = opts(model, sparsity, data)
    if needs_data and data is None:
        data = make_data(shape=shape)
    return prune_with_scores(model, method, sparsity, input_shape=shape, seed=seed,
                             data=data if needs_data else None, **opts, **kw)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return resnet20(width=4)


def n_kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def n_total(masks):
    return sum(m.numel() for m in masks.values())


def test_every_method_has_a_config():
    missing = sorted(set(available_methods()) - set(METHOD_CONFIGS))
    assert not missing, (f"registered methods without a test configuration: {missing}; add them "
                         "to METHOD_CONFIGS in tests/pruners/test_pruners.py")
    for name in available_methods():
        assert METHOD_CONFIGS[name][0] == get_method(name).needs_data


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown pruning method 'nope'.*synflow"):
        topo_pai.prune(nn.Linear(2, 2), "nope", 0.5, input_shape=(2,))
    assert topo_pai.available_methods() == sorted(topo_pai.available_methods())
    with pytest.raises(ValueError, match="already registered"):
        topo_pai.pruners.register_method(get_method("random"))


# ---------------------------------------------------------------------------
# invariants, for every registered method
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_exact_counts_masks_and_scores(small, method, sparsity):
    _require(method)
    r = run(method, small, sparsity)
    masks = r.masks
    names = [f"{n}.weight" for n, m in small.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert list(masks) == names
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.device.type == "cpu"
        assert tuple(m.shape) == tuple(small.get_submodule(name[:-7]).weight.shape)
    assert n_kept(masks) == n_keep(n_total(masks), sparsity)
    if r.budgets is not None:
        assert {k: int(m.sum()) for k, m in masks.items()} == r.budgets
    if r.scores is not None:
        assert method in SCORED
        for s in r.scores.values():
            assert not np.isnan(s).any()
        if r.budgets is None:  # one threshold over all layers
            kept = np.concatenate([r.scores[k][masks[k].numpy()] for k in r.scores])
            pruned = np.concatenate([r.scores[k][~masks[k].numpy()] for k in r.scores])
            if kept.size and pruned.size:
                assert kept.min() >= pruned.max()
        else:
            for k, s in r.scores.items():
                m = masks[k].numpy()
                if m.any() and (~m).any():
                    assert s[m].min() >= s[~m].max()


@pytest.mark.parametrize("method", available_methods())
def test_layer_scope_is_uniform(small, method):
    _require(method)
    if get_method(method).budgets_from_option:
        pytest.skip("shuffle keeps its input masks' layer counts")
    r = run(method, small, 0.8, scope="layer")
    for m in r.masks.values():
        assert abs(int(m.sum()) - 0.2 * m.numel()) < 1
    assert n_kept(r.masks) == n_keep(n_total(r.masks), 0.8)


@pytest.mark.parametrize("method", available_methods())
def test_same_seed_same_masks_other_seed_other_masks(small, method):
    _require(method)
    a = run(method, small, 0.9, seed=3).masks
    b = run(method, small, 0.9, seed=3).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    if get_method(method).randomized:
        c = run(method, small, 0.9, seed=4).masks
        assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", available_methods())
def test_model_is_not_modified(method):
    _require(method)
    torch.manual_seed(1)
    model = resnet20(width=4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, len(m._forward_pre_hooks), len(m._forward_hooks))
             for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    run(method, model, 0.9)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [(m.training, len(m._forward_pre_hooks), len(m._forward_hooks))
                     for m in model.modules()]
    assert grads == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("how", ["prune", "parametrize"])
@pytest.mark.parametrize("method", available_methods())
def test_masks_round_trip_through_torch_and_from_torch(method, how):
    _require(method)
    torch.manual_seed(2)
    model = resnet20(width=4)
    masks = run(method, model, 0.9).masks
    net = copy.deepcopy(model)
    topo_pai.apply_masks(net, masks, method=how)
    back = topo_pai.read_masks(net)
    assert all(torch.equal(back[k], masks[k]) for k in masks)
    for k, m in masks.items():
        w = net.get_submodule(k[:-7]).weight
        assert torch.equal(w != 0, m & (model.get_submodule(k[:-7]).weight != 0))
    topo = topo_pai.from_torch(net, None, SHAPE)  # reads prune and parametrize masks
    ref = topo_pai.from_torch(model, masks, SHAPE)
    assert topo.n_unpruned == n_kept(masks) == ref.n_unpruned
    assert topo.count_paths().log10 == ref.count_paths().log10
    net.eval()
    model_masked = copy.deepcopy(model).eval()
    with torch.no_grad():
        for k, m in masks.items():
            model_masked.get_submodule(k[:-7]).weight.mul_(m)
        x = torch.randn(2, *SHAPE)
        torch.testing.assert_close(net(x), model_masked(x))


@pytest.mark.parametrize("method", [m for m in available_methods() if get_method(m).needs_data])
def test_data_as_dataloader_or_batch(small, method):
    x, y = make_data(8)
    a = run(method, small, 0.9, data=(x, y))
    b = run(method, small, 0.9, data=loader(x, y))
    assert n_kept(a.masks) == n_kept(b.masks) == n_keep(n_total(a.masks), 0.9)
    c = run(method, small, 0.9, data=[(x[:4], y[:4], "extra"), (x[4:], y[4:], "extra")])
    assert all(torch.equal(b.masks[k], c.masks[k]) for k in b.masks)
    with pytest.raises(TypeError, match="single tensor"):
        run(method, small, 0.9, data=x)
    with pytest.raises(TypeError, match="batch"):
        run(method, small, 0.9, data=[x, x, x])


def test_snip_scores_scale_with_the_number_of_batches(small):
    """Two mean-loss batches of 4 sum to twice the gradient of one batch of 8."""
    x, y = make_data(8)
    a = run("snip", small, 0.9, data=(x, y)).scores
    b = run("snip", small, 0.9, data=loader(x, y)).scores
    for k in a:
        np.testing.assert_allclose(b[k], 2 * a[k], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method", available_methods())
def test_vgg11_exact_counts(method):
    _require(method)
    torch.manual_seed(0)
    model = vgg11()
    r = run(method, model, 0.95, data=make_data(4))
    assert n_kept(r.masks) == n_keep(n_total(r.masks), 0.95)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 3), st.data())
def test_select_top_properties(entries, n_layers, data):
    """Many ties, some -inf, an alive subset: exact count, only alive entries, kept >= pruned,
    and a fixed seed gives a fixed answer."""
    values = np.array([[-np.inf, 0.0, 1.0, 1.0, 2.0][v] for v, _ in entries])
    alive = np.array([a for _, a in entries])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), min_size=n_layers - 1,
                                     max_size=n_layers - 1)))
    parts = np.split(np.arange(len(entries)), cuts)
    scores = [values[p] for p in parts]
    lives = [alive[p] for p in parts]
    k = data.draw(st.integers(0, int(alive.sum())))
    kept = select_top(scores, k, rng_for(0, "t"), lives)
    again = select_top(scores, k, rng_for(0, "t"), lives)
    flat_kept = np.concatenate(kept)
    assert int(flat_kept.sum()) == k
    assert not np.any(flat_kept & ~alive)
    assert all(np.array_equal(a, b) for a, b in zip(kept, again))
    pruned_alive = alive & ~flat_kept
    if k and pruned_alive.any():
        assert values[flat_kept].min() >= values[pruned_alive].max()
    everyone = select_top(scores, len(entries), rng_for(0), None)
    assert np.concatenate(everyone).all()


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_sparsity_outside_unit_interval(small, bad):
    with pytest.raises(ValueError, match="sparsity"):
        topo_pai.prune(small, "magnitude", bad, input_shape=SHAPE)


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("bad", [None, (0, 32, 32), (3, -32, 32), (), (3.0, 32, 32), "3,32,32",
                                 (True, 32, 32), 32])
def test_a_malformed_input_shape_is_refused_whatever_the_method(small, method, bad):
    """Methods that never trace (random, magnitude, snip, shuffle...) returned masks for
    any input_shape, even None; now one check refuses it first, for every method."""
    _require(method)
    with pytest.raises(topo_pai.InputShapeError, match="input_shape"):
        run(method, small, 0.5, shape=bad, data=make_data())


@pytest.mark.parametrize("method", ["snip", "iter_snip", "grasp"])
def test_data_dependent_method_without_data(small, method):
    with pytest.raises(ValueError, match=f"method '{method}' needs data"):
        topo_pai.prune(small, method, 0.5, input_shape=SHAPE)


@pytest.mark.parametrize("method", ["snip", "iter_snip", "grasp"])
def test_data_dependent_methods_refuse_data_they_cannot_score_on(small, method):
    """Empty data used to give a seeded random mask labelled as the method; samples of
    another shape a torch error, or none at all when the model happened to accept them."""
    x, y = make_data(4)
    bad = [
        ((x[:0], y[:0]), ValueError, "holds no sample"),
        (loader(x[:0], y[:0]), ValueError, "holds no batch"),
        ([(x, y), (x[:0], y[:0])], ValueError, "batch 1 of data holds no sample"),
        ((x, y[:3]), ValueError, "one target per input"),
        ((x.to(torch.uint8), y), ValueError, "floating"),
        ((x.clone().fill_(float("nan")), y), ValueError, "NaN"),
    ]
    for data, kind, match in bad:
        with pytest.raises(kind, match=match):
            run(method, small, 0.9, data=data)
    # resnet20 pools adaptively, so 28x28 samples would run: the shape check must catch it
    x28 = torch.randn(4, 3, 28, 28)
    with pytest.raises(topo_pai.InputShapeError) as err:
        run(method, small, 0.9, data=(x28, y))
    assert "(3, 28, 28)" in str(err.value) and "(3, 32, 32)" in str(err.value)
    with pytest.raises(ValueError, match="holds no sample"):  # data read for an allocation
        topo_pai.prune(small, "random", 0.9, input_shape=SHAPE, data=(x[:0], y[:0]),
                       allocation=f"ratios:{method}")


@pytest.mark.parametrize("method", ["snip", "iter_snip", "grasp"])
def test_data_that_fit_input_shape_but_not_the_model_is_an_input_shape_error(method):
    """The data were checked against input_shape only: a model that takes other samples
    raised torch's own RuntimeError (the command line called it an internal error)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    data = (torch.randn(4, 1, 5, 5), torch.randint(0, 3, (4,)))
    with pytest.raises(topo_pai.InputShapeError, match=r"batch 0 of the data .*\(4, 1, 5, 5\)"):
        topo_pai.prune(model, method, 0.5, input_shape=(1, 5, 5), data=data)


@pytest.mark.parametrize("method", ["snip", "grasp"])
@pytest.mark.parametrize("loss, match", [
    (lambda out, y: F.cross_entropy(out, y, reduction="none"), "shape \\(4,\\)"),
    (lambda out, y: 1.0, "returned a float"),
    (lambda out, y: torch.tensor(1.0), "does not depend on the logits"),
    (lambda out, y: out.sum() + y.missing, "loss= raised AttributeError"),
], ids=["per-sample", "float", "constant", "raises"])
def test_a_loss_that_is_not_a_scalar_of_the_logits_is_refused_naming_loss(small, method,
                                                                           loss, match):
    with pytest.raises(ValueError, match=match) as err:
        run(method, small, 0.5, data=make_data(4), loss=loss)
    assert "loss=" in str(err.value)


@pytest.mark.parametrize("method", ["magnitude", "synflow", "npb", "phew"])
def test_nan_weights_are_refused_naming_the_weight(method):
    """npb returned masks for a model holding NaN; synflow and phew spoke of |w| passed to
    Topology.flows, which a prune() caller never passed."""
    _require(method)
    model = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight '0.weight' holds 1 NaN or infinite value"):
        topo_pai.prune(model, method, 0.5, input_shape=(8,))
    assert math.isnan(model[0].weight[0, 0].item())  # the model is left as it was


@pytest.mark.parametrize("method, options, name", [
    ("random", dict(allocation="erk", erk_power=float("nan")), "erk_power"),
    ("random", dict(allocation="erk", erk_power=float("inf")), "erk_power"),
    ("random", dict(allocation="erk", erk_power=-1.0), "erk_power"),
    ("random", dict(allocation="erk", erk_power="2"), "erk_power"),
    ("random", dict(allocation="erk", erk_power=2000.0), "erk_power"),  # ratios underflow
    ("random", dict(allocation="erk", erk_include_kernel=1), "erk_include_kernel"),
    ("random", dict(allocation="uniform+", last_layer_min_density=float("nan")),
     "last_layer_min_density"),
    ("random", dict(allocation="uniform+", last_layer_min_density="0.5"),
     "last_layer_min_density"),
    ("random", dict(allocation={"conv1": True}), "density for 'conv1'"),
    ("synflow", dict(rounds=2.5), "rounds"),
    ("synflow", dict(rounds=True), "rounds"),
    ("iter_snip", dict(rounds=0), "rounds"),
    ("grasp", dict(temperature=float("inf")), "temperature"),
    ("grasp", dict(temperature=float("nan")), "temperature"),
    ("grasp", dict(temperature="200"), "temperature"),
    ("snip", dict(max_batches=0), "max_batches"),
    ("snip", dict(max_batches=-1), "max_batches"),
    ("snip", dict(max_batches=1.5), "max_batches"),
    ("snip", dict(train_mode=1), "train_mode"),
    ("snip", dict(loss="cross_entropy"), "loss"),
    ("phew", dict(stall_window=0), "stall_window"),
    ("phew", dict(stall_window=1.5), "stall_window"),
    ("phew", dict(min_yield=float("nan")), "min_yield"),
    ("phew", dict(max_walks=-1), "max_walks"),
    ("phew", dict(max_walks=2.5), "max_walks"),
])
def test_numeric_options_are_validated_and_named(small, method, options, name):
    _require(method)
    data = make_data(2) if get_method(method).needs_data else None
    with pytest.raises(ValueError, match=re.escape(name)):
        topo_pai.prune(small, method, 0.5, input_shape=SHAPE, data=data, **options)


def test_no_prunable_layer():
    with pytest.raises(topo_pai.NoPrunableLayerError):
        topo_pai.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "magnitude", 0.5,
                       input_shape=(3,))


def test_exclusions(small):
    with pytest.raises(ValueError, match="leaves no prunable weight"):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, exclude=["*"])
    with pytest.raises(ValueError, match="matches no prunable layer"):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, exclude=["bn1"])
    with pytest.raises(TypeError):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, exclude=[1])
    r = prune_with_scores(small, "magnitude", 0.9, input_shape=SHAPE, exclude="fc")
    assert bool(r.masks["fc.weight"].all()) and "fc.weight" not in r.scores
    pruned = n_total(r.masks) - r.masks["fc.weight"].numel()
    assert n_kept(r.masks) - r.masks["fc.weight"].numel() == n_keep(pruned, 0.9)


def test_option_and_argument_validation(small):
    with pytest.raises(ValueError, match="unknown option.*'round'.*rounds"):
        topo_pai.prune(small, "synflow", 0.5, input_shape=SHAPE, round=3)
    with pytest.raises(ValueError, match="unknown option.*max_batches"):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, max_batches=2)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        topo_pai.prune(small, "synflow", 0.5, input_shape=SHAPE, rounds=0)
    with pytest.raises(ValueError, match="resolution"):
        topo_pai.prune(small, "synflow", 0.5, input_shape=SHAPE, rounds=1, resolution="pixel")
    with pytest.raises(ValueError, match="scope"):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, scope="local")
    with pytest.raises(ValueError, match="seed"):
        topo_pai.prune(small, "magnitude", 0.5, input_shape=SHAPE, seed=-1)
    with pytest.raises(ValueError, match="temperature"):
        topo_pai.prune(small, "grasp", 0.5, input_shape=SHAPE, data=make_data(2),
                       temperature=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        topo_pai.prune("model", "magnitude", 0.5, input_shape=SHAPE)


def test_shuffle_contract(small):
    base = topo_pai.prune(small, "magnitude", 0.9, input_shape=SHAPE)
    out = topo_pai.prune(small, "shuffle", 0.9, input_shape=SHAPE, masks=base, seed=1)
    for k in base:
        assert int(out[k].sum()) == int(base[k].sum())
    assert any(not torch.equal(out[k], base[k]) for k in base)
    with pytest.raises(ValueError, match="needs the option masks="):
        topo_pai.prune(small, "shuffle", 0.9, input_shape=SHAPE)
    with pytest.raises(ValueError, match="keep .* but sparsity 0.5 keeps"):
        topo_pai.prune(small, "shuffle", 0.5, input_shape=SHAPE, masks=base)
    with pytest.raises(ValueError, match="do not pass allocation"):
        topo_pai.prune(small, "shuffle", 0.9, input_shape=SHAPE, masks=base, allocation="erk")
    numpy_masks = {k: v.numpy() for k, v in base.items()}
    again = topo_pai.prune(small, "shuffle", 0.9, input_shape=SHAPE, masks=numpy_masks, seed=1)
    assert all(torch.equal(again[k], out[k]) for k in out)


def test_random_is_uniform_per_layer_and_follows_allocations(small):
    r = prune_with_scores(small, "random", 0.9, input_shape=SHAPE)
    for m in r.masks.values():
        assert abs(int(m.sum()) - 0.1 * m.numel()) < 1
    e = prune_with_scores(small, "random", 0.9, input_shape=SHAPE, allocation="erk")
    assert e.budgets != r.budgets
    assert {k: int(m.sum()) for k, m in e.masks.items()} == e.budgets


def test_magnitude_keeps_the_largest_weights(small):
    masks = topo_pai.prune(small, "magnitude", 0.8, input_shape=SHAPE)
    kept = torch.cat([small.get_submodule(k[:-7]).weight.detach().abs()[m] for k, m in
                      masks.items()])
    pruned = torch.cat([small.get_submodule(k[:-7]).weight.detach().abs()[~m] for k, m in
                        masks.items()])
    assert kept.min() >= pruned.max()


def test_ties_are_broken_by_seed():
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    a = topo_pai.prune(model, "magnitude", 0.5, input_shape=(10,), seed=0)["0.weight"]
    b = topo_pai.prune(model, "magnitude", 0.5, input_shape=(10,), seed=0)["0.weight"]
    c = topo_pai.prune(model, "magnitude", 0.5, input_shape=(10,), seed=1)["0.weight"]
    assert int(a.sum()) == 50 and torch.equal(a, b) and not torch.equal(a, c)


def test_scores_models_with_attached_masks():
    """An already-masked model is scored as its forward sees it (masked weights are 0)."""
    torch.manual_seed(0)
    model = resnet20(width=4)
    first = topo_pai.prune(model, "magnitude", 0.5, input_shape=SHAPE)
    for how in ("prune", "parametrize"):
        net = topo_pai.apply_masks(copy.deepcopy(model), first, method=how)
        net(torch.randn(1, *SHAPE))  # a forward with grad: prune's weight is now a non-leaf
        x, y = make_data(4)
        for method, kw in [("magnitude", {}), ("snip", {"data": (x, y)}),
                           ("synflow", {"rounds": 2})]:
            second = topo_pai.prune(net, method, 0.75, input_shape=SHAPE, **kw)
            assert n_kept(second) == n_keep(n_total(second), 0.75)
        second = topo_pai.prune(net, "magnitude", 0.75, input_shape=SHAPE)
        assert all(not bool((second[k] & ~first[k]).any()) for k in first)


# ---------------------------------------------------------------------------
# method oracles
# ---------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(),
                         nn.Linear(5, 3))


def _flat_grad(f, params):
    return torch.autograd.grad(f, params, create_graph=True)


def test_snip_oracle():
    model = _mlp()
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    r = prune_with_scores(model, "snip", 0.5, input_shape=(6,), data=(x, y))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            np.testing.assert_allclose(r.scores[name], (p.grad * p).abs().double().detach().numpy(),
                                       rtol=1e-5, atol=1e-12)
    model.zero_grad()


def test_grasp_oracle_and_sign_convention():
    """Keep-score = w ⊙ Hg (temperature 200), Hg from torch.func's exact Hessian."""
    model = _mlp()
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    r = prune_with_scores(model, "grasp", 0.5, input_shape=(6,), data=(x, y))
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    params = dict(model.named_parameters())
    w0 = [params[n].detach() for n in names]

    def loss(*ws):
        out = torch.func.functional_call(model, dict(zip(names, ws)), (x,)) / 200.0
        return F.cross_entropy(out, y)

    leaves = [w.clone().requires_grad_() for w in w0]
    g = torch.autograd.grad(loss(*leaves), leaves)
    H = torch.autograd.functional.hessian(loss, tuple(w0))
    for i, n in enumerate(names):
        hg = sum(torch.tensordot(H[i][j], g[j], dims=g[j].dim()) for j in range(len(names)))
        np.testing.assert_allclose(r.scores[n], (w0[i] * hg).double().numpy(),
                                   rtol=1e-4, atol=1e-12)
    # higher keep-score is kept: the removed weights are those with the largest -w*Hg
    kept = np.concatenate([r.scores[n][r.masks[n].numpy()] for n in names])
    removed = np.concatenate([-r.scores[n][~r.masks[n].numpy()] for n in names])
    assert (-kept).max() <= removed.min()


def test_iterative_methods_with_one_round_are_one_shot(small):
    x, y = make_data(8)
    a = topo_pai.prune(small, "snip", 0.9, input_shape=SHAPE, data=(x, y))
    b = topo_pai.prune(small, "iter_snip", 0.9, input_shape=SHAPE, data=(x, y), rounds=1)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_iterative_schedule(small, monkeypatch, scope):
    """Round t keeps round(N * d ** (t / T)) weights (per layer with budgets), pruned
    weights never return, and the reported scores mark earlier-pruned weights -inf."""
    from topo_pai.pruners import registry

    seen = []
    m = get_method("synflow")

    def spy(ctx, masks, **opts):
        seen.append(None if masks is None else {k: v.copy() for k, v in masks.items()})
        return m.fn(ctx, masks, **opts)

    monkeypatch.setitem(registry.METHODS, "synflow", dataclasses.replace(m, fn=spy))
    T, d = 4, 0.01
    r = prune_with_scores(small, "synflow", 1 - d, input_shape=SHAPE, rounds=T, scope=scope)
    assert len(seen) == T and seen[0] is None
    final = {k: v.numpy() for k, v in r.masks.items()}
    rounds = seen[1:] + [final]
    total = n_total(r.masks)
    keep = n_keep(total, 1 - d)
    for t, masks in enumerate(rounds, start=1):
        if scope == "global":
            want = keep if t == T else math.floor(total * (keep / total) ** (t / T) + 0.5)
            assert sum(int(v.sum()) for v in masks.values()) == want
        else:
            for k, v in masks.items():
                b = r.budgets[k]
                want = b if t == T else math.floor(v.size * (b / v.size) ** (t / T) + 0.5)
                assert int(v.sum()) == want
        if t > 1:
            prev = rounds[t - 2]
            assert all(not bool((masks[k] & ~prev[k]).any()) for k in masks)
    for k, s in r.scores.items():
        assert np.all(np.isneginf(s[~seen[-1][k]]))


# ---------------------------------------------------------------------------
# SynFlow: the Topology scores, overflow, collapse
# ---------------------------------------------------------------------------

class Mixed(nn.Module):
    """Grouped and depthwise convs, a Conv1d branch, flatten into Linear, an unused layer."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g2 = nn.Conv2d(8, 12, 1, groups=4)
        self.fc1 = nn.Linear(12 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 4)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.dw(x)) + x, 2)
        x = F.relu(self.g2(x))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@pytest.mark.parametrize("factory,shape", [(lambda: resnet20(width=4), SHAPE),
                                           (Mixed, (3, 8, 8))])
def test_synflow_scores_are_topology_flows(factory, shape):
    """SynFlow's round scores are ``with_masks(m).flows(|w|).log10_through_weights()``
    on every unpruned weight, bit for bit: the channel variant's fast path here, the
    default (neuron) resolution in ``test_synflow_neuron_resolution``."""
    from topo_pai.pruners import methods
    from topo_pai.pruners.context import PruneContext, prunable_targets

    torch.manual_seed(0)
    model = factory()
    targets = prunable_targets(model)
    ctx = PruneContext(model, targets, targets, 0, shape, None, {})
    topo = topo_pai.from_torch(model, None, shape)
    absw = {t.param: model.get_submodule(t.module).weight.detach().abs() for t in targets}
    g = torch.Generator().manual_seed(1)
    for density in (1.0, 0.5, 0.05):
        masks = {t.param: (torch.rand(t.shape, generator=g) < density).numpy() for t in targets}
        ours = methods.synflow_scores(ctx, masks, resolution="channel")
        ref = topo.with_masks(masks).flows(absw).log10_through_weights()
        for k, m in masks.items():
            np.testing.assert_array_equal(ours[k][m], ref[k][m])
    one = prune_with_scores(model, "synflow", 0.8, input_shape=shape, rounds=1,
                            resolution="channel")
    ref = topo.flows(absw).log10_through_weights()
    for k, s in one.scores.items():
        np.testing.assert_array_equal(s, ref[k])
    if "unused.weight" in one.scores:
        assert np.all(np.isneginf(one.scores["unused.weight"]))


def test_synflow_neuron_resolution():
    """The default resolution is the published (neuron) one; its scores are the
    unrolled graph's flows (an independent float64 torch oracle: tests/pruners/test_synflow.py)."""
    assert get_method("synflow").options["resolution"] == "neuron"
    assert get_method("synflow_widen").options["resolution"] == "neuron"
    torch.manual_seed(0)
    model = Mixed()
    r = prune_with_scores(model, "synflow", 0.7, input_shape=(3, 8, 8), rounds=2)
    assert n_kept(r.masks) == n_keep(n_total(r.masks), 0.7)
    ref = topo_pai.from_torch(model, None, (3, 8, 8)).flows(
        {k: model.get_submodule(k[:-7]).weight.detach().abs() for k in r.masks},
        "neuron").log10_through_weights()
    one = prune_with_scores(model, "synflow", 0.7, input_shape=(3, 8, 8), rounds=1)
    for k in one.scores:
        np.testing.assert_array_equal(one.scores[k], ref[k])


def _float64_synflow_R(model, shape):
    """The reference code's SynFlow flow in float64: |w|, all-ones input, eval mode."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    return net(torch.ones((1,) + shape, dtype=torch.float64)).sum().item()


def test_synflow_scores_stay_finite_where_float64_overflows():
    torch.manual_seed(0)
    model = CifarResNet(110, width=4)  # 109 convs in 54 residual blocks
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(1000.0)
    assert math.isinf(_float64_synflow_R(model, SHAPE))  # the float probe overflows
    one = prune_with_scores(model, "synflow", 0.5, input_shape=SHAPE, rounds=1)
    for k, s in one.scores.items():  # dense: every non-zero weight lies on a path
        w = model.get_submodule(k[:-7]).weight.detach().numpy()
        assert np.all(np.isfinite(s[w != 0])), k
    r = prune_with_scores(model, "synflow", 0.9, input_shape=SHAPE, rounds=3)
    topo = topo_pai.from_torch(model, r.masks, SHAPE)
    absw = {k: model.get_submodule(k[:-7]).weight.detach().abs() for k in r.masks}
    assert 308 < topo.flows(absw).log10_total < math.inf  # still beyond float64 when pruned
    assert n_kept(r.masks) == n_keep(n_total(r.masks), 0.9)
    effective = topo.effective_masks()
    for k, s in r.scores.items():
        assert not np.isnan(s).any()
        assert np.all(np.isfinite(s[effective[k].numpy()])), k


COLLAPSE_SPARSITY = 0.999
COLLAPSE_ROUNDS = 20  # SynFlow's 100 rounds take ~2.5 min on VGG-19; the benchmark runs 100


@pytest.fixture(scope="module")
def vgg19_collapse():
    """Each method at 99.9 % sparsity on VGG-19: log10 paths and effective nodes."""
    torch.manual_seed(0)
    model = vgg19()
    x, y = make_data(8, classes=100)
    table = {}
    for method in sorted(available_methods(), key=lambda n: n == "shuffle"):  # shuffle last
        if method == "phew" and not HAS_PHEW:
            continue
        opts = {}
        if "rounds" in get_method(method).options:  # data-dependent rounds cost a backward pass
            opts["rounds"] = 3 if get_method(method).needs_data else COLLAPSE_ROUNDS
        if method == "synflow_widen":  # only listed in the table: its faster channel variant
            opts["resolution"] = "channel"
        if method == "shuffle":
            opts = {"masks": table["synflow"][2]}
        masks = topo_pai.prune(model, method, COLLAPSE_SPARSITY, input_shape=SHAPE,
                               data=(x, y) if get_method(method).needs_data else None, **opts)
        topo = topo_pai.from_torch(model, masks, SHAPE)
        table[method] = (topo.count_paths().log10, topo.effective_nodes(), masks)
    return table


def test_synflow_avoids_layer_collapse_on_vgg19(vgg19_collapse):
    log10_paths, nodes, _ = vgg19_collapse["synflow"]
    assert log10_paths > -math.inf and nodes > 0


def test_layer_collapse_table_on_vgg19(vgg19_collapse, record_property):
    """Records which methods collapse (no input-output path) at 99.9 % on VGG-19."""
    lines = ["| method | log10 paths | effective channels | collapsed |", "|---|---|---|---|"]
    for method, (log10_paths, nodes, _) in sorted(vgg19_collapse.items()):
        collapsed = log10_paths == -math.inf
        lines.append(f"| {method} | {log10_paths:.2f} | {nodes} | {'yes' if collapsed else 'no'} |")
        record_property(f"collapse_{method}", collapsed)
    print("\nVGG-19, sparsity 99.9 %:\n" + "\n".join(lines))
    assert set(vgg19_collapse) == set(available_methods()) - (set() if HAS_PHEW else {"phew"})


# ---------------------------------------------------------------------------
# PHEW glue (the algorithm itself lives in topo_pai.pruners.phew)
# ---------------------------------------------------------------------------

def test_phew_glue_passes_budgets_and_checks_them(small, monkeypatch):
    calls = {}

    def fake_phew_masks(topo, abs_weights, budgets, seed, **options):
        calls.update(topo=topo, budgets=dict(budgets), seed=seed, options=options)
        out = {}
        for name, w in abs_weights.items():
            flat = np.zeros(w.size, dtype=bool)
            flat[np.argsort(-w.reshape(-1), kind="stable")[:budgets[name]]] = True
            out[name] = flat.reshape(w.shape)
        return out

    from topo_pai.pruners.phew import check_phew_options

    fake = types.ModuleType("topo_pai.pruners.phew")
    fake.phew_masks = fake_phew_masks
    fake.check_phew_options = check_phew_options  # PhewOptions checks its values with it
    monkeypatch.setitem(sys.modules, "topo_pai.pruners.phew", fake)
    r = prune_with_scores(small, "phew", 0.9, input_shape=SHAPE, seed=7, element="largest",
                          exclude=["fc"])
    erk = prune_with_scores(small, "random", 0.9, input_shape=SHAPE, allocation="erk",
                            exclude=["fc"])
    assert r.budgets == erk.budgets  # ERK by default
    assert calls["seed"] == 7 and calls["options"] == {
        "element": "largest", "stall_window": 10_000, "min_yield": 0.01, "max_walks": None}
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'walk_len' for method 'phew'"):
        prune_with_scores(small, "phew", 0.9, input_shape=SHAPE, walk_len=3)
    assert isinstance(calls["topo"], topo_pai.Topology)
    assert calls["budgets"]["fc.weight"] == small.fc.weight.numel()  # excluded: dense
    u = prune_with_scores(small, "phew", 0.9, input_shape=SHAPE, allocation="uniform")
    assert {k: int(m.sum()) for k, m in u.masks.items()} == u.budgets

    def bad_phew_masks(topo, abs_weights, budgets, seed, **options):
        return {k: np.ones(w.shape, dtype=bool) for k, w in abs_weights.items()}

    fake.phew_masks = bad_phew_masks
    with pytest.raises(RuntimeError, match="budget"):
        topo_pai.prune(small, "phew", 0.9, input_shape=SHAPE)
