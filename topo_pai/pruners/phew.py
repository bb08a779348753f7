"""PHEW: sparse masks from weight-biased random walks, without data.

Patil & Dovrolis, "PHEW: Constructing Sparse Networks that Learn Fast and
Generalize Well without Training Data", ICML 2021.

PHEW builds a mask from scratch: it keeps every connection that a set of random
walks traverses. Walks alternate between *forward* walks, which start at an
input unit and follow out-edges to an output unit, and *backward* walks, which
start at an output unit and follow in-edges to an input unit. The start units
are taken round-robin, so every input and every output unit seeds walks in turn.
A walk leaves a unit along an edge with probability proportional to the edge's
weight ``|w|`` (a conv kernel counts the sum of its ``|w|``), so the walks favour
paths with high weight products: the ones that carry the network's signal at
initialisation. Every connection a walk traverses is kept; a conv connection
(input channel ``i`` to output channel ``o``) keeps one element of the kernel
``w[o, i]``, drawn with probability proportional to its ``|w|``, as the
authors' code does (``kernel_conserved=False``, their default).

What this implementation does
-----------------------------
* **Graph.** The walks run on the channel graph of :meth:`Topology.flows`:
  nodes are the input channels and the output channels (or features) of every
  Linear and Conv layer, and the CSR blocks hold the summed ``|w|`` of every
  kernel. A residual network is a DAG there (a group feeds several layers, a
  layer reads several groups after ``+``), and a walk at a unit chooses among
  *all* its out-edges (in-edges, backward) across every layer that reads it,
  in proportion to weight. The authors' code instead follows the main path and
  takes a 1x1 projection shortcut with probability 1/2 (it never takes an
  identity shortcut); the weighted choice is the paper's biased walk on the
  network's actual graph. A unit whose candidate edges all weigh zero picks
  among them uniformly (as their code does).
* **Elements.** Where an edge of the channel graph stands for several weight
  elements (a conv kernel, or the ``H*W`` features of a channel flattened into
  a Linear), one element among them is drawn in proportion to ``|w|``
  (``element="sample"``, default), or the largest-``|w|`` element not yet kept
  is taken (``element="largest"``). Drawing an element that is already kept
  adds nothing, exactly as re-setting a mask entry in their code.
* **Per-layer budgets.** PHEW walks until a *global* parameter count is
  reached and lets the layer densities emerge; here the caller prescribes
  ``budgets[name]`` per layer. A walk adds to a layer only while the layer is
  below its budget. Once a layer is full its kept set is final, and later walks
  pass through it only along *kept* connections (channel pairs with a kept
  element): they are redirected, in proportion to weight, among those. Walks
  are also steered away from dead ends: a forward walk only steps to units that
  can still reach an output through allowed edges (all edges of open layers,
  kept edges of full layers), a backward walk only to units an input can
  reach. With open layers this changes nothing; it only matters once layers
  are full. Hence every walk completes, and every walk traces a connected
  input-to-output path of kept weights: when the walks meet the budgets, every
  kept weight is effective.
* **Stopping and exact budgets.** Walking stops when every layer is full, when
  no open layer has an edge on an allowed input-to-output path, when a window
  of ``stall_window`` walks kept fewer than ``min_yield * stall_window`` new
  weights (the walks keep re-drawing kept elements, e.g. for a budget close to
  the layer's size), or after ``max_walks`` walks. Layers still below budget are
  then filled deterministically: first the elements of channel pairs that join
  two units already on kept input-to-output paths (so they are effective),
  largest ``|w|`` first; then the other elements, largest ``|w|`` first; ties
  by flat index. Every mask ends with exactly ``budgets[name]`` ones. Layers
  with a budget of 0 or of their full size are settled before the walks.
* **Terminals.** A forward walk ends on reaching a unit of a group that feeds
  the network outputs; a backward walk starts at such a unit and ends at the
  network input.
* **Scheduling.** Walks come in rounds of one forward and one backward walk
  (PHEW alternates them). The two walks of a round run in lockstep, their steps
  interleaved, which overlaps their memory reads; this is only done while
  every open layer has at least two free slots, so no layer can fill while the
  other walk of the round still has to cross it (a walk adds at most one
  element per layer). Near a layer's last slot the walks run one at a time.
  The transition tables are updated between rounds.
* **Randomness.** A walk step draws two uniforms, one for the edge and one for
  the element, from a splitmix64 generator seeded with ``seed``: the masks are
  a deterministic function of the weights, the budgets and the seed, the same
  on every platform. The walk kernels can also replay pre-drawn uniforms,
  which the tests use against a pure-Python reference walk.

Speed
-----
The walks are bound by memory latency (ResNet-18 at 68% sparsity with uniform
budgets takes ~1.5M walks, ~16M steps: 3.5-5 s on a 2-core machine). A unit's
transition distribution is a Walker/Vose alias table over its CSR positions,
so an edge draw is O(1): one 16-byte record holding the threshold and both
candidate edges (the far node and block; the channel pair follows from them). The tables are rebuilt
only for the units whose candidate sets change when a layer fills. The alias
thresholds and the ``|w|`` used to draw elements are stored as float32 (sums
are float64), and the kept flag is the sign bit of that float32, so a step
reads one record and one kernel. The distributions are exact up to float32
rounding. Memory is ~70 bytes per channel edge at rest (~100 while building):
~0.3 GB for ResNet-18, ~5 GB for ResNet-50 at 224x224 (48M channel edges).

A topology that already carries masks restricts PHEW to its unpruned weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp

from topo_pai.checks import check_int, check_number
from topo_pai.kernels.propagate import group_by
from topo_pai.masks.validate import abs_weights_array

_JIT = {"nogil": True, "cache": True}
#: Walks between two progress records (an ``objmode`` call each: negligible next to the walks).
PROGRESS_EVERY = 4096
#: The same logger and record attributes as the rounds of iterative methods
#: (``topo_pai.pruners.api.progress_log``), so the command line draws PHEW's bar too.
_progress_log = logging.getLogger("topo_pai.prune")


def _report_progress(count, budget) -> None:
    """Called from the walk loop (``numba.objmode``): weights placed so far of the budget."""
    if _progress_log.isEnabledFor(logging.INFO):
        done, total = int(count.sum()), int(budget.sum())
        _progress_log.info("phew: %d of %d weights placed", done, total,
                           extra={"round": done, "rounds": total, "desc": "phew",
                                  "unit": "weight"})


ELEMENT_MODES = {"sample": 0, "largest": 1}
STOP_REASONS = ("budgets_reached", "no_open_path", "stalled", "max_walks")


@numba.njit(cache=True)  # no nogil: the object-mode block needs the GIL anyway
def _progress(count, budget):
    # a function of its own: an objmode block inside the large walk loop breaks codegen
    with numba.objmode():
        _report_progress(count, budget)


# One 16-byte record per position of the forward (out-edge) or backward
# (in-edge) CSR. It is the slot of the node's alias table (Walker 1977, Vose
# 1991) and carries the far node and block of both edges a draw can return,
# so that a walk step reads one record: the walks are bound by memory latency.
_SIGN = np.int32(-2 ** 31)  # the sign bit of a float32, as int32

EDGE_RECORD = np.dtype([
    ("prob", np.float32),  # keep this slot's own edge if the draw's fraction < prob
    ("nbr", np.int32),  # own edge: the node at its far end
    ("anbr", np.int32),  # alias edge: the node at its far end
    ("blk", np.int16),  # own edge: its channel block
    ("ablk", np.int16),  # alias edge: its channel block
])


# ---------------------------------------------------------------------------
# numba kernels
#
# Shared arguments: ``geo`` = (b_layer, b_st, st_ptr, st_idx, l_woff, l_pgi,
# l_opg, l_kv, b_soff, b_doff) describes blocks and layers (see _WalkGraph);
# ``wk`` holds every weight element's |w| as float32 with its sign bit set once
# the element is kept, ``wbits`` is the int32 view of the same memory (kept iff
# negative) and ``allowed`` marks the elements PHEW may keep (read only when
# ``dense`` is False).
# ---------------------------------------------------------------------------


@numba.njit(inline="always", **_JIT)
def _splitmix(state):
    """One step of the splitmix64 generator (Steele, Lea & Flood 2014):
    returns the new uint64 state and a uniform in [0, 1). Small, fast and the
    same on every platform."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def _seed_state(seed: int) -> np.ndarray:
    """The walks' generator state for ``seed`` (any Python int)."""
    return np.array([(int(seed) * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019) % 2 ** 64],
                    dtype=np.uint64)


