"""Core API: the views of a Topology: ``summary``, the networkx export, forward and
backward counts and ``PathCount`` (split from test_api.py)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from api_helpers import (RES, weight_shape, random_masks, small_cnn, SMALL_CNN_SHAPE)  # noqa: E402

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("res", RES)
def test_summary_consistent_with_queries(res):
    model = small_cnn()
    masks = random_masks(model, density=0.5, seed=11)
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    s = topo.summary(res)
    assert s.resolution == res
    assert len(s) == 4 and [r["name"] for r in s.rows] == ["input", "0", "4", "7"]
    assert [r["kind"] for r in s.rows] == ["input", "Conv2d", "Conv2d", "Linear"]
    eff = topo.effective_masks(res)
    fc, bc = topo.forward_counts(res), topo.backward_counts(res)
    shapes = {"input": SMALL_CNN_SHAPE, "0": (3, 6, 6), "4": (4, 2, 2), "7": (3,)}
    for row in s.rows:
        name = row["name"]
        if name == "input":
            assert row["params"] == row["unpruned"] == row["effective_params"] == 0
        else:
            pname = f"{name}.weight"
            assert row["shape"] == weight_shape(model, pname)
            assert row["params"] == masks[pname].numel()
            assert row["unpruned"] == int(masks[pname].sum())
            assert row["effective_params"] == int(eff[pname].sum())
        nodes = shapes[name][0] if res == "channel" else math.prod(shapes[name])
        assert row["nodes"] == nodes
        f, b = fc[name].to_float(), bc[name].to_float()
        assert row["effective_nodes"] == int(((f > 0) & (b > 0)).sum())
        assert math.isclose(row["log10_in_paths"], math.log10(f.sum()), rel_tol=1e-12)
        assert math.isclose(row["log10_out_paths"], math.log10(b.sum()), rel_tol=1e-12)
    t = s.totals
    pc = topo.count_paths(res)
    assert t["log10_paths"] == pc.log10
    assert t["params"] == topo.n_params == sum(r["params"] for r in s.rows)
    assert t["unpruned"] == topo.n_unpruned == sum(r["unpruned"] for r in s.rows)
    assert t["effective_params"] == topo.effective_params(res) == sum(
        r["effective_params"] for r in s.rows)
    assert t["effective_nodes"] == topo.effective_nodes(res) == sum(
        r["effective_nodes"] for r in s.rows)
    assert t["nodes"] == topo.n_nodes(res) == sum(r["nodes"] for r in s.rows)
    # every path leaves the input and ends at the last layer (a chain)
    assert math.isclose(s.rows[0]["log10_out_paths"], pc.log10, rel_tol=1e-12)
    assert math.isclose(s.rows[-1]["log10_in_paths"], pc.log10, rel_tol=1e-12)
    # records are copies
    rec = s.to_records()
    assert rec == s.rows
    rec[0]["name"] = "changed"
    assert s.rows[0]["name"] == "input"
    text = str(s)
    for row in s.rows:
        assert row["name"] in text
    assert res in text
    assert str(topo.n_params) in text


def test_summary_names_nested_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.ModuleDict({"classifier": nn.Linear(2 * 2 * 2, 3)})

        def forward(self, x):
            return self.head["classifier"](torch.flatten(self.features(x), 1))

    topo = topo_pai.from_torch(Net(), input_shape=(1, 4, 4))
    text = str(topo.summary())
    assert "features.0" in text and "head.classifier" in text
    assert topo.group_names == ["input", "features.0", "head.classifier"]


# ---------------------------------------------------------------------------
# networkx export
# ---------------------------------------------------------------------------

def test_to_networkx_tiny_net():
    C0, C1, n = 2, 3, 2
    model = nn.Sequential(nn.Conv2d(C0, C1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(C1 * 4, n))
    masks = random_masks(model, density=0.6, seed=2)
    topo = topo_pai.from_torch(model, masks, input_shape=(C0, 3, 3))
    G = topo.to_networkx()
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == topo.n_nodes("channel") == C0 + C1 + n
    total = sum(d["multiplicity"] for _, _, d in G.edges(data=True))
    assert total == topo.n_unpruned
    # multiplicities written out from the semantics
    m0, m1 = masks["0.weight"], masks["3.weight"]
    for o in range(C1):
        for i in range(C0):
            k = int(m0[o, i].sum())
            e = (("input", i), ("0", o))
            assert (G.edges[e]["multiplicity"] if G.has_edge(*e) else 0) == k
    for j in range(n):
        for c in range(C1):
            k = int(m1[j, 4 * c:4 * c + 4].sum())
            e = (("0", c), ("3", j))
            assert (G.edges[e]["multiplicity"] if G.has_edge(*e) else 0) == k
    # path DP over the DiGraph
    count = {}
    for v in nx.topological_sort(G):
        if G.nodes[v]["layer"] == 0:
            count[v] = 1
        else:
            count[v] = sum(count[u] * G.edges[u, v]["multiplicity"] for u in G.predecessors(v))
    n_paths = sum(c for v, c in count.items() if G.nodes[v]["layer"] == 2)
    assert n_paths == topo.count_paths("channel").exact
    assert {G.nodes[v]["layer"] for v in G} == {0, 1, 2}
    with pytest.raises(ValueError):
        topo.to_networkx(max_edges=1)


def test_to_networkx_dp_on_residual_net():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.c(self.b(h) + h)

    model = Res()
    masks = random_masks(model, density=0.3, seed=8)
    topo = topo_pai.from_torch(model, masks, input_shape=(2, 5, 5))
    G = topo.to_networkx()
    count = {}
    for v in nx.topological_sort(G):
        preds = list(G.predecessors(v))
        count[v] = 1 if G.nodes[v]["layer"] == 0 else sum(
            count[u] * G.edges[u, v]["multiplicity"] for u in preds)
    assert sum(count[("c", j)] for j in range(2)) == topo.count_paths("channel").exact
    # the skip (a -> c) shows up as direct edges
    assert any(G.has_edge(("a", i), ("c", j)) for i in range(3) for j in range(2))


# ---------------------------------------------------------------------------
# forward/backward counts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("density", [1.0, 0.5, 0.25])
def test_forward_times_backward_is_total_for_chain(density):
    model = small_cnn()
    masks = random_masks(model, density=density, seed=int(density * 100))
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    shapes = {"input": SMALL_CNN_SHAPE, "0": (3, 6, 6), "4": (4, 2, 2), "7": (3,)}
    for res in RES:
        total = topo.count_paths(res).exact
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        assert list(fc) == list(bc) == topo.group_names
        for name in topo.group_names:
            want = shapes[name][:1] if res == "channel" else shapes[name]
            assert fc[name].mantissa.shape == want and bc[name].mantissa.shape == want
            f, b = fc[name].to_float(), bc[name].to_float()
            assert (f * b).sum() == total, (res, name)
            with np.errstate(divide="ignore"):
                np.testing.assert_allclose(fc[name].log10, np.log10(f), rtol=1e-12)
            if total:
                assert math.isclose(fc[name].log10_total, math.log10(f.sum()), rel_tol=1e-12)
        assert np.all(fc["input"].to_float() == 1)
        assert np.all(bc["7"].to_float() == 1)


def test_forward_backward_residual_input_and_output_groups():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 4)
            self.c = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(F.relu(self.b(h)) + h)

    topo = topo_pai.from_torch(Res(), input_shape=(3,))
    # dense: paths = 3 * 4 * (4 + 1) * 2
    for res in RES:
        assert topo.count_paths(res).exact == 3 * 4 * 5 * 2
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        np.testing.assert_array_equal(fc["a"].to_float(), [3] * 4)
        np.testing.assert_array_equal(fc["b"].to_float(), [12] * 4)
        np.testing.assert_array_equal(fc["c"].to_float(), [60] * 2)
        np.testing.assert_array_equal(bc["b"].to_float(), [2] * 4)
        np.testing.assert_array_equal(bc["a"].to_float(), [10] * 4)
        np.testing.assert_array_equal(bc["input"].to_float(), [40] * 3)
        # "b" is skipped by some paths: fwd*bwd over it is less than the total
        assert (fc["b"].to_float() * bc["b"].to_float()).sum() == 3 * 4 * 4 * 2


# ---------------------------------------------------------------------------
# misc API
# ---------------------------------------------------------------------------

def test_pathcount_float_and_repr():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    topo = topo_pai.from_torch(model, input_shape=(4,))
    pc = topo.count_paths()
    assert float(pc) == pytest.approx(24.0, rel=1e-12)
    assert pc.resolution == "channel"
    assert "PathCount" in repr(pc)
    assert "Topology" in repr(topo)
    assert topo.n_nodes() == topo.n_nodes("channel") == 9
    assert topo.n_params == 18
    assert [lay.param for lay in topo.layers] == ["0.weight", "1.weight"]
    ms = topo.masks_numpy
    assert set(ms) == {"0.weight", "1.weight"}
    with pytest.raises(ValueError):
        ms["0.weight"][0, 0] = 0  # read-only
    # the API-level view is a Masks of bool tensors, a copy: editing it changes nothing here
    tm = topo.masks
    assert isinstance(tm, topo_pai.Masks) and list(tm) == list(ms)
    for k, v in tm.items():
        assert v.dtype == torch.bool and np.array_equal(v.numpy(), ms[k].astype(bool))
    tm["0.weight"].zero_()
    assert topo.masks_numpy["0.weight"].all() and topo.count_paths().exact == 24
