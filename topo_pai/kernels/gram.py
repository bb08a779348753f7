"""Numba kernels for the Lanczos iteration of the layer spectra.

:func:`topo_pai.metrics.measures.top_singular_values` runs Lanczos on the Gram
matrix ``G = B^T B`` of a layer's block ``B``, tens of steps per block and
thousands per network. A step is two products (``t = B v``, ``w = B^T t``) and
two passes of classical Gram-Schmidt against the basis; done from Python it costs
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

_JIT = dict(nogil=True, cache=True)


@numba.njit(**_JIT)
def csr_times(indptr, indices, data, x, out):
    """Write ``B x`` to ``out`` for the CSR ``B`` (``indptr``, ``indices``, ``data``);
    each row's terms are summed in index order. Duplicate entries add up, as in
    scipy; empty rows give 0. An empty ``data`` stands for all ones (a 0/1 block:
    the values are not read, and ``1.0 * x == x`` makes the result the same)."""
    binary = data.shape[0] == 0
    for r in range(indptr.shape[0] - 1):
        lo = np.uint64(indptr[r])
        n = np.uint64(indptr[r + 1]) - lo
        cols = indices[lo:lo + n]  # slices with unsigned bounds: no wraparound checks
        total = 0.0
        if binary:
            for q in range(n):
                total += x[np.uint64(cols[q])]
        else:
            vals = data[lo:lo + n]
            for q in range(n):
                total += vals[q] * x[np.uint64(cols[q])]
        out[r] = total
    return out


@numba.njit(**_JIT)
def _extend(basis, first, w, alpha, beta, j, scale, grow):
    """Orthogonalise ``w = G q_j`` (``q_j = basis[first + j]``) twice against
    ``basis[:first + j + 1]``, store ``alpha[j]`` and ``beta[j] = ||w||``, and the
    next basis vector ``w / beta[j]`` when there is room. Returns the new scale
    (``max(scale, alpha[j])`` when ``grow``)."""
    Q = basis[:first + j + 1]
    c = np.dot(Q, w)
    w -= np.dot(c, Q)
    c2 = np.dot(Q, w)
    w -= np.dot(c2, Q)
    alpha[j] = c[first + j] + c2[first + j]
    b = np.sqrt(np.dot(w, w))
    beta[j] = b
    if grow and alpha[j] > scale:
        scale = alpha[j]
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
