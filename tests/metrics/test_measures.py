"""Graph measures (topo_pai.metrics.measures, Topology.metrics) against closed forms,
dense eigendecompositions of the full bipartite adjacency, and brute force over the
networkx channel graph."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import topo_pai
from topo_pai.errors import MaskError
from topo_pai.metrics import measures as ms
from topo_pai.metrics import spectra
from topo_pai.metrics_table import COLUMNS, TOTALS, MetricsTable


def _adjacency_oracle(B):
    """mu0 and mu_hat from the dense (m+n)^2 bipartite adjacency: its two largest
    eigenvalues (the spectrum is +-sigma and zeros, so the second largest is sigma_2)."""
    B = np.asarray(B, dtype=np.float64)
    m, n = B.shape
    A = np.zeros((m + n, m + n))
    A[:m, m:] = B
    A[m:, :m] = B.T
    ev = sl.eigvalsh(A)
    return ev[-1], ev[-2]


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("a,b,k", [(3, 4, 1), (5, 2, 9), (1, 6, 1), (6, 1, 3), (70, 80, 2)])
def test_complete_bipartite(a, b, k):
    """K_{a,b} with every edge of multiplicity k: sigma_1 = k sqrt(ab), sigma_2 = 0,
    degrees k*a (outputs) and k*b (inputs)."""
    m = ms.bipartite_measures(k * np.ones((b, a)))
    assert m["mu0"] == pytest.approx(k * math.sqrt(a * b), rel=1e-12)
    assert m["mu_hat"] == pytest.approx(0.0, abs=1e-9 * m["mu0"])
    assert (m["min_in_degree"], m["mean_in_degree"]) == (k * a, k * a)
    assert (m["min_out_degree"], m["mean_out_degree"]) == (k * b, k * b)
    assert m["ramanujan_gap"] == pytest.approx(
        math.sqrt(k * b - 1) + math.sqrt(k * a - 1) - m["mu_hat"])
    assert m["kernels"] == a * b and m["edges"] == k * a * b


def _circulant(n, d, shift=0):
    M = np.zeros((n, n))
    for o in range(n):
        for j in range(d):
            M[o, (o + j + shift) % n] = 1
    return M


def _circulant_sigma2(n, d):
    """The second singular value of ``_circulant(n, d)`` in closed form: the singular
    values of a circulant are the moduli of its eigenvalues ``sum_j w^(kj)``, i.e.
    ``d`` (k = 0) and ``|sin(pi k d / n) / sin(pi k / n)|`` (k = 1..n-1)."""
    k = np.arange(1, n)
    return float(np.max(np.abs(np.sin(np.pi * k * d / n) / np.sin(np.pi * k / n))))


@pytest.mark.parametrize("n,d", [(7, 3), (12, 4), (80, 5), (101, 9)])
def test_d_regular_circulant(n, d):
    """A circulant d-regular bipartite graph: sigma_1 = d and the other singular values
    are |sum_j w^(kj)| = |sin(pi k d / n) / sin(pi k / n)| (k = 1..n-1)."""
    m = ms.bipartite_measures(_circulant(n, d))
    second = _circulant_sigma2(n, d)
    assert m["mu0"] == pytest.approx(d, rel=1e-10)
    assert m["mu_hat"] == pytest.approx(second, rel=1e-8)
    assert m["ramanujan_gap"] == pytest.approx(2 * math.sqrt(d - 1) - second, rel=1e-8)
    assert m["min_in_degree"] == m["mean_in_degree"] == d


def test_disjoint_union():
    """Singular values of a disjoint union are the union of the parts': two equal
    components give mu_hat = mu0 (no gap); unequal ones the smaller part's top value."""
    K = np.ones((4, 5))
    two = sl.block_diag(K, K)
    m = ms.bipartite_measures(two)
    assert m["mu0"] == pytest.approx(math.sqrt(20)) and m["mu_hat"] == pytest.approx(math.sqrt(20))
    assert m["spectral_gap"] == pytest.approx(0.0, abs=1e-9)
    # singular values: the circulant's 5 and 4.97 (closed form) and K_{3,3}'s 3 (and 0s)
    big = sl.block_diag(_circulant(80, 5), np.ones((3, 3)))
    m = ms.bipartite_measures(big)
    second = _circulant_sigma2(80, 5)  # sin(5 pi / 80) / sin(pi / 80) = 4.969...
    assert 4.96 < second < 4.97  # the closed form itself, so that the test has teeth
    assert m["mu0"] == pytest.approx(5.0) and m["mu_hat"] == pytest.approx(second, rel=1e-9)


