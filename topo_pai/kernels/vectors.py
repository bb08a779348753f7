"""Whole count vectors: their scale statistics, joint positivity and sums.

:func:`scale_stats` gives the extremes (maximum, smallest positive) by which the
overflow-free counts of :mod:`topo_pai.metrics.scaled` are rescaled and checked,
:func:`count_both_positive` the number of positions reached from both sides,
:func:`add_into` an elementwise sum over the threads. The first two split long
vectors over threads; short ones are not worth waking them for.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS

_INT64_MAX = np.iinfo(np.int64).max


@numba.njit(**JIT_OPTIONS)
def _bit_extremes(bits):
    # A loop over a slice's whole length: over ``range(lo, hi)`` of the full array it did
    # not vectorise (10x slower, measured); the callers pass slices.
    hi = np.int64(0)
    lo = np.int64(_INT64_MAX)
    for t in range(bits.shape[0]):
        b = bits[t]
        hi = max(hi, b)
        lo = min(lo, b if b > 0 else _INT64_MAX)
    return hi, lo


@numba.njit(parallel=True, **JIT_OPTIONS)
def _bit_extremes_parallel(bits, chunk):
    n = bits.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    his = np.zeros(n_chunks, dtype=np.int64)
    los = np.zeros(n_chunks, dtype=np.int64)
    for c in numba.prange(n_chunks):
        his[c], los[c] = _bit_extremes(bits[c * chunk:min((c + 1) * chunk, n)])
    return his.max(), los.min()


@numba.njit(**JIT_OPTIONS)
def scale_stats(x):
    """Return ``(max, smallest positive)`` of a non-negative array (0, inf if none).

    Non-negative float64 values order like their bit patterns read as int64, so
    both extremes are integer reductions, which vectorise (float min/max do not
    without fastmath) and are exact in any order. ``-0.0`` reads as a negative
    integer and counts as zero. Long arrays are split over threads; short ones
    (most channel-level vectors) are not worth waking them for.
    """
    bits = np.ascontiguousarray(x).view(np.int64)
    n = bits.shape[0]
    if n >= 1 << 17:
        hi, lo = _bit_extremes_parallel(bits, 1 << 15)
    else:
        hi, lo = _bit_extremes(bits)
    out = np.empty(2, dtype=np.int64)
    out[0] = hi
    out[1] = lo
    f = out.view(np.float64)
    return f[0], (f[1] if lo != _INT64_MAX else np.inf)


@numba.njit(**JIT_OPTIONS)
def _count_both(a, b):
    n = 0
    for t in range(a.shape[0]):  # over slices, as _bit_extremes
        n += (a[t] > 0.0) & (b[t] > 0.0)
    return n


@numba.njit(parallel=True, **JIT_OPTIONS)
def _count_both_parallel(a, b, chunk):
    n_chunks = (a.shape[0] + chunk - 1) // chunk
    n = 0
    for c in numba.prange(n_chunks):
        lo, hi = c * chunk, min((c + 1) * chunk, a.shape[0])
        n += _count_both(a[lo:hi], b[lo:hi])
    return n


@numba.njit(**JIT_OPTIONS)
def count_both_positive(a, b):
    """Number of positions with ``a > 0`` and ``b > 0``."""
    if a.shape[0] >= 1 << 17:
        return _count_both_parallel(a, b, 1 << 15)
    return _count_both(a, b)


@numba.njit(parallel=True, **JIT_OPTIONS)
def add_into(a, b, out):
    """``out = a + b`` elementwise (``out`` may be ``a``), over both threads."""
    for t in numba.prange(out.shape[0]):
        out[t] = a[t] + b[t]


@numba.njit(**JIT_OPTIONS)
def finish_log10_scores(score, shift, log_w, weighted, kept):
    """In place, ``score = (score + shift) + log_w`` (without ``log_w`` unless
    ``weighted``) where ``kept`` is non-zero and ``-inf`` elsewhere: the last steps of a
    flow-through-weight score, in one pass instead of three, with the same float
    additions in the same order (bit for bit what ``score.add_(shift).add_(log_w)``
    and a masked fill give). One thread: it runs between torch's convolutions, whose
    thread pool slows down when numba's wakes in between."""
    for t in range(score.shape[0]):
        v = score[t] + shift
        if weighted:
            v = v + log_w[t]
        score[t] = v if kept[t] else -np.inf


@numba.njit(**JIT_OPTIONS)
def scatter_log10_scores(flat, score, shift, log_w, weighted, out):
    """``out[flat[j]] = (score[j] + shift) + log_w[flat[j]]`` (without ``log_w`` unless
    ``weighted``): :func:`finish_log10_scores` for scores listed by kept element, with
    the same additions in the same order; ``out`` elsewhere untouched."""
    for j in range(flat.shape[0]):
        t = flat[j]
        v = score[j] + shift
        if weighted:
            v = v + log_w[t]
        out[t] = v


@numba.njit(**JIT_OPTIONS)
def masked_values(kept, values, out):
    """``out = values`` where ``kept`` is non-zero, ``0.0`` elsewhere (flat arrays): for
    finite non-negative ``values`` the bits of ``kept * values``, in one pass. One
    thread, as :func:`finish_log10_scores`."""
    for t in range(out.shape[0]):
        out[t] = values[t] if kept[t] else 0.0
