"""The exact NPB per-layer solver against HiGHS, brute force and an independent evaluator.

``ref_objective`` below is written from the problem statement only (it shares
no code with ``topo_pai.npb``): effective channels, path mass and non-empty
kernels of a batch of kernel-count matrices, with its own ``max_path``
(unit-by-unit greedy) and normalisers.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topo_pai.npb.milp import solve_layer_milp
from topo_pai.npb.solver import max_path_mass, solve_layer

RTOL = 1e-9


# ----------------------------------------------------------------------------
# Independent reference
# ----------------------------------------------------------------------------


def ref_max_path(p, c_out, n, K):
    """Max of sum_i p_i r_i, sum r <= n, 0 <= r_i <= K*c_out: add units one at a time."""
    room = [K * c_out] * len(p)
    total = 0.0
    for _ in range(n):
        best = None
        for i, v in enumerate(p):
            if room[i] > 0 and (best is None or v > p[best]):
                best = i
        if best is None:
            break
        room[best] -= 1
        total += p[best]
    return total


def ref_official_max_path(P, c_out, n, K):
    """The official ``optimize_layerwise`` formula, line by line (numpy slicing quirk kept)."""
    ps = np.sort(np.asarray(P, dtype=float))
    U = c_out * K
    q = int(n / U)
    rem = n - q * U
    try:
        return float(np.sum(ps[-q:] * U) + rem * ps[-(q + 1)])
    except IndexError:
        return float(np.sum(ps[-q:] * U))


def ref_taus(tau, n, z, c_out):
    if tau == "fair":
        return (max(1.0, n / z) if z else 1.0), max(1.0, n / c_out)
    return float(tau), float(tau)


def ref_objective(Ms, P, n, K, alpha, beta, node, node_norm, reg_norm, tau="fair",
                  path_norm="max"):
    """Objective of every matrix in ``Ms`` (B, C_out, C_in); -inf where infeasible."""
    Ms = np.asarray(Ms, dtype=np.int64)
    if Ms.ndim == 2:
        Ms = Ms[None]
    _, c_out, c_in = Ms.shape
    P = [float(v) for v in P]
    top = max(P)
    p = np.array([v / top if top > 0 else 0.0 for v in P])
    if node == "degree":
        counts = [True] * c_in
    else:
        counts = [v > 0 for v in P]
    counts = np.array(counts)
    z = int(counts.sum())
    t_in, t_out = ref_taus(tau, n, z, c_out)
    used = Ms.sum(axis=(1, 2))
    feasible = (used <= n) & (Ms.min(axis=(1, 2)) >= 0) & (Ms.max(axis=(1, 2)) <= K)
    rows = Ms.sum(axis=1)  # (B, C_in)
    cols = Ms[:, :, counts].sum(axis=2)  # (B, C_out): fan-in from counted inputs
    units = (np.minimum(rows[:, counts], t_in).sum(axis=1)
             + np.minimum(cols, t_out).sum(axis=1))
    if node_norm == "channels":
        den_a = c_in + c_out
    else:
        den_a = min(z, n) + (min(c_out, n) if z > 0 else 0)
    A = units / den_a if den_a else 0.0 * used
    mp = ref_max_path(list(p), c_out, n, K) if path_norm == "max" else \
        ref_official_max_path(p, c_out, n, K)
    B = (rows @ p) / mp if mp > 0 else 0.0 * used
    kernels = (Ms >= 1).sum(axis=(1, 2))
    den_r = n if reg_norm == "budget" else min(n, c_in * c_out)
    R = kernels / den_r if den_r else 0.0 * used
    obj = alpha * A + (1 - alpha) * B + beta * R
    return np.where(feasible, obj, -np.inf)


def close(x, y, rtol=RTOL):
    return abs(x - y) <= rtol * max(1.0, abs(x), abs(y))


# ----------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------

P_VALUES = [0.0, 0.0, 1.0, 1.0, 2.0, 0.5, 3.0, 1e-3, 7.25]


@st.composite
def instances(draw, max_in=6, max_out=6, max_k=4, max_cells=None):
    c_in = draw(st.integers(1, max_in))
    c_out = draw(st.integers(1, max_out))
    if max_cells is not None:
        while c_in * c_out > max_cells:
            c_out -= 1
            if c_out == 0:
                c_out, c_in = 1, c_in - 1
    K = draw(st.integers(1, max_k))
    cap = c_in * c_out * K
    n = draw(st.one_of(st.just(0), st.just(cap), st.integers(0, cap),
                       st.integers(0, min(cap, c_in + c_out))))
    vals = draw(st.lists(
        st.one_of(st.sampled_from(P_VALUES), st.floats(0, 10, allow_subnormal=False)),
        min_size=c_in, max_size=c_in))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-200, 1e200, 37.0]))
    P = [v * scale for v in vals]
    alpha = draw(st.one_of(st.sampled_from([0.0, 0.01, 0.5, 1.0]), st.floats(0, 1)))
    beta = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0, 5)))
    node = draw(st.sampled_from(["degree", "paths"]))
    node_norm = draw(st.sampled_from(["achievable", "channels"]))
    reg_norm = draw(st.sampled_from(["budget", "achievable"]))
    path_norm = draw(st.sampled_from(["max", "max", "official"]))
    tau = draw(st.one_of(st.just("fair"), st.just("fair"), st.just(1.0),
                         st.sampled_from([0.5, 2.0, 2.5]),
                         st.floats(0.1, 8, allow_subnormal=False)))
    return {"P": P, "c_out": c_out, "n": n, "K": K, "alpha": alpha, "beta": beta, "node": node,
            "node_norm": node_norm, "reg_norm": reg_norm, "path_norm": path_norm, "tau": tau}


def _ref(inst, M):
    return float(ref_objective(M, inst["P"], inst["n"], inst["K"], inst["alpha"], inst["beta"],
                               inst["node"], inst["node_norm"], inst["reg_norm"], inst["tau"],
                               inst["path_norm"])[0])


def _check_solution(inst, sol):
    M = sol.M
    c_in = len(inst["P"])
    assert M.shape == (inst["c_out"], c_in)
    assert np.issubdtype(M.dtype, np.integer)
    assert M.min(initial=0) >= 0 and M.max(initial=0) <= inst["K"]
    assert int(M.sum()) <= inst["n"]
    ref = _ref(inst, M)
    assert close(ref, sol.objective), (ref, sol.objective)
    assert close(sol.objective,
                 inst["alpha"] * sol.node_term + (1 - inst["alpha"]) * sol.path_term
                 + inst["beta"] * sol.reg_term)
    return ref


def _kw(inst):
    return {"node_norm": inst["node_norm"], "reg_norm": inst["reg_norm"], "tau": inst["tau"],
            "path_norm": inst["path_norm"]}


def _args(inst):
    return (inst["P"], inst["c_out"], inst["n"], inst["K"], inst["alpha"], inst["beta"],
            inst["node"])


# ----------------------------------------------------------------------------
# Exact solver vs MILP
# ----------------------------------------------------------------------------


@settings(max_examples=250)
@given(instances())
def test_exact_matches_milp(inst):
    sol = solve_layer(*_args(inst), **_kw(inst))
    assert sol.optimal and sol.status == "optimal"
    ours = _check_solution(inst, sol)
    assert int(sol.M.sum()) == inst["n"]  # whole budget used
    # certificate: the bound is attained
    assert close(sol.upper_bound, ours)
    mil = solve_layer_milp(*_args(inst), time_limit=20, **_kw(inst))
    theirs = _check_solution(inst, mil)
    # never lower than anything HiGHS finds, and equal when it proves optimality
    assert ours >= theirs - RTOL * max(1.0, abs(theirs))
    assert mil.upper_bound >= ours - 1e-7 * max(1.0, ours)
    if mil.optimal:
        # HiGHS proves optimality up to its feasibility/optimality tolerances
        # (~1e-7 on the rescaled costs); a term weighted below that (e.g. beta ~ 6e-8)
        # may be left unoptimised by HiGHS while ours, never lower, gets it right.
        assert ours - theirs <= 1e-7 * max(1.0, abs(ours)), (ours, theirs, mil.info)


# ----------------------------------------------------------------------------
# Brute force
# ----------------------------------------------------------------------------


def brute_force(inst):
    c_in, c_out, K = len(inst["P"]), inst["c_out"], inst["K"]
    grid = np.array(list(itertools.product(range(K + 1), repeat=c_in * c_out)), dtype=np.int64)
    Ms = grid.reshape(-1, c_out, c_in)
    vals = ref_objective(Ms, inst["P"], inst["n"], K, inst["alpha"], inst["beta"], inst["node"],
                         inst["node_norm"], inst["reg_norm"], inst["tau"], inst["path_norm"])
    return float(vals.max())


@settings(max_examples=120)
@given(instances(max_in=4, max_out=4, max_k=3, max_cells=4))
def test_exact_matches_brute_force_tiny(inst):
    sol = solve_layer(*_args(inst), **_kw(inst))
    ours = _check_solution(inst, sol)
    assert close(ours, brute_force(inst))


@settings(max_examples=80)
@given(instances(max_in=3, max_out=3, max_k=2, max_cells=6))
def test_exact_matches_brute_force_small(inst):
    sol = solve_layer(*_args(inst), **_kw(inst))
    assert close(_check_solution(inst, sol), brute_force(inst))


@settings(max_examples=100)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.0, 3.0]), min_size=1, max_size=4),
    st.integers(1, 3), st.integers(1, 2), st.data(),
)
def test_max_path_brute_force(P, c_out, K, data):
    U = c_out * K
    n = data.draw(st.integers(0, len(P) * U))
    best = 0.0
    for r in itertools.product(range(U + 1), repeat=len(P)):
        if sum(r) <= n:
            best = max(best, sum(pi * ri for pi, ri in zip(P, r)))
    assert close(max_path_mass(P, c_out, n, K), best)
    assert close(ref_max_path(P, c_out, n, K), best)


def test_max_path_official_bug_fixed():
    # n < C_out*K: the official code's sort(P)[-0:] sums the whole array.
    P = np.array([1.0, 0.5, 0.5, 0.25])
    assert max_path_mass(P, c_out=4, n=3, K=9) == 3.0
    official = P.sum() * 4 * 9 + 3 * P.max()
    assert official > 20 * max_path_mass(P, c_out=4, n=3, K=9)  # 84 vs 3


# ----------------------------------------------------------------------------
# Structure, edge cases, determinism
# ----------------------------------------------------------------------------


def test_zero_budget_and_zero_mass():
    s = solve_layer([1.0, 2.0], 3, 0, 2, 0.3, 1.0)
    assert s.M.sum() == 0 and s.objective == 0.0 and s.upper_bound == 0.0
    s = solve_layer([0.0, 0.0, 0.0], 2, 4, 2, 0.5, 1.0, node="paths")
    assert s.path_term == 0.0 and s.node_term == 0.0 and s.n_kernels == 4 and s.M.sum() == 4
    s = solve_layer([0.0, 0.0, 0.0], 2, 4, 2, 0.5, 1.0, node="degree", tau=1)
    # degree: 3 inputs + 2 outputs reachable with 4 units
    assert s.n_eff_in == 3 and s.n_eff_out == 2 and s.node_term == 1.0
    s = solve_layer([0.0, 0.0, 0.0], 2, 4, 2, 0.5, 1.0, node="degree")
    # fair shares 4/3 and 2: rows (2, 1, 1) give 1 + 1/3 + 1 + 1, columns (2, 2) give 4
    assert sorted(s.row_sums.tolist()) == [1, 1, 2] and close(s.node_term, (10 / 3 + 4) / 5)


def test_full_budget():
    s = solve_layer([3.0, 0.0, 1.0], 4, 3 * 4 * 5, 5, 0.2, 0.7, node="paths")
    # the path term is a float dot product: its rounding depends on the BLAS kernel's order
    assert np.all(s.M == 5) and abs(s.path_term - 1.0) <= 1e-12


def test_paths_variant_dead_inputs_do_not_count():
    # one live input; with a tiny budget the live input must carry the weights
    for tau, units in [(1, 3), ("fair", 4)]:  # fair: tau_in = 2 (one live input), tau_out = 1
        s = solve_layer([0.0, 0.0, 5.0], 3, 2, 3, 1.0, 0.0, node="paths", tau=tau)
        assert s.M[:, 2].sum() == 2 and s.n_eff_in == 1 and s.n_eff_out == 2
        assert s.node_term == units / 3  # achievable normaliser: min(1, 2) + min(3, 2) = 3


def test_scale_invariance_and_determinism():
    rng = np.random.default_rng(0)
    P = rng.integers(0, 4, size=20).astype(float)
    a = solve_layer(P, 16, 700, 9, 0.01, 1.0)
    b = solve_layer(P * 1e250, 16, 700, 9, 0.01, 1.0)
    c = solve_layer(P, 16, 700, 9, 0.01, 1.0)
    assert np.array_equal(a.M, b.M) and np.array_equal(a.M, c.M)
    assert close(a.objective, b.objective)


def test_ties_spread_evenly_not_by_index():
    # all inputs equal, pure path term, K = 1: 3 units over 4 equal rows go to evenly
    # spaced inputs (0, 2, 3), never to the lowest indices (0, 1, 2)
    s = solve_layer([1.0] * 4, 2, 3, 1, 0.0, 0.0)
    assert s.row_sums.tolist() == [1, 0, 1, 1]
    # 10 equal inputs, 7 outputs, 33 units: rows 3 or 4, the four 4s spread out
    s = solve_layer([1.0] * 10, 7, 33, 1, 0.01, 1.0)
    assert s.row_sums.tolist() == [3, 4, 3, 3, 3, 4, 3, 3, 4, 3]
    assert sorted(s.M.sum(axis=1).tolist()) == [4, 4, 5, 5, 5, 5, 5]


@settings(max_examples=150)
@given(st.integers(1, 12), st.integers(1, 9), st.integers(1, 9), st.data())
def test_equal_P_inputs_get_fan_outs_within_one(c_in, c_out, K, data):
    """Inputs with equal P (and so equal marginals) end with row sums differing by at
    most one, for every alpha, beta, tau and budget; live column sums differ by at most
    one. Classes of equal P are drawn from a few levels, zeros included."""
    levels = data.draw(st.lists(st.sampled_from([0.0, 1.0, 62.0, 63.0, 5.5]), min_size=c_in,
                                max_size=c_in))
    n = data.draw(st.integers(0, c_in * c_out * K))
    alpha = data.draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
    beta = data.draw(st.sampled_from([0.0, 1.0]))
    tau = data.draw(st.sampled_from(["fair", 1, 2.5]))
    node = data.draw(st.sampled_from(["degree", "paths"]))
    s = solve_layer(levels, c_out, n, K, alpha, beta, node, tau=tau)
    P = np.array(levels)
    for v in np.unique(P):
        rows = s.row_sums[P == v]
        assert rows.max() - rows.min() <= 1, (v, s.row_sums)
    cols = s.M[:, s.problem.live].sum(axis=1)
    assert cols.max() - cols.min() <= 1


def test_near_equal_paths_spread_at_the_paper_alpha():
    # LeNet-300-100's second layer at 90 %: after a spread first layer the 300 hidden
    # units carry 62 or 63 paths. alpha = 0.01: one edge below a node's fair share is
    # worth alpha/400 = 2.5e-5, moving it to a 63-input gains 0.99/(6900*63) = 2.3e-6.
    P = np.array([62.0] * 210 + [63.0] * 90)
    s = solve_layer(P, 100, 6900, 1, 0.01, 1.0)
    assert set(s.row_sums.tolist()) == {23}
    # the official objective (tau = 1) covers every node, then piles the rest on the 63s
    # (spread evenly among them: 6900 - 300 = 6600 extra units over 90 rows)
    o = solve_layer(P, 100, 6900, 1, 0.01, 1.0, tau=1)
    assert set(o.row_sums[:210].tolist()) == {1} and set(o.row_sums[210:].tolist()) == {74, 75}


@pytest.mark.parametrize("delta, expect", [(0.03, [5, 5]), (0.04, [10, 0])])
def test_alpha_sets_the_exchange_rate(delta, expect):
    """Two inputs, one output, n = 10, fair share 5 each, beta = 0. Moving a unit from
    the weaker input (below its share) to the stronger one loses a = alpha/3 (node
    normaliser min(2, 10) + min(1, 10)) and gains (1 - alpha)/10 * (1 - 1/(1+delta)):
    the path wins exactly when delta/(1+delta) > alpha/(1-alpha) * 10/3, i.e. delta > 3.49 %."""
    s = solve_layer([1.0 + delta, 1.0], 1, 10, 10, 0.01, 0.0)
    assert s.row_sums.tolist() == expect


def test_regulariser_prefers_spreading():
    # beta dominates: one weight per kernel everywhere before any extra
    s = solve_layer([1.0, 0.9, 0.8], 4, 12, 9, 0.01, 1.0)
    assert np.all(s.M == 1)
    # alpha = 0, beta = 0: pure paths, the best input gets everything
    s = solve_layer([1.0, 0.9, 0.8], 4, 12, 9, 0.0, 0.0)
    assert s.row_sums.tolist() == [12, 0, 0]


@pytest.mark.parametrize(
    "kw",
    [
        {"P": [1.0, -1.0], "c_out": 2, "n": 1, "K": 1},
        {"P": [1.0, np.inf], "c_out": 2, "n": 1, "K": 1},
        {"P": [], "c_out": 2, "n": 0, "K": 1},
        {"P": [1.0], "c_out": 2, "n": 5, "K": 2},
        {"P": [1.0], "c_out": 0, "n": 0, "K": 2},
        {"P": [1.0], "c_out": 2, "n": 1, "K": 0},
        {"P": [1.0], "c_out": 2, "n": -1, "K": 1},
    ],
)
def test_bad_input(kw):
    with pytest.raises(ValueError):
        solve_layer(kw["P"], kw["c_out"], kw["n"], kw["K"], 0.5, 1.0)


def test_bad_options():
    with pytest.raises(ValueError):
        solve_layer([1.0], 1, 1, 1, 1.5, 0.0)
    with pytest.raises(ValueError):
        solve_layer([1.0], 1, 1, 1, 0.5, -1.0)
    with pytest.raises(ValueError):
        solve_layer([1.0], 1, 1, 1, 0.5, 0.0, node="nodes")
    with pytest.raises(TypeError):
        solve_layer([1.0], 1, 1.5, 1, 0.5, 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_medium_instances_match_milp(seed):
    rng = np.random.default_rng(seed)
    c_in, c_out, K = 12, 10, 3
    P = rng.choice([0.0, 1.0, 2.0, 5.0, 5.0, 9.5], size=c_in) * rng.uniform(0.5, 1.5, c_in)
    n = int(rng.integers(1, c_in * c_out * K))
    node = ["degree", "paths"][seed % 2]
    inst = {"P": P, "c_out": c_out, "n": n, "K": K, "alpha": 0.01, "beta": 1.0, "node": node,
            "node_norm": "achievable", "reg_norm": "budget", "path_norm": "max",
            "tau": ["fair", 1.0, "fair"][seed]}
    sol = solve_layer(*_args(inst), **_kw(inst))
    ours = _check_solution(inst, sol)
    mil = solve_layer_milp(*_args(inst), time_limit=20, **_kw(inst))
    theirs = _check_solution(inst, mil)
    assert ours >= theirs - RTOL
    if mil.optimal:
        assert close(ours, theirs)


def test_large_layer():
    # 512x512, K = 9: the self-check (objective == certificate) runs inside solve_layer
    rng = np.random.default_rng(1)
    P = rng.lognormal(0, 3, size=512)
    P[rng.random(512) < 0.1] = 0.0
    for density, node in [(0.3, "degree"), (0.01, "paths")]:
        n = int(density * 512 * 512 * 9)
        s = solve_layer(P, 512, n, 9, 0.01, 1.0, node=node)
        assert s.M.sum() == n and close(s.objective, s.upper_bound)
        assert s.M.max() <= 9
