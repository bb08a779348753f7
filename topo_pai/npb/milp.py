"""The NPB per-layer problem as a MILP for HiGHS (``scipy.optimize.milp``).

A reference formulation of exactly the problem that
:func:`topo_pai.npb.solver.solve_layer` solves (same saturation levels,
normalisers and coefficients, taken from :func:`topo_pai.npb.solver.make_problem`),
used to cross-check it.  Variables (``i`` input, ``j`` output):

* ``M[j, i]`` integer in ``[0, K]`` - kept elements of kernel ``(j, i)``;
* ``z[j, i]`` binary, ``z <= M``   - kernel non-empty;
* ``x[i]`` continuous in ``[0, tau_in]``, ``x_i <= sum_j M[j, i]`` - the input's
  saturated fan-out ``min(r_i, tau_in)`` (fixed to 0 for ``node="paths"`` when
  ``P_i == 0``);
* ``y[j]`` continuous in ``[0, tau_out]``, ``y_j <= sum_{i live} M[j, i]`` - the
  output's saturated fan-in (live: all inputs for ``degree``, ``P_i > 0`` for
  ``paths``);
* budget ``sum M <= n``.

Maximise ``a*(sum x + sum y) + b*sum_ij p_i M[j, i] + g*sum z``.  ``x``, ``y``
and ``z`` appear with non-negative objective weight and only upper bounds, so
at an optimum each equals ``min(.)`` or its indicator; hence the MILP optimum is
the problem's optimum.  With ``tau = 1`` and integer ``M``, ``x`` and ``y`` are
the official 0/1 effective-channel indicators.

HiGHS stops with "optimal" once its relative gap is below ``mip_rel_gap``
(default 1e-4) or its absolute gap below ``mip_abs_gap`` (default 1e-6); both
are tightened here (``mip_abs_gap`` is passed to HiGHS verbatim) so that
"proven optimal" means optimal up to ~1e-9.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from topo_pai.npb.solver import LayerSolution, evaluate, make_problem

__all__ = ["solve_layer_milp"]

_STATUS = {0: "optimal", 1: "iteration_or_time_limit", 2: "infeasible", 3: "unbounded", 4: "other"}


def solve_layer_milp(
    P: Any,
    c_out: int,
    n: int,
    K: int,
    alpha: float,
    beta: float,
    node: str = "degree",
    time_limit: float = 60,
    *,
    tau: Any = "fair",
    node_norm: str = "achievable",
    reg_norm: str = "budget",
    path_norm: str = "max",
    mip_rel_gap: float = 1e-10,
    mip_abs_gap: float = 1e-12,
    presolve: bool = False,
) -> LayerSolution:
    """Solve the per-layer NPB problem with HiGHS branch-and-bound.

    Same arguments and return type as :func:`topo_pai.npb.solver.solve_layer`.
    ``status`` is ``"optimal"`` (gap closed within the tolerances,
    ``optimal=True``), ``"iteration_or_time_limit"`` (the best solution found
    is returned, ``optimal=False``) or another failure (then ``M`` is all
    zeros).  ``upper_bound`` is HiGHS's dual bound; ``objective`` is
    recomputed from the rounded ``M``; ``info`` holds ``milp_fun`` (HiGHS's
    objective), ``mip_gap``, ``mip_node_count``, ``message`` and ``time_s``.

    >>> s = solve_layer_milp([4.0, 1.0, 0.0], c_out=2, n=5, K=3, alpha=0.01, beta=1.0)
    >>> s.optimal, s.status
    (True, 'optimal')
    """
    t0 = time.perf_counter()
    prob = make_problem(P, c_out, n, K, alpha, beta, node, tau=tau, node_norm=node_norm,
                        reg_norm=reg_norm, path_norm=path_norm)
    ci, co = prob.c_in, prob.c_out
    nk = ci * co  # kernel index k = j*ci + i  (row-major (C_out, C_in))
    nv = 2 * nk + ci + co
    oM, oz, ox, oy = 0, nk, 2 * nk, 2 * nk + ci
    jj, ii = np.divmod(np.arange(nk), ci)

    c = np.zeros(nv)
    c[oM:oM + nk] = -prob.b * prob.p[ii]
    c[oz:oz + nk] = -prob.g
    c[ox:ox + ci] = -prob.a
    c[oy:oy + co] = -prob.a

    lb = np.zeros(nv)
    ub = np.ones(nv)
    ub[oM:oM + nk] = prob.K
    ub[ox:ox + ci] = prob.tau_in * prob.live
    ub[oy:oy + co] = prob.tau_out if prob.live.any() else 0.0
    integrality = np.ones(nv)
    integrality[ox:] = 0  # x, y: continuous saturated degrees

    rows, cols, vals = [], [], []
    # 0: budget
    rows.append(np.zeros(nk, np.int64)); cols.append(oM + np.arange(nk)); vals.append(np.ones(nk))
    # 1..nk: z - M <= 0
    r = 1 + np.arange(nk)
    rows += [r, r]; cols += [oz + np.arange(nk), oM + np.arange(nk)]
    vals += [np.ones(nk), -np.ones(nk)]
    # x_i - sum_j M[j,i] <= 0
    base = 1 + nk
    rows += [base + np.arange(ci), base + ii]
    cols += [ox + np.arange(ci), oM + np.arange(nk)]
    vals += [np.ones(ci), -np.ones(nk)]
    # y_j - sum_{i live} M[j,i] <= 0
    base = 1 + nk + ci
    lk = np.flatnonzero(prob.live[ii])
    rows += [base + np.arange(co), base + jj[lk]]
    cols += [oy + np.arange(co), oM + lk]
    vals += [np.ones(co), -np.ones(lk.size)]
    nrow = 1 + nk + ci + co
    A = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow, nv)
    )
    b_u = np.zeros(nrow)
    b_u[0] = prob.n
    b_l = np.full(nrow, -np.inf)

    # HiGHS's LP tolerances are absolute (reduced costs below
    # dual_feasibility_tolerance = 1e-7 count as zero).  The raw costs are tiny
    # (~1/n), so scale them to max |c| = 1; the bound and value are unscaled below.
    cscale = float(np.max(np.abs(c))) if np.any(c) else 1.0
    c = c / cscale
    options = {
        "time_limit": float(time_limit),
        "mip_rel_gap": float(mip_rel_gap),
        "mip_abs_gap": float(mip_abs_gap),
        "presolve": bool(presolve),
        "disp": False,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        res = milp(
            c, integrality=integrality, bounds=Bounds(lb, ub),
            constraints=LinearConstraint(A, b_l, b_u), options=options,
        )
    status = _STATUS.get(int(res.status), "other")
    if res.x is not None:
        M = np.round(res.x[oM:oM + nk]).astype(np.int64).reshape(co, ci)
        M = np.clip(M, 0, prob.K)
        # Rounding cannot push the budget over (integrality tolerance), but be safe.
        while M.sum() > prob.n:  # pragma: no cover
            idx = np.unravel_index(np.argmax(M), M.shape)
            M[idx] -= 1
    else:
        M = np.zeros((co, ci), np.int64)
    ev = evaluate(prob, M)
    dual = getattr(res, "mip_dual_bound", None)
    ub_val = -float(dual) * cscale if dual is not None and np.isfinite(dual) else float("inf")
    proven = status == "optimal"
    return LayerSolution(
        M=M, objective=ev["objective"], node_term=ev["node_term"], path_term=ev["path_term"],
        reg_term=ev["reg_term"], upper_bound=ub_val, optimal=proven, status=status,
        method="milp", row_sums=ev["row_sums"], n_eff_in=ev["n_eff_in"],
        n_eff_out=ev["n_eff_out"], n_kernels=ev["n_kernels"], n_used=ev["n_used"],
        max_path=prob.max_path, problem=prob, theta=None,
        info={
            "time_s": time.perf_counter() - t0,
            "milp_fun": None if res.fun is None else -float(res.fun) * cscale,
            "cost_scale": cscale,
            "mip_gap": getattr(res, "mip_gap", None),
            "mip_node_count": getattr(res, "mip_node_count", None),
            "message": res.message,
            "n_vars": nv,
        },
    )
