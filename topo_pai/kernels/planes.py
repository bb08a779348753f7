"""Convolutions on the phase-plane layout, over element lists.

A conv input (C, H, W) is re-laid out as (C, sh*sw, Hq, Wq) "phase planes":
plane (a, b) of channel c holds x[c, R*sh + a - ph, Q*sw + b - pw] at (R, Q),
zero where that position is padding. Kernel tap (kh, kw) then reads plane
((kh*dh) % sh, (kw*dw) % sw) shifted by ((kh*dh) // sh, (kw*dw) // sw), with
unit stride. Laying the output out with the same row stride Wq (the extra
columns are scratch), every unpruned weight element becomes ONE contiguous
span of n = (OH - 1) * Wq + OW values: no per-row loop, no bounds, no stride.
Out-of-image taps read zeros, which add +0.0 and so leave every real output
value bit-identical to skipping them.

The element lists come from :mod:`topo_pai.kernels.elements`. References:
:func:`topo_pai.kernels.reference.conv_forward` and ``conv_backward``.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
def image_to_rows(y, O, OH, OW, Wq, yq):
    """``yq`` (O, OH, Wq) = ``y`` (O, OH, OW) with zero scratch columns ``OW <= z < Wq``."""
    for o in numba.prange(O):
        for r in range(OH):
            src = (o * OH + r) * OW
            dst = (o * OH + r) * Wq
            yq[dst:dst + OW] = y[src:src + OW]
            yq[dst + OW:dst + Wq] = 0.0


@numba.njit(**JIT_OPTIONS)
def planes_to_channel(xq, c, H, W, sh, sw, ph, pw, Hq, Wq, x, base):
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


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
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
            # over slices, not range(i * plane, ...) of the whole arrays: LLVM vectorises
            # this form only (measured 2x on a ResNet-50 plane)
            g = gq[i * plane:(i + 1) * plane]
            b = base[i * plane:(i + 1) * plane]
            for j in range(plane):
                g[j] += b[j]


@numba.njit(parallel=True, **JIT_OPTIONS)
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
        planes_to_channel(acc, i, H, W, sh, sw, ph, pw, Hq, Wq, gin, base)


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
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
