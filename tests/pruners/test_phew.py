"""PHEW (``topo_pai.pruners.phew``): exact budgets, determinism, connected
paths, and the numba walk kernel against a pure-Python reference walk.

The reference builds its own transition lists from ``Topology.flows`` blocks
and the dense weight tensors (no CSR records, no kernel code) and replays the
same pre-drawn uniforms: it must visit the same nodes and pick the same weight
elements.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.models import resnet20  # noqa: E402
from topo_pai.pruners import phew as P  # noqa: E402
from topo_pai.pruners.phew import geometry, pruner  # noqa: E402

# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class Tiny(nn.Module):
    """Residual add, a grouped conv, a 1x1 conv reading two groups, a pool and a
    Linear after a flatten that maps each channel to 4 features."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3 * 2 * 2, 5)

    def forward(self, x):
        h = F.relu(self.c1(x))
        y = F.relu(self.c2(h)) + h
        z = F.avg_pool2d(self.c3(y), 2)
        return self.fc(torch.flatten(z, 1))


TINY_SHAPE = (2, 4, 4)


def _abs(model, topo):
    params = dict(model.named_parameters())
    return {layer.param: params[layer.param].detach().abs().double().numpy()
            for layer in topo.layers}


def _uniform_budgets(aw, density):
    return {k: int(round(v.size * density)) for k, v in aw.items()}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    topo = topo_pai.from_torch(model, None, TINY_SHAPE)
    return model, topo, _abs(model, topo)


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    model = resnet20()
    topo = topo_pai.from_torch(model, None, (3, 32, 32))
    return model, topo, _abs(model, topo)


# ---------------------------------------------------------------------------
# pure-Python reference of one walk
# ---------------------------------------------------------------------------


