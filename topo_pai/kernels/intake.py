"""Mask intake: a mask's validating copy to 0/1 uint8, counting its ones on the way.

:mod:`topo_pai.graph.masks` takes every mask in through one of these: the copy
holds ``v == 1`` and the return value counts the elements that are neither 0
nor 1 (NaN included), so that a bad mask is refused without a separate check.
Reference: ``flat == 1`` and ``((flat != 0) & (flat != 1)).sum()``.
"""

from __future__ import annotations

import numba

from topo_pai.kernels.options import JIT_OPTIONS


@numba.njit(parallel=True, **JIT_OPTIONS)
def validate_copy(flat, out):
    """Copy a mask to ``out`` as uint8 (``v == 1``); return the number of
    elements that are neither 0 nor 1 (NaN included). Branch-free so that it
    vectorises."""
    n_bad = 0
    for t in numba.prange(flat.shape[0]):
        v = flat[t]
        out[t] = v == 1
        n_bad += (v != 0) & (v != 1)
    return n_bad


@numba.njit(parallel=True, **JIT_OPTIONS)
def validate_count(flat, out):
    """:func:`validate_copy` that also counts the ones: ``(n_bad, n_ones)``."""
    n_bad = 0
    n_ones = 0
    for t in numba.prange(flat.shape[0]):
        v = flat[t]
        one = v == 1
        out[t] = one
        n_ones += one
        n_bad += (v != 0) & (v != 1)
    return n_bad, n_ones


@numba.njit(parallel=True, **JIT_OPTIONS)
def validate_kernel_counts(flat, group_size, out, counts):
    """Validate and copy a mask as :func:`validate_copy` does, and count the ones
    of every kernel (``group_size`` consecutive elements) into ``counts``.

    Returns ``(n_bad, n_nonempty_kernels, n_ones)``. Two parallel loops: the
    branch-free validating copy vectorises, and the counts then read the
    compact uint8 copy.
    """
    n_bad = 0
    for t in numba.prange(flat.shape[0]):
        v = flat[t]
        out[t] = v == 1
        n_bad += (v != 0) & (v != 1)
    n_nonempty = 0
    n_ones = 0
    for k in numba.prange(counts.shape[0]):
        base = k * group_size
        c = 0
        for t in range(base, base + group_size):
            c += out[t]
        counts[k] = c
        n_nonempty += c != 0
        n_ones += c
    return n_bad, n_nonempty, n_ones
