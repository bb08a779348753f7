"""Mask intake: a mask's validating copy to 0/1 uint8, counting its ones on the way.

:mod:`topo_pai.graph.masks` takes every mask in through one of these: the copy
holds ``v == 1`` and the return value counts the elements that are neither 0
nor 1 (NaN included), so that a bad mask is refused without a separate check.
Reference: ``flat == 1`` and ``((flat != 0) & (flat != 1)).sum()``.

Each function runs one loop body (a ``_span`` kernel over a slice) either
in one call or in chunks on numba's threads
(:data:`~topo_pai.kernels.options.PARALLEL_MIN_ELEMENTS`): an iterative pruner takes
in every layer's mask every round, and waking the threads for a small mask costs
more than the pass.
"""

from __future__ import annotations

import numba

from topo_pai.kernels import options
from topo_pai.kernels.options import JIT_OPTIONS

# The spans take slices and loop over their whole length: a loop over ``range(lo, hi)``
# of the full arrays did not vectorise (15x slower, measured).

@numba.njit(**JIT_OPTIONS)
def _copy_span(flat, out):
    """``out[:] = flat == 1``; return ``(n_bad, n_ones)``. Branch-free so that it
    vectorises."""
    n_bad = 0
    n_ones = 0
    for t in range(flat.shape[0]):
        v = flat[t]
        one = v == 1
        out[t] = one
        n_ones += one
        n_bad += (v != 0) & (v != 1)
    return n_bad, n_ones


@numba.njit(**JIT_OPTIONS)
def _count_span(out, group_size, counts):
    """Ones per kernel (``group_size`` consecutive elements of the uint8 copy ``out``)
    into ``counts``; return ``(n_nonempty, n_ones)``."""
    n_nonempty = 0
    n_ones = 0
    for k in range(counts.shape[0]):
        base = k * group_size
        c = 0
        for t in range(base, base + group_size):
            c += out[t]
        counts[k] = c
        n_nonempty += c != 0
        n_ones += c
    return n_nonempty, n_ones


@numba.njit(parallel=True, **JIT_OPTIONS)
def _copy_chunks(flat, out, chunks):
    n = flat.shape[0]
    n_bad = 0
    n_ones = 0
    for c in numba.prange(chunks):
        lo, hi = c * n // chunks, (c + 1) * n // chunks
        bad, ones = _copy_span(flat[lo:hi], out[lo:hi])
        n_bad += bad
        n_ones += ones
    return n_bad, n_ones


@numba.njit(parallel=True, **JIT_OPTIONS)
def _count_chunks(out, group_size, counts, chunks):
    n = counts.shape[0]
    n_nonempty = 0
    n_ones = 0
    for c in numba.prange(chunks):
        lo, hi = c * n // chunks, (c + 1) * n // chunks
        nonempty, ones = _count_span(out[lo * group_size:hi * group_size], group_size,
                                     counts[lo:hi])
        n_nonempty += nonempty
        n_ones += ones
    return n_nonempty, n_ones


def _copy(flat, out) -> tuple[int, int]:
    if flat.shape[0] < options.PARALLEL_MIN_ELEMENTS:
        return _copy_span(flat, out)
    return _copy_chunks(flat, out, options.PARALLEL_CHUNKS)


def validate_copy(flat, out) -> int:
    """Copy a mask to ``out`` as uint8 (``v == 1``); return the number of
    elements that are neither 0 nor 1 (NaN included)."""
    return int(_copy(flat, out)[0])


def validate_count(flat, out) -> tuple[int, int]:
    """:func:`validate_copy` that also counts the ones: ``(n_bad, n_ones)``."""
    bad, ones = _copy(flat, out)
    return int(bad), int(ones)


def validate_kernel_counts(flat, group_size: int, out, counts) -> tuple[int, int, int]:
    """Validate and copy a mask as :func:`validate_copy` does, and count the ones
    of every kernel (``group_size`` consecutive elements) into ``counts``.

    Returns ``(n_bad, n_nonempty_kernels, n_ones)``. Two passes: the branch-free
    validating copy vectorises, and the counts then read the compact uint8 copy.
    """
    bad, _ = _copy(flat, out)
    if flat.shape[0] < options.PARALLEL_MIN_ELEMENTS:
        nonempty, ones = _count_span(out, group_size, counts)
    else:
        nonempty, ones = _count_chunks(out, group_size, counts, options.PARALLEL_CHUNKS)
    return int(bad), int(nonempty), int(ones)
