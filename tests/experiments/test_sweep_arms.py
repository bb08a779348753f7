"""Sweep features of a pre-registered study: named arms, per-arm seeds, the dense
reference, a validation split that leaves the test set for one look, and the
weight-scale control."""

import json

import numpy as np
import pytest
import torch

import topo_pai
from topo_pai.experiments.curves import topology_record
from topo_pai.experiments.data import load_dataset
from topo_pai.experiments.sweep import DENSE, SweepConfig, read_results, run_sweep
from topo_pai.experiments.training import rescale_kept_weights, seed_everything

BASE = dict(models=("lenet_300_100",), dataset="synthetic", sparsities=(0.9,), seeds=(0, 1),
            model_kwargs={"lenet_300_100": {"width": 0.1}})
ERK = {"random_erk": {"method": "random", "allocation": "erk"}}


def test_arms_seeds_and_dense_span_the_grid():
    cfg = SweepConfig(**BASE, methods=("random", "random_erk", "npb"), arms=ERK,
                      shuffled=("npb",), seeds_for={"npb+shuffle": [1], DENSE: [0]},
                      dense=True)
    ids = sorted(t.trial_id for t in cfg.trials())
    assert ids == sorted([
        "lenet_300_100/dense/s0/seed0",
        "lenet_300_100/random/s0.9/seed0", "lenet_300_100/random/s0.9/seed1",
        "lenet_300_100/random_erk/s0.9/seed0", "lenet_300_100/random_erk/s0.9/seed1",
        "lenet_300_100/npb/s0.9/seed0", "lenet_300_100/npb/s0.9/seed1",
        "lenet_300_100/npb+shuffle/s0.9/seed1"])
    assert cfg.arm("random_erk") == ("random", {"allocation": "erk"}, False)
    assert cfg.arm("random") == ("random", {}, False)


def test_an_arm_prunes_as_its_method_with_its_options(tmp_path):
    cfg = SweepConfig(**BASE, methods=("random_erk",), arms=ERK)
    rows = {r["trial_id"]: r for r in run_sweep(cfg, tmp_path / "s", progress=False)}
    for seed in (0, 1):
        seed_everything(seed)  # as the sweep does before building the model
        model = topo_pai.models.get_model("lenet_300_100", in_channels=1, num_classes=10,
                                          input_size=(28, 28), width=0.1)
        masks = topo_pai.prune(model, "random", 0.9, input_shape=(1, 28, 28), seed=seed,
                               allocation="erk")
        erk = topology_record(model, masks, (1, 28, 28))
        uniform = topo_pai.prune(model, "random", 0.9, input_shape=(1, 28, 28), seed=seed)
        row = rows[f"lenet_300_100/random_erk/s0.9/seed{seed}"]
        assert row["method"] == "random_erk"
        assert row["unpruned_params"] == sum(int(m.sum()) for m in masks.values())
        assert row["effective_params"] == erk["effective_params"]
        # ERK keeps other layer densities than the uniform default
        assert [int(m.sum()) for m in masks.values()] != \
            [int(m.sum()) for m in uniform.values()]


def test_dense_reference_keeps_every_weight(tmp_path):
    cfg = SweepConfig(**BASE, methods=("random",), dense=True, seeds_for={DENSE: [0]})
    rows = {r["trial_id"]: r for r in run_sweep(cfg, tmp_path / "s", progress=False)}
    d = rows["lenet_300_100/dense/s0/seed0"]
    assert d["sparsity"] == 0.0 and d["method"] == DENSE
    assert d["unpruned_params"] == d["total_params"] == d["effective_params"]
    assert d["flops"] == d["dense_flops"]


