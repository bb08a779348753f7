"""Dense convs by their complement (unit weights: path counts and reachability).

With every kernel full, output channel o of a conv is a box filter (the conv's
taps, all weight 1) over the sum of the input channels of o's group: the same
map for every o of the group. A mostly full layer is that map minus the spans
of its pruned elements, so its cost follows min(kept, pruned) elements. The
difference of two float sums can lose the small kept part to rounding, so the
kernels bound the error of every result (see
:func:`topo_pai.metrics.neuron.complement_factor`) and fall back, per channel,
to the direct sum over the kept elements where the bound fails. The kernels
read the 0/1 mask and its per-kernel counts in place: a dense layer never
builds element lists. Layout: :mod:`topo_pai.kernels.planes`; proof and
measurements: docs/complement.md. References:
:func:`topo_pai.kernels.reference.complement_conv_forward` and
``complement_conv_backward``.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS
from topo_pai.kernels.planes import planes_to_channel


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(**JIT_OPTIONS)
def _add_span(dst, d0, src, s0, n):
    """``dst[d0:d0 + n] += src[s0:s0 + n]``."""
    a = dst[d0:d0 + n]
    b = src[s0:s0 + n]
    for j in range(n):
        a[j] += b[j]


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
def complement_forward(xq, xsum, mask, counts, per_group, kk, out_per_group, taps, plane, n,
                       OH, OW, Wq, kept, factor, out, fell_back):
    """Unit-weight conv (the values :func:`~topo_pai.kernels.planes.plane_forward`
    computes) by the complement, written to ``out`` (O, OH, OW).

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


@numba.njit(parallel=True, **JIT_OPTIONS)
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
            planes_to_channel(full[g * plane:(g + 1) * plane], i, H, W, sh, sw, ph, pw, Hq, Wq,
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
        planes_to_channel(res, i, H, W, sh, sw, ph, pw, Hq, Wq, gin, base)


@numba.njit(parallel=True, **JIT_OPTIONS)
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


@numba.njit(parallel=True, **JIT_OPTIONS)
def mask_effective(fq, bq, mask, counts, per_group, kk, out_per_group, taps, plane, ostride, n,
                   tap_hits, in_full, out_full, kept_out, eff, row_counts):
    """:func:`~topo_pai.kernels.planes.plane_effective` read straight off the mask: the
    unpruned elements on a path, counted per output channel into ``row_counts`` and,
    unless ``eff`` is empty, flagged ``eff[t] = 1`` in the mask's (output-major) order
    (``eff`` zeroed).

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
