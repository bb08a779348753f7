"""Exact per-layer solver of NPB (Node-Path Balancing).

One layer (``groups = 1``; grouped convs are solved per group by the pruner) with
``C_in`` input channels of incoming path mass ``P`` (non-negative), ``C_out``
output channels, a budget of ``n`` kept weights and at most ``K`` kept elements
per kernel.  The variables are the integer kernel counts ``M[j, i] in {0..K}``
(output ``j``, input ``i``), with row sums ``r_i = sum_j M[j, i]`` (the fan-out
of input ``i``) and live column sums ``c_j = sum_{i live} M[j, i]`` (the fan-in
of output ``j``).  The problem is

    maximise  alpha * A + (1 - alpha) * B + beta * Reg
    s.t.      sum(M) <= n,   0 <= M <= K,  M integer

with

* ``A``   = (sum_{i live} min(r_i, tau_in) + sum_j min(c_j, tau_out)) / node_den:
  the *saturating degree*, each node counting its edges up to ``tau``;
  ``tau = 1`` is the official objective (effective channels), the default
  ``tau="fair"`` is each node's fair share of the budget;
* ``B``   = sum_i p_i * r_i / path_den   (``p = P / max(P)``),
* ``Reg`` = #non-empty kernels / reg_den.

``node="degree"`` (official code): every input is live.  ``node="paths"``
(paper): only inputs with ``P_i > 0`` are live (count as nodes and feed the
output side).

:func:`solve_layer` solves it exactly in ``O(C_in log C_in + C_in * C_out)``
time by reducing it to a choice of row sums and a greedy over at most
``4 * C_in + 2`` blocks of equal marginal value; among equal optima it spreads
the budget (water-filling), never favouring low indices.  The optimality proof
is in ``docs/npb_solver.md``; every solution also carries a Lagrangian upper
bound (``upper_bound``, attained up to rounding) that certifies it given the
reduction lemma.

>>> sol = solve_layer([4.0, 1.0, 0.0], c_out=2, n=5, K=3, alpha=0.01, beta=1.0)
>>> sol.M.tolist()
[[1, 1, 0], [1, 1, 1]]
>>> round(sol.objective, 6) == round(sol.upper_bound, 6)
True
"""

from __future__ import annotations

import math
import numbers
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "NODE_NORMS",
    "NODE_VARIANTS",
    "PATH_NORMS",
    "REG_NORMS",
    "LayerProblem",
    "LayerSolution",
    "evaluate",
    "fair_shares",
    "make_problem",
    "max_path_mass",
    "official_max_path",
    "solve_layer",
]

NODE_VARIANTS = ("degree", "paths")
NODE_NORMS = ("achievable", "channels")
REG_NORMS = ("budget", "achievable")
PATH_NORMS = ("max", "official")
TAU_FAIR = "fair"

# The exact value and the certificate are sums of O(C_in) products of
# non-negative floats; they agree to a few ulps.  A larger disagreement would
# mean a bug, so it is raised rather than returned.
_SELF_CHECK_RTOL = 1e-9


@dataclass(frozen=True)
class LayerProblem:
    """A validated per-layer instance and its objective coefficients.

    The objective of a kernel-count matrix ``M`` equals
    ``a * N_tau(M) + b * sum_i p_i r_i + g * #non-empty kernels`` with
    ``N_tau(M) = sum_{i live} min(r_i, tau_in) + sum_j min(c_j, tau_out)``,
    where ``a = alpha / node_den``, ``b = (1 - alpha) / max_path`` and
    ``g = beta / reg_den`` (each 0 when its denominator is 0).
    """

    p: np.ndarray  # (C_in,) float64, P / max(P) (all 0 if max(P) == 0)
    p_scale: float  # max(P)
    live: np.ndarray  # (C_in,) bool: inputs that count as nodes / feed the output side
    c_in: int
    c_out: int
    n: int
    K: int
    alpha: float
    beta: float
    node: str
    tau: Any  # the option as given: "fair" or a number
    tau_in: float  # saturation of an input's fan-out
    tau_out: float  # saturation of an output's fan-in
    node_norm: str
    reg_norm: str
    path_norm: str
    max_path: float  # the path normaliser (p units): true maximum, or the official formula
    node_den: int
    reg_den: int
    a: float
    b: float
    g: float

    @property
    def row_cap(self) -> int:
        return self.K * self.c_out

    @property
    def capacity(self) -> int:
        return self.K * self.c_out * self.c_in