@pytest.mark.parametrize("B", [np.zeros((4, 6)), np.zeros((0, 3)), np.ones((1, 1)),
                               np.array([[0, 2, 0, 1]]), np.array([[0], [3], [1]]),
                               np.outer([1, 0, 1, 1], [1, 1, 0, 1, 0])])
def test_tiny_layers_are_well_defined(B):
    m = ms.bipartite_measures(B)
    for k, v in m.items():
        assert v is None or math.isfinite(v), k
    if B.size == 0 or not B.any():
        assert m["mu0"] == m["mu_hat"] == m["ramanujan_gap"] == 0.0
        assert m["min_in_degree"] == m["mean_out_degree"] == 0.0
    else:  # one row, one column or rank one: sigma_2 = 0 exactly
        assert m["mu_hat"] == 0.0
        assert m["mu0"] == pytest.approx(np.linalg.norm(B, 2))


# ------------------------------------------------------------- dense oracles
@settings(max_examples=15)
@given(m=st.integers(3, 40), n=st.integers(3, 40), density=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16), force_sparse=st.booleans())
def test_spectra_against_dense_adjacency(m, n, density, seed, force_sparse):
    rng = np.random.default_rng(seed)
    B = (rng.random((m, n)) < density) * rng.integers(1, 10, (m, n))
    old = spectra.DENSE_SVD_MAX_ENTRIES
    spectra.DENSE_SVD_MAX_ENTRIES = 0 if force_sparse else old  # ARPACK even on small blocks
    try:
        mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B))
    finally:
        spectra.DENSE_SVD_MAX_ENTRIES = old
    e0, e1 = _adjacency_oracle(B)
    assert mu0 == pytest.approx(max(e0, 0.0), abs=1e-8 * max(1.0, e0))
    assert mu_hat == pytest.approx(max(e1, 0.0), abs=1e-7 * max(1.0, e0))
    assert mu0 >= mu_hat >= 0


def test_spectra_large_block_against_dense():
    rng = np.random.default_rng(3)
    B = (rng.random((90, 120)) < 0.1) * rng.integers(1, 5, (90, 120))
    assert B.size > spectra.DENSE_SVD_MAX_ENTRIES
    e0, e1 = _adjacency_oracle(B)
    # rel=1e-9 is tighter than the default contract (1e-8 * mu0): ask for it
    assert spectra.top_singular_values(sp.csr_array(B), 1e-12) == pytest.approx((e0, e1), rel=1e-9)


def test_spectra_deterministic():
    rng = np.random.default_rng(5)
    B = sp.csr_array((rng.random((200, 150)) < 0.3).astype(float))
    assert spectra.top_singular_values(B) == spectra.top_singular_values(B)


# ------------------------------------------------------------ Topology.metrics
def _conv_net():
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3))


def _random_masks(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=g) < density).float()
            for n, p in model.named_parameters() if p.dim() > 1}


def _kernel_matrix(mask, groups):
    """Dense M of a weight mask: kept elements per kernel, groups expanded."""
    mask = np.asarray(mask)
    O, per = mask.shape[:2]
    counts = mask.reshape(O, per, -1).sum(axis=2)
    M = np.zeros((O, per * groups))
    for o in range(O):
        g = o // (O // groups)
        M[o, g * per:(g + 1) * per] = counts[o]
    return M


