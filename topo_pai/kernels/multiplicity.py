"""A layer's multiplicity matrix: entry ``(o, c)`` counts the unpruned elements of
the kernel that joins input channel ``c`` to output channel ``o`` (the channel-level
graph's edge weights).

Built as CSR (empty kernels not stored), either straight from a 0/1 mask
(:func:`kernel_csr`) or from the per-kernel counts the mask intake made
(:func:`counts_csr`); :func:`kernel_weight_sums` gives the data of the same
pattern weighted by ``|w|``. Products with the matrix are in
:mod:`topo_pai.kernels.matvec`.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS

#: :func:`counts_csr` compacts without a branch per kernel from this fraction of
#: non-empty kernels up (a branch on a random 0/non-0 count mispredicts often there;
#: measured: the two loops cross between 5 % and 10 % non-empty, and at 30 % the
#: branch-free one is three times as fast).
BRANCH_FREE_FRACTION = 0.08


@numba.njit(**JIT_OPTIONS)
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


@numba.njit(**JIT_OPTIONS)
def counts_csr(counts, per_group_in, out_per_group, nnz, index_sample):
    """Multiplicity CSR from per-kernel counts (``counts`` of shape (O * per_group_in,))
    with ``nnz`` non-zero counts.

    Same pattern and ordering as :func:`kernel_csr` on the mask the counts came
    from. Under :data:`BRANCH_FREE_FRACTION` of non-empty kernels it branches on
    every count (well predicted there, and the writes of empty kernels are
    skipped); above it every kernel writes a slot and ``k`` advances by 0 or 1, as
    in :func:`kernel_csr`, because there "is this kernel empty?" is unpredictable.
    """
    n_kernels = counts.shape[0]
    n_out = n_kernels // per_group_in if per_group_in > 0 else 0
    indptr = np.zeros(n_out + 1, dtype=index_sample.dtype)
    # one spare slot: the branch-free loop writes the slot after the last entry
    indices = np.empty(nnz + 1, dtype=index_sample.dtype)
    data = np.empty(nnz + 1, dtype=np.float32)
    branch_free = nnz >= BRANCH_FREE_FRACTION * n_kernels
    k = 0
    for o in range(n_out):
        offset = (o // out_per_group) * per_group_in
        row = o * per_group_in
        if branch_free:
            for i in range(per_group_in):
                c = counts[row + i]
                indices[k] = offset + i
                data[k] = c
                k += c != 0
        else:
            for i in range(per_group_in):
                c = counts[row + i]
                if c != 0:
                    indices[k] = offset + i
                    data[k] = c
                    k += 1
        indptr[o + 1] = k
    return indptr, indices[:nnz], data[:nnz]


@numba.njit(**JIT_OPTIONS)
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