@dataclass(frozen=True)
class LayerSolution:
    """Solution of one layer.

    ``M`` has shape ``(C_out, C_in)`` (output channel first, like a weight).
    ``objective = alpha*node_term + (1-alpha)*path_term + beta*reg_term`` is
    recomputed from ``M``.  ``upper_bound`` is a proven upper bound on the
    optimum (for the exact solver the Lagrangian bound at price ``theta``; for
    the MILP, HiGHS's dual bound); ``optimal`` says whether optimality is
    proven.  ``info`` holds method-specific extras (timings, MILP status...).
    """

    M: np.ndarray
    objective: float
    node_term: float
    path_term: float
    reg_term: float
    upper_bound: float
    optimal: bool
    status: str
    method: str
    row_sums: np.ndarray
    n_eff_in: int
    n_eff_out: int
    n_kernels: int
    n_used: int
    max_path: float
    problem: LayerProblem = field(repr=False)
    theta: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """``upper_bound - objective`` (>= 0 up to rounding)."""
        return float(self.upper_bound - self.objective)


# ----------------------------------------------------------------------------
# Problem set-up
# ----------------------------------------------------------------------------


def _as_int(x: Any, name: str, lo: int) -> int:
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    try:
        v = operator.index(x)
    except TypeError:
        if isinstance(x, (float, np.floating)) and math.isfinite(x) and float(x).is_integer():
            v = int(x)
        else:
            raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def _as_real(x: Any, name: str, lo: float, hi: float = math.inf, *, open_lo=False) -> float:
    """A finite real in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``); the error names ``name``."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    v = float(x)
    below = v <= lo if open_lo else v < lo
    if not math.isfinite(v) or below or v > hi:
        left = "(" if open_lo else "["
        right = "]" if math.isfinite(hi) else ")"
        raise ValueError(f"{name} must be a finite number in {left}{lo:g}, {hi:g}{right}, "
                         f"got {x!r}")
    return v


def max_path_mass(p: Any, c_out: int, n: int, K: int) -> float:
    """True maximum of ``sum_i p_i * r_i`` over ``sum_i r_i <= n``, ``0 <= r_i <= K*c_out``.

    Fill the inputs with the largest ``p_i`` to ``K*c_out`` each until the
    budget runs out (exchange argument: the objective is linear in ``r`` and
    the feasible set is a box cut by one budget, so the fractional-knapsack
    greedy is optimal, and it is integral).  The official code computes
    ``q = n // (K*c_out)`` and sums ``sort(p)[-q:]``; for ``q == 0`` that slice
    is the whole array, inflating ``max_path`` (see :func:`official_max_path`).

    >>> max_path_mass([1.0, 0.5, 0.25], c_out=2, n=5, K=2)   # 4*1 + 1*0.5
    4.5
    >>> max_path_mass([1.0, 0.5, 0.25], c_out=2, n=3, K=2)   # q = 0: 3*1
    3.0
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    cap = int(K) * int(c_out)
    n = int(n)
    if n <= 0 or p.size == 0 or cap <= 0:
        return 0.0
    ps = np.sort(p)[::-1]
    q, rem = divmod(n, cap)
    q = min(q, ps.size)
    total = cap * float(np.sum(ps[:q]))
    if q < ps.size:
        total += rem * float(ps[q])
    return total