@pytest.mark.parametrize("density,seed", [(1.0, 0), (0.5, 1), (0.25, 2), (0.1, 3)])
def test_topology_metrics_against_oracles(density, seed):
    torch.manual_seed(seed)
    net = _conv_net()
    masks = _random_masks(net, density, seed)
    weights = {n: p.detach().abs() for n, p in net.named_parameters() if n in masks}
    before = {n: w.clone() for n, w in weights.items()}
    topo = topo_pai.from_torch(net, masks, input_shape=(2, 4, 4))
    table = topo.metrics(weights=weights)
    assert isinstance(table, MetricsTable) and table.weighted
    assert all(torch.equal(before[n], weights[n]) for n in weights)  # inputs untouched
    assert [r["name"] for r in table] == topo.group_names
    assert all(set(r) == set(COLUMNS) for r in table) and set(table.totals) == set(TOTALS)
    eff_masks = topo.effective_masks_numpy("channel")
    for layer, row in zip(topo.layers, table.rows[1:]):
        mask = masks[layer.param].numpy()
        M = _kernel_matrix(mask, layer.groups)
        W = _kernel_matrix(mask * weights[layer.param].double().numpy(), layer.groups)
        e0, e1 = _adjacency_oracle(M)
        assert row["mu0"] == pytest.approx(e0, abs=1e-9) and row["mu_hat"] == pytest.approx(
            max(e1, 0), abs=1e-7)
        w0, w1 = _adjacency_oracle(W)
        assert row["weighted_spectral_gap"] == pytest.approx(w0 - max(w1, 0), abs=1e-7)
        rows_kept = M.sum(1)[M.sum(1) > 0]
        cols_kept = M.sum(0)[M.sum(0) > 0]
        if rows_kept.size:
            assert row["mean_in_degree"] == pytest.approx(rows_kept.mean())
            assert row["min_out_degree"] == cols_kept.min()
            assert row["ramanujan_gap"] == pytest.approx(
                math.sqrt(cols_kept.mean() - 1) + math.sqrt(rows_kept.mean() - 1) - row["mu_hat"])
        eff = eff_masks[layer.param]
        O, per = eff.shape[:2]
        assert row["effective_kernels"] == int(eff.reshape(O, per, -1).any(2).sum())
        assert row["effective_params"] == int(eff.sum())
        assert row["effective_sparsity"] == pytest.approx(1 - eff.sum() / mask.size)
    t = table.totals
    assert t["effective_params"] == topo.effective_params()
    assert t["effective_sparsity"] == pytest.approx(1 - topo.effective_params() / topo.n_params)
    assert t["log10_paths"] == topo.count_paths().log10
    _check_roles_against_networkx(topo, table)


def _check_roles_against_networkx(topo, table):
    """Sink/source/disconnected units and lost edges by brute force on the channel
    graph (no residual adds here, so every layer input unit is one group unit)."""
    G = topo.to_networkx()
    names = topo.group_names
    last = len(names) - 1
    indeg = {u: sum(G.edges[e]["multiplicity"] for e in G.in_edges(u)) for u in G}
    outdeg = {u: sum(G.edges[e]["multiplicity"] for e in G.out_edges(u)) for u in G}
    for g, row in enumerate(table.rows):
        units = [u for u in G if G.nodes[u]["layer"] == g]
        sink = sum(indeg[u] > 0 and outdeg[u] == 0 and g != last for u in units)
        source = sum(indeg[u] == 0 and outdeg[u] > 0 and g != 0 for u in units)
        isolated = sum(indeg[u] == 0 and outdeg[u] == 0 for u in units)
        assert (row["sink_units"], row["source_units"], row["disconnected_units"]) == (
            sink, source, isolated), names[g]
        if g == 0:
            continue
        lost_in = sum(G.edges[a, b]["multiplicity"] for a, b in G.in_edges(units)
                      if G.nodes[a]["layer"] != 0 and indeg[a] == 0)
        lost_out = sum(G.edges[a, b]["multiplicity"] for a, b in G.in_edges(units)
                       if g != last and outdeg[b] == 0)
        assert (row["lost_in_edges"], row["lost_out_edges"]) == (lost_in, lost_out), names[g]


