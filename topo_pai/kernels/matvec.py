"""Products with a multiplicity matrix (:mod:`topo_pai.kernels.multiplicity`),
stored as CSR or held densely as per-kernel counts.

The products accumulate into their output (``out += ...``), so several incoming
blocks can be summed without temporaries; the bilinear forms return their sum.
The dense forms sum in the same order as the CSR ones, so the two agree bit for
bit and a layer can take either.
"""

from __future__ import annotations

import numba

from topo_pai.kernels.options import JIT_OPTIONS


@numba.njit(**JIT_OPTIONS)
def csr_matvec(indptr, indices, data, x, out):
    """``out += A @ x`` for CSR ``A``."""
    for r in range(indptr.shape[0] - 1):
        acc = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * x[indices[k]]
        out[r] += acc


@numba.njit(**JIT_OPTIONS)
def csr_rmatvec(indptr, indices, data, y, out):
    """``out += A.T @ y`` for CSR ``A``."""
    for r in range(indptr.shape[0] - 1):
        yr = y[r]
        if yr == 0.0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            out[indices[k]] += data[k] * yr


@numba.njit(**JIT_OPTIONS)
def csr_bilinear(indptr, indices, data, left, right):
    """``sum_{r,c} [left[r] > 0] * A[r, c] * [right[c] > 0]`` (counts weights joining
    a co-reachable row to a reachable column)."""
    total = 0.0
    for r in range(indptr.shape[0] - 1):
        if left[r] > 0.0:
            for k in range(indptr[r], indptr[r + 1]):
                if right[indices[k]] > 0.0:
                    total += data[k]
    return total


@numba.njit(**JIT_OPTIONS)
def _dense_row(counts, row, base, x, n):
    acc = 0.0
    for i in range(n):
        acc += counts[row + i] * x[base + i]
    return acc


@numba.njit(parallel=True, **JIT_OPTIONS)
def dense_matvec(counts, per_group_in, out_per_group, x, out):
    """``out += M @ x`` for the multiplicity matrix held densely as per-kernel counts:
    row ``o`` has ``counts[o * P + i]`` at column ``(o // out_per_group) * P + i``.

    Each row is summed in column order, exactly as :func:`csr_matvec` sums the
    non-zeros of the same matrix (the zeros add ``+0.0``), so the two agree bit
    for bit. Four rows are interleaved so that four independent sums hide the
    latency of the (ordered, hence unvectorised) additions.
    """
    P = per_group_in
    n_out = counts.shape[0] // P if P > 0 else 0
    n_blocks = (n_out + 3) // 4
    for b in numba.prange(n_blocks):
        o0 = 4 * b
        if o0 + 4 <= n_out and o0 // out_per_group == (o0 + 3) // out_per_group:
            base = (o0 // out_per_group) * P
            r0 = o0 * P
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for i in range(P):
                xi = x[base + i]
                a0 += counts[r0 + i] * xi
                a1 += counts[r0 + P + i] * xi
                a2 += counts[r0 + 2 * P + i] * xi
                a3 += counts[r0 + 3 * P + i] * xi
            out[o0] += a0
            out[o0 + 1] += a1
            out[o0 + 2] += a2
            out[o0 + 3] += a3
        else:
            for o in range(o0, min(o0 + 4, n_out)):
                out[o] += _dense_row(counts, o * P, (o // out_per_group) * P, x, P)


@numba.njit(**JIT_OPTIONS)
def dense_rmatvec(counts, per_group_in, out_per_group, y, out):
    """``out += M.T @ y`` for the dense counts of :func:`dense_matvec`.

    Rows are added in order, as :func:`csr_rmatvec` does, so the two agree bit
    for bit; the inner loop over columns vectorises.
    """
    P = per_group_in
    n_out = counts.shape[0] // P if P > 0 else 0
    for o in range(n_out):
        yo = y[o]
        if yo == 0.0:
            continue
        base = (o // out_per_group) * P
        row = o * P
        dst = out[base:base + P]
        src = counts[row:row + P]
        for i in range(P):
            dst[i] += src[i] * yo


@numba.njit(**JIT_OPTIONS)
def dense_bilinear(counts, per_group_in, out_per_group, left, right):
    """:func:`csr_bilinear` for the dense counts of :func:`dense_matvec` (an exact
    integer sum, returned as float)."""
    P = per_group_in
    n_out = counts.shape[0] // P if P > 0 else 0
    total = 0
    for o in range(n_out):
        if left[o] > 0.0:
            base = (o // out_per_group) * P
            row = o * P
            acc = 0
            for i in range(P):
                acc += counts[row + i] * (right[base + i] > 0.0)
            total += acc
    return float(total)