def official_max_path(p: Any, c_out: int, n: int, K: int) -> float:
    """The path normaliser exactly as the official code computes it (``optimize_layerwise``).

    With ``U = K*c_out``, ``q = n // U`` and ``rem = n - q*U``:
    ``U * sum(sort(p)[-q:]) + rem * sort(p)[-(q+1)]`` (the remainder term is
    dropped when ``q + 1 > C_in``, as the official ``try/except`` does).  It
    equals :func:`max_path_mass` except when ``q == 0``: the slice
    ``sort(p)[-0:]`` is then the whole array, so the value becomes
    ``U*sum(p) + n*max(p)`` instead of ``n*max(p)``, which down-weights the path
    term whenever the budget is below one full input fan-out.

    >>> official_max_path([1.0, 0.5, 0.25], c_out=2, n=5, K=2)   # q = 1: as the true maximum
    4.5
    >>> official_max_path([1.0, 0.5, 0.25], c_out=2, n=3, K=2)   # q = 0: 4*1.75 + 3*1
    10.0
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    cap = int(K) * int(c_out)
    n = int(n)
    if n <= 0 or p.size == 0 or cap <= 0:
        return 0.0
    ps = np.sort(p)
    q, rem = divmod(n, cap)
    total = cap * float(np.sum(ps[-q:]))  # q == 0: the whole array (the official quirk)
    if q + 1 <= ps.size:
        total += rem * float(ps[-(q + 1)])
    return total


def fair_shares(n: int, c_in: int, c_out: int) -> tuple[float, float]:
    """The default saturation levels ``(tau_in, tau_out) = (max(1, n/c_in), max(1, n/c_out))``.

    Each input's fair share of the budget is ``n / c_in`` edges and each
    output's ``n / c_out``; the shares are kept fractional (``min(r, 7.25)``
    credits 7 whole units and a quarter of the 8th), and never go below 1, the
    official coverage term.  ``c_in`` is the number of *live* inputs.

    >>> fair_shares(29, 4, 10)
    (7.25, 2.9)
    >>> fair_shares(3, 4, 10)
    (1.0, 1.0)
    """
    tau_in = max(1.0, n / c_in) if c_in > 0 else 1.0
    tau_out = max(1.0, n / c_out) if c_out > 0 else 1.0
    return tau_in, tau_out


def make_problem(
    P: Any,
    c_out: int,
    n: int,
    K: int,
    alpha: float,
    beta: float,
    node: str = "degree",
    *,
    tau: Any = TAU_FAIR,
    node_norm: str = "achievable",
    reg_norm: str = "budget",
    path_norm: str = "max",
) -> LayerProblem:
    """Validate an instance and compute its saturation levels, normalisers and coefficients.

    Saturation ``tau`` (see ``docs/npb_solver.md`` §1): ``"fair"`` (default)
    gives :func:`fair_shares` over the live inputs; a number ``> 0`` is used
    for both sides (``tau=1``: the official effective-channel count).

    Normalisers:

    * ``node_norm="achievable"`` (default): the most nodes any ``M`` with
      ``sum(M) <= n`` can cover: ``min(C_in, n) + min(C_out, n)`` for
      ``degree``; ``min(Z, n) + [Z > 0] * min(C_out, n)`` for ``paths`` with
      ``Z = #{i: P_i > 0}``.  ``"channels"``: ``C_in + C_out`` (official).
      The node term thus counts saturated edges *per node*: one edge of a node
      below its share is worth what a newly covered node is worth at ``tau=1``.
    * ``path_norm="max"`` (default): :func:`max_path_mass`, the true maximum;
      ``"official"``: :func:`official_max_path`, with the official ``q = 0`` quirk.
    * ``reg_norm="budget"`` (default, official): ``n``.  ``"achievable"``:
      ``min(n, C_in * C_out)``, the most non-empty kernels possible.

    A term whose normaliser is 0 is 0.
    """
    if node not in NODE_VARIANTS:
        raise ValueError(f"node must be one of {NODE_VARIANTS}, got {node!r}")
    if node_norm not in NODE_NORMS:
        raise ValueError(f"node_norm must be one of {NODE_NORMS}, got {node_norm!r}")
    if reg_norm not in REG_NORMS:
        raise ValueError(f"reg_norm must be one of {REG_NORMS}, got {reg_norm!r}")
    if path_norm not in PATH_NORMS:
        raise ValueError(f"path_norm must be one of {PATH_NORMS}, got {path_norm!r}")
    P = np.array(P, dtype=np.float64, copy=True)
    if P.ndim != 1 or P.size == 0:
        raise ValueError(
            f"P must be a non-empty 1-D array of input path masses, got shape {P.shape}"
        )
    if not np.all(np.isfinite(P)):
        raise ValueError("P must be finite (normalise huge path counts before passing them)")
    if np.any(P < 0):
        raise ValueError("P must be non-negative")
    c_in = int(P.size)
    c_out = _as_int(c_out, "c_out", 1)
    K = _as_int(K, "K", 1)
    n = _as_int(n, "n", 0)
    if n > c_in * c_out * K:
        raise ValueError(
            f"budget n={n} exceeds the layer capacity C_in*C_out*K = {c_in}*{c_out}*{K}; "
            f"raise K to at least ceil(n / (C_in*C_out)) = {-(-n // (c_in * c_out))}"
        )
    alpha = _as_real(alpha, "alpha", 0.0, 1.0)
    beta = _as_real(beta, "beta", 0.0)

    p_scale = float(P.max())
    p = P / p_scale if p_scale > 0 else np.zeros_like(P)
    live = np.ones(c_in, dtype=bool) if node == "degree" else (P > 0)
    z = int(live.sum())
    if isinstance(tau, str):
        if tau != TAU_FAIR:
            raise ValueError(f"tau must be 'fair' or a number > 0, got {tau!r}")
        tau_in, tau_out = fair_shares(n, z, c_out)
    else:
        tau_in = tau_out = _as_real(tau, "tau", 0.0, open_lo=True)
    # An input's fan-out is at most K*C_out and an output's fan-in at most K*C_in, so a
    # larger tau changes no min(., tau); capped, the breakpoints stay small integers
    # (tau=1e19 overflowed int64 in the output bonus).
    tau_in, tau_out = min(tau_in, K * c_out), min(tau_out, K * c_in)

    if path_norm == "max":
        max_path = max_path_mass(p, c_out, n, K)
    else:
        max_path = official_max_path(p, c_out, n, K)
    if node_norm == "channels":
        node_den = c_in + c_out
    else:
        node_den = min(z, n) + (min(c_out, n) if z > 0 else 0)
    reg_den = n if reg_norm == "budget" else min(n, c_in * c_out)

    a = alpha / node_den if node_den > 0 else 0.0
    b = (1.0 - alpha) / max_path if max_path > 0 else 0.0
    g = beta / reg_den if reg_den > 0 else 0.0
    return LayerProblem(
        p=p, p_scale=p_scale, live=live, c_in=c_in, c_out=c_out, n=n, K=K,
        alpha=alpha, beta=beta, node=node, tau=tau, tau_in=float(tau_in),
        tau_out=float(tau_out), node_norm=node_norm, reg_norm=reg_norm, path_norm=path_norm,
        max_path=max_path, node_den=node_den, reg_den=reg_den, a=a, b=b, g=g,
    )


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def evaluate(prob: LayerProblem, M: Any) -> dict[str, Any]:
    """Terms, counts and objective of a kernel-count matrix ``M`` (C_out, C_in).

    Raises ``ValueError`` if ``M`` is infeasible (shape, integrality, caps, budget).
    """
    M = np.asarray(M)
    if M.shape != (prob.c_out, prob.c_in):
        raise ValueError(
            f"M must have shape (C_out, C_in) = {(prob.c_out, prob.c_in)}, got {M.shape}"
        )
    if not np.issubdtype(M.dtype, np.integer):
        if not np.all(np.isfinite(M)) or not np.all(M == np.round(M)):
            raise ValueError("M must be integer")
        M = np.round(M).astype(np.int64)
    if M.size and (M.min() < 0 or M.max() > prob.K):
        raise ValueError(f"M must lie in [0, K={prob.K}]")
    used = int(M.sum(dtype=np.int64))
    if used > prob.n:
        raise ValueError(f"M uses {used} > n = {prob.n} weights")
    nz = M > 0
    r = M.sum(axis=0, dtype=np.int64)
    c_live = M.sum(axis=1, dtype=np.int64) if prob.live.all() else \
        M[:, prob.live].sum(axis=1, dtype=np.int64)
    n_kernels = int(nz.sum())
    n_eff_in = int(np.count_nonzero((r > 0) & prob.live))
    n_eff_out = int(np.count_nonzero(c_live))
    node_units = (float(np.minimum(r[prob.live], prob.tau_in).sum())
                  + float(np.minimum(c_live, prob.tau_out).sum()))
    A = node_units / prob.node_den if prob.node_den > 0 else 0.0
    B = float(np.dot(prob.p, r)) / prob.max_path if prob.max_path > 0 else 0.0
    Reg = n_kernels / prob.reg_den if prob.reg_den > 0 else 0.0
    obj = prob.alpha * A + (1.0 - prob.alpha) * B + prob.beta * Reg
    return {
        "objective": float(obj),
        "node_term": float(A),
        "path_term": float(B),
        "reg_term": float(Reg),
        "row_sums": r,
        "col_sums": c_live,
        "node_units": node_units,
        "n_eff_in": n_eff_in,
        "n_eff_out": n_eff_out,
        "n_kernels": n_kernels,
        "n_used": used,
    }


# ----------------------------------------------------------------------------
# Exact solver
# ----------------------------------------------------------------------------


def _share_of_unit(tau: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min(u, tau) - min(u-1, tau)`` for the units ``u`` of each segment ``(lo, hi]``
    (constant on a segment whose ends include ``floor(tau)`` and ``floor(tau) + 1``)."""
    t0 = math.floor(tau)
    return np.where(hi <= t0, 1.0, np.where((lo == t0) & (hi == t0 + 1), tau - t0, 0.0))