@pytest.mark.parametrize("change, match", [
    (dict(methods=("dense",)), "dense = true"),
    (dict(methods=("x",), arms={"x": {"allocation": "erk"}}), "'method'"),
    (dict(methods=("a+b",), arms={"a+b": {"method": "random"}}), "without '/' or '\\+'"),
    (dict(methods=("dense",), arms={"dense": {"method": "random"}}), "reserved"),
    (dict(methods=("random",), seeds_for={"random": [7]}), "seeds_for"),
    (dict(methods=("random",), seeds_for={"snip": [0]}), "not an arm"),
    (dict(methods=("random",), seeds_for={DENSE: [0]}), "not an arm"),
    (dict(methods=("random_erk",), arms=ERK, method_options={"random_erk": {}}), "arms"),
    (dict(methods=("x",), arms={"x": {"method": "random", "rescale": "yes"}}), "rescale"),
    (dict(methods=("random",), val_size=0), "val_size"),
    (dict(methods=("random",), dense="yes"), "dense"),
    # was accepted: random pruning recorded and plotted as "snip"
    ({"methods": ("snip",), "arms": {"snip": {"method": "random"}}},
     "'snip' is a registered method, but the arm runs 'random'"),
])
def test_bad_arm_configurations(change, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**{**BASE, **change})


@pytest.mark.parametrize("arms, match", [
    ({"x": {"method": "nope"}}, "unknown method 'nope'"),
    ({"x": {"method": "npb", "alhpa": 0.1}}, r"arms\[.x.\].*alhpa"),
])
def test_arm_methods_and_options_are_checked_before_any_trial(arms, match, tmp_path):
    cfg = SweepConfig(**{**BASE, "methods": ("x",), "arms": arms})
    with pytest.raises(ValueError, match=match):
        run_sweep(cfg, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "results.jsonl").exists()


@pytest.mark.parametrize("arms, match", [
    ({"x": {"method": "nope"}}, r"arms\['x'\]: unknown method 'nope'"),
    ({"x": {"method": "synflow", "rounds": 0}},
     r"arms\['x'\]: method 'synflow': rounds must be an int >= 1, got 0"),
    ({"x": {"method": "random", "allocation": "erdos"}}, r"arms\['x'\]: unknown allocation"),
    ({"x": {"method": "shuffle"}}, r"arms\['x'\]: method 'shuffle' reworks given masks"),
])
def test_arms_left_out_of_methods_are_checked_too(arms, match, tmp_path):
    """An arm defined but not listed in methods was stored in config.json unchecked."""
    cfg = SweepConfig(**{**BASE, "methods": ("random",), "arms": arms})
    with pytest.raises(ValueError, match=match):
        run_sweep(cfg, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_an_unknown_method_is_matched_against_the_arms_too():
    cfg = SweepConfig(**{**BASE, "methods": ("random_ekr",), "arms": ERK})
    with pytest.raises(ValueError, match="Did you mean 'random_erk'"):
        cfg.validate_names()


def test_old_configurations_read_back_unchanged(tmp_path):
    """A config.json written before arms existed is the same configuration."""
    cfg = SweepConfig(**BASE, methods=("random",))
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("arms", "seeds_for", "dense", "val_size")}
    assert SweepConfig.from_dict(json.loads(json.dumps(old))).same_as(cfg)


def test_split_off_is_a_disjoint_stratified_partition():
    ds = load_dataset("synthetic", input_shape=(1, 6, 6), num_classes=5, n=200)
    rest, val = ds.split_off(50, seed=3)
    assert len(rest) + len(val) == len(ds) and val.split == "val"
    assert val.y.bincount().tolist() == [10] * 5
    flat = ds.x.reshape(len(ds), -1)
    key = {tuple(r.tolist()) for r in flat}
    a = {tuple(r.tolist()) for r in rest.x.reshape(len(rest), -1)}
    b = {tuple(r.tolist()) for r in val.x.reshape(len(val), -1)}
    assert not a & b and a | b == key
    assert torch.equal(val.x, ds.subset(50, seed=3).x)
    with pytest.raises(ValueError, match="leave at least one"):
        ds.split_off(200)


def test_validation_split_is_evaluated_each_epoch_and_the_test_set_once(monkeypatch):
    from topo_pai.experiments import training as T
    ds = load_dataset("synthetic", input_shape=(1, 8, 8), num_classes=4, n=400)
    test = load_dataset("synthetic", "test", input_shape=(1, 8, 8), num_classes=4, n=100)
    rest, val = ds.split_off(100)
    seen = []
    real = T.evaluate

    def spy(model, dataset, **kw):
        seen.append(dataset.split)
        return real(model, dataset, **kw)

    monkeypatch.setattr(T, "evaluate", spy)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    res = T.train(net, rest, test, val_set=val, epochs=3, batch_size=50, progress=False,
                  device="cpu")
    assert seen == ["val", "val", "val", "test"]
    assert [set(h) >= {"val_acc", "val_loss"} and "test_acc" not in h for h in res.history] \
        == [True] * 3
    assert res.final_val_accuracy == res.history[-1]["val_acc"]
    assert (res.final_loss, res.final_accuracy) == real(net, test, device="cpu")