@numba.njit(**_JIT)
def _span(o, c, blk, geo):
    """The weight elements behind channel edge ``(c -> o)`` of block ``blk``.

    Returns ``(ident, k0, k1, g0, kbase, pgi, kv)``: for ``k`` in ``[k0, k1)``
    the layer-input unit is ``j = k`` (identity structure map) or
    ``j = st_idx[k]``; it is in ``o``'s conv group iff ``0 <= j - g0 < pgi``,
    and then its kernel is ``kbase + (j - g0) * kv + [0, kv)`` in the
    concatenated flat weights.
    """
    b_layer, b_st, st_ptr, l_woff, l_pgi, l_opg, l_kv = (geo[0], geo[1], geo[2], geo[4], geo[5],
                                                          geo[6], geo[7])
    o = np.int64(o)
    c = np.int64(c)
    layer = b_layer[blk]
    pgi = l_pgi[layer]
    kv = l_kv[layer]
    g0 = (o // l_opg[layer]) * pgi
    kbase = l_woff[layer] + o * pgi * kv
    s = b_st[blk]
    if s < 0:
        return True, c, c + 1, g0, kbase, pgi, kv
    return False, st_ptr[s + c], st_ptr[s + c + 1], g0, kbase, pgi, kv


@numba.njit(**_JIT)
def _kernel_draw(base, kv, u, wk):
    """Element draw for one kernel whose elements are all allowed: inverse CDF
    over ``|wk[base:base + kv]|`` (uniform when they all weigh zero)."""
    total = 0.0
    for t in range(base, base + kv):
        total += abs(np.float64(wk[t]))
    if total > 0.0:
        r = u * total
        acc = 0.0
        for t in range(base, base + kv):
            acc += abs(np.float64(wk[t]))
            if acc > r:
                return t
        t = base + kv - 1  # pragma: no cover - rounding guard: the last nonzero element
        while wk[t] == 0.0:
            t -= 1
        return t
    return base + min(int(u * kv), kv - 1)


@numba.njit(**_JIT)
def _choose_element(o, c, blk, u, mode, geo, wk, wbits, allowed, dense):
    """One weight element of a channel edge (global flat index), or -1 if the
    edge has no allowed element.

    ``mode`` 0: drawn in proportion to ``|w|`` among the allowed elements
    (uniformly when they all weigh zero) by inverse CDF with the uniform
    ``u``; ``mode`` 1: the largest-``|w|`` allowed element not yet kept
    (lowest index on ties), or the first allowed one when all are kept.
    """
    if mode == 0 and dense and geo[1][blk] < 0:  # the common case: one whole kernel
        b_layer, l_woff, l_pgi, l_opg, l_kv = geo[0], geo[4], geo[5], geo[6], geo[7]
        o = np.int64(o)
        i = np.int64(c)
        layer = b_layer[blk]
        pgi = l_pgi[layer]
        kv = l_kv[layer]
        opg = l_opg[layer]
        if o >= opg:  # grouped conv: input units are numbered across groups
            i -= (o // opg) * pgi
        return _kernel_draw(l_woff[layer] + (o * pgi + i) * kv, kv, u, wk)
    st_idx = geo[3]
    ident, k0, k1, g0, kbase, pgi, kv = _span(o, c, blk, geo)
    total = 0.0
    n = 0
    first = -1
    best = -1
    best_w = -1.0
    for k in range(k0, k1):
        j = k if ident else st_idx[k]
        i = j - g0
        if i < 0 or i >= pgi:
            continue
        base = kbase + i * kv
        for t in range(base, base + kv):
            if not (dense or allowed[t]):
                continue
            if first < 0:
                first = t
            n += 1
            w = abs(np.float64(wk[t]))
            total += w
            if wbits[t] >= 0 and w > best_w:
                best = t
                best_w = w
    if n == 0:
        return -1
    if mode == 1:
        return best if best >= 0 else first
    uniform = not (total > 0.0)
    target = 0
    r = 0.0
    if uniform:
        target = min(int(u * n), n - 1)
    else:
        r = u * total
    acc = 0.0
    seen = 0
    last = first
    for k in range(k0, k1):
        j = k if ident else st_idx[k]
        i = j - g0
        if i < 0 or i >= pgi:
            continue
        base = kbase + i * kv
        for t in range(base, base + kv):
            if not (dense or allowed[t]):
                continue
            if uniform:
                if seen == target:
                    return t
                seen += 1
            else:
                w = abs(np.float64(wk[t]))
                if w > 0.0:
                    acc += w
                    last = t
                    if acc > r:
                        return t
    return last


@numba.njit(**_JIT)
def _edge_kept(o, c, blk, geo, wbits):
    """Whether a channel edge holds a kept element."""
    st_idx = geo[3]
    ident, k0, k1, g0, kbase, pgi, kv = _span(o, c, blk, geo)
    for k in range(k0, k1):
        j = k if ident else st_idx[k]
        i = j - g0
        if i < 0 or i >= pgi:
            continue
        base = kbase + i * kv
        for t in range(base, base + kv):
            if wbits[t] < 0:
                return True
    return False


@numba.njit(**_JIT)
def _walk(forward, start, rand, rng, ptr, rec, ntot, terminal, n_input, b_layer, b_st, l_woff,
          l_pgi, l_opg, l_kv, b_soff, b_doff, geo, wk, wbits, allowed, dense, count, budget, full,
          mode, path, elems):
    """One walk from node ``start`` over ``ptr/rec/ntot``: the out-edge CSR
    (forward) or the in-edge CSR (backward) with their alias tables. The
    arrays of ``geo`` come unpacked too (numba counts references when a tuple
    is unpacked).

    Step ``s`` uses ``rand[2s]`` for the edge and ``rand[2s+1]`` for the
    element; an empty ``rand`` draws them from the generator state ``rng``
    instead, in the same order. Writes the visited nodes to ``path`` and, per
    step, the chosen element to ``elems`` (-1 when the layer was already full).
    Returns ``(steps, elements added, some layer became full)``.

    Hot loop: the alias draw and the common element draw (as
    :func:`_kernel_draw`) are written out here, with every array unpacked
    once, so that numba emits no reference counting per step; the next step's
    record is read before the current step's element is chosen, so that their
    cache misses overlap.
    """
    fast = mode == 0 and dense
    draw = rand.shape[0] == 0
    state = rng[0]
    path[0] = start
    if (terminal[start] != 0) if forward else (start < n_input):
        return 0, 0, False
    lo = ptr[start]
    hi = ptr[start + 1]
    if hi <= lo or not (ntot[start] > 0.0):
        return 0, 0, False  # dead end: cannot happen with tables from _refresh
    if draw:
        state, u = _splitmix(state)
        state, v = _splitmix(state)
    else:
        u = rand[0]
        v = rand[1]
    node = start
    m = hi - lo
    x = u * m
    k = min(int(x), m - 1)
    s = lo + k
    frac = x - k
    prob, nbr, anbr, blk, ablk = rec[s].prob, rec[s].nbr, rec[s].anbr, rec[s].blk, rec[s].ablk
    steps = 0
    added = 0
    filled = False
    v2 = 0.0
    while True:
        if frac < prob:
            nxt = np.int64(nbr)
            b = np.int64(blk)
        else:
            nxt = np.int64(anbr)
            b = np.int64(ablk)
        go_on = (terminal[nxt] == 0) if forward else (nxt >= n_input)
        if go_on:  # issue the next step's read now
            lo = ptr[nxt]
            hi = ptr[nxt + 1]
            if hi <= lo or not (ntot[nxt] > 0.0):
                go_on = False  # dead end: cannot happen with tables from _refresh
            else:
                if draw:
                    state, u = _splitmix(state)
                    state, v2 = _splitmix(state)
                else:
                    u = rand[2 * steps + 2]
                    v2 = rand[2 * steps + 3]
                m = hi - lo
                x = u * m
                k = min(int(x), m - 1)
                s = lo + k
                frac = x - k
                prob, nbr, anbr = rec[s].prob, rec[s].nbr, rec[s].anbr
                blk, ablk = rec[s].blk, rec[s].ablk
        layer = b_layer[b]
        elem = -1
        if not full[layer]:
            if forward:
                o = nxt - b_doff[b]
                c = node - b_soff[b]
            else:
                o = node - b_doff[b]
                c = nxt - b_soff[b]
            if fast and b_st[b] < 0:  # one whole kernel, all allowed: _kernel_draw
                pgi = l_pgi[layer]
                kv = l_kv[layer]
                opg = l_opg[layer]
                i = c
                if o >= opg:  # grouped conv: input units are numbered across groups
                    i -= (o // opg) * pgi
                base = l_woff[layer] + (o * pgi + i) * kv
                total = 0.0
                for t in range(base, base + kv):
                    total += abs(np.float64(wk[t]))
                if total > 0.0:
                    r = v * total
                    acc = 0.0
                    elem = base + kv - 1
                    for t in range(base, base + kv):
                        acc += abs(np.float64(wk[t]))
                        if acc > r:
                            elem = t
                            break
                    while wk[elem] == 0.0:  # rounding guard, as in _kernel_draw
                        elem -= 1
                else:
                    elem = base + min(int(v * kv), kv - 1)
            else:
                elem = _choose_element(o, c, b, v, mode, geo, wk, wbits, allowed, dense)
            if elem >= 0 and wbits[elem] >= 0:
                wbits[elem] = wbits[elem] | _SIGN
                count[layer] += 1
                added += 1
                if count[layer] >= budget[layer]:
                    full[layer] = 1
                    filled = True
        elems[steps] = elem
        steps += 1
        path[steps] = nxt
        if not go_on:
            break
        node = nxt
        v = v2
    rng[0] = state
    return steps, added, filled


@numba.njit(**_JIT)
def _walk_pair(fstart, bstart, rand, rng, fptr, frec, fntot, bptr, brec, bntot, terminal,
               n_input, b_layer, b_st, l_woff, l_pgi, l_opg, l_kv, b_soff, b_doff, geo, wk,
               wbits, allowed, dense, count, budget, full, mode, paths, elems, steps_out):
    """A forward walk from ``fstart`` and a backward walk from ``bstart``, run in
    lockstep so that the cache misses of the two walks overlap (the walks are
    bound by memory latency). :func:`_run` uses it only while every open layer
    has at least two free slots: each walk adds at most one element per layer,
    so no layer can fill while the other walk still has to cross it, and the
    tables stay valid for the whole round.

    Each step takes a pair ``(u, v)`` as in :func:`_walk`, in the order: the
    forward walk's first, the backward walk's first, then per lockstep step the
    forward walk's next (if it goes on) and the backward walk's next. An empty
    ``rand`` draws from the generator state ``rng``. ``paths[w]``,
    ``elems[w]`` and ``steps_out[w]`` are as in :func:`_walk` for walk ``w``
    (0 forward, 1 backward). Returns ``(elements added, some layer became
    full)``. The step code is written out twice on purpose (see _walk).
    """
    fast = mode == 0 and dense
    draw = rand.shape[0] == 0
    state = rng[0]
    cur = 0
    added = 0
    filled = False
    # -- forward walk: first record ------------------------------------------------
    a_on = not (terminal[fstart] != 0)
    a_node = fstart
    a_steps = 0
    a_frac = a_v = 0.0
    a_prob = np.float32(0.0)
    a_nbr = a_anbr = np.int32(0)
    a_blk = a_ablk = np.int16(0)
    paths[0, 0] = fstart
    if a_on:
        lo = fptr[fstart]
        hi = fptr[fstart + 1]
        if hi <= lo or not (fntot[fstart] > 0.0):
            a_on = False  # dead end: cannot happen with tables from _refresh
        else:
            if draw:
                state, u = _splitmix(state)
                state, a_v = _splitmix(state)
            else:
                u = rand[cur]
                a_v = rand[cur + 1]
                cur += 2
            m = hi - lo
            x = u * m
            k = min(int(x), m - 1)
            a_frac = x - k
            a_prob, a_nbr, a_anbr = frec[lo + k].prob, frec[lo + k].nbr, frec[lo + k].anbr
            a_blk, a_ablk = frec[lo + k].blk, frec[lo + k].ablk
    # -- backward walk: first record -----------------------------------------------
    b_on = not (bstart < n_input)
    b_node = bstart
    b_steps = 0
    b_frac = b_v = 0.0
    b_prob = np.float32(0.0)
    b_nbr = b_anbr = np.int32(0)
    b_blk = b_ablk = np.int16(0)
    paths[1, 0] = bstart
    if b_on:
        lo = bptr[bstart]
        hi = bptr[bstart + 1]
        if hi <= lo or not (bntot[bstart] > 0.0):
            b_on = False
        else:
            if draw:
                state, u = _splitmix(state)
                state, b_v = _splitmix(state)
            else:
                u = rand[cur]
                b_v = rand[cur + 1]
                cur += 2
            m = hi - lo
            x = u * m
            k = min(int(x), m - 1)
            b_frac = x - k
            b_prob, b_nbr, b_anbr = brec[lo + k].prob, brec[lo + k].nbr, brec[lo + k].anbr
            b_blk, b_ablk = brec[lo + k].blk, brec[lo + k].ablk
    while a_on or b_on:
        # -- phase 1: take the drawn edges and issue both next reads -------------------
        a_go = False
        a_nxt = a_b = 0
        a_vc = a_v
        if a_on:
            if a_frac < a_prob:
                a_nxt = np.int64(a_nbr)
                a_b = np.int64(a_blk)
            else:
                a_nxt = np.int64(a_anbr)
                a_b = np.int64(a_ablk)
            a_go = terminal[a_nxt] == 0
            if a_go:
                lo = fptr[a_nxt]
                hi = fptr[a_nxt + 1]
                if hi <= lo or not (fntot[a_nxt] > 0.0):
                    a_go = False
                else:
                    if draw:
                        state, u = _splitmix(state)
                        state, a_v = _splitmix(state)
                    else:
                        u = rand[cur]
                        a_v = rand[cur + 1]
                        cur += 2
                    m = hi - lo
                    x = u * m
                    k = min(int(x), m - 1)
                    a_frac = x - k
                    a_prob, a_nbr = frec[lo + k].prob, frec[lo + k].nbr
                    a_anbr, a_blk, a_ablk = frec[lo + k].anbr, frec[lo + k].blk, frec[lo + k].ablk
        b_go = False
        b_nxt = b_b = 0
        b_vc = b_v
        if b_on:
            if b_frac < b_prob:
                b_nxt = np.int64(b_nbr)
                b_b = np.int64(b_blk)
            else:
                b_nxt = np.int64(b_anbr)
                b_b = np.int64(b_ablk)
            b_go = b_nxt >= n_input
            if b_go:
                lo = bptr[b_nxt]
                hi = bptr[b_nxt + 1]
                if hi <= lo or not (bntot[b_nxt] > 0.0):
                    b_go = False
                else:
                    if draw:
                        state, u = _splitmix(state)
                        state, b_v = _splitmix(state)
                    else:
                        u = rand[cur]
                        b_v = rand[cur + 1]
                        cur += 2
                    m = hi - lo
                    x = u * m
                    k = min(int(x), m - 1)
                    b_frac = x - k
                    b_prob, b_nbr = brec[lo + k].prob, brec[lo + k].nbr
                    b_anbr, b_blk, b_ablk = brec[lo + k].anbr, brec[lo + k].blk, brec[lo + k].ablk
        # -- phase 2: the forward walk's element ---------------------------------------
        if a_on:
            layer = b_layer[a_b]
            elem = -1
            if not full[layer]:
                o = a_nxt - b_doff[a_b]
                c = a_node - b_soff[a_b]
                if fast and b_st[a_b] < 0:
                    pgi = l_pgi[layer]
                    kv = l_kv[layer]
                    opg = l_opg[layer]
                    i = c
                    if o >= opg:
                        i -= (o // opg) * pgi
                    base = l_woff[layer] + (o * pgi + i) * kv
                    total = 0.0
                    for t in range(base, base + kv):
                        total += abs(np.float64(wk[t]))
                    if total > 0.0:
                        r = a_vc * total
                        acc = 0.0
                        elem = base + kv - 1
                        for t in range(base, base + kv):
                            acc += abs(np.float64(wk[t]))
                            if acc > r:
                                elem = t
                                break
                        while wk[elem] == 0.0:
                            elem -= 1
                    else:
                        elem = base + min(int(a_vc * kv), kv - 1)
                else:
                    elem = _choose_element(o, c, a_b, a_vc, mode, geo, wk, wbits, allowed, dense)
                if elem >= 0 and wbits[elem] >= 0:
                    wbits[elem] = wbits[elem] | _SIGN
                    count[layer] += 1
                    added += 1
                    if count[layer] >= budget[layer]:
                        full[layer] = 1
                        filled = True
            elems[0, a_steps] = elem
            a_steps += 1
            paths[0, a_steps] = a_nxt
            a_node = a_nxt
            a_on = a_go
        # -- phase 2: the backward walk's element --------------------------------------
        if b_on:
            layer = b_layer[b_b]
            elem = -1
            if not full[layer]:
                o = b_node - b_doff[b_b]
                c = b_nxt - b_soff[b_b]
                if fast and b_st[b_b] < 0:
                    pgi = l_pgi[layer]
                    kv = l_kv[layer]
                    opg = l_opg[layer]
                    i = c
                    if o >= opg:
                        i -= (o // opg) * pgi
                    base = l_woff[layer] + (o * pgi + i) * kv
                    total = 0.0
                    for t in range(base, base + kv):
                        total += abs(np.float64(wk[t]))
                    if total > 0.0:
                        r = b_vc * total
                        acc = 0.0
                        elem = base + kv - 1
                        for t in range(base, base + kv):
                            acc += abs(np.float64(wk[t]))
                            if acc > r:
                                elem = t
                                break
                        while wk[elem] == 0.0:
                            elem -= 1
                    else:
                        elem = base + min(int(b_vc * kv), kv - 1)
                else:
                    elem = _choose_element(o, c, b_b, b_vc, mode, geo, wk, wbits, allowed, dense)
                if elem >= 0 and wbits[elem] >= 0:
                    wbits[elem] = wbits[elem] | _SIGN
                    count[layer] += 1
                    added += 1
                    if count[layer] >= budget[layer]:
                        full[layer] = 1
                        filled = True
            elems[1, b_steps] = elem
            b_steps += 1
            paths[1, b_steps] = b_nxt
            b_node = b_nxt
            b_on = b_go
    rng[0] = state
    steps_out[0] = a_steps
    steps_out[1] = b_steps
    return added, filled


@numba.njit(**_JIT)
def _close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty):
    """A full layer keeps only its channel edges that hold a kept element; the
    ends of every edge it drops get their transition tables rebuilt."""
    e_o, e_c, e_block, l_e0 = edges
    b_st, l_woff, l_pgi, l_opg, l_kv = geo[1], geo[4], geo[5], geo[6], geo[7]
    b_soff, b_doff = geo[8], geo[9]
    pgi = l_pgi[layer]
    kv = l_kv[layer]
    opg = l_opg[layer]
    for e in range(l_e0[layer], l_e0[layer + 1]):
        if not enabled[e]:
            continue
        blk = e_block[e]
        o = np.int64(e_o[e])
        c = np.int64(e_c[e])
        if b_st[blk] < 0:  # one kernel, scanned here (the common case)
            i = c - (o // opg) * pgi
            base = l_woff[layer] + (o * pgi + i) * kv
            kept = False
            for t in range(base, base + kv):
                if wbits[t] < 0:
                    kept = True
                    break
        else:
            kept = _edge_kept(o, c, blk, geo, wbits)
        if not kept:
            enabled[e] = 0
            fdirty[b_soff[blk] + c] = 1
            bdirty[b_doff[blk] + o] = 1


@numba.njit(**_JIT)
def _reach(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out):
    """Reachability over the enabled edges: from the inputs, and to the outputs.
    Node ids are ordered by group and edges go from lower to higher groups."""
    fptr, frec, feid = fwd[0], fwd[1], fwd[2]
    bptr, brec, beid = bwd[0], bwd[1], bwd[2]
    n_nodes = reach_in.shape[0]
    for n in range(n_nodes):
        if n < n_input:
            reach_in[n] = 1
            continue
        hit = 0
        for p in range(bptr[n], bptr[n + 1]):
            if enabled[beid[p]] and reach_in[brec[p].nbr]:
                hit = 1
                break
        reach_in[n] = hit
    for n in range(n_nodes - 1, -1, -1):
        if terminal[n]:
            reach_out[n] = 1
            continue
        hit = 0
        for p in range(fptr[n], fptr[n + 1]):
            if enabled[feid[p]] and reach_out[frec[p].nbr]:
                hit = 1
                break
        reach_out[n] = hit


@numba.njit(**_JIT)
def _alias_table(rec, lo, q, small, large, alias):
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
def _node_table(n, tables, enabled, target_ok, q, small, large, alias):
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
        _alias_table(rec, lo, q[:m], small, large, alias)
    else:
        for p in range(lo, hi):
            rec[p].prob = 0.0


@numba.njit(**_JIT)
def _refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty, bdirty, edges,
             geo, full):
    """Bring reachability and the transition tables up to date after edges were
    disabled (``fdirty``/``bdirty`` mark the nodes whose own edges changed);
    return whether some open layer has an edge on an enabled input-to-output
    path."""
    fptr, frec = fwd[0], fwd[1]
    bptr, brec = bwd[0], bwd[1]
    old_in = reach_in.copy()
    old_out = reach_out.copy()
    _reach(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out)
    n_nodes = reach_in.shape[0]
    max_deg = 1
    for n in range(n_nodes):
        max_deg = max(max_deg, fptr[n + 1] - fptr[n], bptr[n + 1] - bptr[n])
        if reach_out[n] != old_out[n]:  # its predecessors' forward tables change
            for p in range(bptr[n], bptr[n + 1]):
                fdirty[brec[p].nbr] = 1
        if reach_in[n] != old_in[n]:  # its successors' backward tables change
            for p in range(fptr[n], fptr[n + 1]):
                bdirty[frec[p].nbr] = 1
    q = np.empty(max_deg)
    small = np.empty(max_deg, dtype=np.int64)
    large = np.empty(max_deg, dtype=np.int64)
    alias = np.empty(max_deg, dtype=np.int64)
    for n in range(n_nodes):
        if fdirty[n]:
            _node_table(n, fwd, enabled, reach_out, q, small, large, alias)
            fdirty[n] = 0
        if bdirty[n]:
            _node_table(n, bwd, enabled, reach_in, q, small, large, alias)
            bdirty[n] = 0
    e_o, e_c, e_block, l_e0 = edges
    b_soff, b_doff = geo[8], geo[9]
    for layer in range(full.shape[0]):
        if full[layer]:
            continue
        for e in range(l_e0[layer], l_e0[layer + 1]):
            blk = e_block[e]
            if reach_in[b_soff[blk] + e_c[e]] and reach_out[b_doff[blk] + e_o[e]]:
                return True
    return False


@numba.njit(**_JIT)
def _run(rng, mode, stall_window, min_added, max_walks, n_input, term_nodes, max_steps, fwd, bwd,
         edges, geo, terminal, wk, wbits, allowed, dense, count, budget, full, enabled, reach_in,
         reach_out, stats, full_after):
    """Rounds of a forward and a backward walk (:func:`_walk_pair`, or
    :func:`_walk` one at a time near a layer's last slot) until the budgets are
    met or the walks stop adding; tables are updated after a round that filled
    a layer.

    ``stats`` receives (walks, forward, backward, stop reason, elements added,
    refreshes, steps), ``full_after`` the number of walks after which each
    layer was full (0: before walking, -1: never).
    """
    fptr, frec, fntot = fwd[0], fwd[1], fwd[4]
    bptr, brec, bntot = bwd[0], bwd[1], bwd[4]
    b_layer, b_st, l_woff, l_pgi, l_opg, l_kv = geo[0], geo[1], geo[4], geo[5], geo[6], geo[7]
    b_soff, b_doff = geo[8], geo[9]
    n_layers = budget.shape[0]
    n_nodes = reach_in.shape[0]
    fdirty = np.ones(n_nodes, dtype=np.uint8)
    bdirty = np.ones(n_nodes, dtype=np.uint8)
    reach_in[:] = 0
    reach_out[:] = 0
    closed = np.zeros(n_layers, dtype=np.uint8)
    n_open = 0
    for layer in range(n_layers):
        if full[layer]:
            _close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty)
            closed[layer] = 1
            full_after[layer] = 0
        else:
            full_after[layer] = -1
            n_open += 1
    useful = _refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty, bdirty,
                      edges, geo, full)
    n_refresh = 1
    no_rand = np.empty(0)
    path = np.empty(max_steps + 2, dtype=np.int64)
    elems = np.empty(max_steps + 1, dtype=np.int64)
    paths = np.empty((2, max_steps + 2), dtype=np.int64)
    elems2 = np.empty((2, max_steps + 1), dtype=np.int64)
    steps2 = np.zeros(2, dtype=np.int64)
    n_term = term_nodes.shape[0]
    walks = 0
    n_fwd = 0
    n_bwd = 0
    n_steps = 0
    win_walks = 0  # walks and additions in the current stall window
    win_added = 0
    total_added = 0
    fi = -1
    bi = -1
    reason = 0
    next_report = PROGRESS_EVERY
    while True:
        if walks >= next_report:
            next_report = walks + PROGRESS_EVERY
            _progress(count, budget)
        if n_open == 0:
            reason = 0
            break
        if not useful:
            reason = 1
            break
        if walks >= max_walks:
            reason = 3
            break
        slack = 2  # free slots of the tightest open layer (2 means "at least 2")
        for layer in range(n_layers):
            if not full[layer] and budget[layer] - count[layer] < slack:
                slack = budget[layer] - count[layer]
        pair = slack >= 2 and walks + 2 <= max_walks
        forward = walks % 2 == 0
        fstart = -1
        if forward or pair:  # round-robin over the input units that reach an output
            for _ in range(n_input):
                fi = fi + 1 if fi + 1 < n_input else 0
                if reach_out[fi]:
                    fstart = fi
                    break
        bstart = -1
        if not forward or pair:  # and over the output units that an input reaches
            for _ in range(n_term):
                bi = bi + 1 if bi + 1 < n_term else 0
                if reach_in[term_nodes[bi]]:
                    bstart = term_nodes[bi]
                    break
        if ((forward or pair) and fstart < 0) or ((not forward or pair) and bstart < 0):
            reason = 1  # pragma: no cover - ``useful`` implies both kinds of start
            break
        if pair:  # a forward and a backward walk in lockstep
            added, filled = _walk_pair(fstart, bstart, no_rand, rng, fptr, frec, fntot, bptr,
                                       brec, bntot, terminal, n_input, b_layer, b_st, l_woff,
                                       l_pgi, l_opg, l_kv, b_soff, b_doff, geo, wk, wbits,
                                       allowed, dense, count, budget, full, mode, paths, elems2,
                                       steps2)
            walks += 2
            n_fwd += 1
            n_bwd += 1
            n_steps += steps2[0] + steps2[1]
            in_round = 2
        else:  # a layer is one slot from full: one walk at a time
            walks += 1
            if forward:
                n_fwd += 1
                steps, added, filled = _walk(forward, fstart, no_rand, rng, fptr, frec, fntot,
                                             terminal, n_input, b_layer, b_st, l_woff, l_pgi,
                                             l_opg, l_kv, b_soff, b_doff, geo, wk, wbits,
                                             allowed, dense, count, budget, full, mode, path,
                                             elems)
            else:
                n_bwd += 1
                steps, added, filled = _walk(forward, bstart, no_rand, rng, bptr, brec, bntot,
                                             terminal, n_input, b_layer, b_st, l_woff, l_pgi,
                                             l_opg, l_kv, b_soff, b_doff, geo, wk, wbits,
                                             allowed, dense, count, budget, full, mode, path,
                                             elems)
            n_steps += steps
            in_round = 1
        total_added += added
        if filled:
            for layer in range(n_layers):
                if full[layer] and not closed[layer]:
                    _close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty)
                    closed[layer] = 1
                    full_after[layer] = walks
                    n_open -= 1
            useful = _refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty,
                              bdirty, edges, geo, full)
            n_refresh += 1
        win_walks += in_round
        win_added += added
        if win_walks >= stall_window:
            if win_added < min_added and n_open > 0:
                reason = 2
                break
            win_walks = 0
            win_added = 0
    if next_report > PROGRESS_EVERY:  # progress was reported: report where it ended
        _progress(count, budget)
    stats[0] = walks
    stats[1] = n_fwd
    stats[2] = n_bwd
    stats[3] = reason
    stats[4] = total_added
    stats[5] = n_refresh
    stats[6] = n_steps