def _unit_blocks(prob: LayerProblem):
    """Marginal values ``delta_i(u) = F_i(u) - F_i(u-1)`` in blocks of equal value.

    ``F_i(u) = a*[live_i]*min(u, tau_in) + b*p_i*u + g*min(u, C_out)``.  The
    breakpoints ``floor(tau_in)``, ``floor(tau_in) + 1`` and ``C_out`` are the
    same for every input, so the unit range ``1..U`` splits into at most four
    segments ``(lo, hi]``.  Returns flat arrays ``(value, count, row)`` over
    (segment, input), segments in increasing unit order for each input.
    """
    U, c_out, c_in = prob.row_cap, prob.c_out, prob.c_in
    t0 = math.floor(prob.tau_in)
    cuts = {0, U, min(c_out, U), min(t0, U), min(t0 + 1, U)}
    cuts = np.array(sorted(cuts), dtype=np.int64)
    lo, hi = cuts[:-1], cuts[1:]
    node = _share_of_unit(prob.tau_in, lo, hi)  # (S,)
    reg = (hi <= c_out).astype(np.float64)  # (S,)
    # Same association for every segment, so the values of one input are
    # non-increasing in float arithmetic too (rounding is monotone).
    val = ((prob.a * prob.live[None, :]) * node[:, None] + prob.g * reg[:, None]) \
        + (prob.b * prob.p)[None, :]
    cnt = np.broadcast_to((hi - lo)[:, None], val.shape)
    row = np.broadcast_to(np.arange(c_in, dtype=np.int64)[None, :], val.shape)
    keep = cnt.reshape(-1) > 0
    return val.reshape(-1)[keep], cnt.reshape(-1)[keep].copy(), row.reshape(-1)[keep].copy()


