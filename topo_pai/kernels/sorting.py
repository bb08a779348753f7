"""A stable counting sort of positions by key (the PHEW pruner groups its
edges by node with it). Reference: ``np.argsort(keys, kind="stable")`` and the
cumulative ``np.bincount`` of the keys.
"""

from __future__ import annotations

import numba
import numpy as np

from topo_pai.kernels.options import JIT_OPTIONS


@numba.njit(**JIT_OPTIONS)
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
