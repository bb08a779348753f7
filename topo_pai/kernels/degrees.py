"""Numba kernels for the O(non-zeros) measures of a layer's block
(:mod:`topo_pai.metrics.measures`): degrees and effective kernels, one pass over
the CSR arrays each, where scipy takes a product plus a ``bincount`` and numpy
several passes. Their numpy twins are in :mod:`topo_pai.kernels.reference`; sums
run in entry order, as scipy's and numpy's do, so the results are the same bit for
bit."""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS as _JIT


@numba.njit(**_JIT)
def csr_degrees(indptr, indices, data, n_cols):
    """``(row_sums, col_sums)`` of the CSR block, as float64, each summed in entry
    order (rows: ``indptr`` order; columns: the order the entries are stored)."""
    n_rows = indptr.shape[0] - 1
    rows = np.zeros(n_rows)
    cols = np.zeros(n_cols)
    for r in range(n_rows):
        total = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            v = data[q]
            total += v
            cols[indices[q]] += v
        rows[r] = total
    return rows, cols


@numba.njit(**_JIT)
def csr_count_within(indptr, indices, data, row_flags, col_flags):
    """The number of stored non-zero entries whose row has ``row_flags`` and whose
    column has ``col_flags`` set (an exact integer)."""
    count = 0
    for r in range(indptr.shape[0] - 1):
        if row_flags[r]:
            for q in range(indptr[r], indptr[r + 1]):
                count += (data[q] != 0) & col_flags[indices[q]]
    return count