def _output_bonus(prob: LayerProblem, start: np.ndarray, count: np.ndarray):
    """Split live blocks occupying stream positions ``[start, start+count)`` at the
    breakpoints of the output term's marginals ``G(s) - G(s-1)``: ``a`` for the
    first ``C_out*floor(tau_out)`` live units, ``a*frac(tau_out)`` for the next
    ``C_out``, 0 after.  Returns ``(piece counts, bonuses)``, each of shape (3, B)."""
    c_out, a = prob.c_out, prob.a
    t0 = math.floor(prob.tau_out)
    frac = prob.tau_out - t0
    p1, p2 = c_out * t0, c_out * (t0 + 1)
    end = start + count
    pieces = np.stack([
        np.clip(np.minimum(end, p1) - start, 0, None),
        np.clip(np.minimum(end, p2) - np.maximum(start, p1), 0, None),
        np.clip(end - np.maximum(start, p2), 0, None),
    ])
    bonus = np.array([a, a * frac, 0.0])
    return pieces, bonus


def _spread_take(val, cnt, row, m: int, c_in: int) -> np.ndarray:
    """Row sums taking the ``m`` largest unit values, ties spread over the inputs.

    Units above the ``m``-th largest value ``v`` are all taken (per input a
    prefix, since an input's values are non-increasing).  The rest comes from
    the units worth exactly ``v``: water-filling raises the inputs with the
    smallest row sums first (each input only within its own tied units), and
    the last ``k`` units go to ``k`` inputs evenly spaced among those at the
    final level.  Any such choice has the same objective value.
    """
    r = np.zeros(c_in, dtype=np.int64)
    if m <= 0 or val.size == 0:
        return r
    order = np.argsort(-val, kind="stable")
    cum = np.cumsum(cnt[order])
    v = val[order[int(np.searchsorted(cum, m, side="left"))]]
    above = val > v
    np.add.at(r, row[above], cnt[above])
    need = m - int(cnt[above].sum())
    tied = val == v
    cap = np.bincount(row[tied], weights=cnt[tied], minlength=c_in).astype(np.int64)
    cand = np.flatnonzero(cap)
    base, cap = r[cand], cap[cand]

    def filled(level):
        return int(np.clip(level - base, 0, cap).sum())

    lo, hi = int(base.min()), int((base + cap).max())  # filled(lo) = 0 <= need
    while lo < hi:  # largest level with filled(level) <= need
        mid = (lo + hi + 1) // 2
        if filled(mid) <= need:
            lo = mid
        else:
            hi = mid - 1
    x = np.clip(lo - base, 0, cap)
    left = need - int(x.sum())
    if left > 0:  # filled(lo + 1) > need: more than `left` inputs can take one more unit
        room = np.flatnonzero((base + x == lo) & (x < cap))
        x[room[_evenly_spaced(room.size, left)]] += 1
    r[cand] += x
    return r


