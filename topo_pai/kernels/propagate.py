"""Small numba kernels for propagating counts through a layered graph.

Conventions shared by every kernel:

* arrays are passed as arguments, never read from globals, so ``cache=True``
  stays valid;
* spatial tensors are flat ``float64`` arrays in (C, H, W) order; 1-d
  convolutions and pools use ``H = 1``;
* kernels *accumulate* into their output (``out += ...``) so that several
  incoming blocks or branches can be summed without temporaries, except where
  an ``init`` flag or the docstring says they write it: writing a fresh output
  saves a separate zeroing pass.

Each kernel has a pure-numpy twin in :mod:`topo_pai.kernels.reference` that the
tests compare against.
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True)


@numba.njit(parallel=True, **_JIT)
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


@numba.njit(**_JIT)
def kernel_csr(mask, group_size, per_group_in, out_per_group, index_sample):
    """Multiplicity CSR of a 0/1 uint8 mask of shape (O, per_group_in, *kernel).

    Row ``o`` counts the ones of each kernel ``(o, i)`` at global input column
    ``(o // out_per_group) * per_group_in + i``; empty kernels are not stored.
    Branch-free compaction: every kernel writes a slot and ``nnz`` advances by
    0 or 1, because random masks make "is this kernel empty?" unpredictable.
    """
    n_kernels = mask.shape[0] // group_size
    n_out = n_kernels // per_group_in if per_group_in > 0 else 0
    indptr = np.zeros(n_out + 1, dtype=index_sample.dtype)
    indices = np.empty(n_kernels + 1, dtype=index_sample.dtype)
    data = np.empty(n_kernels + 1, dtype=np.float32)
    nnz = 0
    for o in range(n_out):
        offset = (o // out_per_group) * per_group_in
        row = o * per_group_in
        if group_size == 1:
            for i in range(per_group_in):
                indices[nnz] = offset + i
                data[nnz] = 1.0
                nnz += mask[row + i]
        else:
            for i in range(per_group_in):
                base = (row + i) * group_size
                c = 0
                for t in range(base, base + group_size):
                    c += mask[t]
                indices[nnz] = offset + i
                data[nnz] = c
                nnz += c != 0
        indptr[o + 1] = nnz
    if 2 * nnz > n_kernels:  # mostly full: a view wastes little and saves a copy
        return indptr, indices[:nnz], data[:nnz]
    return indptr, indices[:nnz].copy(), data[:nnz].copy()


@numba.njit(**_JIT)
def kernel_weight_sums(mask, weights, group_size, indptr, indices, per_group_in):
    """Data for a CSR with ``kernel_csr``'s pattern: ``sum(mask * weights)`` per kernel."""
    data = np.zeros(indices.shape[0], dtype=np.float64)
    for o in range(indptr.shape[0] - 1):
        for k in range(indptr[o], indptr[o + 1]):
            i = indices[k] % per_group_in
            base = (o * per_group_in + i) * group_size
            acc = 0.0
            for t in range(base, base + group_size):
                if mask[t]:
                    acc += weights[t]
            data[k] = acc
    return data


_BYTE_SUM = np.uint64(0x0101010101010101)
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)


@numba.njit(**_JIT)
def _row_sum(counts, words, start, end):
    """``counts[start:end].sum()``, 8 kernels per load where ``words`` (``counts`` as
    uint64; empty: not available) covers them. The bytes of a word are summed with
    one multiply, which is exact while their total stays below 256."""
    c = np.uint64(0)
    k = start
    if words.shape[0] > 0:
        while k < end and (k & 7) != 0:
            c += np.uint64(counts[k])
            k += 1
        while k + 8 <= end:
            c += (words[k >> 3] * _BYTE_SUM) >> np.uint64(56)
            k += 8
    while k < end:
        c += np.uint64(counts[k])
        k += 1
    return np.int64(c)


@numba.njit(**_JIT)
def _emit_kernel(mask, k, kk, in_channel, t, flat, nz_i, src, start, taps):
    """Append the unpruned elements of kernel ``k`` at position ``t``; return the next."""
    base = k * kk
    for r in range(kk):
        if mask[base + r] != 0:
            flat[t] = base + r
            nz_i[t] = in_channel
            src[t] = start + taps[r]
            t += 1
    return t