@numba.njit(**_JIT)
def _mark_bridging(layer, edges, geo, reach_in, reach_out, flags):
    """``flags[t - l_woff[layer]] = 1`` for the elements of the layer's channel
    edges whose two ends are both on kept input-to-output paths."""
    e_o, e_c, e_block, l_e0 = edges
    st_idx, l_woff, b_soff, b_doff = geo[3], geo[4], geo[8], geo[9]
    off = l_woff[layer]
    for e in range(l_e0[layer], l_e0[layer + 1]):
        blk = e_block[e]
        if not (reach_in[b_soff[blk] + e_c[e]] and reach_out[b_doff[blk] + e_o[e]]):
            continue
        ident, k0, k1, g0, kbase, pgi, kv = _span(e_o[e], e_c[e], blk, geo)
        for k in range(k0, k1):
            j = k if ident else st_idx[k]
            i = j - g0
            if i < 0 or i >= pgi:
                continue
            base = kbase + i * kv
            for t in range(base, base + kv):
                flags[t - off] = 1


@numba.njit(**_JIT)
def _records(order, far_node, e_block):
    """CSR records for the edges in ``order`` (alias fields are set later)."""
    rec = np.zeros(order.shape[0], dtype=EDGE_RECORD)
    for p in range(order.shape[0]):
        e = order[p]
        rec[p].nbr = far_node[e]
        rec[p].blk = e_block[e]
    return rec