def _evenly_spaced(size: int, k: int) -> np.ndarray:
    """``k`` distinct indices in ``range(size)`` spread evenly (``k <= size``)."""
    return np.floor((np.arange(k) + 0.5) * (size / k)).astype(np.int64) if k else \
        np.zeros(0, np.int64)


def _greedy_row_sums(prob: LayerProblem) -> tuple[np.ndarray, float, float, float]:
    """Optimal row sums ``r`` of the reduced problem (Theorem 2 of the doc).

    Returns ``(r, value, theta, bound)``: ``value`` is the sum of the chosen
    marginals and ``bound = n*theta + sum(count * (lambda - theta)^+)`` the
    Lagrangian upper bound at price ``theta`` (the last marginal taken).
    """
    n, c_in = prob.n, prob.c_in
    val, cnt, row = _unit_blocks(prob)
    is_live = prob.live[row]
    lv, lc, lr = val[is_live], cnt[is_live], row[is_live]
    dv, dc, dr = val[~is_live], cnt[~is_live], row[~is_live]

    # lambda_s = (s-th largest live marginal) + (G(s) - G(s-1)): the live units in
    # non-increasing order, each position split where the output bonus changes.
    order = np.argsort(-lv, kind="stable")
    sv, sc = lv[order], lc[order]
    start = np.cumsum(sc) - sc
    pieces, bonus = _output_bonus(prob, start, sc)
    lam_live = (sv[None, :] + bonus[:, None]).reshape(-1)
    cnt_live = pieces.reshape(-1)
    # stream order of the pieces: block by block, a block's pieces in position order
    pos_live = (np.arange(sc.size)[None, :] * 3 + np.arange(3)[:, None]).reshape(-1)

    lam = np.concatenate([lam_live, dv])
    cnts = np.concatenate([cnt_live, dc])
    kind = np.concatenate([np.zeros(lam_live.size, np.int64), np.ones(dv.size, np.int64)])
    pos = np.concatenate([pos_live, np.zeros(dv.size, np.int64)])
    keep = cnts > 0
    lam, cnts, kind, pos = lam[keep], cnts[keep], kind[keep], pos[keep]
    # n largest of Lambda: value desc; a live unit before a dead one of equal value;
    # live units in stream order (lambda is non-increasing along the stream).
    order = np.lexsort((pos, kind, -lam))
    c_sorted, lam_sorted, kind_sorted = cnts[order], lam[order], kind[order]
    cum = np.cumsum(c_sorted)
    taken = np.minimum(c_sorted, np.maximum(n - (cum - c_sorted), 0))
    value = float(np.dot(lam_sorted, taken))
    nz = np.flatnonzero(taken)
    if nz.size:
        theta = float(lam_sorted[nz[-1]])
    else:
        theta = float(lam_sorted[0]) if lam_sorted.size else 0.0
    theta = max(theta, 0.0)
    bound = n * theta + float(np.dot(c_sorted, np.maximum(lam_sorted - theta, 0.0)))

    s_live = int(taken[kind_sorted == 0].sum())
    s_dead = int(taken[kind_sorted == 1].sum())
    r = _spread_take(lv, lc, lr, s_live, c_in) + _spread_take(dv, dc, dr, s_dead, c_in)
    return r, value, theta, bound