def test_complete_conv_layer_closed_form():
    """A dense 3x3 conv a -> b channels: M = 9 * ones, sigma_1 = 9 sqrt(ab)."""
    net = nn.Sequential(nn.Conv2d(3, 5, 3))
    row = topo_pai.from_torch(net, input_shape=(3, 5, 5)).metrics()[1]
    assert row["mu0"] == pytest.approx(9 * math.sqrt(15))
    assert row["mu_hat"] == pytest.approx(0.0, abs=1e-9)
    assert (row["mean_in_degree"], row["mean_out_degree"]) == (27.0, 45.0)
    assert row["ramanujan_gap"] == pytest.approx(math.sqrt(44) + math.sqrt(26))


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (1, 1)])
def test_tiny_and_empty_layers_through_topology(shape):
    fan_in, fan_out = shape
    net = nn.Sequential(nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Linear(fan_out, 2))
    empty = {"0.weight": torch.zeros(fan_out, fan_in)}
    for masks in ({}, empty):
        for weights in (None, {"0.weight": torch.rand(fan_out, fan_in),
                               "2.weight": torch.rand(2, fan_out)}):
            table = topo_pai.from_torch(net, masks, input_shape=(fan_in,)).metrics(weights)
            for r in table.rows:
                for k, v in r.items():
                    assert not (isinstance(v, float) and math.isnan(v)), (k, r)
            for k, v in table.totals.items():
                assert not (isinstance(v, float) and math.isnan(v)), k
    t = topo_pai.from_torch(net, empty, input_shape=(fan_in,)).metrics().totals
    assert t["effective_params"] == 0 and t["effective_compression"] == math.inf
    assert t["effective_sparsity"] == 1.0


def test_neuron_resolution_effective_counts():
    net = _conv_net()
    masks = _random_masks(net, 0.15, 7)
    topo = topo_pai.from_torch(net, masks, input_shape=(2, 4, 4))
    table = topo.metrics(resolution="neuron")
    eff = topo.effective_masks_numpy("neuron")
    assert table.totals["effective_params"] == topo.effective_params("neuron")
    for layer, row in zip(topo.layers, table.rows[1:]):
        O, per = eff[layer.param].shape[:2]
        assert row["effective_kernels"] == int(eff[layer.param].reshape(O, per, -1).any(2).sum())
    assert "neuron resolution" in str(table)