@numba.njit(parallel=True, **_JIT)
def mask_elements(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane, taps,
                  index_sample, flat_sample):
    """Unpruned elements of a 0/1 uint8 conv mask (O, I/groups, *kernel), output-major.

    ``counts`` holds the number of unpruned elements of every kernel (as the mask
    intake computes them) and ``words`` the same bytes as uint64 (see
    :func:`count_words`; empty: not available): the scan reads 8 kernel counts
    per load, visits only non-empty kernels and fills the output channels in
    parallel. Element ``r`` of a kernel reading input channel ``i`` starts its
    span at ``i * plane + taps[r]`` (see :func:`tap_offsets`). Returns ``(flat,
    ptr_o, nz_i, src)``: flat weight index (of ``flat_sample``'s dtype: int64 for a
    weight of 2**31 elements or more), CSR row pointer over output channels, global
    input channel and span start (of ``index_sample``'s dtype).
    """
    P = per_group_in
    ptr_o = np.zeros(n_out + 1, dtype=np.int64)
    for o in numba.prange(n_out):
        ptr_o[o + 1] = _row_sum(counts, words, o * P, (o + 1) * P)
    for o in range(n_out):
        ptr_o[o + 1] += ptr_o[o]
    nnz = ptr_o[n_out]
    # Compact dtypes: a dense ResNet-50 has 25M elements, so bytes per element matter.
    flat = np.empty(nnz, dtype=flat_sample.dtype)
    nz_i = np.empty(nnz, dtype=np.int32)
    src = np.empty(nnz, dtype=index_sample.dtype)
    # Lowest set bit -> its index, by de Bruijn multiplication: a non-zero word's
    # non-empty kernels are found one per step, without a branch per kernel.
    bit_index = np.empty(64, dtype=np.int64)
    for b in range(64):
        bit_index[((np.uint64(1) << np.uint64(b)) * _DE_BRUIJN) >> np.uint64(58)] = b
    for o in numba.prange(n_out):
        t = ptr_o[o]
        shift = (o // out_per_group) * P - o * P  # kernel k reads input channel k + shift
        k = o * P
        end = k + P
        while k < end:
            if words.shape[0] > 0 and (k & 7) == 0 and k + 8 <= end:
                w = words[k >> 3]
                while w != 0:
                    low = w & (~w + np.uint64(1))
                    j = k + (bit_index[(low * _DE_BRUIJN) >> np.uint64(58)] >> 3)
                    w &= ~(np.uint64(0xFF) << np.uint64(8 * (j - k)))
                    t = _emit_kernel(mask, j, kk, j + shift, t, flat, nz_i, src,
                                     index_sample.dtype.type(j + shift) * plane, taps)
                k += 8
                continue
            if counts[k] != 0:
                t = _emit_kernel(mask, k, kk, k + shift, t, flat, nz_i, src,
                                 index_sample.dtype.type(k + shift) * plane, taps)
            k += 1
    return flat, ptr_o, nz_i, src


@numba.njit(parallel=True, **_JIT)
def by_input(ptr_o, nz_i, src, n_in, n_parts):
    """Regroup output-major elements by input channel (stable within a channel).

    Returns ``(ptr_i, by_i_o, by_i_src, order)``: CSR pointer over input channels,
    each element's output channel and span start, and its output-major position.
    A parallel counting sort: each of ``n_parts`` tasks takes a range of output
    channels, counts its elements per input channel, and after a prefix sum over
    (channel, task) scatters them into its own slots, which keeps the order stable.
    """
    n_out = ptr_o.shape[0] - 1
    nnz = nz_i.shape[0]
    n_parts = max(1, min(n_out, n_parts))
    hist = np.zeros((n_parts, n_in + 1), dtype=np.int64)
    for part in numba.prange(n_parts):
        lo = ptr_o[part * n_out // n_parts]
        hi = ptr_o[(part + 1) * n_out // n_parts]
        for t in range(lo, hi):
            hist[part, nz_i[t]] += 1
    ptr_i = np.zeros(n_in + 1, dtype=np.int64)
    start = np.empty((n_parts, n_in), dtype=np.int64)
    pos = 0
    for i in range(n_in):
        for part in range(n_parts):
            start[part, i] = pos
            pos += hist[part, i]
        ptr_i[i + 1] = pos
    by_i_o = np.empty(nnz, dtype=np.int32)
    by_i_src = np.empty(nnz, dtype=src.dtype)
    order = np.empty(nnz, dtype=np.int64)
    for part in numba.prange(n_parts):
        fill = start[part]
        for o in range(part * n_out // n_parts, (part + 1) * n_out // n_parts):
            for t in range(ptr_o[o], ptr_o[o + 1]):
                i = nz_i[t]
                p = fill[i]
                by_i_o[p] = o
                by_i_src[p] = src[t]
                order[p] = t
                fill[i] = p + 1
    return ptr_i, by_i_o, by_i_src, order


def count_words(counts: np.ndarray, kernel_volume: int) -> np.ndarray:
    """``counts`` read as uint64 words for :func:`mask_elements`, or an empty array
    where that does not apply: counts wider than a byte, kernels of more than 31
    elements (8 counts could then sum past a byte), or unaligned memory."""
    if (counts.dtype != np.uint8 or kernel_volume > 31 or not counts.flags.c_contiguous
            or counts.ctypes.data % 8):
        return np.zeros(0, dtype=np.uint64)
    return counts[:counts.shape[0] // 8 * 8].view(np.uint64)


@numba.njit(**_JIT)
def csr_matvec(indptr, indices, data, x, out):
    """``out += A @ x`` for CSR ``A``."""
    for r in range(indptr.shape[0] - 1):
        acc = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * x[indices[k]]
        out[r] += acc


@numba.njit(**_JIT)
def csr_rmatvec(indptr, indices, data, y, out):
    """``out += A.T @ y`` for CSR ``A``."""
    for r in range(indptr.shape[0] - 1):
        yr = y[r]
        if yr == 0.0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            out[indices[k]] += data[k] * yr


@numba.njit(**_JIT)
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


_INT64_MAX = np.iinfo(np.int64).max


@numba.njit(**_JIT)
def _bit_extremes(bits, lo_t, hi_t):
    hi = np.int64(0)
    lo = np.int64(_INT64_MAX)
    for t in range(lo_t, hi_t):
        b = bits[t]
        hi = max(hi, b)
        lo = min(lo, b if b > 0 else _INT64_MAX)
    return hi, lo


@numba.njit(parallel=True, **_JIT)
def _bit_extremes_parallel(bits, chunk):
    n = bits.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    his = np.zeros(n_chunks, dtype=np.int64)
    los = np.zeros(n_chunks, dtype=np.int64)
    for c in numba.prange(n_chunks):
        his[c], los[c] = _bit_extremes(bits, c * chunk, min((c + 1) * chunk, n))
    return his.max(), los.min()


@numba.njit(**_JIT)
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
        hi, lo = _bit_extremes(bits, 0, n)
    out = np.empty(2, dtype=np.int64)
    out[0] = hi
    out[1] = lo
    f = out.view(np.float64)
    return f[0], (f[1] if lo != _INT64_MAX else np.inf)


@numba.njit(**_JIT)
def _count_both(a, b, lo, hi):
    n = 0
    for t in range(lo, hi):
        n += (a[t] > 0.0) & (b[t] > 0.0)
    return n


@numba.njit(parallel=True, **_JIT)
def _count_both_parallel(a, b, chunk):
    n_chunks = (a.shape[0] + chunk - 1) // chunk
    n = 0
    for c in numba.prange(n_chunks):
        n += _count_both(a, b, c * chunk, min((c + 1) * chunk, a.shape[0]))
    return n


@numba.njit(**_JIT)
def count_both_positive(a, b):
    """Number of positions with ``a > 0`` and ``b > 0``."""
    if a.shape[0] >= 1 << 17:
        return _count_both_parallel(a, b, 1 << 15)
    return _count_both(a, b, 0, a.shape[0])


@numba.njit(parallel=True, **_JIT)
def pool_forward(x, C, H, W, out, OH, OW, hptr, hidx, wptr, widx):
    """``out[c, y, z] += sum over window rows hidx[hptr[y]:] x cols widx[wptr[z]:]``."""
    for c in numba.prange(C):
        ibase = c * H * W
        obase = c * OH * OW
        for y in range(OH):
            for z in range(OW):
                acc = 0.0
                for a in range(hptr[y], hptr[y + 1]):
                    row = ibase + hidx[a] * W
                    for b in range(wptr[z], wptr[z + 1]):
                        acc += x[row + widx[b]]
                out[obase + y * OW + z] += acc


@numba.njit(parallel=True, **_JIT)
def pool_backward(gout, C, H, W, gin, OH, OW, hptr, hidx, wptr, widx):
    """Transpose of :func:`pool_forward` (parallel over channels)."""
    for c in numba.prange(C):
        ibase = c * H * W
        obase = c * OH * OW
        for y in range(OH):
            for z in range(OW):
                g = gout[obase + y * OW + z]
                if g == 0.0:
                    continue
                for a in range(hptr[y], hptr[y + 1]):
                    row = ibase + hidx[a] * W
                    for b in range(wptr[z], wptr[z + 1]):
                        gin[row + widx[b]] += g


@numba.njit(**_JIT)
def group_by(keys, n_keys):
    """Stable counting sort: return ``(ptr, order)`` grouping positions by key."""
    ptr = np.zeros(n_keys + 1, dtype=np.int64)
    for t in range(keys.shape[0]):
        ptr[keys[t] + 1] += 1
    for k in range(n_keys):
        ptr[k + 1] += ptr[k]
    fill = ptr[:-1].copy()
    order = np.empty(keys.shape[0], dtype=np.int64)
    for t in range(keys.shape[0]):
        k = keys[t]
        order[fill[k]] = t
        fill[k] += 1
    return ptr, order


# ---------------------------------------------------------------------------
# Mask intake and dense multiplicity matrices
# ---------------------------------------------------------------------------

@numba.njit(parallel=True, **_JIT)
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


@numba.njit(parallel=True, **_JIT)
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


@numba.njit(**_JIT)
def counts_csr(counts, per_group_in, out_per_group, nnz, index_sample):
    """Multiplicity CSR from per-kernel counts (``counts`` of shape (O * per_group_in,))
    with ``nnz`` non-zero counts.

    Same pattern and ordering as :func:`kernel_csr` on the mask the counts came
    from. It branches on every count: it is used for sparse matrices, where the
    branch is well predicted and skips the writes of empty kernels.
    """
    n_kernels = counts.shape[0]
    n_out = n_kernels // per_group_in if per_group_in > 0 else 0
    indptr = np.zeros(n_out + 1, dtype=index_sample.dtype)
    indices = np.empty(nnz, dtype=index_sample.dtype)
    data = np.empty(nnz, dtype=np.float32)
    k = 0
    for o in range(n_out):
        offset = (o // out_per_group) * per_group_in
        row = o * per_group_in
        for i in range(per_group_in):
            c = counts[row + i]
            if c != 0:
                indices[k] = offset + i
                data[k] = c
                k += 1
        indptr[o + 1] = k
    return indptr, indices, data


@numba.njit(**_JIT)
def _dense_row(counts, row, base, x, n):
    acc = 0.0
    for i in range(n):
        acc += counts[row + i] * x[base + i]
    return acc


@numba.njit(parallel=True, **_JIT)
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


@numba.njit(**_JIT)
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


@numba.njit(**_JIT)
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


# ---------------------------------------------------------------------------
# Convolutions on the phase-plane layout
# ---------------------------------------------------------------------------
#
# A conv input (C, H, W) is re-laid out as (C, sh*sw, Hq, Wq) "phase planes":
# plane (a, b) of channel c holds x[c, R*sh + a - ph, Q*sw + b - pw] at (R, Q),
# zero where that position is padding. Kernel tap (kh, kw) then reads plane
# ((kh*dh) % sh, (kw*dw) % sw) shifted by ((kh*dh) // sh, (kw*dw) // sw), with
# unit stride. Laying the output out with the same row stride Wq (the extra
# columns are scratch), every unpruned weight element becomes ONE contiguous
# span of n = (OH - 1) * Wq + OW values: no per-row loop, no bounds, no stride.
# Out-of-image taps read zeros, which add +0.0 and so leave every real output
# value bit-identical to skipping them.

@numba.njit(parallel=True, **_JIT)
def to_planes(x, C, H, W, sh, sw, ph, pw, Hq, Wq, xq):
    """Fill ``xq`` (C * sh * sw * Hq * Wq, zeros outside the image) from ``x`` (C, H, W)."""
    P = sh * sw
    for c in numba.prange(C):
        for p in range(P):
            a = p // sw
            b = p - a * sw
            base = (c * P + p) * Hq * Wq
            for R in range(Hq):
                h = R * sh + a - ph
                row = base + R * Wq
                if h < 0 or h >= H:
                    for Q in range(Wq):
                        xq[row + Q] = 0.0
                    continue
                src = (c * H + h) * W
                for Q in range(Wq):
                    w = Q * sw + b - pw
                    xq[row + Q] = x[src + w] if 0 <= w < W else 0.0


@numba.njit(parallel=True, **_JIT)
def image_to_rows(y, O, OH, OW, Wq, yq):
    """``yq`` (O, OH, Wq) = ``y`` (O, OH, OW) with zero scratch columns ``OW <= z < Wq``."""
    for o in numba.prange(O):
        for r in range(OH):
            src = (o * OH + r) * OW
            dst = (o * OH + r) * Wq
            yq[dst:dst + OW] = y[src:src + OW]
            yq[dst + OW:dst + Wq] = 0.0


@numba.njit(parallel=True, **_JIT)
def add_into(a, b, out):
    """``out = a + b`` elementwise (``out`` may be ``a``), over both threads."""
    for t in numba.prange(out.shape[0]):
        out[t] = a[t] + b[t]


@numba.njit(**_JIT)
def _planes_to_channel(xq, c, H, W, sh, sw, ph, pw, Hq, Wq, x, base):
    """``x[c] = base[c] + `` the image positions of the planes ``xq`` of channel ``c``
    (positions no plane holds count 0; empty ``base``: none).

    Walks the planes (as :func:`to_planes` does) rather than the image, so that
    no position needs a division by the stride.
    """
    add = base.shape[0] > 0
    h_end = max(0, min(H, Hq * sh - ph))  # image rows h < h_end lie on some plane row
    w_end = max(0, min(W, Wq * sw - pw))
    first = c * H * W
    for p in range(sh * sw):
        a = p // sw
        b = p - a * sw
        q_lo = (pw - b + sw - 1) // sw if pw > b else 0  # first Q with w >= 0
        q_hi = min(Wq, (w_end + pw - b + sw - 1) // sw)  # Q with w < w_end
        for R in range(Hq):
            h = R * sh + a - ph
            if h < 0 or h >= h_end:
                continue
            src = (p * Hq + R) * Wq
            dst = first + h * W + b - pw
            if add:
                for Q in range(q_lo, q_hi):
                    x[dst + Q * sw] = xq[src + Q] + base[dst + Q * sw]
            else:
                for Q in range(q_lo, q_hi):
                    x[dst + Q * sw] = xq[src + Q]
    for h in range(H):  # positions on no plane
        row = first + h * W
        for w in range(w_end if h < h_end else 0, W):
            x[row + w] = base[row + w] if add else 0.0


@numba.njit(**_JIT)
def _conv_span(xq, a, n, t0, t1, src, val, init):
    """``a[:n] += val[t] * xq[src[t]:src[t] + n]`` for ``t0 <= t < t1`` (empty ``val``:
    all 1); with ``init`` the first element assigns (no elements: zeros)."""
    unit = val.shape[0] == 0
    if init:
        if t0 == t1:
            a[:n] = 0.0
            return
        b = xq[src[t0]:src[t0] + n]
        if unit:
            a[:n] = b
        else:
            v = val[t0]
            for j in range(n):
                a[j] = v * b[j]
        t0 += 1
    for t in range(t0, t1):
        b = xq[src[t]:src[t] + n]
        if unit:
            for j in range(n):
                a[j] += b[j]
        else:
            v = val[t]
            for j in range(n):
                a[j] += v * b[j]


@numba.njit(parallel=True, **_JIT)
def plane_forward(xq, out, ostride, n, ptr_o, src, val, init):
    """``out[o * ostride + j] += val[t] * xq[src[t] + j]`` for ``j < n`` and every
    element ``t`` of output channel ``o`` (in element order); empty ``val``: all 1.

    With ``init`` the spans are overwritten rather than accumulated into (the
    first element assigns, an empty channel writes zeros), which saves zeroing
    ``out`` in a separate pass; ``out[o * ostride + n:(o + 1) * ostride]`` is then
    left unwritten.
    """
    for o in numba.prange(ptr_o.shape[0] - 1):
        _conv_span(xq, out[o * ostride:o * ostride + n], n, ptr_o[o], ptr_o[o + 1], src, val,
                   init)


@numba.njit(parallel=True, **_JIT)
def plane_forward_image(xq, n, ptr_o, src, val, OH, OW, Wq, out):
    """:func:`plane_forward` (``init``) for outputs whose rows have scratch columns
    (``Wq > OW``): each channel is computed into a private row-stride-``Wq`` buffer
    and its ``(OH, OW)`` image written to ``out`` while in cache."""
    for o in numba.prange(ptr_o.shape[0] - 1):
        a = np.empty(n)
        _conv_span(xq, a, n, ptr_o[o], ptr_o[o + 1], src, val, True)
        for y in range(OH):
            dst = (o * OH + y) * OW
            out[dst:dst + OW] = a[y * Wq:y * Wq + OW]


@numba.njit(**_JIT)
def _conv_span_t(gout, acc, shift, ostride, n, t0, t1, by_i_o, by_i_src, val):
    """``acc[src[t] - shift + j] += val[t] * gout[o[t] * ostride + j]`` for ``t0 <= t < t1``.

    The add loop is written out here and in :func:`_conv_span` on purpose: a shared
    helper for it measured 15-20% slower on ResNet-50's convs."""
    unit = val.shape[0] == 0
    for t in range(t0, t1):
        s0 = by_i_src[t] - shift
        a = acc[s0:s0 + n]
        o0 = by_i_o[t] * ostride
        b = gout[o0:o0 + n]
        if unit:
            for j in range(n):
                a[j] += b[j]
        else:
            v = val[t]
            for j in range(n):
                a[j] += v * b[j]


@numba.njit(parallel=True, **_JIT)
def plane_backward(gout, gq, ostride, n, ptr_i, by_i_o, by_i_src, val, plane, init, base):
    """Transpose of :func:`plane_forward`, parallel over input channels (each owns
    its ``plane`` values of ``gq``): ``gq[src[t] + j] += val[t] * gout[o[t] * ostride + j]``.
    The scratch columns of ``gout`` must be zero. With ``init`` each channel's
    values are zeroed first (by the thread that then accumulates into them). A
    non-empty ``base`` (``gq``'s layout) is then added to each finished channel,
    which fuses a following sum with another branch into this pass."""
    for i in numba.prange(ptr_i.shape[0] - 1):
        if init:
            gq[i * plane:(i + 1) * plane] = 0.0
        _conv_span_t(gout, gq, 0, ostride, n, ptr_i[i], ptr_i[i + 1], by_i_o, by_i_src, val)
        if base.shape[0] > 0:
            for j in range(i * plane, (i + 1) * plane):
                gq[j] += base[j]


@numba.njit(parallel=True, **_JIT)
def plane_backward_image(gout, ostride, n, ptr_i, by_i_o, by_i_src, val, plane, H, W, sh, sw,
                         ph, pw, Hq, Wq, gin, base):
    """:func:`plane_backward` for inputs that needed a plane copy (padding or stride):
    each channel accumulates into a private plane buffer whose image positions
    (plus ``base``, if not empty) are then written to ``gin`` (C, H, W) while in
    cache."""
    for i in numba.prange(ptr_i.shape[0] - 1):
        acc = np.zeros(plane)
        _conv_span_t(gout, acc, i * plane, ostride, n, ptr_i[i], ptr_i[i + 1], by_i_o,
                     by_i_src, val)
        _planes_to_channel(acc, i, H, W, sh, sw, ph, pw, Hq, Wq, gin, base)


@numba.njit(parallel=True, **_JIT)
def plane_effective(fq, bout, ostride, n, ptr_o, src, flags):
    """``flags[t] = 1`` iff some position has ``bout > 0`` and ``fq > 0`` on element
    ``t``'s span (scratch columns of ``bout`` must be zero)."""
    for o in numba.prange(ptr_o.shape[0] - 1):
        a = bout[o * ostride:o * ostride + n]
        for t in range(ptr_o[o], ptr_o[o + 1]):
            b = fq[src[t]:src[t] + n]
            hit = 0
            for j in range(n):
                if a[j] > 0.0 and b[j] > 0.0:
                    hit = 1
                    break
            flags[t] = hit


@numba.njit(parallel=True, **_JIT)
def plane_weight_flow(fq, bout, ostride, n, ptr_o, src, sums):
    """``sums[t] = sum_j bout[o * ostride + j] * fq[src[t] + j]`` in position order."""
    for o in numba.prange(ptr_o.shape[0] - 1):
        a = bout[o * ostride:o * ostride + n]
        for t in range(ptr_o[o], ptr_o[o + 1]):
            b = fq[src[t]:src[t] + n]
            acc = 0.0
            for j in range(n):
                acc += a[j] * b[j]
            sums[t] = acc


# ---------------------------------------------------------------------------
# Dense convs by their complement (unit weights: path counts and reachability)
# ---------------------------------------------------------------------------
#
# With every kernel full, output channel o of a conv is a box filter (the conv's
# taps, all weight 1) over the sum of the input channels of o's group: the same
# map for every o of the group. A mostly full layer is that map minus the spans
# of its pruned elements, so its cost follows min(kept, pruned) elements. The
# difference of two float sums can lose the small kept part to rounding, so the
# kernels bound the error of every result (see _check_factor) and fall back, per
# channel, to the direct sum over the kept elements where the bound fails.

@numba.njit(parallel=True, **_JIT)
def channel_sums(xq, per_group, plane, out):
    """``out[g * plane + p] = sum_{i < per_group} xq[(g * per_group + i) * plane + p]``
    for every group ``g`` (``out`` has ``groups * plane`` values), in chunks of
    positions over the threads."""
    n_groups = out.shape[0] // plane if plane > 0 else 0
    chunk = 4096
    n_chunks = (plane + chunk - 1) // chunk
    for c in numba.prange(n_groups * n_chunks):
        g = c // n_chunks
        lo = (c - g * n_chunks) * chunk
        hi = min(plane, lo + chunk)
        a = out[g * plane + lo:g * plane + hi]
        a[:] = 0.0
        for i in range(per_group):
            b = xq[(g * per_group + i) * plane + lo:(g * per_group + i) * plane + hi]
            for j in range(hi - lo):
                a[j] += b[j]


@numba.njit(**_JIT)
def _add_span(dst, d0, src, s0, n):
    """``dst[d0:d0 + n] += src[s0:s0 + n]``."""
    a = dst[d0:d0 + n]
    b = src[s0:s0 + n]
    for j in range(n):
        a[j] += b[j]


@numba.njit(**_JIT)
def _sum_spans(dst, d0, src, offs, m, n):
    """``dst[d0 + j] += sum_{q < m} src[offs[q] + j]`` for ``j < n``, four spans per pass
    over ``dst`` (a quarter of the accumulator's loads and stores). The order of the
    additions differs from one span at a time; the error bound of a sum of
    non-negative terms holds for any order."""
    a = dst[d0:d0 + n]
    q = 0
    while q + 4 <= m:
        b0 = src[offs[q]:offs[q] + n]
        b1 = src[offs[q + 1]:offs[q + 1] + n]
        b2 = src[offs[q + 2]:offs[q + 2] + n]
        b3 = src[offs[q + 3]:offs[q + 3] + n]
        for j in range(n):
            a[j] += (b0[j] + b1[j]) + (b2[j] + b3[j])
        q += 4
    if q + 2 <= m:
        b0 = src[offs[q]:offs[q] + n]
        b1 = src[offs[q + 1]:offs[q + 1] + n]
        for j in range(n):
            a[j] += b0[j] + b1[j]
        q += 2
    if q < m:
        b0 = src[offs[q]:offs[q] + n]
        for j in range(n):
            a[j] += b0[j]


@numba.njit(**_JIT)
def _within_bound(full, acc, res, factor, OH, OW, Wq, p0, keep):
    """Whether ``factor * (full + acc) <= res`` at every position that matters:
    output rows ``y < OH``, columns ``z < OW`` (row stride ``Wq``) read from offset
    ``p0``, or, with a non-empty ``keep``, the positions where ``keep`` is 1."""
    if keep.shape[0] > 0:
        for j in range(keep.shape[0]):
            if keep[j] != 0 and factor * (full[p0 + j] + acc[j]) > res[j]:
                return False
        return True
    for y in range(OH):
        for z in range(OW):
            j = y * Wq + z
            if factor * (full[p0 + j] + acc[j]) > res[j]:
                return False
    return True


@numba.njit(parallel=True, **_JIT)
def complement_forward(xq, xsum, mask, counts, per_group, kk, out_per_group, taps, plane, n,
                       OH, OW, Wq, kept, factor, out, fell_back):
    """Unit-weight conv (the values :func:`plane_forward` computes) by the complement,
    written to ``out`` (O, OH, OW).

    ``xsum`` is :func:`channel_sums` of the planes ``xq``; ``counts`` (O * per_group)
    the unpruned elements per kernel and ``kept`` per output channel. A channel with
    fewer pruned than kept elements is the box filter of its group's ``xsum`` minus
    the spans of its pruned elements; it is accepted where ``factor * M * (full +
    pruned) <= result`` at every output position (``M``: terms per sum plus 2; see
    :func:`topo_pai.metrics.neuron.complement_factor`; ``factor`` 0: the arithmetic is
    exact), else, or if it has more pruned than kept elements, the channel is the
    direct sum of its kept elements.
    ``fell_back[o]`` is set to 1 where a complement result was rejected.
    """
    n_out = kept.shape[0]
    n_groups = n_out // out_per_group if out_per_group > 0 else 0
    full = np.empty(n_groups * n)
    for g in numba.prange(n_groups):
        full[g * n:(g + 1) * n] = 0.0
        _sum_spans(full, g * n, xsum, taps + g * plane, kk, n)
    empty = np.zeros(0, dtype=np.uint8)
    total = per_group * kk
    # A full channel is the full map itself: a sum of non-negative terms, within the
    # bound as long as factor * (per_group + kk + 2) <= 1.
    full_ok = factor * (per_group + kk + 2) <= 1.0
    for o in numba.prange(n_out):
        g = o // out_per_group
        if kept[o] == total and full_ok:
            for y in range(OH):
                dst = (o * OH + y) * OW
                out[dst:dst + OW] = full[g * n + y * Wq:g * n + y * Wq + OW]
            continue
        pruned = total - kept[o]
        res = np.empty(n)
        done = False
        offs = np.empty(total, dtype=np.int64)
        if pruned < kept[o]:
            m = 0
            for i in range(per_group):
                k = o * per_group + i
                if counts[k] == kk:
                    continue
                s = (g * per_group + i) * plane
                for r in range(kk):  # branch-free: random masks defeat prediction
                    offs[m] = s + taps[r]
                    m += mask[k * kk + r] == 0
            acc = np.zeros(n)
            _sum_spans(acc, 0, xq, offs, m, n)
            for j in range(n):
                res[j] = full[g * n + j] - acc[j]
            done = factor == 0.0 or _within_bound(
                full, acc, res, factor * (per_group + kk + pruned + 2), OH, OW, Wq, g * n, empty)
            fell_back[o] = 0 if done else 1
        if not done:
            m = 0
            for i in range(per_group):
                k = o * per_group + i
                if counts[k] == 0:
                    continue
                s = (g * per_group + i) * plane
                for r in range(kk):
                    offs[m] = s + taps[r]
                    m += mask[k * kk + r] != 0
            res[:] = 0.0
            _sum_spans(res, 0, xq, offs, m, n)
        for y in range(OH):
            dst = (o * OH + y) * OW
            out[dst:dst + OW] = res[y * Wq:y * Wq + OW]


@numba.njit(parallel=True, **_JIT)
def complement_backward(gq, gsum, mask, counts, per_group, kk, out_per_group, taps, plane,
                        ostride, n, kept_in, factor, on_plane, H, W, sh, sw, ph, pw, Hq, Wq, gin,
                        base, fell_back):
    """Transpose of :func:`complement_forward`, parallel over input channels, into
    ``gin`` (C, H, W) (plus ``base``, if not empty).

    ``gq`` holds the output values with row stride ``Wq`` (zero scratch columns) and
    ``ostride`` values per channel, ``gsum`` their :func:`channel_sums` over each
    group's output channels; ``kept_in`` the unpruned elements reading each input
    channel. The mask and ``counts`` are read in their own (output-major) order.
    ``on_plane`` (``plane`` values) marks the plane positions that are image
    positions: only those are checked against the bound (and written).
    """
    n_in = kept_in.shape[0]
    n_groups = n_in // per_group if per_group > 0 else 0
    full = np.zeros(n_groups * plane)
    for g in numba.prange(n_groups):
        for r in range(kk):
            _add_span(full, g * plane + taps[r], gsum, g * ostride, n)
    total = out_per_group * kk
    full_ok = factor * (out_per_group + kk + 2) <= 1.0  # see complement_forward
    for i in numba.prange(n_in):
        g = i // per_group
        if kept_in[i] == total and full_ok:
            _planes_to_channel(full[g * plane:(g + 1) * plane], i, H, W, sh, sw, ph, pw, Hq, Wq,
                               gin, base)
            continue
        il = i - g * per_group
        pruned = total - kept_in[i]
        res = np.empty(plane)
        done = False
        offs = np.empty(out_per_group, dtype=np.int64)
        if pruned < kept_in[i]:
            acc = np.zeros(plane)
            for r in range(kk):  # one destination span per tap: sum its sources at once
                m = 0
                for q in range(out_per_group):
                    k = (g * out_per_group + q) * per_group + il
                    offs[m] = (g * out_per_group + q) * ostride
                    m += mask[k * kk + r] == 0
                _sum_spans(acc, taps[r], gq, offs, m, n)
            for j in range(plane):
                res[j] = full[g * plane + j] - acc[j]
            done = factor == 0.0 or _within_bound(
                full, acc, res, factor * (out_per_group + kk + pruned + 2), 0, 0, 0, g * plane,
                on_plane)
            fell_back[i] = 0 if done else 1
        if not done:
            res[:] = 0.0
            for r in range(kk):
                m = 0
                for q in range(out_per_group):
                    k = (g * out_per_group + q) * per_group + il
                    offs[m] = (g * out_per_group + q) * ostride
                    m += mask[k * kk + r] != 0
                _sum_spans(res, taps[r], gq, offs, m, n)
        _planes_to_channel(res, i, H, W, sh, sw, ph, pw, Hq, Wq, gin, base)


@numba.njit(parallel=True, **_JIT)
def positive_rows(arr, row_len, keep, out):
    """``out[r] = 1`` iff ``arr[r * row_len + j] > 0`` at every ``j`` with ``keep[j]``
    (branch-free blocks of 1024 values, so that the test vectorises)."""
    for r in numba.prange(out.shape[0]):
        ok = True
        base = r * row_len
        for lo in range(0, row_len, 1024):
            for j in range(lo, min(row_len, lo + 1024)):
                ok &= (arr[base + j] > 0.0) | (keep[j] == 0)
            if not ok:
                break
        out[r] = 1 if ok else 0


@numba.njit(parallel=True, **_JIT)
def mask_effective(fq, bq, mask, counts, per_group, kk, out_per_group, taps, plane, ostride, n,
                   tap_hits, in_full, out_full, kept_out, eff, row_counts):
    """:func:`plane_effective` read straight off the mask: the unpruned elements on a
    path, counted per output channel into ``row_counts`` and, unless ``eff`` is empty,
    flagged ``eff[t] = 1`` in the mask's (output-major) order (``eff`` zeroed).

    An element whose output channel reaches the outputs at every output position
    (``out_full``) and whose input channel is reached at every image position
    (``in_full``) is on a path iff its tap meets the image at some output position
    (``tap_hits[r]``), which saves its span scan; the others scan theirs. A whole row
    that qualifies (the usual case of a dense, fully reached layer) is one pass over
    its mask, or none when every tap meets the image and only counts are asked for.
    """
    n_out = counts.shape[0] // per_group if per_group > 0 else 0
    n_groups = n_out // out_per_group if out_per_group > 0 else 0
    row_len = per_group * kk
    write = eff.shape[0] > 0
    tiled = np.empty(row_len, dtype=np.uint8)
    all_taps = True
    for j in range(row_len):
        tiled[j] = tap_hits[j % kk]
        all_taps = all_taps and tap_hits[j % kk] != 0
    group_full = np.ones(n_groups, dtype=np.uint8)
    for c in range(in_full.shape[0]):
        if in_full[c] == 0:
            group_full[c // per_group] = 0
    for o in numba.prange(n_out):
        g = o // out_per_group
        row = o * row_len
        if out_full[o] != 0 and group_full[g] != 0:
            if all_taps and not write:
                row_counts[o] = kept_out[o]
                continue
            c = 0
            for j in range(row_len):
                v = mask[row + j] & tiled[j]
                c += v
                if write:
                    eff[row + j] = v
            row_counts[o] = c
            continue
        a = bq[o * ostride:o * ostride + n]
        c = 0
        for i in range(per_group):
            k = o * per_group + i
            if counts[k] == 0:
                continue
            ci = g * per_group + i
            both = out_full[o] != 0 and in_full[ci] != 0
            for r in range(kk):
                t = k * kk + r
                if mask[t] == 0:
                    continue
                if both:
                    hit = tap_hits[r]
                else:
                    b = fq[ci * plane + taps[r]:ci * plane + taps[r] + n]
                    hit = 0
                    for j in range(n):
                        if a[j] > 0.0 and b[j] > 0.0:
                            hit = 1
                            break
                c += hit
                if write:
                    eff[t] = hit
        row_counts[o] = c
