"""Walker/Vose alias tables: the transition distribution of every unit of PHEW's
channel graph, one 16-byte record per CSR position.

A unit's out-edges (forward walks) or in-edges (backward walks) sit in a CSR,
and each position carries one slot of the unit's alias table (Walker 1977,
Vose 1991): a threshold and both edges a draw can return (the far node and
block of the slot's own edge and of its alias). So an edge draw is O(1) and a
walk step reads one record: the walks are bound by memory latency.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

_JIT = {"nogil": True, "cache": True}

EDGE_RECORD = np.dtype([
    ("prob", np.float32),  # keep this slot's own edge if the draw's fraction < prob
    ("nbr", np.int32),  # own edge: the node at its far end
    ("anbr", np.int32),  # alias edge: the node at its far end
    ("blk", np.int16),  # own edge: its channel block
    ("ablk", np.int16),  # alias edge: its channel block
])


class Tables(NamedTuple):
    """The out-edge (forward) or in-edge (backward) CSR of the channel graph with
    its alias tables; numba reads the fields by name."""

    ptr: np.ndarray  # int64 per node + 1: the node's positions are [ptr[n], ptr[n + 1])
    rec: np.ndarray  # EDGE_RECORD per position
    eid: np.ndarray  # int32 per position: the edge id (see ``geometry.Edges``)
    base: np.ndarray  # float64 per position: the edge's summed |w|
    ntot: np.ndarray  # float64 per node: total transition weight (0: no candidate edge)


@numba.njit(**_JIT)
def edge_records(order, far_node, e_block):
    """CSR records for the edges in ``order`` (alias fields are set later)."""
    rec = np.zeros(order.shape[0], dtype=EDGE_RECORD)
    for p in range(order.shape[0]):
        e = order[p]
        rec[p].nbr = far_node[e]
        rec[p].blk = e_block[e]
    return rec


@numba.njit(**_JIT)
def alias_table(rec, lo, q, small, large, alias):
    """Vose's alias table over positions ``[lo, lo + m)`` from the weights
    ``q[0:m]`` (non-negative, not all zero; overwritten), computed in float64.
    The stacks are filled in position order and popped from the end; a
    zero-weight edge is never drawn."""
    m = q.shape[0]
    total = 0.0
    best = 0
    for k in range(m):
        total += q[k]
        if q[k] > q[best]:
            best = k
    ns = 0
    nl = 0
    for k in range(m):
        zero = q[k] == 0.0
        q[k] = q[k] * m / total
        if zero or q[k] < 1.0:
            small[ns] = k
            ns += 1
        else:
            large[nl] = k
            nl += 1
        alias[k] = k
    prob = np.ones(m)
    while ns > 0 and nl > 0:
        ns -= 1
        sk = small[ns]
        nl -= 1
        lk = large[nl]
        prob[sk] = q[sk]
        alias[sk] = lk
        q[lk] = (q[lk] + q[sk]) - 1.0
        if q[lk] < 1.0:
            small[ns] = lk
            ns += 1
        else:
            large[nl] = lk
            nl += 1
    # Left over (by rounding) entries keep probability 1: their mass is ~1. A
    # zero-weight entry cannot be left over, but is guarded anyway.
    for k in range(ns):
        if q[small[k]] == 0.0:  # pragma: no cover
            prob[small[k]] = 0.0
            alias[small[k]] = best
    for k in range(m):
        a = lo + alias[k]
        rec[lo + k].prob = prob[k]
        rec[lo + k].anbr = rec[a].nbr
        rec[lo + k].ablk = rec[a].blk


@numba.njit(**_JIT)
def node_table(n, tables, enabled, target_ok, q, small, large, alias):
    """Transition table of node ``n`` over its candidate edges (enabled, far
    end ``target_ok``) weighted by their summed ``|w|``; candidates that all
    weigh zero count 1 each (a uniform choice). ``ntot[n]`` is 0 when the node
    has no candidate."""
    ptr, rec, eid, base, ntot = tables
    lo = ptr[n]
    hi = ptr[n + 1]
    m = hi - lo
    acc = 0.0
    cnt = 0
    for p in range(lo, hi):
        w = 0.0
        if enabled[eid[p]] and target_ok[rec[p].nbr]:
            w = base[p]
            cnt += 1
        q[p - lo] = w
        acc += w
    if cnt > 0 and not (acc > 0.0):
        acc = 0.0
        for p in range(lo, hi):
            w = 1.0 if enabled[eid[p]] and target_ok[rec[p].nbr] else 0.0
            q[p - lo] = w
            acc += w
    ntot[n] = acc if cnt > 0 else 0.0
    if cnt > 0:
        alias_table(rec, lo, q[:m], small, large, alias)
    else:
        for p in range(lo, hi):
            rec[p].prob = 0.0