def test_residual_lost_edges_count_a_fed_input_unit_as_fed():
    """After an add, a layer input unit has an in-edge when either summand does: the
    skip branch alone keeps its out-edges from being lost."""

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.c = nn.Linear(3, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(h + self.b(h))

    net = Res()
    masks = {"b.weight": torch.zeros(3, 3)}  # b's units are sources of nothing: no in-edges
    table = topo_pai.from_torch(net, masks, input_shape=(3,)).metrics()
    rows = {r["name"]: r for r in table}
    assert rows["b"]["source_units"] == 3  # no in-edges, but c reads them
    assert rows["c"]["lost_in_edges"] == 0.0  # every input unit of c is fed through a


def test_bad_input():
    net = nn.Sequential(nn.Linear(3, 2))
    topo = topo_pai.from_torch(net, input_shape=(3,))
    with pytest.raises(ValueError, match="resolution"):
        topo.metrics(resolution="pixel")
    with pytest.raises(MaskError, match="shape"):
        topo.metrics(weights={"0.weight": torch.ones(3, 3)})
    with pytest.raises(MaskError, match="non-negative"):
        topo.metrics(weights={"0.weight": -torch.ones(2, 3)})


def test_str_and_records():
    net = _conv_net()
    table = topo_pai.from_torch(net, _random_masks(net, 0.3, 0), input_shape=(2, 4, 4)).metrics()
    text = str(table)
    assert "Ramanujan gap" in text and "w. spectral gap" not in text
    assert table.to_records()[2]["name"] == "2"
    assert table.totals["mean_weighted_spectral_gap"] is None


def test_without_spectra_everything_else_is_unchanged():
    net = _conv_net()
    topo = topo_pai.from_torch(net, _random_masks(net, 0.3, 4), input_shape=(2, 4, 4))
    weights = {n: p.detach().abs() for n, p in net.named_parameters() if p.dim() > 1}
    full, cheap = topo.metrics(weights), topo.metrics(weights, spectra=False)
    spectral = {"mu0", "mu_hat", "spectral_gap", "ramanujan_gap", "weighted_mu0",
                "weighted_mu_hat", "weighted_spectral_gap"}
    for a, b in zip(full.rows[1:], cheap.rows[1:]):
        assert all(b[k] is None for k in spectral)
        assert {k: v for k, v in a.items() if k not in spectral} == {
            k: v for k, v in b.items() if k not in spectral}
    for k in ("mean_ramanujan_gap", "min_ramanujan_gap", "mean_spectral_gap",
              "mean_weighted_spectral_gap"):
        assert cheap.totals[k] is None and full.totals[k] is not None
    assert "Ramanujan gap" in str(cheap)


def _python_blocks(path):
    text = open(path, encoding="utf-8").read()
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


@pytest.mark.parametrize("doc", ["docs/metrics.md"])
def test_documentation_examples_run(doc):
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    blocks = _python_blocks(root / doc)
    assert blocks
    for block in blocks:
        exec(compile(block, doc, "exec"), {})


def test_effective_kernels_reads_reached_units_as_flags():
    """``fin`` marks reached units; any non-zero counts as reached, once."""
    M = np.array([[1, 2], [3, 0]])
    assert ms.effective_kernels(M, np.array([2, 0]), np.array([True, True])) == 2
    assert ms.effective_kernels(M, np.array([True, False]), np.array([True, True])) == 2


def test_effective_kernels_every_unit_reached_counts_non_zeros_only():
    """With every unit on a path the count is the non-zero entries (read without the
    per-entry pass); explicitly stored zeros are not kernels on either route."""
    import scipy.sparse as sp

    M = sp.csr_array((np.array([2.0, 0.0, 1.0, 3.0]), np.array([0, 1, 2, 1]),
                      np.array([0, 3, 4])), shape=(2, 3))
    everyone = ms.effective_kernels(M, np.ones(3, bool), np.ones(2, bool))
    assert everyone == 3
    # the per-entry route: one unit not reached, and the stored zero still not counted
    assert ms.effective_kernels(M, np.array([True, True, False]), np.ones(2, bool)) == 2
    assert ms.effective_kernels(M, np.ones(3, bool), np.array([True, False])) == 2


# ------------------------------------------------- small networks worked by hand
PHI = (1 + math.sqrt(5)) / 2  # the singular values of [[1, 1], [1, 0]] are PHI and 1 / PHI


def _hand_mlp():
    """x (2 units) -> h (4 units) -> o (2 units), with masks chosen so that every role
    occurs once in h::

        layer "0" (h x x):  h0 <- x0, x1      layer "2" (o x h):  o0 <- h0, h2
                            h1 <- x0                              o1 <- h2
                            h2, h3 <- nothing

    h0: in 2, out 1 (on a path); h1: in 1, out 0 -> sink; h2: in 0, out 2 -> source;
    h3: no edge -> disconnected. x0, x1 are network inputs and o0, o1 network outputs,
    so they take no role."""
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0.weight": torch.tensor([[1., 1.], [1., 0.], [0., 0.], [0., 0.]]),
             "2.weight": torch.tensor([[1., 0., 1., 0.], [0., 0., 1., 0.]])}
    return topo_pai.from_torch(net, masks, input_shape=(2,))


