"""Small numba kernels for propagating counts through a layered graph.

Conventions shared by every kernel:

* arrays are passed as arguments, never read from globals, so ``cache=True``
  stays valid;
* spatial tensors are flat ``float64`` arrays in (C, H, W) order; 1-d
  convolutions and pools use ``H = 1``;
* kernels *accumulate* into their output (``out += ...``) so that several
  incoming blocks or branches can be summed without temporaries.

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


@numba.njit(**_JIT)
def mask_elements(mask, n_out, per_group_in, kh_size, kw_size, out_per_group):
    """Unpruned elements of a 0/1 uint8 conv mask (O, I/groups, KH, KW), output-major.

    Returns ``(flat, ptr_o, nz_i, nz_kh, nz_kw)``: flat weight index, CSR row
    pointer over output channels, global input channel and kernel offsets.
    """
    n = mask.shape[0]
    flat = np.empty(n + 1, dtype=np.int32)  # one layer never holds 2**31 weights
    nnz = 0
    for t in range(n):  # branch-free compaction, as in kernel_csr
        flat[nnz] = t
        nnz += mask[t]
    flat = flat[:nnz].copy()
    kk = kh_size * kw_size
    ptr_o = np.zeros(n_out + 1, dtype=np.int64)
    # Compact dtypes: a dense ResNet-50 has 25M elements, so bytes per element matter.
    nz_i = np.empty(nnz, dtype=np.int32)
    nz_kh = np.empty(nnz, dtype=np.int16)
    nz_kw = np.empty(nnz, dtype=np.int16)
    for k in range(nnz):
        t = flat[k]
        o = t // (per_group_in * kk)
        rest = t - o * per_group_in * kk
        i = rest // kk
        rest -= i * kk
        nz_i[k] = (o // out_per_group) * per_group_in + i
        nz_kh[k] = rest // kw_size
        nz_kw[k] = rest - (rest // kw_size) * kw_size
        ptr_o[o + 1] += 1
    for o in range(n_out):
        ptr_o[o + 1] += ptr_o[o]
    return flat, ptr_o, nz_i, nz_kh, nz_kw


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


@numba.njit(**_JIT)
def scale_stats(x):
    """Return ``(max, smallest positive)`` of a non-negative array (0, inf if none)."""
    hi = 0.0
    lo = np.inf
    for t in range(x.shape[0]):
        v = x[t]
        if v > 0.0:
            if v > hi:
                hi = v
            if v < lo:
                lo = v
    return hi, lo


@numba.njit(**_JIT)
def _valid_range(pad, k, dil, stride, in_size, out_size):
    # Output positions y with 0 <= y*stride - pad + k*dil < in_size.
    first = pad - k * dil
    lo = 0 if first <= 0 else (first + stride - 1) // stride
    last = in_size - 1 + pad - k * dil  # y*stride <= last
    hi = -1 if last < 0 else last // stride
    if hi > out_size - 1:
        hi = out_size - 1
    return lo, hi + 1


@numba.njit(**_JIT)
def _conv_span(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw):
    """Valid output rows/cols of one kernel element, and whether all its rows
    form one contiguous run in both input and output (then they are fused)."""
    h_lo, h_hi = _valid_range(ph, kh, dh, sh, H, OH)
    w_lo, w_hi = _valid_range(pw, kw, dw, sw, W, OW)
    fused = sw == 1 and sh == 1 and W == OW and w_lo == 0 and w_hi == OW
    return h_lo, h_hi, w_lo, w_hi, fused


@numba.njit(**_JIT)
def _axpy(dst, d0, src, s0, n, stride, v):
    """``dst[d0 + j] += v * src[s0 + j * stride]`` for ``j < n``.

    The unit-stride case goes through slices so that LLVM can vectorise it.
    """
    if stride == 1:
        a = dst[d0:d0 + n]
        b = src[s0:s0 + n]
        for j in range(n):
            a[j] += v * b[j]
    else:
        for j in range(n):
            dst[d0 + j] += v * src[s0 + j * stride]


@numba.njit(**_JIT)
def _axpy_t(dst, d0, src, s0, n, stride, v):
    """``dst[d0 + j * stride] += v * src[s0 + j]`` (the transpose of :func:`_axpy`)."""
    if stride == 1:
        a = dst[d0:d0 + n]
        b = src[s0:s0 + n]
        for j in range(n):
            a[j] += v * b[j]
    else:
        for j in range(n):
            dst[d0 + j * stride] += v * src[s0 + j]


@numba.njit(parallel=True, **_JIT)
def conv_forward(x, H, W, out, OH, OW, ptr_o, nz_i, nz_kh, nz_kw, nz_val,
                 sh, sw, ph, pw, dh, dw):
    """``out[o] += sum_{(i,kh,kw) in row o} val * x[i, shifted window]``.

    ``ptr_o``/``nz_*`` list the unpruned weight elements grouped by output
    channel; the outer loop is parallel over output channels, so each thread
    writes its own slice. An empty ``nz_val`` means every weight is 1.
    """
    n_out = ptr_o.shape[0] - 1
    unit = nz_val.shape[0] == 0
    for o in numba.prange(n_out):
        obase = o * OH * OW
        for t in range(ptr_o[o], ptr_o[o + 1]):
            v = 1.0 if unit else nz_val[t]
            kh = nz_kh[t]
            kw = nz_kw[t]
            h_lo, h_hi, w_lo, w_hi, fused = _conv_span(H, W, OH, OW, kh, kw, sh, sw, ph, pw,
                                                       dh, dw)
            if h_lo >= h_hi or w_lo >= w_hi:
                continue
            ibase = nz_i[t] * H * W + (h_lo * sh - ph + kh * dh) * W - pw + kw * dw
            if fused:
                _axpy(out, obase + h_lo * OW, x, ibase, (h_hi - h_lo) * OW, 1, v)
                continue
            for oh in range(h_lo, h_hi):
                irow = ibase + (oh - h_lo) * sh * W
                _axpy(out, obase + oh * OW + w_lo, x, irow + w_lo * sw, w_hi - w_lo, sw, v)


@numba.njit(parallel=True, **_JIT)
def conv_backward(gout, H, W, gin, OH, OW, ptr_i, nz_o, nz_kh, nz_kw, nz_val,
                  sh, sw, ph, pw, dh, dw):
    """Transpose of :func:`conv_forward`: ``gin[i] += sum val * gout[o, window]``.

    The unpruned elements are grouped by *input* channel here, so the parallel
    loop again owns its output slice. An empty ``nz_val`` means every weight is 1.
    """
    n_in = ptr_i.shape[0] - 1
    unit = nz_val.shape[0] == 0
    for i in numba.prange(n_in):
        for t in range(ptr_i[i], ptr_i[i + 1]):
            v = 1.0 if unit else nz_val[t]
            kh = nz_kh[t]
            kw = nz_kw[t]
            h_lo, h_hi, w_lo, w_hi, fused = _conv_span(H, W, OH, OW, kh, kw, sh, sw, ph, pw,
                                                       dh, dw)
            if h_lo >= h_hi or w_lo >= w_hi:
                continue
            obase = nz_o[t] * OH * OW
            ibase = i * H * W + (h_lo * sh - ph + kh * dh) * W - pw + kw * dw
            if fused:
                _axpy_t(gin, ibase, gout, obase + h_lo * OW, (h_hi - h_lo) * OW, 1, v)
                continue
            for oh in range(h_lo, h_hi):
                irow = ibase + (oh - h_lo) * sh * W
                _axpy_t(gin, irow + w_lo * sw, gout, obase + oh * OW + w_lo, w_hi - w_lo, sw, v)


@numba.njit(parallel=True, **_JIT)
def conv_effective(fin, H, W, bout, OH, OW, ptr_o, nz_i, nz_kh, nz_kw,
                   sh, sw, ph, pw, dh, dw, flags):
    """``flags[t] = 1`` iff element ``t`` joins a reachable input position to a
    co-reachable output position at some output position (early exit)."""
    n_out = ptr_o.shape[0] - 1
    for o in numba.prange(n_out):
        obase = o * OH * OW
        for t in range(ptr_o[o], ptr_o[o + 1]):
            kh = nz_kh[t]
            kw = nz_kw[t]
            h_lo, h_hi, w_lo, w_hi, _ = _conv_span(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)
            ibase = nz_i[t] * H * W
            hit = 0
            for oh in range(h_lo, h_hi):
                irow = ibase + (oh * sh - ph + kh * dh) * W - pw + kw * dw
                orow = obase + oh * OW
                for ow in range(w_lo, w_hi):
                    if bout[orow + ow] > 0.0 and fin[irow + ow * sw] > 0.0:
                        hit = 1
                        break
                if hit:
                    break
            flags[t] = hit


@numba.njit(parallel=True, **_JIT)
def conv_weight_flow(fin, H, W, bout, OH, OW, ptr_o, nz_i, nz_kh, nz_kw,
                     sh, sw, ph, pw, dh, dw, sums):
    """``sums[t] = sum over output positions of fin[input position] * bout[position]``
    for every unpruned element ``t``: the paths (or path mass) through it, per
    unit weight."""
    n_out = ptr_o.shape[0] - 1
    for o in numba.prange(n_out):
        obase = o * OH * OW
        for t in range(ptr_o[o], ptr_o[o + 1]):
            kh = nz_kh[t]
            kw = nz_kw[t]
            h_lo, h_hi, w_lo, w_hi, _ = _conv_span(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)
            ibase = nz_i[t] * H * W
            acc = 0.0
            for oh in range(h_lo, h_hi):
                irow = ibase + (oh * sh - ph + kh * dh) * W - pw + kw * dw
                orow = obase + oh * OW
                for ow in range(w_lo, w_hi):
                    acc += bout[orow + ow] * fin[irow + ow * sw]
            sums[t] = acc


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
