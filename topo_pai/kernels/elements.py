"""Element lists of a conv mask, for the sparse conv kernels of
:mod:`topo_pai.kernels.planes`.

:func:`mask_elements` lists every unpruned weight element output-major, with
its input channel and the start of its span on the phase-plane layout;
:func:`by_input` regroups the list by input channel for the transposed
(backward) pass; :func:`count_words` prepares the 8-kernels-per-load scan.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels import options
from topo_pai.kernels.options import JIT_OPTIONS

_BYTE_SUM = np.uint64(0x0101010101010101)
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(**JIT_OPTIONS)
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


def mask_elements(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane, taps,
                  index_sample, flat_sample, n_kept):
    """Unpruned elements of a 0/1 uint8 conv mask (O, I/groups, *kernel), output-major.

    ``counts`` holds the number of unpruned elements of every kernel (as the mask
    intake computes them) and ``words`` the same bytes as uint64 (see
    :func:`count_words`; empty: not available): the scan reads 8 kernel counts
    per load, visits only non-empty kernels and fills the output channels in
    parallel. Element ``r`` of a kernel reading input channel ``i`` starts its
    span at ``i * plane + taps[r]`` (see :func:`~topo_pai.metrics.neuron.tap_offsets`).
    Returns ``(flat, ptr_o, nz_i, src)``: flat weight index (of ``flat_sample``'s
    dtype: int64 for a weight of 2**31 elements or more), CSR row pointer over output
    channels, global input channel and span start (of ``index_sample``'s dtype).
    ``n_kept`` (the number of unpruned elements) sizes the work: under
    :data:`~topo_pai.kernels.options.PARALLEL_MIN_ELEMENTS` kernels plus elements it runs
    on the calling thread.
    """
    kernel = (_mask_elements_serial
              if counts.shape[0] + n_kept < options.PARALLEL_MIN_ELEMENTS
              else _mask_elements_parallel)
    return kernel(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane, taps,
                  index_sample, flat_sample)


@numba.njit(inline="always", **JIT_OPTIONS)
def _mask_elements(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane, taps,
                   index_sample, flat_sample):
    """:func:`mask_elements`' body: inlined into a serial and a parallel kernel, whose
    ``prange`` loops then run on the calling thread or on numba's threads."""
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


@numba.njit(**JIT_OPTIONS)
def _mask_elements_serial(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane,
                          taps, index_sample, flat_sample):
    return _mask_elements(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane,
                          taps, index_sample, flat_sample)


@numba.njit(parallel=True, **JIT_OPTIONS)
def _mask_elements_parallel(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane,
                            taps, index_sample, flat_sample):
    return _mask_elements(mask, counts, words, n_out, per_group_in, kk, out_per_group, plane,
                          taps, index_sample, flat_sample)


def by_input(ptr_o, nz_i, src, n_in, n_parts):
    """Regroup output-major elements by input channel (stable within a channel).

    Returns ``(ptr_i, by_i_o, by_i_src, order)``: CSR pointer over input channels,
    each element's output channel and span start, and its output-major position.
    A parallel counting sort: each of ``n_parts`` tasks takes a range of output
    channels, counts its elements per input channel, and after a prefix sum over
    (channel, task) scatters them into its own slots, which keeps the order stable.
    Under :data:`~topo_pai.kernels.options.PARALLEL_MIN_ELEMENTS` elements it runs as one
    task on the calling thread.
    """
    if nz_i.shape[0] < options.PARALLEL_MIN_ELEMENTS:
        return _by_input_serial(ptr_o, nz_i, src, n_in, 1)
    return _by_input_parallel(ptr_o, nz_i, src, n_in, n_parts)


@numba.njit(inline="always", **JIT_OPTIONS)
def _by_input(ptr_o, nz_i, src, n_in, n_parts):
    """:func:`by_input`'s body, inlined into a serial and a parallel kernel."""
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


@numba.njit(**JIT_OPTIONS)
def _by_input_serial(ptr_o, nz_i, src, n_in, n_parts):
    return _by_input(ptr_o, nz_i, src, n_in, n_parts)


@numba.njit(parallel=True, **JIT_OPTIONS)
def _by_input_parallel(ptr_o, nz_i, src, n_in, n_parts):
    return _by_input(ptr_o, nz_i, src, n_in, n_parts)


def count_words(counts: np.ndarray, kernel_volume: int) -> np.ndarray:
    """``counts`` read as uint64 words for :func:`mask_elements`, or an empty array
    where that does not apply: counts wider than a byte, kernels of more than 31
    elements (8 counts could then sum past a byte), or unaligned memory."""
    if (counts.dtype != np.uint8 or kernel_volume > 31 or not counts.flags.c_contiguous
            or counts.ctypes.data % 8):
        return np.zeros(0, dtype=np.uint64)
    return counts[:counts.shape[0] // 8 * 8].view(np.uint64)