@pytest.mark.parametrize("resolution", ["channel", "neuron"])
def test_hand_mlp_counts_roles_and_lost_edges(resolution):
    table = _hand_mlp().metrics(weights={"0.weight": torch.full((4, 2), 2.0),
                                         "2.weight": torch.full((2, 4), 2.0)},
                                resolution=resolution)
    x, l0, l2 = table.rows
    # roles: the input and the output groups have none; h has one of each
    assert (x["sink_units"], x["source_units"], x["disconnected_units"]) == (0, 0, 0)
    assert (l0["sink_units"], l0["source_units"], l0["disconnected_units"]) == (1, 1, 1)
    assert (l2["sink_units"], l2["source_units"], l2["disconnected_units"]) == (0, 0, 0)
    # lost edges: layer 0's edge into the sink h1; layer 2's two edges out of the
    # source h2 (x0, x1 are network inputs, o0, o1 network outputs: never lost)
    assert (l0["lost_in_edges"], l0["lost_out_edges"]) == (0.0, 1.0)
    assert (l2["lost_in_edges"], l2["lost_out_edges"]) == (2.0, 0.0)
    # the only paths are x0 -> h0 -> o0 and x1 -> h0 -> o0: effective weights are
    # (h0, x0), (h0, x1) in layer 0 and (o0, h0) in layer 2 (a Linear: kernel = weight)
    assert (l0["kernels"], l0["effective_kernels"], l0["effective_params"]) == (3, 2, 2)
    assert (l2["kernels"], l2["effective_kernels"], l2["effective_params"]) == (3, 1, 1)
    assert (l0["effective_sparsity"], l2["effective_sparsity"]) == (1 - 2 / 8, 1 - 1 / 8)
    t = table.totals
    assert (t["params"], t["unpruned"], t["effective_params"]) == (16, 6, 3)
    assert t["sparsity"] == 1 - 6 / 16 and t["compression"] == 16 / 6
    assert t["effective_sparsity"] == 1 - 3 / 16 and t["effective_compression"] == 16 / 3
    assert (t["kernels"], t["effective_kernels"]) == (6, 3)
    assert (t["effective_nodes"], t["nodes"]) == (4, 8)  # x0, x1, h0, o0 of 2 + 4 + 2
    assert t["log10_paths"] == pytest.approx(math.log10(2))
    assert (t["sink_units"], t["source_units"], t["disconnected_units"]) == (1, 1, 1)
    assert (t["lost_in_edges"], t["lost_out_edges"]) == (2.0, 1.0)
    # degrees: kept rows of layer 0 sum to 2, 1 and kept columns to 2, 1; layer 2 alike
    for r in (l0, l2):
        assert (r["kept_inputs"], r["kept_outputs"]) == (2, 2)
        assert (r["min_in_degree"], r["mean_in_degree"]) == (1.0, 1.5)
        assert (r["min_out_degree"], r["mean_out_degree"]) == (1.0, 1.5)
        # both blocks are [[1, 1], [1, 0]] up to zero rows, columns and order
        assert r["mu0"] == pytest.approx(PHI) and r["mu_hat"] == pytest.approx(1 / PHI)
        assert r["ramanujan_gap"] == pytest.approx(2 * math.sqrt(0.5) - 1 / PHI)
        assert r["weighted_spectral_gap"] == pytest.approx(2 * (PHI - 1 / PHI))  # W = 2M
    assert (t["min_degree"], t["mean_in_degree"], t["mean_out_degree"]) == (1.0, 1.5, 1.5)


