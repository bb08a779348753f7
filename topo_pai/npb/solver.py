"""Exact per-layer solver of NPB (Node-Path Balancing).

One layer (``groups = 1``) with ``C_in`` input channels of incoming path mass
``P`` (non-negative), ``C_out`` output channels, a budget of ``n`` kept weights
and at most ``K`` kept elements per kernel.  The variables are the integer
kernel counts ``M[j, i] in {0..K}`` (output ``j``, input ``i``) and the problem
is

    maximise  alpha * A + (1 - alpha) * B + beta * Reg
    s.t.      sum(M) <= n,   0 <= M <= K,  M integer

with

* ``A``   = effective channels (inputs + outputs) / ``node_norm`` value,
* ``B``   = sum_i p_i * sum_j M[j, i] / max_path   (``p = P / max(P)``),
* ``Reg`` = #non-empty kernels / ``reg_norm`` value.

``node="degree"`` (official code): an input counts when its row of ``M`` is
non-empty, an output when its column is.  ``node="paths"`` (paper): an input
counts only if ``P_i > 0`` and its row is non-empty; an output counts if it
receives a weight from an input with ``P_i > 0``.

:func:`solve_layer` solves it exactly in ``O(C_in log C_in + C_in * C_out)``
time by reducing it to a choice of row sums and a greedy over at most
``3 * C_in + 1`` blocks of equal marginal value.  The optimality proof is in
``docs/npb_solver.md``; every solution also carries a Lagrangian upper bound
(``upper_bound``, attained up to rounding) that certifies it given the
reduction lemma.

>>> sol = solve_layer([4.0, 1.0, 0.0], c_out=2, n=5, K=3, alpha=0.01, beta=1.0)
>>> sol.M.tolist()
[[1, 1, 1], [1, 1, 0]]
>>> round(sol.objective, 6) == round(sol.upper_bound, 6)
True
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FILLS",
    "NODE_NORMS",
    "NODE_VARIANTS",
    "REG_NORMS",
    "LayerProblem",
    "LayerSolution",
    "evaluate",
    "make_problem",
    "max_path_mass",
    "solve_layer",
]

NODE_VARIANTS = ("degree", "paths")
NODE_NORMS = ("achievable", "channels")
REG_NORMS = ("budget", "achievable")
FILLS = ("spread", "pack")

# The exact value and the certificate are sums of O(C_in) products of
# non-negative floats; they agree to a few ulps.  A larger disagreement would
# mean a bug, so it is raised rather than returned.
_SELF_CHECK_RTOL = 1e-9


@dataclass(frozen=True)
class LayerProblem:
    """A validated per-layer instance and its objective coefficients.

    The objective of a kernel-count matrix ``M`` equals
    ``a * (#effective channels) + b * sum_i p_i r_i + g * #non-empty kernels``
    with ``r_i`` the row sums of input ``i``, where ``a = alpha / node_den``,
    ``b = (1 - alpha) / max_path`` and ``g = beta / reg_den`` (each 0 when its
    denominator is 0).
    """

    p: np.ndarray  # (C_in,) float64, P / max(P) (all 0 if max(P) == 0)
    p_scale: float  # max(P)
    live: np.ndarray  # (C_in,) bool: inputs that can count as nodes / feed outputs
    c_in: int
    c_out: int
    n: int
    K: int
    alpha: float
    beta: float
    node: str
    node_norm: str
    reg_norm: str
    max_path: float  # true max of sum_i p_i r_i under budget and caps (p units)
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


def max_path_mass(p: Any, c_out: int, n: int, K: int) -> float:
    """True maximum of ``sum_i p_i * r_i`` over ``sum_i r_i <= n``, ``0 <= r_i <= K*c_out``.

    Fill the inputs with the largest ``p_i`` to ``K*c_out`` each until the
    budget runs out (exchange argument: the objective is linear in ``r`` and
    the feasible set is a box cut by one budget, so the fractional-knapsack
    greedy is optimal, and it is integral).  The official code computes
    ``q = n // (K*c_out)`` and sums ``sort(p)[-q:]``; for ``q == 0`` that slice
    is the whole array, inflating ``max_path`` (fixed here).

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


def make_problem(
    P: Any,
    c_out: int,
    n: int,
    K: int,
    alpha: float,
    beta: float,
    node: str = "degree",
    *,
    node_norm: str = "achievable",
    reg_norm: str = "budget",
) -> LayerProblem:
    """Validate an instance and compute its normalisers and coefficients.

    Normalisers (see ``docs/npb_solver.md``):

    * ``node_norm="achievable"`` (default): the most effective channels any
      ``M`` with ``sum(M) <= n`` can have: ``min(C_in, n) + min(C_out, n)``
      for ``degree``; ``min(Z, n) + [Z > 0] * min(C_out, n)`` for ``paths``
      with ``Z = #{i: P_i > 0}``.  ``"channels"``: ``C_in + C_out`` (official).
    * ``max_path``: :func:`max_path_mass` (the true maximum).
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
    alpha = float(alpha)
    beta = float(beta)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")

    p_scale = float(P.max())
    p = P / p_scale if p_scale > 0 else np.zeros_like(P)
    live = np.ones(c_in, dtype=bool) if node == "degree" else (P > 0)

    max_path = max_path_mass(p, c_out, n, K)
    if node_norm == "channels":
        node_den = c_in + c_out
    else:
        z = int(live.sum())
        node_den = min(z, n) + (min(c_out, n) if z > 0 else 0)
    reg_den = n if reg_norm == "budget" else min(n, c_in * c_out)

    a = alpha / node_den if node_den > 0 else 0.0
    b = (1.0 - alpha) / max_path if max_path > 0 else 0.0
    g = beta / reg_den if reg_den > 0 else 0.0
    return LayerProblem(
        p=p, p_scale=p_scale, live=live, c_in=c_in, c_out=c_out, n=n, K=K,
        alpha=alpha, beta=beta, node=node, node_norm=node_norm, reg_norm=reg_norm,
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
    n_kernels = int(nz.sum())
    n_eff_in = int(np.count_nonzero((r > 0) & prob.live))
    n_eff_out = int(np.count_nonzero(nz[:, prob.live].any(axis=1))) if prob.live.any() else 0
    A = (n_eff_in + n_eff_out) / prob.node_den if prob.node_den > 0 else 0.0
    B = float(np.dot(prob.p, r)) / prob.max_path if prob.max_path > 0 else 0.0
    Reg = n_kernels / prob.reg_den if prob.reg_den > 0 else 0.0
    obj = prob.alpha * A + (1.0 - prob.alpha) * B + prob.beta * Reg
    return {
        "objective": float(obj),
        "node_term": float(A),
        "path_term": float(B),
        "reg_term": float(Reg),
        "row_sums": r,
        "n_eff_in": n_eff_in,
        "n_eff_out": n_eff_out,
        "n_kernels": n_kernels,
        "n_used": used,
    }


# ----------------------------------------------------------------------------
# Exact solver
# ----------------------------------------------------------------------------


def _greedy_row_sums(prob: LayerProblem) -> tuple[np.ndarray, float, float, float]:
    """Optimal row sums ``r`` of the reduced problem (Theorem 2 of the doc).

    Returns ``(r, value, theta, bound)``: ``value`` is the sum of the chosen
    marginals and ``bound = n*theta + sum(count * (lambda - theta)^+)`` the
    Lagrangian upper bound at price ``theta`` (the last marginal taken).
    """
    c_in, c_out, U, n = prob.c_in, prob.c_out, prob.row_cap, prob.n
    a, b, g = prob.a, prob.b, prob.g
    live = prob.live
    bp = b * prob.p
    # Marginal values of F_i(u) = a*[live_i]*[u>=1] + b p_i u + g min(u, C_out):
    # block 0: unit 1; block 1: units 2..C_out; block 2: units C_out+1..U.
    val = np.concatenate([a * live + bp + g, bp + g, bp])
    cnt = np.concatenate([
        np.ones(c_in, np.int64),
        np.full(c_in, c_out - 1, np.int64),
        np.full(c_in, U - c_out, np.int64),
    ])
    row = np.tile(np.arange(c_in, dtype=np.int64), 3)
    blk = np.repeat(np.arange(3, dtype=np.int64), c_in)
    keep = cnt > 0
    val, cnt, row, blk = val[keep], cnt[keep], row[keep], blk[keep]
    part = np.zeros(val.size, np.int64)
    lam = val.copy()

    # Coverage bonus a*min(C_out, sum_{live} r_i): +a on the first C_out units
    # of the live stream taken in non-increasing marginal order (ties: row, block).
    if a > 0 and live.any():
        sidx = np.flatnonzero(live[row])
        order = sidx[np.lexsort((blk[sidx], row[sidx], -val[sidx]))]
        cum = np.cumsum(cnt[order])
        k = int(np.searchsorted(cum, c_out, side="left"))  # first block with cum >= c_out
        full = order[: min(k, order.size)]
        lam[full] += a
        if k < order.size:
            bi = order[k]
            before = int(cum[k] - cnt[bi])
            take = c_out - before  # 1 <= take <= cnt[bi]
            if take == cnt[bi]:
                lam[bi] += a
            else:  # split block bi into a bonus part (part 0) and the rest (part 1)
                val = np.append(val, val[bi])
                lam = np.append(lam, val[bi])
                cnt = np.append(cnt, cnt[bi] - take)
                row = np.append(row, row[bi])
                blk = np.append(blk, blk[bi])
                part = np.append(part, 1)
                cnt[bi] = take
                lam[bi] += a

    order = np.lexsort((part, blk, row, -lam))
    c_sorted = cnt[order]
    cum = np.cumsum(c_sorted)
    taken = np.minimum(c_sorted, np.maximum(n - (cum - c_sorted), 0))
    r = np.bincount(row[order], weights=taken, minlength=c_in).astype(np.int64)
    lam_sorted = lam[order]
    value = float(np.dot(lam_sorted, taken))
    pos = np.flatnonzero(taken)
    if pos.size:
        theta = float(lam_sorted[pos[-1]])
    else:
        theta = float(lam_sorted[0]) if lam_sorted.size else 0.0
    theta = max(theta, 0.0)
    bound = n * theta + float(np.dot(c_sorted, np.maximum(lam_sorted - theta, 0.0)))
    return r, value, theta, bound


def _cyclic_window(D: np.ndarray, start: np.ndarray, length: np.ndarray,
                   weight: np.ndarray) -> None:
    """Add ``weight[i]`` on the cyclic window ``[start[i], start[i]+length[i])`` of row
    ``i`` of the difference array ``D`` (shape ``(C_in, C_out + 1)``, ``0 <= length <= C_out``).

    Each input row is touched once per statement, so plain fancy-index ``+=`` is exact.
    """
    c_out = D.shape[1] - 1
    rows = np.flatnonzero(length > 0)
    start, length, weight = start[rows], length[rows], weight[rows]
    end = start + length
    D[rows, start] += weight
    D[rows, np.minimum(end, c_out)] -= weight
    wrap = end > c_out
    D[rows[wrap], 0] += weight[wrap]
    D[rows[wrap], end[wrap] - c_out] -= weight[wrap]


def _build_matrix(prob: LayerProblem, r: np.ndarray, fill: str) -> np.ndarray:
    """A kernel-count matrix with row sums ``r`` attaining the reduced value.

    Input ``i`` opens ``h_i = min(r_i, C_out)`` kernels on consecutive output
    channels of a cyclic sequence (live inputs first, in index order), so the
    live inputs cover ``min(C_out, sum_live h_i)`` distinct outputs; the
    ``r_i - C_out`` extra units of a row with ``r_i > C_out`` go to its (all
    open) kernels: evenly (``spread``) or filling kernels to ``K`` (``pack``),
    starting at a second cyclic pointer so extras are balanced over outputs.
    """
    c_in, c_out, K = prob.c_in, prob.c_out, prob.K
    r = r.astype(np.int64)
    h = np.minimum(r, c_out)
    ext = r - h
    seq = np.concatenate([np.flatnonzero(prob.live), np.flatnonzero(~prob.live)])
    start = np.empty(c_in, np.int64)
    start[seq] = (np.cumsum(h[seq]) - h[seq]) % c_out
    ones = np.ones(c_in, np.int64)
    D = np.zeros((c_in, c_out + 1), np.int64)
    _cyclic_window(D, start, h, ones)
    if np.any(ext > 0):
        if fill == "spread":
            q, rem = np.divmod(ext, c_out)
            D[:, 0] += q
            D[:, c_out] -= q
            xs = np.empty(c_in, np.int64)
            xs[seq] = (np.cumsum(rem[seq]) - rem[seq]) % c_out
            _cyclic_window(D, xs, rem, ones)
        else:
            nfull, part = np.divmod(ext, K - 1)  # ext > 0 implies K > 1
            step = nfull + (part > 0)
            xs = np.empty(c_in, np.int64)
            xs[seq] = (np.cumsum(step[seq]) - step[seq]) % c_out
            _cyclic_window(D, xs, nfull, np.full(c_in, K - 1, np.int64))
            _cyclic_window(D, (xs + nfull) % c_out, (part > 0).astype(np.int64), part)
    # cumsum along the contiguous axis, then one transposed copy: much faster
    # than numpy's cumsum along axis 0.
    return np.ascontiguousarray(np.cumsum(D[:, :c_out], axis=1).T)


def solve_layer(
    P: Any,
    c_out: int,
    n: int,
    K: int,
    alpha: float,
    beta: float,
    node: str = "degree",
    *,
    node_norm: str = "achievable",
    reg_norm: str = "budget",
    fill: str = "spread",
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
    node_norm, reg_norm : str
        Normalisers of the node and kernel terms (see :func:`make_problem`).
    fill : {"spread", "pack"}
        How a row's units beyond one per kernel are placed (does not change
        the objective).

    Returns
    -------
    LayerSolution
        ``M`` (C_out, C_in) int64 with ``sum(M) == n`` (the whole budget is
        used; no term decreases with more weights), proven optimal.  Ties are
        broken deterministically towards lower input-channel index.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    t0 = time.perf_counter()
    prob = make_problem(P, c_out, n, K, alpha, beta, node, node_norm=node_norm, reg_norm=reg_norm)
    r, value, theta, bound = _greedy_row_sums(prob)
    M = _build_matrix(prob, r, fill)
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
        info={"time_s": elapsed, "greedy_value": value, "fill": fill},
    )
