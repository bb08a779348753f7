"""topo_pai.experiments.curves: rows equal direct prune + from_torch measurements."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import topo_pai
from topo_pai.experiments.curves import (
    RESULT_COLUMNS,
    node_path_curves,
    parse_method,
    proxy_batch,
    topology_record,
)

SHAPE = (2, 6, 6)


def tiny():
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4))


def direct(method, sparsity, seed, data=None, **opts):
    torch.manual_seed(seed)
    model = tiny()
    masks = topo_pai.prune(model, method, sparsity, input_shape=SHAPE, data=data, seed=seed,
                           **opts)
    return model, masks


def test_rows_match_direct_measurement():
    rows = node_path_curves(tiny, ["random", "synflow"], [0.5, 0.9], input_shape=SHAPE,
                            seeds=(0, 3), options={"synflow": {"rounds": 4}})
    assert len(rows) == 2 * 2 * 2
    assert [(r["method"], r["sparsity"], r["seed"]) for r in rows[:4]] == [
        ("random", 0.5, 0), ("random", 0.5, 3), ("random", 0.9, 0), ("random", 0.9, 3)]
    for r in rows:
        assert tuple(r) == RESULT_COLUMNS
        assert r["accuracy"] is None and r["shuffled"] is False
        assert r["model"] == "tiny" and r["dataset"] == "synthetic"
        opts = {"rounds": 4} if r["method"] == "synflow" else {}
        model, masks = direct(r["method"], r["sparsity"], r["seed"], **opts)
        topo = topo_pai.from_torch(model, masks, SHAPE)
        assert r["effective_nodes"] == topo.effective_nodes()
        assert r["n_nodes"] == topo.n_nodes()
        assert r["log10_paths"] == pytest.approx(topo.count_paths().log10)
        assert r["effective_params"] == topo.effective_params()
        assert r["unpruned_params"] == sum(int(m.sum()) for m in masks.values())
        assert r["total_params"] == topo.n_params
        assert r["flops"] == topo.effective_flops()
    assert rows[0]["trial_id"] == "tiny/random/s0.5/seed0"


def test_shuffled_variant_keeps_layer_counts_and_moves_weights():
    rows = node_path_curves(tiny, ["magnitude", "magnitude+shuffle"], [0.8],
                            input_shape=SHAPE)
    base, shuf = rows
    assert (base["method"], base["shuffled"]) == ("magnitude", False)
    assert (shuf["method"], shuf["shuffled"]) == ("magnitude", True)
    assert shuf["trial_id"] == "tiny/magnitude+shuffle/s0.8/seed0"
    model, masks = direct("magnitude", 0.8, 0)
    shuffled = topo_pai.prune(model, "shuffle", 0.8, input_shape=SHAPE, masks=masks, seed=0)
    assert shuf == dict(shuf, **topology_record(model, shuffled, SHAPE))
    assert shuf["unpruned_params"] == base["unpruned_params"]
    assert any(not torch.equal(masks[k], shuffled[k]) for k in masks)


def test_data_free_proxy_for_data_dependent_methods():
    rows = node_path_curves(tiny, ["snip"], [0.7], input_shape=SHAPE, seeds=(1,))
    torch.manual_seed(1)
    model = tiny()
    batch = proxy_batch(model, SHAPE, seed=1)
    assert batch[0].shape == (64, *SHAPE) and int(batch[1].max()) < 4
    masks = topo_pai.prune(model, "snip", 0.7, input_shape=SHAPE, data=batch, seed=1)
    assert rows[0] == dict(rows[0], **topology_record(model, masks, SHAPE))


def test_given_data_is_used():
    g = torch.Generator().manual_seed(5)
    data = (torch.randn(8, *SHAPE, generator=g), torch.randint(0, 4, (8,), generator=g))
    rows = node_path_curves(tiny, ["snip"], [0.7], input_shape=SHAPE, data=data,
                            dataset="mine")
    _, masks = direct("snip", 0.7, 0, data=data)
    torch.manual_seed(0)
    assert rows[0] == dict(rows[0], **topology_record(tiny(), masks, SHAPE))
    assert rows[0]["dataset"] == "mine"


def test_collapse_is_recorded_as_minus_inf():
    # a 1-unit bottleneck: at 90 % SNIP/magnitude can cut every path
    def bottleneck():
        return nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))

    rows = node_path_curves(bottleneck, ["magnitude"], [0.9], input_shape=(4,))
    r = rows[0]
    assert r["unpruned_params"] == 1  # round(0.1 * 7)
    assert r["log10_paths"] == -math.inf and r["effective_nodes"] == 0 and r["flops"] == 0


def test_deterministic_and_model_fn_called_per_seed():
    calls = []

    def fn():
        calls.append(1)
        return tiny()

    a = node_path_curves(fn, ["random", "npb"], [0.9], input_shape=SHAPE, seeds=(0, 1))
    assert len(calls) == 2
    b = node_path_curves(fn, ["random", "npb"], [0.9], input_shape=SHAPE, seeds=(0, 1))
    assert a == b


def test_methods_and_arguments_are_validated():
    with pytest.raises(ValueError, match="unknown method 'nope'.*synflow"):
        node_path_curves(tiny, ["nope"], [0.9], input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"'<method>\+shuffle'"):
        node_path_curves(tiny, ["shuffle"], [0.9], input_shape=SHAPE)
    with pytest.raises(ValueError, match="unknown method 'x\\+shuffle'"):
        parse_method("x+shuffle")
    with pytest.raises(ValueError, match="fractions"):
        node_path_curves(tiny, ["random"], [90], input_shape=SHAPE)
    with pytest.raises(ValueError, match="empty"):
        node_path_curves(tiny, [], [0.9], input_shape=SHAPE)
    with pytest.raises(ValueError, match="empty"):
        node_path_curves(tiny, ["random"], [], input_shape=SHAPE)
    with pytest.raises(ValueError, match="seeds"):
        node_path_curves(tiny, ["random"], [0.9], input_shape=SHAPE, seeds=(-1,))
    with pytest.raises(ValueError, match="not among the methods"):
        node_path_curves(tiny, ["random"], [0.9], input_shape=SHAPE,
                         options={"synflow": {"rounds": 2}})
    with pytest.raises(ValueError, match="unknown option"):
        node_path_curves(tiny, ["random"], [0.9], input_shape=SHAPE,
                         options={"random": {"rounds": 2}})
    with pytest.raises(TypeError, match="torch.nn.Module"):
        node_path_curves(lambda: "model", ["random"], [0.9], input_shape=SHAPE)


def test_progress_lines(capsys):
    node_path_curves(tiny, ["random"], [0.5, 0.9], input_shape=SHAPE, progress=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "random" in err[0] and "90.000%" in err[1]


def test_curves_feed_the_plots(tmp_path):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from topo_pai.experiments.plotting import plot_node_path_curves

    rows = node_path_curves(tiny, ["random", "npb"], [0.5, 0.9], input_shape=SHAPE)
    fig = plot_node_path_curves(rows, layout="both")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "npb")
    np.testing.assert_allclose(line.get_ydata(), [r["log10_paths"] for r in rows[2:]])
    import matplotlib.pyplot as plt
    plt.close(fig)
