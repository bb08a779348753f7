"""Pure-numpy references for the numba kernels.

They work for any dtype, including ``object`` arrays of Python ints, which is
how :attr:`topo_pai.PathCount.exact` gets arbitrary-precision counts. They loop
over unpruned weight elements and use numpy slicing over positions, so they are
slow but short enough to check by eye.
"""

from __future__ import annotations

import numpy as np


def _valid_range(pad, k, dil, stride, in_size, out_size):
    first = pad - k * dil
    lo = 0 if first <= 0 else -(-first // stride)
    last = in_size - 1 + pad - k * dil
    hi = -1 if last < 0 else last // stride
    return lo, min(hi, out_size - 1) + 1


def _shifted(lo, hi, pad, k, dil, stride):
    start = lo * stride - pad + k * dil
    return slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _zeros(shape, dtype):
    """Zeros of ``dtype`` (Python int zeros for ``object`` arrays, exact in any sum)."""
    out = np.zeros(shape, dtype=dtype)
    if np.dtype(dtype).kind == "O":
        out[...] = 0
    return out


def _element_windows(weights, groups, stride, pad, dil, in_hw, out_hw):
    """Per unpruned weight element ``(o, i, kh, kw)`` whose window is not empty:
    ``(element, ci, in_window, out_window)``, where input channel ``ci`` read at the
    slices ``in_window`` meets output channel ``o`` at the slices ``out_window``."""
    H, W = in_hw
    OH, OW = out_hw
    O, per_group, _, _ = weights.shape
    out_per_group = O // groups
    for o, i, kh, kw in _unpruned(weights):
        ci = (o // out_per_group) * per_group + i
        h_lo, h_hi = _valid_range(pad[0], kh, dil[0], stride[0], H, OH)
        w_lo, w_hi = _valid_range(pad[1], kw, dil[1], stride[1], W, OW)
        if h_lo >= h_hi or w_lo >= w_hi:
            continue
        yield ((o, i, kh, kw), ci,
               (_shifted(h_lo, h_hi, pad[0], kh, dil[0], stride[0]),
                _shifted(w_lo, w_hi, pad[1], kw, dil[1], stride[1])),
               (slice(h_lo, h_hi), slice(w_lo, w_hi)))


def conv_forward(x, weights, groups, stride, pad, dil, out_hw):
    """``out[o]`` = sum over unpruned ``(o, i, kh, kw)`` of ``w * x[g*I + i, window]``.

    ``x`` has shape (C, H, W); ``weights`` (O, I, KH, KW) holds multiplicities
    (0/1 masks, or |w| for weighted flows).
    """
    out = _zeros((weights.shape[0],) + tuple(out_hw), x.dtype)
    for el, ci, src, dst in _element_windows(weights, groups, stride, pad, dil, x.shape[1:],
                                             out_hw):
        out[(el[0],) + dst] += _times(weights[el], x[(ci,) + src])
    return out


_SCAN_BLOCK = 1 << 24


def _unpruned(weights):
    """Indices of the non-zero weight elements, output-major. A flat scan in blocks:
    ``count_nonzero`` skips empty blocks at memory speed, so a huge, mostly pruned
    weight costs one fast pass (a multi-dimensional ``nonzero`` is many times slower)."""
    flat = weights.reshape(-1)
    hits = [np.flatnonzero(flat[start:start + _SCAN_BLOCK]) + start
            for start in range(0, flat.size, _SCAN_BLOCK)
            if np.count_nonzero(flat[start:start + _SCAN_BLOCK])]
    index = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
    return zip(*np.unravel_index(index, weights.shape))


def _times(w, arr):
    """``w * arr`` with ``w`` as a Python number, so that object arrays of Python ints
    stay exact (a numpy uint8 scalar would make numpy arithmetic of them), and a 0/1
    mask can serve as the weights without a copy."""
    w = w.item() if isinstance(w, np.generic) else w
    return arr if w == 1 else w * arr


def conv_backward(gout, weights, groups, stride, pad, dil, in_chw):
    """Transpose of :func:`conv_forward`."""
    gin = _zeros(tuple(in_chw), gout.dtype)
    for el, ci, src, dst in _element_windows(weights, groups, stride, pad, dil, in_chw[1:],
                                             gout.shape[1:]):
        gin[(ci,) + src] += _times(weights[el], gout[(el[0],) + dst])
    return gin


def pool_forward(x, hwin, wwin):
    """Sum pooling over explicit windows: ``hwin[y]``/``wwin[z]`` list input rows/cols."""
    C = x.shape[0]
    out = _zeros((C, len(hwin), len(wwin)), x.dtype)
    for y, rows in enumerate(hwin):
        for z, cols in enumerate(wwin):
            block = x[:, rows][:, :, cols]
            out[:, y, z] = block.reshape(C, -1).sum(axis=1) if block.size else 0
    return out


def pool_backward(gout, hwin, wwin, in_hw):
    """Transpose of :func:`pool_forward`."""
    C = gout.shape[0]
    gin = _zeros((C,) + tuple(in_hw), gout.dtype)
    for y, rows in enumerate(hwin):
        for z, cols in enumerate(wwin):
            for r in rows:
                for c in cols:
                    gin[:, r, c] += gout[:, y, z]
    return gin


def _box_of_groups(x, groups, kernel_hw, dtype):
    """All-ones kernels, one per group: the conv a full layer's group computes."""
    return np.ones((groups, 1) + tuple(kernel_hw), dtype=dtype)


def complement_conv_forward(x, mask, groups, stride, pad, dil, out_hw):
    """:func:`conv_forward` of a 0/1 ``mask`` computed as the complement kernels do:
    the box filter of each group's channel sum (the full layer), repeated over the
    group's output channels, minus the conv of the pruned elements."""
    O, per_group, KH, KW = mask.shape
    sums = x.reshape((groups, per_group) + x.shape[1:]).sum(axis=1)
    box = conv_forward(sums, _box_of_groups(x, groups, (KH, KW), mask.dtype), groups, stride,
                       pad, dil, out_hw)
    full = np.repeat(box, O // groups, axis=0)
    return full - conv_forward(x, 1 - mask, groups, stride, pad, dil, out_hw)


def complement_conv_backward(gout, mask, groups, stride, pad, dil, in_chw):
    """Transpose of :func:`complement_conv_forward` (as the complement kernels do it)."""
    O, per_group, KH, KW = mask.shape
    _, H, W = in_chw
    sums = gout.reshape((groups, O // groups) + gout.shape[1:]).sum(axis=1)
    box = conv_backward(sums, _box_of_groups(gout, groups, (KH, KW), mask.dtype), groups,
                        stride, pad, dil, (groups, H, W))
    full = np.repeat(box, per_group, axis=0)
    return full - conv_backward(gout, 1 - mask, groups, stride, pad, dil, in_chw)


def csr_transpose(indptr, indices, data, n_cols):
    """Twin of :func:`topo_pai.kernels.gram.csr_transpose`: the CSR arrays of
    ``B^T`` by a stable sort of the entries by column."""
    indptr, indices, data = np.asarray(indptr), np.asarray(indices), np.asarray(data)
    n_rows = indptr.shape[0] - 1
    order = np.argsort(indices[:indptr[-1]], kind="stable")
    rows = np.repeat(np.arange(n_rows, dtype=indices.dtype), np.diff(indptr))[order]
    ptr = np.zeros(n_cols + 1, dtype=indptr.dtype)
    np.cumsum(np.bincount(indices[:indptr[-1]], minlength=n_cols), out=ptr[1:])
    return ptr, rows, (data[order] if data.shape[0] else data.copy())


def lanczos_steps(gram, basis, first, alpha, beta, j, stop, scale, grow):
    """Lanczos steps ``j, ..., stop - 1`` on the operator ``gram`` (``x -> G x`` for
    a vector), written like the numba twins :func:`topo_pai.kernels.gram.lanczos_steps_csr`
    and ``lanczos_steps_dense``: the three-term recurrence, then classical
    Gram-Schmidt (a second pass when the first removed much) against
    ``basis[:first + j + 1]``, whose first ``first`` rows are locked vectors (no
    coefficient kept: deflation); stops after a step whose new vector vanished
    (``beta <= 1e-12 * scale``). Returns ``(steps done so far, scale)``."""
    from topo_pai.kernels.gram import REORTHOGONALIZE_BELOW

    while j < stop:
        w = np.array(gram(basis[first + j]), dtype=np.float64)
        Q = basis[:first + j + 1]
        a = basis[first + j] @ w
        w -= a * basis[first + j]
        if j > 0:
            w -= beta[j - 1] * basis[first + j - 1]
        before = np.sqrt(w @ w)
        c = Q @ w
        w -= c @ Q
        a += c[first + j]
        b = np.sqrt(w @ w)
        if b < REORTHOGONALIZE_BELOW * before:
            c = Q @ w
            w -= c @ Q
            a += c[first + j]
            b = np.sqrt(w @ w)
        alpha[j] = a
        beta[j] = b
        if grow:
            scale = max(scale, alpha[j])
        if first + j + 1 < basis.shape[0] and beta[j] > 0.0:
            basis[first + j + 1] = w / beta[j]
        j += 1
        if beta[j - 1] <= 1e-12 * scale:
            break
    return j, scale


def lanczos_run(gram, basis, first, alpha, beta, size, limit, scale, grow, r1, tol, margin,
                lock_residual):
    """A whole Lanczos run on the operator ``gram``, the twin of
    :func:`topo_pai.kernels.gram.lanczos_run_csr` (and ``lanczos_run_dense``): the
    steps of :func:`lanczos_steps` between the convergence tests of the compiled
    :func:`topo_pai.kernels.gram.ritz_test`. Returns ``(state, steps, theta, y,
    residual)``."""
    from topo_pai.kernels.gram import ritz_test

    j, next_check, last_step, last_log = 0, 1, -1, 0.0
    while True:
        j, scale = lanczos_steps(gram, basis, first, alpha, beta, j, min(next_check, size),
                                 scale, grow)
        state, theta, y, residual, scale, next_check, last_step, last_log = ritz_test(
            alpha, beta, j, scale, grow, r1, tol, margin, lock_residual, size, limit,
            last_step, last_log)
        if state != 0:
            return state, j, theta, y, residual


def csr_degrees(indptr, indices, data, n_cols):
    """Twin of :func:`topo_pai.kernels.degrees.csr_degrees`: row sums by a loop over
    the rows (``np.add.reduce`` of a row is pairwise, so the twin adds one by one)
    and column sums by ``np.bincount`` (entry order)."""
    rows = np.zeros(len(indptr) - 1)
    for r in range(rows.size):
        total = 0.0
        for v in data[indptr[r]:indptr[r + 1]]:
            total += float(v)
        rows[r] = total
    cols = np.bincount(indices[:indptr[-1]], weights=data[:indptr[-1]],
                       minlength=n_cols).astype(np.float64)
    return rows, cols


def csr_count_within(indptr, indices, data, row_flags, col_flags):
    """Twin of :func:`topo_pai.kernels.degrees.csr_count_within`."""
    end = int(indptr[-1])
    row_of = np.repeat(np.asarray(row_flags, dtype=bool), np.diff(indptr))
    kept = (data[:end] != 0) & np.asarray(col_flags, dtype=bool)[indices[:end]] & row_of
    return int(np.count_nonzero(kept))