# ---------------------------------------------------------------------------
# graph construction
# ---------------------------------------------------------------------------


@dataclass
class _WalkGraph:
    """The channel graph as flat arrays for the kernels (see :func:`_build`).

    Nodes are numbered group by group (``goff``); edges are the entries of the
    channel blocks, numbered block by block (the blocks of a layer are
    consecutive: ``l_e0``), with block row ``e_o`` and column ``e_c``; block
    ``b`` runs from node ``b_soff[b] + c`` to node ``b_doff[b] + o``. ``fwd``
    and ``bwd`` are the out- and in-edge CSR: ``(ptr, records, edge id per
    position, summed |w| per position, total transition weight per node)``.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    n_input: int
    goff: np.ndarray
    term_nodes: np.ndarray
    terminal: np.ndarray  # uint8 per node
    fwd: tuple
    bwd: tuple
    edges: tuple  # (e_o, e_c, e_block, l_e0)
    geo: tuple  # (b_layer, b_st, st_ptr, st_idx, l_woff, l_pgi, l_opg, l_kv, b_soff, b_doff)
    absw: list  # float64 |w| per layer, flat
    allowed: np.ndarray  # uint8 per weight element: unpruned in ``topo``
    max_steps: int

    @property
    def l_woff(self) -> np.ndarray:
        return self.geo[4]

    @property
    def n_nodes(self) -> int:
        return int(self.goff[-1])


def _build(topo, abs_weights: Mapping[str, Any]) -> _WalkGraph:
    layers = topo.layers
    channel = topo.channel_structure
    n_groups = len(layers) + 1
    sizes = [int(channel.sizes[g]) for g in range(n_groups)]
    goff = np.zeros(n_groups + 1, dtype=np.int64)
    goff[1:] = np.cumsum(sizes)
    n_nodes = int(goff[-1])

    missing = [layer.param for layer in layers if layer.param not in abs_weights]
    if missing:
        raise KeyError(f"abs_weights lacks {missing}")
    flat = [abs_weights_array(layer.param, abs_weights[layer.param], layer.weight_shape)
            for layer in layers]
    l_woff = np.zeros(len(layers) + 1, dtype=np.int64)
    l_woff[1:] = np.cumsum([f.size for f in flat])
    masks = topo.masks
    allowed = np.concatenate([np.asarray(masks[layer.param], dtype=np.uint8).reshape(-1)
                              for layer in layers])
    l_pgi = np.array([layer.weight_shape[1] for layer in layers], dtype=np.int64)
    l_opg = np.array([layer.out_per_group for layer in layers], dtype=np.int64)
    l_kv = np.array([layer.kernel_volume for layer in layers], dtype=np.int64)

    blocks = topo.flows({layer.param: f.reshape(layer.weight_shape)
                         for layer, f in zip(layers, flat, strict=True)}, "channel").blocks
    pairs = [(layer, src, S) for layer, inputs in enumerate(channel.layer_inputs)
             for src, S in inputs.items()]
    if len(pairs) != len(blocks):  # pragma: no cover - build_blocks emits one block per pair
        raise AssertionError("channel blocks do not match the layer inputs")
    if len(blocks) > np.iinfo(np.int16).max:  # pragma: no cover - EDGE_RECORD.blk is int16
        raise ValueError("the network has too many channel blocks for PHEW's edge records")

    n_blocks = len(blocks)
    b_layer = np.zeros(n_blocks, dtype=np.int64)
    b_st = np.full(n_blocks, -1, dtype=np.int64)
    b_soff = np.zeros(n_blocks, dtype=np.int64)
    b_doff = np.zeros(n_blocks, dtype=np.int64)
    b_e0 = np.zeros(n_blocks + 1, dtype=np.int64)
    st_ptr_parts, st_idx_parts = [], []
    st_ptr_len = st_idx_len = 0
    l_e0 = np.zeros(len(layers) + 1, dtype=np.int64)
    for b, (blk, (layer, src, S)) in enumerate(zip(blocks, pairs, strict=True)):
        if blk.src != src or blk.dst != layer + 1:  # pragma: no cover
            raise AssertionError("channel blocks are not in layer-input order")
        b_layer[b] = layer
        b_soff[b] = goff[src]
        b_doff[b] = goff[layer + 1]
        b_e0[b + 1] = b_e0[b] + blk.nnz
        l_e0[layer + 1] = b_e0[b + 1]
        if S is not None:
            St = sp.csr_array(sp.csr_array(S).T)
            St.eliminate_zeros()
            St.sum_duplicates()
            St.sort_indices()
            b_st[b] = st_ptr_len
            st_ptr_parts.append(np.asarray(St.indptr, dtype=np.int64) + st_idx_len)
            st_idx_parts.append(np.asarray(St.indices, dtype=np.int64))
            st_ptr_len += St.indptr.size
            st_idx_len += St.indices.size
    for layer in range(1, len(layers) + 1):  # a layer without blocks
        l_e0[layer] = max(l_e0[layer], l_e0[layer - 1])
    n_edges = int(b_e0[-1])
    if n_edges >= 2 ** 31 or n_nodes >= 2 ** 31:  # pragma: no cover - int32 ids
        raise ValueError("the channel graph is too large for PHEW's int32 edge records")

    e_o = np.empty(n_edges, dtype=np.int32)
    e_c = np.empty(n_edges, dtype=np.int32)
    e_block = np.empty(n_edges, dtype=np.int16)
    data = np.empty(n_edges, dtype=np.float64)
    e_src = np.empty(n_edges, dtype=np.int64)
    e_dst = np.empty(n_edges, dtype=np.int64)
    for b, blk in enumerate(blocks):
        sl = slice(b_e0[b], b_e0[b + 1])
        indptr = np.asarray(blk.indptr, dtype=np.int64)
        rows = np.repeat(np.arange(blk.shape[0], dtype=np.int64), np.diff(indptr))
        e_o[sl] = rows
        e_c[sl] = blk.indices
        e_block[sl] = b
        data[sl] = blk.data
        e_src[sl] = b_soff[b] + e_c[sl]
        e_dst[sl] = b_doff[b] + rows
    st_ptr = np.concatenate(st_ptr_parts) if st_ptr_parts else np.zeros(1, np.int64)
    st_idx = np.concatenate(st_idx_parts) if st_idx_parts else np.zeros(1, np.int64)
    geo = (b_layer, b_st, st_ptr, st_idx, l_woff, l_pgi, l_opg, l_kv, b_soff, b_doff)

    tables = []
    for key, far in ((e_src, e_dst), (e_dst, e_src)):
        ptr, order = group_by(key, n_nodes)  # stable: block order, then row order
        tables.append((ptr, _records(order, far, e_block), order.astype(np.int32),
                       data[order], np.zeros(n_nodes)))
    del e_src, e_dst

    terminal = np.zeros(n_nodes, dtype=np.uint8)
    for g, S in channel.outputs.items():
        if S is None:
            terminal[goff[g]:goff[g + 1]] = 1
        else:
            col = np.asarray(abs(sp.csr_array(S)).sum(axis=0)).ravel()
            terminal[goff[g]:goff[g + 1]] = col > 0
    return _WalkGraph(
        names=[layer.param for layer in layers],
        shapes=[tuple(layer.weight_shape) for layer in layers],
        n_input=sizes[0], goff=goff, term_nodes=np.flatnonzero(terminal).astype(np.int64),
        terminal=terminal, fwd=tables[0], bwd=tables[1], edges=(e_o, e_c, e_block, l_e0),
        geo=geo, absw=flat, allowed=allowed, max_steps=n_groups,
    )


@dataclass
class _WalkState:
    wk: np.ndarray  # float32 |w| per weight element, sign bit set once kept
    count: np.ndarray
    budget: np.ndarray
    full: np.ndarray
    enabled: np.ndarray
    reach_in: np.ndarray
    reach_out: np.ndarray

    @property
    def wbits(self) -> np.ndarray:
        return self.wk.view(np.int32)

    def kept(self, lo: int, hi: int) -> np.ndarray:
        return self.wbits[lo:hi] < 0


def _initial_state(graph: _WalkGraph, budgets: Mapping[str, int]) -> _WalkState:
    n_layers = len(graph.names)
    budget = np.zeros(n_layers, dtype=np.int64)
    count = np.zeros(n_layers, dtype=np.int64)
    full = np.zeros(n_layers, dtype=np.uint8)
    wk = np.concatenate(graph.absw).astype(np.float32)
    l_woff = graph.l_woff
    for layer, name in enumerate(graph.names):
        lo, hi = l_woff[layer], l_woff[layer + 1]
        n_allowed = int(np.count_nonzero(graph.allowed[lo:hi]))
        b = budgets[name]
        try:
            ok = not isinstance(b, (bool, np.bool_)) and float(b) == int(b)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"budgets['{name}'] must be an integer, got {b!r}")
        b = int(b)
        if not 0 <= b <= n_allowed:
            raise ValueError(f"budgets['{name}'] = {b} is outside [0, {n_allowed}] (the "
                             "layer's prunable weights)")
        budget[layer] = b
        if b == n_allowed:  # nothing to choose: keep every allowed weight
            wk.view(np.int32)[lo:hi][graph.allowed[lo:hi] != 0] |= _SIGN
            count[layer] = b
        full[layer] = b == n_allowed or b == 0
    return _WalkState(wk=wk, count=count, budget=budget, full=full,
                      enabled=np.ones(graph.edges[0].size, dtype=np.uint8),
                      reach_in=np.zeros(graph.n_nodes, dtype=np.uint8),
                      reach_out=np.zeros(graph.n_nodes, dtype=np.uint8))


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


@dataclass
class PhewStats:
    """What the walks did (returned by :func:`phew_run`)."""

    walks: int
    forward_walks: int
    backward_walks: int
    stop_reason: str  # one of STOP_REASONS
    added_by_walks: int  # elements the walks added
    refreshes: int  # transition-table updates (one per batch of layers filling up)
    steps: int  # edges traversed by all walks
    walk_kept: dict[str, int] = field(default_factory=dict)  # per layer, before the fill
    filled: dict[str, int] = field(default_factory=dict)  # per layer, by the final fill
    # per layer: walks done when it reached its budget (0: before walking, -1: never)
    full_after: dict[str, int] = field(default_factory=dict)


def _fill(graph: _WalkGraph, state: _WalkState) -> dict[str, int]:
    """Top every layer up to its budget (see the module docstring)."""
    if not np.any(state.count < state.budget):
        return {}
    # Units on kept input-to-output paths: every layer closed to its kept edges.
    kept_edges = state.enabled.copy()
    n_nodes = graph.n_nodes
    scratch = np.zeros(n_nodes, dtype=np.uint8), np.zeros(n_nodes, dtype=np.uint8)
    for layer in range(len(graph.names)):
        _close_layer(layer, graph.edges, kept_edges, graph.geo, state.wbits, *scratch)
    reach_in = np.zeros(n_nodes, dtype=np.uint8)
    reach_out = np.zeros(n_nodes, dtype=np.uint8)
    _reach(graph.n_input, graph.fwd, graph.bwd, kept_edges, graph.terminal, reach_in, reach_out)
    filled = {}
    for layer, name in enumerate(graph.names):
        need = int(state.budget[layer] - state.count[layer])
        if need <= 0:
            continue
        lo, hi = int(graph.l_woff[layer]), int(graph.l_woff[layer + 1])
        free = ~state.kept(lo, hi) & (graph.allowed[lo:hi] != 0)
        bridging = np.zeros(hi - lo, dtype=np.uint8)
        _mark_bridging(layer, graph.edges, graph.geo, reach_in, reach_out, bridging)
        w = graph.absw[layer]
        chosen = []
        for tier in (free & (bridging != 0), free & (bridging == 0)):
            if need <= 0:
                break
            idx = np.flatnonzero(tier)
            if idx.size > need:
                idx = idx[np.argsort(-w[idx], kind="stable")[:need]]
            chosen.append(idx)
            need -= idx.size
        if need > 0:  # pragma: no cover - budgets were validated against allowed
            raise AssertionError(f"cannot fill '{name}'")
        idx = np.concatenate(chosen) + lo
        state.wbits[idx] |= _SIGN  # kept
        state.count[layer] += idx.size
        filled[name] = int(idx.size)
    return filled


def _prepare_tables(graph: _WalkGraph, state: _WalkState) -> bool:
    """Close the full layers and build every transition table (what :func:`_run`
    does before its first walk); returns whether some open layer is on a path.
    For tests and tools that call :func:`_walk` directly."""
    n = graph.n_nodes
    fdirty = np.ones(n, dtype=np.uint8)
    bdirty = np.ones(n, dtype=np.uint8)
    for layer in np.flatnonzero(state.full):
        _close_layer(int(layer), graph.edges, state.enabled, graph.geo, state.wbits, fdirty,
                     bdirty)
    return bool(_refresh(graph.n_input, graph.fwd, graph.bwd, state.enabled, graph.terminal,
                         state.reach_in, state.reach_out, fdirty, bdirty, graph.edges, graph.geo,
                         state.full))


def _walk_once(graph: _WalkGraph, state: _WalkState, forward: bool, start: int,
               rand: np.ndarray, mode: int = 0):
    """One walk with the pre-drawn uniforms ``rand`` (two per step) on prepared
    tables; returns ``(path, elements, added, a layer filled)`` where
    ``elements[s]`` is the flat index (over all layers) chosen at step ``s``."""
    path = np.empty(graph.max_steps + 2, dtype=np.int64)
    elems = np.empty(graph.max_steps + 1, dtype=np.int64)
    tables = graph.fwd if forward else graph.bwd
    geo = graph.geo
    dense = bool(np.all(graph.allowed != 0))
    steps, added, filled = _walk(
        bool(forward), int(start), np.ascontiguousarray(rand, dtype=np.float64),
        _seed_state(0), tables[0], tables[1], tables[4], graph.terminal, graph.n_input, geo[0],
        geo[1], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo, state.wk, state.wbits,
        graph.allowed, dense, state.count, state.budget, state.full, mode, path, elems)
    return path[:steps + 1].copy(), elems[:steps].copy(), int(added), bool(filled)


def _walk_pair_once(graph: _WalkGraph, state: _WalkState, fstart: int, bstart: int,
                    rand: np.ndarray, mode: int = 0):
    """:func:`_walk_pair` with pre-drawn uniforms on prepared tables; returns
    ``((forward path, forward elements), (backward path, backward elements),
    added, a layer filled)``."""
    paths = np.empty((2, graph.max_steps + 2), dtype=np.int64)
    elems = np.empty((2, graph.max_steps + 1), dtype=np.int64)
    steps = np.zeros(2, dtype=np.int64)
    fw, bw, geo = graph.fwd, graph.bwd, graph.geo
    dense = bool(np.all(graph.allowed != 0))
    added, filled = _walk_pair(
        int(fstart), int(bstart), np.ascontiguousarray(rand, dtype=np.float64), _seed_state(0),
        fw[0], fw[1], fw[4], bw[0], bw[1], bw[4], graph.terminal, graph.n_input, geo[0], geo[1],
        geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo, state.wk, state.wbits,
        graph.allowed, dense, state.count, state.budget, state.full, mode, paths, elems, steps)
    out = [(paths[w, :steps[w] + 1].copy(), elems[w, :steps[w]].copy()) for w in range(2)]
    return out[0], out[1], int(added), bool(filled)


def _walk_all(graph: _WalkGraph, state: _WalkState, seed: int, mode: int = 0,
              stall_window: int = 10_000, min_yield: float = 0.01,
              max_walks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the walks on ``state`` (see :func:`_run`); returns its statistics."""
    stats = np.zeros(7, dtype=np.int64)
    full_after = np.zeros(len(graph.names), dtype=np.int64)
    dense = bool(np.all(graph.allowed != 0))
    if max_walks is None:  # a guard against pathological inputs only
        max_walks = 50 * int(state.budget.sum()) + 1_000_000
    min_added = max(1, int(np.ceil(min_yield * stall_window)))
    _run(_seed_state(seed), mode, int(stall_window), min_added, int(max_walks), graph.n_input,
         graph.term_nodes, graph.max_steps, graph.fwd, graph.bwd, graph.edges, graph.geo,
         graph.terminal, state.wk, state.wbits, graph.allowed, dense, state.count, state.budget,
         state.full, state.enabled, state.reach_in, state.reach_out, stats, full_after)
    return stats, full_after