def _column_order(c_out: int, extra: int) -> np.ndarray:
    """A permutation of the output columns whose first ``extra`` entries are evenly
    spaced: the columns that receive one more live unit than the others."""
    first = _evenly_spaced(c_out, extra)
    rest = np.setdiff1d(np.arange(c_out), first, assume_unique=True)
    return np.concatenate([first, rest])


def _build_matrix(prob: LayerProblem, r: np.ndarray) -> np.ndarray:
    """A kernel-count matrix with row sums ``r`` attaining the reduced value.

    The inputs (live ones first, each group in index order) lay their ``r_i``
    units on consecutive positions of one cyclic stream over the output
    columns, taken in the order :func:`_column_order`.  A row with
    ``r_i <= C_out`` thus opens ``r_i`` distinct kernels and a longer row opens
    all ``C_out`` with ``floor``/``ceil(r_i / C_out) <= K`` units each; the live
    units fill stream positions ``0 .. S-1``, so the live column sums differ by
    at most one (and the larger ones are evenly spaced).
    """
    c_in, c_out = prob.c_in, prob.c_out
    r = r.astype(np.int64)
    seq = np.concatenate([np.flatnonzero(prob.live), np.flatnonzero(~prob.live)])
    start = np.empty(c_in, np.int64)
    start[seq] = (np.cumsum(r[seq]) - r[seq]) % c_out
    full, part = np.divmod(r, c_out)
    D = np.zeros((c_in, c_out + 1), np.int64)  # difference array over stream slots
    D[:, 0] += full
    D[:, c_out] -= full
    rows = np.flatnonzero(part > 0)
    s, e = start[rows], start[rows] + part[rows]
    D[rows, s] += 1
    D[rows, np.minimum(e, c_out)] -= 1
    wrap = e > c_out
    D[rows[wrap], 0] += 1
    D[rows[wrap], e[wrap] - c_out] -= 1
    slots = np.cumsum(D[:, :c_out], axis=1)  # (C_in, slot)
    perm = _column_order(c_out, int(r[prob.live].sum()) % c_out)
    inv = np.empty(c_out, np.int64)
    inv[perm] = np.arange(c_out)
    # cumsum along the contiguous axis, then one transposed copy: much faster
    # than numpy's cumsum along axis 0.
    return np.ascontiguousarray(slots[:, inv].T)