def test_hand_conv_counts_kernel_multiplicities():
    """Conv2d(1, 3, 2) on a 2 x 2 input (one output position), then a Linear(3, 1).
    Conv channel c0 keeps two of its four elements, c1 and c2 none; the Linear reads
    c0 and c1. M_conv = [[2], [0], [0]]: one kernel of multiplicity 2, so in- and
    out-degree 2, mu0 = 2 and mu_hat = 0 (one column). c1 has no in-edge but feeds the
    Linear: a source, and the Linear's edge out of it is its one lost in-edge; c2 has
    no edge at all: disconnected (and it loses no edge)."""
    net = nn.Sequential(nn.Conv2d(1, 3, 2), nn.Flatten(), nn.Linear(3, 1))
    conv = torch.zeros(3, 1, 2, 2)
    conv[0, 0, 0, 0] = conv[0, 0, 1, 1] = 1
    masks = {"0.weight": conv, "2.weight": torch.tensor([[1.0, 1.0, 0.0]])}
    topo = topo_pai.from_torch(net, masks, input_shape=(1, 2, 2))
    table = topo.metrics()
    _, c, lin = table.rows
    assert (c["kernels"], c["effective_kernels"], c["unpruned"], c["effective_params"]) == (
        1, 1, 2, 2)
    assert (c["min_in_degree"], c["min_out_degree"]) == (2.0, 2.0)
    assert (c["mu0"], c["mu_hat"]) == (pytest.approx(2.0), 0.0)
    assert c["ramanujan_gap"] == pytest.approx(2.0)  # sqrt(2 - 1) + sqrt(2 - 1) - 0
    assert (c["source_units"], c["sink_units"], c["disconnected_units"]) == (1, 0, 1)
    assert (lin["kernels"], lin["effective_kernels"], lin["effective_params"]) == (2, 1, 1)
    assert (lin["lost_in_edges"], lin["lost_out_edges"]) == (1.0, 0.0)
    assert (lin["min_in_degree"], lin["min_out_degree"]) == (2.0, 1.0)
    t = table.totals
    assert (t["params"], t["unpruned"], t["effective_params"]) == (15, 4, 3)
    assert t["effective_sparsity"] == pytest.approx(1 - 3 / 15) and t["min_degree"] == 1.0


def _three_layer_mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                         nn.Linear(4, 2))


def test_totals_leave_out_a_fully_pruned_layer():
    """The middle layer of 3 -> 4 -> 4 -> 2 is pruned away. Its row keeps the
    conventional zeros, but the totals are over the two layers with edges:
    layer "0" is K_{3,4} (in-degree 3, out-degree 4, sigma 2 sqrt(3), 0) and layer "4"
    K_{4,2} (in-degree 4, out-degree 2, sigma 2 sqrt(2), 0)."""
    net = _three_layer_mlp()
    topo = topo_pai.from_torch(net, {"2.weight": torch.zeros(4, 4)}, input_shape=(3,))
    weights = {n: torch.full(p.shape, 0.5) for n, p in net.named_parameters() if p.dim() > 1}
    table = topo.metrics(weights)
    first, middle, last = table.rows[1:]
    assert middle["kernels"] == 0
    assert middle["min_in_degree"] == middle["ramanujan_gap"] == middle["spectral_gap"] == 0.0
    gap_first = math.sqrt(4 - 1) + math.sqrt(3 - 1)  # d_L = 4 (out-degree), d_R = 3
    gap_last = math.sqrt(2 - 1) + math.sqrt(4 - 1)
    assert first["ramanujan_gap"] == pytest.approx(gap_first)
    assert last["ramanujan_gap"] == pytest.approx(gap_last)
    t = table.totals
    assert t["min_degree"] == 2.0  # layer "4"'s input units; not the empty layer's 0
    assert t["min_ramanujan_gap"] == pytest.approx(min(gap_first, gap_last))
    assert t["mean_ramanujan_gap"] == pytest.approx((gap_first + gap_last) / 2)
    assert t["mean_spectral_gap"] == pytest.approx((math.sqrt(12) + math.sqrt(8)) / 2)
    assert t["mean_weighted_spectral_gap"] == pytest.approx(
        0.5 * (math.sqrt(12) + math.sqrt(8)) / 2)  # W = M / 2
    # without spectra the degree total is the same
    assert topo.metrics(spectra=False).totals["min_degree"] == 2.0