def phew_run(topo, abs_weights: Mapping[str, Any], budgets: Mapping[str, int], seed: int, *,
             element: str = "sample", stall_window: int = 10_000, min_yield: float = 0.01,
             max_walks: int | None = None) -> tuple[dict[str, np.ndarray], PhewStats]:
    """:func:`phew_masks` that also returns a :class:`PhewStats` on the walks."""
    if element not in ELEMENT_MODES:
        raise ValueError(f"element must be one of {sorted(ELEMENT_MODES)}, got {element!r}")
    # the bounds keep min_yield * stall_window and the walk counters inside int64
    stall_window = check_int("stall_window", stall_window, minimum=1, maximum=2**40)
    min_yield = check_number("min_yield", min_yield, minimum=0.0, maximum=1e6,
                             hint="new weights per walk that count as progress")
    if max_walks is not None:
        max_walks = check_int("max_walks", max_walks, minimum=0, maximum=2**62,
                              hint="or None for no cap")
    missing = [layer.param for layer in topo.layers if layer.param not in budgets]
    if missing:
        raise KeyError(f"budgets lacks {missing}")
    graph = _build(topo, abs_weights)
    state = _initial_state(graph, budgets)
    stats, full_after = _walk_all(graph, state, 0 if seed is None else int(seed),
                                  ELEMENT_MODES[element], stall_window,
                                  min_yield, max_walks)
    walk_kept = {name: int(state.count[i]) for i, name in enumerate(graph.names)}
    filled = _fill(graph, state)
    masks = {}
    for layer, (name, shape) in enumerate(zip(graph.names, graph.shapes, strict=True)):
        lo, hi = graph.l_woff[layer], graph.l_woff[layer + 1]
        masks[name] = state.kept(lo, hi).reshape(shape)
    info = PhewStats(walks=int(stats[0]), forward_walks=int(stats[1]),
                     backward_walks=int(stats[2]), stop_reason=STOP_REASONS[int(stats[3])],
                     added_by_walks=int(stats[4]), refreshes=int(stats[5]),
                     steps=int(stats[6]), walk_kept=walk_kept, filled=filled,
                     full_after={name: int(full_after[i]) for i, name in enumerate(graph.names)})
    return masks, info


