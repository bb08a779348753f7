"""Numba kernels for the Lanczos iteration of the layer spectra.

:func:`topo_pai.metrics.spectra.top_singular_values` runs Lanczos on the Gram
matrix ``G = B^T B`` of a layer's block ``B``, tens of steps per block and
thousands per network. A step is two products (``t = B v``, ``w = B^T t``), the
three-term recurrence and classical Gram-Schmidt against the basis; done from Python it costs
a dozen calls of a few microseconds each, more than the arithmetic on most
blocks. :func:`lanczos_run_csr` and :func:`lanczos_run_dense` run a whole run in
compiled code: stretches of steps (:func:`lanczos_steps_csr`,
:func:`lanczos_steps_dense`) between the convergence tests of :func:`ritz_test`,
which takes the top eigenpair of the small tridiagonal projection by bisection and
inverse iteration (:func:`top_tridiagonal_pair`). A run holds no GIL from its start to
its end, so blocks on other threads, and Python on the caller's, are not held up by it.

The products are plain row-by-row sums (:func:`csr_times`), so ``B^T`` is passed
as its own CSR (a gather per row is faster than a scatter per column); a 0/1 block
(unweighted 1x1 convolutions and linear layers) passes no values, a third of the
memory traffic less. The
Gram-Schmidt passes use BLAS (``np.dot``), like their pure-numpy twins in
:mod:`topo_pai.kernels.reference` (``lanczos_steps``), which the tests compare
against. Nothing here uses ``fastmath``: sums run in index order, so results are
deterministic.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS as _JIT


@numba.njit(**_JIT)
def csr_times(indptr, indices, data, x, out):
    """Write ``B x`` to ``out`` for the CSR ``B`` (``indptr``, ``indices``, ``data``);
    each row's terms are summed in index order. Duplicate entries add up, as in
    scipy; empty rows give 0. An empty ``data`` stands for all ones (a 0/1 block:
    the values are not read, and ``1.0 * x == x`` makes the result the same).

    Rows go four side by side (:func:`_four_rows`): their running sums are
    independent, so the additions overlap (about 1.5 times as fast as one row at a
    time), and each row still adds its own terms in index order, so no sum changes."""
    n_rows = indptr.shape[0] - 1
    ones = data.shape[0] == 0
    r = 0
    while r + 4 <= n_rows:
        if ones:
            _four_rows(indptr, indices, data, x, out, r, True)
        else:
            _four_rows(indptr, indices, data, x, out, r, False)
        r += 4
    for r in range(r, n_rows):  # the last n_rows % 4 rows, one at a time
        total = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            total += x[indices[q]] if ones else data[q] * x[indices[q]]
        out[r] = total
    return out


@numba.njit(inline="always", **_JIT)
def _four_rows(indptr, indices, data, x, out, r, ones):
    """Rows ``r, ..., r + 3`` of :func:`csr_times`, side by side. ``ones`` is a
    literal at each call site, so each inlined copy keeps one kind of product.
    Bounds and indices are unsigned: no wraparound checks."""
    l0 = np.uint64(indptr[r])
    l1 = np.uint64(indptr[r + 1])
    l2 = np.uint64(indptr[r + 2])
    l3 = np.uint64(indptr[r + 3])
    e3 = np.uint64(indptr[r + 4])
    c0, c1, c2, c3 = indices[l0:l1], indices[l1:l2], indices[l2:l3], indices[l3:e3]
    n0, n1, n2, n3 = l1 - l0, l2 - l1, l3 - l2, e3 - l3
    common = min(min(n0, n1), min(n2, n3))
    a0 = a1 = a2 = a3 = 0.0
    if ones:
        for q in range(common):
            a0 += x[np.uint64(c0[q])]
            a1 += x[np.uint64(c1[q])]
            a2 += x[np.uint64(c2[q])]
            a3 += x[np.uint64(c3[q])]
        for q in range(common, n0):
            a0 += x[np.uint64(c0[q])]
        for q in range(common, n1):
            a1 += x[np.uint64(c1[q])]
        for q in range(common, n2):
            a2 += x[np.uint64(c2[q])]
        for q in range(common, n3):
            a3 += x[np.uint64(c3[q])]
    else:
        v0, v1, v2, v3 = data[l0:l1], data[l1:l2], data[l2:l3], data[l3:e3]
        for q in range(common):
            a0 += v0[q] * x[np.uint64(c0[q])]
            a1 += v1[q] * x[np.uint64(c1[q])]
            a2 += v2[q] * x[np.uint64(c2[q])]
            a3 += v3[q] * x[np.uint64(c3[q])]
        for q in range(common, n0):
            a0 += v0[q] * x[np.uint64(c0[q])]
        for q in range(common, n1):
            a1 += v1[q] * x[np.uint64(c1[q])]
        for q in range(common, n2):
            a2 += v2[q] * x[np.uint64(c2[q])]
        for q in range(common, n3):
            a3 += v3[q] * x[np.uint64(c3[q])]
    out[r] = a0
    out[r + 1] = a1
    out[r + 2] = a2
    out[r + 3] = a3


@numba.njit(**_JIT)
def csr_transpose(indptr, indices, data, n_cols):
    """The CSR arrays ``(indptr, indices, data)`` of ``B^T`` for the CSR ``B`` with
    ``n_cols`` columns: a counting sort by column, whose rows come out in
    increasing order (canonical when ``B`` is). An empty ``data`` (a 0/1 block)
    gives an empty ``data``. About three times as fast as scipy's ``B.T.tocsr()``
    on the layer blocks, whose transposes the spectra need."""
    n_rows = indptr.shape[0] - 1
    nnz = indptr[n_rows]
    ptr = np.zeros(n_cols + 1, dtype=indptr.dtype)
    for q in range(nnz):
        ptr[indices[q] + 1] += 1
    for c in range(n_cols):
        ptr[c + 1] += ptr[c]
    fill = ptr[:-1].copy()  # the next free slot of every row of B^T
    rows = np.empty(nnz, dtype=indices.dtype)
    values = np.empty(data.shape[0], dtype=data.dtype)
    weighted = data.shape[0] != 0
    for r in range(n_rows):
        for q in range(indptr[r], indptr[r + 1]):
            c = indices[q]
            slot = fill[c]
            rows[slot] = r
            if weighted:
                values[slot] = data[q]
            fill[c] = slot + 1
    return ptr, rows, values


#: A second Gram-Schmidt pass runs when the first one left less than this fraction of
#: the vector's norm (the DGKS criterion: cancellation that large may have left
#: rounding-level components along the basis; a pass that removed little left none).
REORTHOGONALIZE_BELOW = 0.7071067811865476


@numba.njit(**_JIT)
def _extend(basis, first, w, alpha, beta, j, scale, grow):
    """Orthogonalise ``w = G q_j`` (``q_j = basis[first + j]``) against
    ``basis[:first + j + 1]``, store ``alpha[j]`` and ``beta[j] = ||w||``, and the
    next basis vector ``w / beta[j]`` when there is room. Returns the new scale
    (``max(scale, alpha[j])`` when ``grow``).

    The three-term recurrence first removes ``alpha_j q_j + beta_{j-1} q_{j-1}``
    (nearly all of ``w``); one pass of classical Gram-Schmidt against the whole basis
    then removes what rounding left along the other vectors, and a second pass runs
    only when the first removed much (:data:`REORTHOGONALIZE_BELOW`)."""
    Q = basis[:first + j + 1]
    q = basis[first + j]
    a = np.dot(q, w)
    w -= a * q
    if j > 0:
        w -= beta[j - 1] * basis[first + j - 1]
    before = np.sqrt(np.dot(w, w))
    c = np.dot(Q, w)
    w -= np.dot(c, Q)
    a += c[first + j]
    b = np.sqrt(np.dot(w, w))
    if b < REORTHOGONALIZE_BELOW * before:
        c = np.dot(Q, w)
        w -= np.dot(c, Q)
        a += c[first + j]
        b = np.sqrt(np.dot(w, w))
    alpha[j] = a
    beta[j] = b
    if grow and a > scale:
        scale = a
    if first + j + 1 < basis.shape[0] and b > 0.0:
        basis[first + j + 1] = w / b
    return scale


@numba.njit(**_JIT)
def lanczos_steps_csr(indptr, indices, data, indptr_t, indices_t, data_t,
                      basis, first, alpha, beta, j, stop, scale, grow):
    """Lanczos steps ``j, ..., stop - 1`` on ``G = B^T B`` (``B`` and ``B^T`` as
    CSR arrays; ``G`` deflated by the ``first`` rows of ``basis``, which are
    locked vectors and take no coefficient). Row ``first + j`` of ``basis`` is the
    current vector. Stops early after a step whose new vector has vanished
    (``beta <= 1e-12 * scale``). Returns ``(steps done so far, scale)``."""
    t = np.empty(indptr.shape[0] - 1)
    w = np.empty(indptr_t.shape[0] - 1)
    while j < stop:
        csr_times(indptr, indices, data, basis[first + j], t)
        csr_times(indptr_t, indices_t, data_t, t, w)
        scale = _extend(basis, first, w, alpha, beta, j, scale, grow)
        j += 1
        if beta[j - 1] <= 1e-12 * scale:
            break
    return j, scale


@numba.njit(**_JIT)
def lanczos_steps_dense(D, basis, first, alpha, beta, j, stop, scale, grow):
    """:func:`lanczos_steps_csr` with a dense (C- or Fortran-ordered) ``B = D``."""
    while j < stop:
        w = np.dot(D.T, np.dot(D, basis[first + j]))
        scale = _extend(basis, first, w, alpha, beta, j, scale, grow)
        j += 1
        if beta[j - 1] <= 1e-12 * scale:
            break
    return j, scale


@numba.njit(**_JIT)
def _eigenvalues_below(diagonal, squares, x, pivmin):
    """How many eigenvalues of the symmetric tridiagonal matrix (``squares`` the
    squared off-diagonal) are below ``x``: the negative pivots of ``T - x I = L D L^T``
    (Sturm), a pivot of magnitude under ``pivmin`` taken as ``-pivmin``, as in LAPACK's
    bisection (``dstebz``), which keeps the count monotone in ``x``."""
    q = diagonal[0] - x
    if abs(q) < pivmin:
        q = -pivmin
    count = 1 if q < 0.0 else 0
    for i in range(1, diagonal.shape[0]):
        q = diagonal[i] - x - squares[i - 1] / q
        if abs(q) < pivmin:
            q = -pivmin
        if q < 0.0:
            count += 1
    return count


@numba.njit(**_JIT)
def _solve_shifted(diagonal, off_diagonal, theta, rhs, floor):
    """``(T - theta I)^{-1} rhs`` for the symmetric tridiagonal ``T``, by Gaussian
    elimination with partial pivoting (the factor has two super-diagonals); a pivot
    under ``floor`` in magnitude is raised to ``floor`` (with its sign), so a shift at
    an eigenvalue, which inverse iteration wants, gives a large finite solution."""
    n = diagonal.shape[0]
    u0 = diagonal - theta  # pivots
    u1 = np.zeros(n)  # first super-diagonal of the factor
    u2 = np.zeros(n)  # second one (rows where two rows were swapped)
    u1[:n - 1] = off_diagonal
    b = rhs.copy()  # eliminated along with the rows
    for i in range(n - 1):
        below = off_diagonal[i]  # entry (i + 1, i)
        if abs(u0[i]) >= abs(below):
            if abs(u0[i]) < floor:
                u0[i] = floor if u0[i] >= 0.0 else -floor
            m = below / u0[i]
            u0[i + 1] -= m * u1[i]
        else:  # rows i and i + 1 change places
            m = u0[i] / below
            old_u1 = u1[i]  # the old row i past its pivot: (u1[i], 0)
            u0[i] = below
            u1[i] = u0[i + 1]
            u2[i] = off_diagonal[i + 1] if i + 1 < n - 1 else 0.0
            u0[i + 1] = old_u1 - m * u1[i]
            if i + 1 < n - 1:
                u1[i + 1] = -m * u2[i]
            b[i], b[i + 1] = b[i + 1], b[i]
        b[i + 1] -= m * b[i]
    if abs(u0[n - 1]) < floor:
        u0[n - 1] = floor if u0[n - 1] >= 0.0 else -floor
    x = np.empty(n)
    for i in range(n - 1, -1, -1):
        t = b[i]
        if i + 1 < n:
            t -= u1[i] * x[i + 1]
        if i + 2 < n:
            t -= u2[i] * x[i + 2]
        x[i] = t / u0[i]
    return x


@numba.njit(**_JIT)
def top_tridiagonal_pair(diagonal, off_diagonal):
    """The largest eigenvalue of a symmetric tridiagonal matrix and a unit
    eigenvector: bisection on Sturm counts from the Gershgorin bound down to adjacent
    floating-point numbers (LAPACK's ``dstebz`` method), then three steps of inverse
    iteration at that value (``dstein``'s), from a fixed start. Pure arithmetic on
    O(n) arrays, so a Lanczos run tests convergence without leaving compiled code;
    ``tests/kernels/test_gram_kernels.py`` holds it to scipy's ``eigh_tridiagonal``."""
    n = diagonal.shape[0]
    if not (np.all(np.isfinite(diagonal)) and np.all(np.isfinite(off_diagonal))):
        return np.nan, np.full(n, np.nan)  # no eigenvalue to find: bisection would not end
    if n == 1:
        return diagonal[0], np.ones(1)
    norm = 0.0  # a bound on ||T||: the largest Gershgorin centre plus radius
    hi = diagonal[0]  # the largest Gershgorin upper end: no eigenvalue above it
    for i in range(n):
        left = abs(off_diagonal[i - 1]) if i > 0 else 0.0
        right = abs(off_diagonal[i]) if i < n - 1 else 0.0
        norm = max(norm, abs(diagonal[i]) + left + right)
        hi = max(hi, diagonal[i] + left + right)
    x = np.empty(n)
    for i in range(n):  # a fixed start with no special direction
        x[i] = 1.0 + (i * 0.6180339887498949) % 1.0
    x /= np.sqrt(np.dot(x, x))
    if norm == 0.0:  # the zero matrix: every vector is an eigenvector
        return 0.0, x
    # scaled by a power of two near 1 / ||T|| (exact): no squares under- or overflow
    unit = 2.0 ** -np.round(np.log2(norm))
    diagonal = diagonal * unit
    off_diagonal = off_diagonal * unit
    norm *= unit
    hi *= unit
    squares = off_diagonal * off_diagonal
    lo = diagonal.max()  # the largest eigenvalue is at least every diagonal entry
    eps = np.finfo(np.float64).eps
    pivmin = np.finfo(np.float64).tiny * max(1.0, squares.max())
    hi += 2.0 * eps * norm + pivmin  # strictly above every eigenvalue
    # invariant: fewer than n eigenvalues below lo, all n below hi
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _eigenvalues_below(diagonal, squares, mid, pivmin) == n:
            hi = mid
        else:
            lo = mid
    theta = 0.5 * (lo + hi)
    floor = eps * norm
    for _ in range(3):
        x = _solve_shifted(diagonal, off_diagonal, theta, x, floor)
        x /= np.sqrt(np.dot(x, x))
    return theta / unit, x


@numba.njit(**_JIT)
def _error_bound(residual, s):
    """``min(residual / s, sqrt(residual))``: the distance from ``s`` to a singular
    value certified by the residual ``||G u - s^2 u||`` (see
    :func:`topo_pai.metrics.spectra.singular_value_error_bound`)."""
    relative = residual / s if s > 0.0 else np.inf
    return min(relative, np.sqrt(residual))


@numba.njit(**_JIT)
def ritz_test(alpha, beta, j, scale, grow, r1, tol, margin, lock_residual, size, limit,
              last_step, last_log):
    """One convergence test of a Lanczos run after ``j`` steps (the rule of
    :func:`topo_pai.metrics.spectra.gram_top_ritz_vectors`). Returns ``(state, theta,
    y, residual, scale, next_check, last_step, last_log)``: ``state`` 1 when the run
    stops with the top Ritz pair ``(theta, y)`` of the tridiagonal projection (its
    bound met, its new vector vanished, or ``limit`` dimensions spanned), -1 when
    ``size`` vectors did not converge, 0 to go on to step ``next_check``.

    The test comes when the bound's log-linear decrease since the previous test
    (``last_step``, ``last_log``; ``last_step < 0`` for none) says it may have
    converged: between 1 and 8 steps on, 4 without a decrease to go by."""
    b = beta[j - 1]
    if not (np.isfinite(b) and np.all(np.isfinite(alpha[:j]))):
        # overflow in the products: no Ritz value to trust (bisection on NaN never ends)
        return -1, np.nan, np.zeros(j), np.inf, scale, j, last_step, last_log
    vanished = b <= 1e-12 * scale
    theta, y = top_tridiagonal_pair(alpha[:j], beta[:j - 1])
    residual = b * abs(y[j - 1])
    s = np.sqrt(max(theta, 0.0))
    if grow:
        scale = max(scale, theta)
        # the first vector's residual also enters the second one's bound
        excess = residual / max(lock_residual * tol * scale, 1e-300)
        bound = _error_bound(residual, s)
    else:
        excess = 0.0
        bound = _error_bound(residual + r1, s)
    target = margin * tol * np.sqrt(scale)
    excess = max(excess, bound / max(target, 1e-300))
    if vanished or j == limit or excess <= 1.0:
        return 1, theta, y, residual, scale, j, last_step, last_log
    if j == size:
        return -1, theta, y, residual, scale, j, last_step, last_log
    log_excess = np.log(excess)
    wait = 4
    if last_step >= 0 and log_excess < last_log:
        rate = (last_log - log_excess) / (j - last_step)
        wait = min(8, max(1, int(np.ceil(log_excess / rate))))
    return 0, theta, y, residual, scale, j + wait, j, log_excess


@numba.njit(**_JIT)
def lanczos_run_csr(indptr, indices, data, indptr_t, indices_t, data_t, basis, first,
                    alpha, beta, size, limit, scale, grow, r1, tol, margin, lock_residual):
    """A whole Lanczos run (:func:`lanczos_steps_csr` between the tests of
    :func:`ritz_test`) from ``basis[first]``, in compiled code: ``(state, steps,
    theta, y, residual)`` (``state`` as in :func:`ritz_test`, never 0)."""
    j, next_check, last_step, last_log = 0, 1, -1, 0.0
    while True:
        j, scale = lanczos_steps_csr(indptr, indices, data, indptr_t, indices_t, data_t,
                                     basis, first, alpha, beta, j, min(next_check, size),
                                     scale, grow)
        state, theta, y, residual, scale, next_check, last_step, last_log = ritz_test(
            alpha, beta, j, scale, grow, r1, tol, margin, lock_residual, size, limit,
            last_step, last_log)
        if state != 0:
            return state, j, theta, y, residual


@numba.njit(**_JIT)
def lanczos_run_dense(D, basis, first, alpha, beta, size, limit, scale, grow, r1, tol,
                      margin, lock_residual):
    """:func:`lanczos_run_csr` with a dense ``B = D`` (:func:`lanczos_steps_dense`)."""
    j, next_check, last_step, last_log = 0, 1, -1, 0.0
    while True:
        j, scale = lanczos_steps_dense(D, basis, first, alpha, beta, j,
                                       min(next_check, size), scale, grow)
        state, theta, y, residual, scale, next_check, last_step, last_log = ritz_test(
            alpha, beta, j, scale, grow, r1, tol, margin, lock_residual, size, limit,
            last_step, last_log)
        if state != 0:
            return state, j, theta, y, residual