def test_totals_of_a_network_without_edges_are_zero():
    net = _three_layer_mlp()
    masks = {n: torch.zeros(p.shape) for n, p in net.named_parameters() if p.dim() > 1}
    t = topo_pai.from_torch(net, masks, input_shape=(3,)).metrics().totals
    assert t["min_degree"] == t["mean_ramanujan_gap"] == t["min_ramanujan_gap"] == 0.0
    assert t["mean_spectral_gap"] == 0.0 and t["mean_weighted_spectral_gap"] is None


def test_weights_must_cover_every_layer():
    """Weight 1 for a missing layer would put kernel counts into its weighted spectra
    next to |w| elsewhere: metrics refuses, naming the missing layers; flows keeps its
    documented default (a missing weight is 1)."""
    net = _three_layer_mlp()
    topo = topo_pai.from_torch(net, input_shape=(3,))
    partial = {"0.weight": torch.rand(4, 3)}
    with pytest.raises(MaskError, match=r"none were given for '2\.weight', '4\.weight'"):
        topo.metrics(partial)
    with pytest.raises(MaskError, match="for '2.weight', '4.weight'"):
        topo.metrics(topo.edge_weights(partial))  # the same when validated beforehand
    with pytest.raises(MaskError, match="for '2.weight'"):
        topo.layer_matrix(1, partial)
    assert topo.layer_matrix(0, partial).sum() == pytest.approx(float(partial["0.weight"].sum()))
    assert math.isfinite(topo.flows(partial).log10_total)  # flows: missing is 1
    full = {n: p.detach().abs() for n, p in net.named_parameters() if p.dim() > 1}
    assert topo.metrics(topo.edge_weights(full)).rows == topo.metrics(full).rows


def test_layer_index_is_checked():
    topo = topo_pai.from_torch(_three_layer_mlp(), input_shape=(3,))
    for bad in (3, -4, 10**20):
        with pytest.raises(IndexError, match=r"3 prunable layers .* must be in -3\.\.2"):
            topo.layer_matrix(bad)
    for bad in (1.5, "0", None, True, np.float64(1.0)):
        with pytest.raises(TypeError, match=r"layer must be an int index into Topology\.layers"):
            topo.layer_matrix(bad)
    last = topo.layer_matrix(2)
    for same in (-1, np.int64(2)):
        assert (topo.layer_matrix(same) != last).nnz == 0
    with pytest.raises(IndexError, match="must be in -3..2"):
        topo.layer_reach(3)
    with pytest.raises(IndexError, match="must be in -3..2"):
        topo.layer_input_counts(3)
    with pytest.raises(IndexError, match="must be in -3..2"):
        topo.flows().layer_flows(3)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_bipartite_measures_refuses_negative_and_non_finite_entries(bad, sparse):
    B = np.array([[1.0, bad], [2.0, 1.0]])
    wrap = sp.csr_array if sparse else np.asarray
    with pytest.raises(ValueError, match=r"matrix has the entry .* at \(0, 1\).*>= 0"):
        ms.bipartite_measures(wrap(B))
    with pytest.raises(ValueError, match=r"weighted has the entry .* at \(0, 1\)"):
        ms.bipartite_measures(np.ones((2, 2)), wrap(B))
    # a row [1, -1] used to sum to 0: an unkept unit, and its edges uncounted
    with pytest.raises(ValueError, match="matrix"):
        ms.bipartite_measures(np.array([[1.0, -1.0]]), spectra=False)