def phew_masks(topo, abs_weights: Mapping[str, Any], budgets: Mapping[str, int], seed: int,
               **options) -> dict[str, np.ndarray]:
    """PHEW masks with exactly ``budgets[name]`` kept weights per layer.

    Parameters
    ----------
    topo : Topology
        The network, normally dense (``from_torch(model, None, input_shape)``);
        a topology that carries masks restricts PHEW to its unpruned weights.
    abs_weights : mapping
        ``|w|`` of every prunable weight in ``topo.layers`` (numpy arrays or
        torch tensors of the weight's shape, finite and non-negative).
    budgets : mapping
        Number of weights to keep, for every ``layer.param``.
    seed : int
        Seed of the walks: equal inputs and seeds give equal masks (``None``
        counts as 0).
    **options
        ``element``: ``"sample"`` (default: the kept element of a traversed
        kernel is drawn in proportion to ``|w|``, as PHEW does) or
        ``"largest"`` (the largest-``|w|`` element of the kernel not yet kept).
        ``stall_window`` (default 10000) and ``min_yield`` (default 0.01): stop
        walking once a window of ``stall_window`` walks keeps fewer than
        ``min_yield * stall_window`` new weights, and fill the rest by ``|w|``.
        ``max_walks``: a hard cap on the number of walks.

    Returns
    -------
    dict
        ``{layer.param: bool numpy array of layer.weight_shape}``.
    """
    masks, _ = phew_run(topo, abs_weights, budgets, seed, **options)
    return masks