def solve_layer(
    P: Any,
    c_out: int,
    n: int,
    K: int,
    alpha: float,
    beta: float,
    node: str = "degree",
    *,
    tau: Any = TAU_FAIR,
    node_norm: str = "achievable",
    reg_norm: str = "budget",
    path_norm: str = "max",
) -> LayerSolution:
    """Solve the NPB per-layer problem exactly (see module docstring).

    Parameters
    ----------
    P : array-like (C_in,)
        Non-negative incoming path mass of each input channel (any scale;
        only ``P / max(P)`` and the sign pattern ``P > 0`` matter).
    c_out, n, K : int
        Output channels, budget of kept weights (``0 <= n <= C_in*C_out*K``),
        cap of kept elements per kernel (``K = 1`` for linear layers).
    alpha, beta : float
        Node weight in ``[0, 1]`` (paths get ``1 - alpha``), kernel regulariser ``>= 0``.
    node : {"degree", "paths"}
        Effective-node rule (official code / paper).
    tau : "fair" or float > 0
        Saturation of the node term (see :func:`make_problem`); ``1`` is official.
    node_norm, reg_norm, path_norm : str
        Normalisers of the three terms (see :func:`make_problem`).

    Returns
    -------
    LayerSolution
        ``M`` (C_out, C_in) int64 with ``sum(M) == n`` (the whole budget is
        used; no term decreases with more weights), proven optimal.  Among
        equal optima the budget is spread: inputs whose units are worth the
        same get row sums differing by at most one (the extra units evenly
        spaced over them), and the live column sums differ by at most one.
    """
    t0 = time.perf_counter()
    prob = make_problem(P, c_out, n, K, alpha, beta, node, tau=tau, node_norm=node_norm,
                        reg_norm=reg_norm, path_norm=path_norm)
    r, value, theta, bound = _greedy_row_sums(prob)
    M = _build_matrix(prob, r)
    ev = evaluate(prob, M)
    elapsed = time.perf_counter() - t0
    scale = max(1.0, abs(bound))
    if not (abs(ev["objective"] - value) <= _SELF_CHECK_RTOL * scale
            and abs(bound - value) <= _SELF_CHECK_RTOL * scale
            and np.array_equal(ev["row_sums"], r)):
        raise RuntimeError(  # pragma: no cover - would be a bug
            f"NPB exact solver self-check failed: evaluated {ev['objective']!r}, "
            f"greedy {value!r}, bound {bound!r}"
        )
    return LayerSolution(
        M=M, objective=ev["objective"], node_term=ev["node_term"], path_term=ev["path_term"],
        reg_term=ev["reg_term"], upper_bound=max(bound, ev["objective"]), optimal=True,
        status="optimal", method="exact", row_sums=ev["row_sums"], n_eff_in=ev["n_eff_in"],
        n_eff_out=ev["n_eff_out"], n_kernels=ev["n_kernels"], n_used=ev["n_used"],
        max_path=prob.max_path, problem=prob, theta=theta,
        info={"time_s": elapsed, "greedy_value": value, "col_sums": ev["col_sums"]},
    )