def test_sweep_with_validation_split_records_both(tmp_path):
    cfg = SweepConfig(**{**BASE, "seeds": (0,)}, methods=("random",), val_size=64,
                      train=dict(epochs=2, batch_size=32, lr=0.05), train_limit=320,
                      test_limit=128)
    (row,) = run_sweep(cfg, tmp_path / "s", progress=False)
    assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
    assert row["val_loss"] > 0 and row["test_loss"] > 0
    (epochs,) = [json.loads(line) for line in open(tmp_path / "s" / "epochs.jsonl")]
    assert [h["val_acc"] for h in epochs["history"]][-1] == row["val_accuracy"]
    assert read_results(tmp_path / "s" / "results.jsonl")[row["trial_id"]]["val_accuracy"] \
        == row["val_accuracy"]


def test_rescale_restores_each_units_dense_variance():
    """Oracle: over many random initialisations, each unit's expected squared weight norm
    (its pre-activation variance for unit-variance inputs) after rescaling equals the
    dense unit's; the scale factors are sqrt(n / kept)."""
    torch.manual_seed(0)
    mask = torch.rand(5, 6, 3, 3) < 0.2
    mask[0] = False  # a unit with nothing kept stays zero
    mask[1] = False
    mask[1, 0, 0, 0] = True  # one kept weight: the largest factor, sqrt(54)
    masks = {"weight": mask.clone()}
    kept = mask.reshape(5, -1).sum(1).double()
    dense_sq, rescaled_sq = torch.zeros(5, dtype=torch.float64), torch.zeros(5,
                                                                             dtype=torch.float64)
    draws = 4000
    for _ in range(draws):
        conv = torch.nn.Conv2d(6, 5, 3, bias=False).double()
        dense_sq += (conv.weight.detach() ** 2).reshape(5, -1).sum(1)
        factors = rescale_kept_weights(conv, masks)
        rescaled_sq += ((conv.weight.detach() * mask) ** 2).reshape(5, -1).sum(1)
    assert torch.equal(masks["weight"], mask)  # the masks are not modified
    assert rescaled_sq[0] == 0
    rel = (rescaled_sq[1:] / dense_sq[1:] - 1).abs()
    assert float(rel[1:].max()) < 0.05  # units with several kept weights
    assert float(rel[0]) < 0.1  # one weight: a chi-square with 1 degree of freedom, noisier
    assert factors["weight"] == pytest.approx(float(torch.sqrt(54.0 / kept[1:]).mean()))


def test_rescale_arm_in_a_sweep_scales_before_training(tmp_path, monkeypatch):
    from topo_pai.experiments import training as T
    calls = []
    real = T.rescale_kept_weights

    def spy(model, masks):
        calls.append(sorted(masks))
        return real(model, masks)

    monkeypatch.setattr(T, "rescale_kept_weights", spy)
    cfg = SweepConfig(**{**BASE, "seeds": (0,)}, methods=("random", "random_scaled"),
                      arms={"random_scaled": {"method": "random", "rescale": True}})
    rows = {r["method"]: r for r in run_sweep(cfg, tmp_path / "s", progress=False)}
    assert len(calls) == 1 and all(k.endswith("weight") for k in calls[0])
    # the same mask: rescaling changes weights, not the topology
    for col in ("effective_params", "unpruned_params", "log10_paths", "effective_nodes"):
        assert rows["random"][col] == rows["random_scaled"][col]


def test_rescale_refuses_a_mask_of_another_shape():
    net = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="'weight' has shape"):
        rescale_kept_weights(net, {"weight": np.ones((4, 3))})
    with pytest.raises(KeyError, match="no parameter"):
        rescale_kept_weights(net, {"nope": np.ones((3, 4))})
    with pytest.raises(ValueError, match=r"'weight' holds 0.5 at index \(0, 1\)"):
        rescale_kept_weights(net, {"weight": np.array([[1, .5, 0, 1]] * 3)})
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        rescale_kept_weights(net, {"bias": np.ones(3)})
