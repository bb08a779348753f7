"""Numba kernels for the Lanczos iteration of the layer spectra.

:func:`topo_pai.metrics.measures.top_singular_values` runs Lanczos on the Gram
matrix ``G = B^T B`` of a layer's block ``B``, tens of steps per block and
thousands per network. A step is two products (``t = B v``, ``w = B^T t``), the
three-term recurrence and classical Gram-Schmidt against the basis; done from Python it costs
a dozen calls of a few microseconds each, more than the arithmetic on most
blocks. :func:`lanczos_steps_csr` and :func:`lanczos_steps_dense` run whole
stretches of steps, between the convergence tests that Python makes.

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