class RefGraph:
    """Channel graph from the public blocks, as plain Python lists."""

    def __init__(self, topo, aw):
        self.topo = topo
        layers = topo.layers
        sizes = topo.channel_structure.sizes
        self.goff = np.concatenate([[0], np.cumsum([sizes[g] for g in range(len(layers) + 1)])])
        self.n_input = sizes[0]
        self.blocks = topo.flows(aw, "channel").blocks
        self.maps = [(layer, src, S) for layer, inputs in enumerate(topo.channel_structure.layer_inputs)
                     for src, S in inputs.items()]
        n = int(self.goff[-1])
        self.out = [[] for _ in range(n)]
        self.inn = [[] for _ in range(n)]
        for bi, b in enumerate(self.blocks):
            M = b.matrix.tocsr()
            for o in range(M.shape[0]):
                for k in range(M.indptr[o], M.indptr[o + 1]):
                    c, w = int(M.indices[k]), float(M.data[k])
                    src, dst = int(self.goff[b.src] + c), int(self.goff[b.dst] + o)
                    self.out[src].append((dst, bi, o, c, w))
                    self.inn[dst].append((src, bi, o, c, w))
        self.terminal = np.zeros(n, dtype=bool)
        for g, S in topo.channel_structure.outputs.items():
            used = np.ones(sizes[g], bool) if S is None else np.asarray(
                abs(S).sum(axis=0)).ravel() > 0
            self.terminal[self.goff[g]:self.goff[g + 1]] = used
        # float32 |w| per layer, as the kernels sample elements
        self.w32 = [aw[layer.param].astype(np.float32) for layer in layers]
        self.woff = np.concatenate([[0], np.cumsum([w.size for w in self.w32])])
        self.kept = set()

    @staticmethod
    def vose(weights):
        """Alias table in the documented construction order."""
        m = len(weights)
        if sum(weights) == 0.0:
            weights = [1.0] * m
        total = 0.0
        for w in weights:
            total += w
        q = [w * m / total for w in weights]
        small = [k for k in range(m) if weights[k] == 0.0 or q[k] < 1.0]
        large = [k for k in range(m) if not (weights[k] == 0.0 or q[k] < 1.0)]
        prob, alias = [1.0] * m, list(range(m))
        while small and large:
            s, big = small.pop(), large.pop()
            prob[s], alias[s] = q[s], big
            q[big] = (q[big] + q[s]) - 1.0
            (small if q[big] < 1.0 else large).append(big)
        return [float(np.float32(p)) for p in prob], alias

    def element(self, bi, o, c, v, largest=False):
        layer, _, S = self.maps[bi]
        lay = self.topo.layers[layer]
        W = self.w32[layer]
        pgi = lay.weight_shape[1]
        g0 = (o // (lay.weight_shape[0] // lay.groups)) * pgi
        js = [c] if S is None else sorted(int(j) for j in np.flatnonzero(S.toarray()[:, c]))
        cand = []
        for j in js:
            if 0 <= j - g0 < pgi:
                kernel = W[o, j - g0].reshape(-1)
                start = np.ravel_multi_index((o, j - g0) + (0,) * (W.ndim - 2), W.shape)
                cand += [(start + t, float(kernel[t])) for t in range(kernel.size)]
        if largest:  # the largest |w| not kept yet, first on ties; else the first
            free = [(t, w) for t, w in cand if self.woff[layer] + t not in self.kept]
            if not free:
                return int(self.woff[layer] + cand[0][0])
            best = max(w for _, w in free)
            return int(self.woff[layer] + next(t for t, w in free if w == best))
        total = 0.0
        for _, w in cand:
            total += w
        r, acc = v * total, 0.0
        for t, w in cand:
            if w > 0.0:
                acc += w
                if acc > r:
                    return int(self.woff[layer] + t)
        raise AssertionError("no element drawn")

    def _draw(self, forward, node, u):
        edges = self.out[node] if forward else self.inn[node]
        prob, alias = self.vose([e[4] for e in edges])
        m = len(edges)
        x = u * m
        k = min(int(x), m - 1)
        return edges[k if x - k < prob[k] else alias[k]]

    def _ends(self, forward, node):
        return self.terminal[node] if forward else node < self.n_input

    def walk_pair(self, fstart, bstart, rand, largest=False):
        """Two walks in lockstep, drawing as documented in _walk_pair."""
        cur = 0
        walkers = []
        for forward, start in ((True, fstart), (False, bstart)):
            w = {"fwd": forward, "node": start, "path": [start], "elems": [],
                 "on": not self._ends(forward, start)}
            if w["on"]:
                w["edge"] = self._draw(forward, start, rand[cur])
                w["v"] = rand[cur + 1]
                cur += 2
            walkers.append(w)
        while any(w["on"] for w in walkers):
            for w in walkers:  # phase 1: next draws
                if w["on"]:
                    w["vc"] = w["v"]
                    w["cur_edge"] = w["edge"]
                    nxt = w["edge"][0]
                    w["go"] = not self._ends(w["fwd"], nxt)
                    if w["go"]:
                        w["edge"] = self._draw(w["fwd"], nxt, rand[cur])
                        w["v"] = rand[cur + 1]
                        cur += 2
            for w in walkers:  # phase 2: elements, forward walk first
                if w["on"]:
                    far, bi, o, c, _ = w["cur_edge"]
                    w["elems"].append(self.element(bi, o, c, w["vc"], largest))
                    self.kept.add(w["elems"][-1])
                    w["path"].append(far)
                    w["on"] = w["go"]
        return [(w["path"], w["elems"]) for w in walkers]

    def walk(self, forward, start, rand, largest=False):
        node, path, elems, step = start, [start], [], 0
        while not (self.terminal[node] if forward else node < self.n_input):
            edges = self.out[node] if forward else self.inn[node]
            prob, alias = self.vose([e[4] for e in edges])
            u, v = rand[2 * step], rand[2 * step + 1]
            m = len(edges)
            x = u * m
            k = min(int(x), m - 1)
            far, bi, o, c, _ = edges[k if x - k < prob[k] else alias[k]]
            elems.append(self.element(bi, o, c, v, largest))
            self.kept.add(elems[-1])
            path.append(far)
            node, step = far, step + 1
        return path, elems


def _prepared(topo, aw, budgets):
    graph = geometry.build_walk_graph(topo, aw)
    state = pruner.initial_state(graph, budgets)
    assert pruner.prepare_tables(graph, state)
    return graph, state


def _unkeep_all(state, ref):
    """Forget the kept weights (the tables stay valid: no layer was closed)."""
    state.wbits[:] &= np.int32(2 ** 31 - 1)
    state.count[:] = 0
    state.full[:] = 0
    ref.kept.clear()


@pytest.mark.parametrize("model_name,mode", [("tiny", 0), ("r20", 0), ("tiny", 1)])
def test_walk_kernel_matches_python_reference(model_name, mode, tiny, r20):
    _, topo, aw = tiny if model_name == "tiny" else r20
    ref = RefGraph(topo, aw)
    budgets = {k: v.size for k, v in aw.items()}  # never full: no layer closes
    budgets = {k: b - 1 for k, b in budgets.items()}
    graph, state = _prepared(topo, aw, budgets)
    rng = np.random.default_rng(1)
    outputs = np.flatnonzero(ref.terminal)
    for trial in range(40):
        forward = trial % 2 == 0
        start = int(rng.integers(ref.n_input)) if forward else int(rng.choice(outputs))
        rand = rng.random(2 * graph.max_steps + 2)
        if trial % 10 == 0:
            _unkeep_all(state, ref)
        path, elems, added, _ = pruner.walk_once(graph, state, forward, start, rand, mode)
        want_path, want_elems = ref.walk(forward, start, rand, largest=mode == 1)
        assert list(path) == want_path
        assert list(elems) == want_elems
        assert added <= len(elems)


@pytest.mark.parametrize("model_name,mode", [("tiny", 0), ("r20", 0), ("tiny", 1)])
def test_paired_walk_kernel_matches_python_reference(model_name, mode, tiny, r20):
    _, topo, aw = tiny if model_name == "tiny" else r20
    ref = RefGraph(topo, aw)
    graph, state = _prepared(topo, aw, {k: v.size - 1 for k, v in aw.items()})
    rng = np.random.default_rng(2)
    outputs = np.flatnonzero(ref.terminal)
    for _ in range(20):
        fstart, bstart = int(rng.integers(ref.n_input)), int(rng.choice(outputs))
        rand = rng.random(4 * graph.max_steps + 4)
        _unkeep_all(state, ref)
        (fp, fe), (bp, be), _, _ = pruner.walk_pair_once(graph, state, fstart, bstart, rand, mode)
        (wfp, wfe), (wbp, wbe) = ref.walk_pair(fstart, bstart, rand, largest=mode == 1)
        assert (list(fp), list(fe), list(bp), list(be)) == (wfp, wfe, wbp, wbe)


def test_alias_tables_reproduce_transition_weights(tiny):
    _, topo, aw = tiny
    graph, state = _prepared(topo, aw, _uniform_budgets(aw, 0.5))
    data = np.concatenate([b.data for b in topo.flows(aw, "channel").blocks])
    for ptr, rec, eid, _, _ in (graph.fwd, graph.bwd):
        for n in range(graph.n_nodes):
            lo, hi = ptr[n], ptr[n + 1]
            if hi == lo:
                continue
            m = hi - lo
            got = {}
            for p in range(lo, hi):
                pr = float(rec[p]["prob"])
                got[rec[p]["nbr"], rec[p]["blk"]] = got.get((rec[p]["nbr"], rec[p]["blk"]),
                                                            0.0) + pr / m
                key = (rec[p]["anbr"], rec[p]["ablk"])
                got[key] = got.get(key, 0.0) + (1.0 - pr) / m
            w = data[eid[lo:hi]]
            for p, wp in zip(range(lo, hi), w / w.sum(), strict=True):
                assert got.get((rec[p]["nbr"], rec[p]["blk"]), 0.0) == pytest.approx(wp,
                                                                                  abs=1e-6)


# ---------------------------------------------------------------------------
# budgets, determinism, connectivity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.95])
def test_exact_budgets_resnet20(r20, density):
    _, topo, aw = r20
    budgets = _uniform_budgets(aw, density)
    masks, stats = P.phew_run(topo, aw, budgets, seed=0)
    assert set(masks) == {layer.param for layer in topo.layers}
    for layer in topo.layers:
        m = masks[layer.param]
        assert m.dtype == np.bool_ and m.shape == tuple(layer.weight_shape)
        assert int(m.sum()) == budgets[layer.param]
    assert stats.forward_walks + stats.backward_walks == stats.walks


def test_exact_budgets_odd_allocations(r20):
    _, topo, aw = r20
    rng = np.random.default_rng(3)
    names = list(aw)
    budgets = {k: int(rng.integers(0, v.size + 1)) for k, v in aw.items()}
    budgets[names[4]] = 0  # a layer on the main path that keeps nothing
    budgets[names[7]] = aw[names[7]].size  # and one that keeps everything
    masks = P.phew_masks(topo, aw, budgets, seed=5)
    assert {k: int(m.sum()) for k, m in masks.items()} == budgets
    assert masks[names[7]].all() and not masks[names[4]].any()


def test_deterministic_by_seed(r20):
    _, topo, aw = r20
    budgets = _uniform_budgets(aw, 0.05)
    a = P.phew_masks(topo, aw, budgets, seed=11)
    b = P.phew_masks(topo, aw, budgets, seed=11)
    c = P.phew_masks(topo, aw, budgets, seed=12)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_kept_weights_lie_on_paths(r20):
    """Every walk traces a connected input-to-output path of kept weights, so
    when the walks meet the budgets every kept weight is effective."""
    _, topo, aw = r20
    for density in (0.01, 0.1):
        budgets = _uniform_budgets(aw, density)
        masks, stats = P.phew_run(topo, aw, budgets, seed=0)
        assert stats.stop_reason == "budgets_reached" and stats.filled == {}
        kept = sum(budgets.values())
        assert topo.with_masks(masks).effective_params() == kept


def test_more_effective_nodes_than_magnitude(r20):
    """At 99% sparsity layerwise magnitude pruning (same budgets) strands many
    units; PHEW's paths keep far more of them connected."""
    _, topo, aw = r20
    budgets = _uniform_budgets(aw, 0.01)
    phew = topo.with_masks(P.phew_masks(topo, aw, budgets, seed=0))
    mag = {}
    for k, w in aw.items():
        keep = np.zeros(w.size, dtype=bool)
        keep[np.argsort(-w.reshape(-1), kind="stable")[:budgets[k]]] = True
        mag[k] = keep.reshape(w.shape)
    mag = topo.with_masks(mag)
    assert phew.effective_nodes() > mag.effective_nodes()
    assert phew.effective_params() > mag.effective_params()


def test_residual_grouped_conv_and_flatten_linear(tiny):
    model, topo, aw = tiny
    for density in (0.05, 0.3, 0.7):
        budgets = _uniform_budgets(aw, density)
        for element in ("sample", "largest"):
            masks, stats = P.phew_run(topo, aw, budgets, seed=1, element=element)
            assert {k: int(m.sum()) for k, m in masks.items()} == budgets
            eff = topo.with_masks(masks).effective_params()
            if not stats.filled:
                assert eff == sum(budgets.values())
    # the masks fit the model and leave it runnable
    masks = P.phew_masks(topo, aw, _uniform_budgets(aw, 0.3), seed=2)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_(torch.from_numpy(m).to(params[k].dtype))
        assert model(torch.randn(1, *TINY_SHAPE)).shape == (1, 5)


def test_largest_element_mode_prefers_big_weights(tiny):
    _, topo, aw = tiny
    budgets = _uniform_budgets(aw, 0.2)
    big = P.phew_masks(topo, aw, budgets, seed=0, element="largest")
    sampled = P.phew_masks(topo, aw, budgets, seed=0)
    assert {k: int(m.sum()) for k, m in big.items()} == budgets
    mean = lambda masks: np.mean(np.concatenate([aw[k][m] for k, m in masks.items()]))  # noqa
    assert mean(big) >= mean(sampled) * 0.9


def test_masked_topology_restricts_to_unpruned(tiny):
    model, topo, aw = tiny
    rng = np.random.default_rng(0)
    allowed = {k: rng.random(w.shape) < 0.6 for k, w in aw.items()}
    masked = topo.with_masks({k: m.astype(np.uint8) for k, m in allowed.items()})
    budgets = {k: int(m.sum()) // 2 for k, m in allowed.items()}
    masks = P.phew_masks(masked, aw, budgets, seed=0)
    for k, m in masks.items():
        assert int(m.sum()) == budgets[k]
        assert not (m & ~allowed[k]).any()
    with pytest.raises(ValueError, match="outside"):
        P.phew_masks(masked, aw, {k: int(m.sum()) + 1 for k, m in allowed.items()}, seed=0)


def test_torch_weights_and_extra_keys(tiny):
    model, topo, aw = tiny
    tw = {k: torch.from_numpy(v).float() for k, v in aw.items()}
    tw["unused.weight"] = torch.ones(3)  # ignored: not a layer of the topology
    budgets = _uniform_budgets(aw, 0.3)
    masks = P.phew_masks(topo, tw, dict(budgets, extra=4), seed=0)
    assert {k: int(m.sum()) for k, m in masks.items()} == budgets


def test_zero_weights_are_walked_uniformly():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    topo = topo_pai.from_torch(model, None, (3,))
    aw = {layer.param: np.zeros(layer.weight_shape) for layer in topo.layers}
    budgets = {k: 5 for k in aw}
    masks, stats = P.phew_run(topo, aw, budgets, seed=0)
    assert {k: int(m.sum()) for k, m in masks.items()} == budgets
    assert topo.with_masks(masks).effective_params() >= 8


def test_bad_input(tiny):
    _, topo, aw = tiny
    budgets = _uniform_budgets(aw, 0.3)
    name = next(iter(aw))
    with pytest.raises(KeyError):
        P.phew_masks(topo, aw, {k: v for k, v in budgets.items() if k != name}, seed=0)
    with pytest.raises(KeyError):
        P.phew_masks(topo, {k: v for k, v in aw.items() if k != name}, budgets, seed=0)
    with pytest.raises(ValueError, match="outside"):
        P.phew_masks(topo, aw, dict(budgets, **{name: -1}), seed=0)
    with pytest.raises(ValueError, match="integer"):
        P.phew_masks(topo, aw, dict(budgets, **{name: 2.5}), seed=0)
    with pytest.raises(ValueError, match="shape"):
        P.phew_masks(topo, dict(aw, **{name: aw[name].reshape(-1)}), budgets, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        P.phew_masks(topo, dict(aw, **{name: -aw[name]}), budgets, seed=0)
    with pytest.raises(ValueError, match="element"):
        P.phew_masks(topo, aw, budgets, seed=0, element="kernel")
    with pytest.raises(TypeError):
        P.phew_masks(topo, aw, budgets, seed=0, walk_len=3)


def test_stall_fill_and_max_walks(r20):
    _, topo, aw = r20
    budgets = _uniform_budgets(aw, 0.9)  # sampling cannot cheaply reach the tiny weights
    masks, stats = P.phew_run(topo, aw, budgets, seed=0, stall_window=500, min_yield=0.5)
    assert stats.stop_reason == "stalled" and sum(stats.filled.values()) > 0
    assert {k: int(m.sum()) for k, m in masks.items()} == budgets
    masks, stats = P.phew_run(topo, aw, _uniform_budgets(aw, 0.1), seed=0, max_walks=10)
    assert stats.stop_reason == "max_walks" and stats.walks == 10
    assert {k: int(m.sum()) for k, m in masks.items()} == _uniform_budgets(aw, 0.1)


def test_progress_is_reported_without_changing_the_masks(caplog):
    """PHEW's walks run in one numba loop; it reports the weights placed every
    PROGRESS_EVERY walks on the ``topo_pai.prune`` logger (the CLI draws it as a bar)."""
    import logging

    import topo_pai
    from topo_pai.models import resnet20
    from topo_pai.pruners import phew

    model = resnet20(width=8)
    quiet = topo_pai.prune(model, "phew", 0.5, input_shape=(3, 32, 32))
    with caplog.at_level(logging.INFO, logger="topo_pai.prune"):
        loud = topo_pai.prune(model, "phew", 0.5, input_shape=(3, 32, 32))
    recs = [r for r in caplog.records if getattr(r, "desc", None) == "phew"]
    total = sum(int(m.sum()) for m in loud.values())
    assert len(recs) >= 2 and phew.PROGRESS_EVERY > 0
    done = [r.round for r in recs]
    assert done == sorted(done) and all(r.rounds == recs[0].rounds for r in recs)
    assert done[-1] <= recs[0].rounds <= total  # budgets of the layers PHEW walks
    assert all((quiet[k] == loud[k]).all() for k in quiet)
