"""PHEW's walks: numba kernels over the channel graph of :mod:`.geometry` with the
transition tables of :mod:`.alias` (the method is described in :mod:`topo_pai.pruners.phew`).

Shared arguments: ``geo`` is the :class:`~.geometry.Geometry` of blocks and
layers, and the hot kernels also take its arrays one by one (numba counts
references when a tuple is unpacked); ``wk`` holds every weight element's
``|w|`` as float32 with its sign bit set once the element is kept, ``wbits`` is
the int32 view of the same memory (kept iff negative) and ``allowed`` marks the
elements PHEW may keep (read only when ``dense`` is False).

The tests replay pre-drawn uniforms through :func:`walk` and :func:`walk_pair`
against a pure-Python reference walk (tests/pruners/test_phew.py).
"""

from __future__ import annotations

import logging

import numba
import numpy as np

from topo_pai.pruners.phew.alias import node_table
from topo_pai.pruners.phew.geometry import edge_kept, kernel_offset, span, span_kernel

_JIT = {"nogil": True, "cache": True}
#: Walks between two progress records (an ``objmode`` call each: negligible next to the walks).
PROGRESS_EVERY = 4096
#: The same logger and record attributes as the rounds of iterative methods
#: (``topo_pai.pruners.api.progress_log``), so the command line draws PHEW's bar too.
_progress_log = logging.getLogger("topo_pai.prune")
#: The sign bit of a float32, as int32: set in ``wbits`` once an element is kept.
KEPT_BIT = np.int32(-2 ** 31)


def _report_progress(count, budget) -> None:
    """Called from the walk loop (``numba.objmode``): weights placed so far of the budget."""
    if _progress_log.isEnabledFor(logging.INFO):
        done, total = int(count.sum()), int(budget.sum())
        _progress_log.info("phew: %d of %d weights placed", done, total,
                           extra={"round": done, "rounds": total, "desc": "phew",
                                  "unit": "weight"})


@numba.njit(cache=True)  # no nogil: the object-mode block needs the GIL anyway
def _progress(count, budget):
    # a function of its own: an objmode block inside the large walk loop breaks codegen
    with numba.objmode():
        _report_progress(count, budget)


@numba.njit(inline="always", **_JIT)
def splitmix(state):
    """One step of the splitmix64 generator (Steele, Lea & Flood 2014):
    returns the new uint64 state and a uniform in [0, 1). Small, fast and the
    same on every platform."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def seed_state(seed: int) -> np.ndarray:
    """The walks' generator state for ``seed`` (any Python int)."""
    return np.array([(int(seed) * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019) % 2 ** 64],
                    dtype=np.uint64)


@numba.njit(inline="always", **_JIT)
def alias_slot(lo, hi, u):
    """The alias-table position of ``[lo, hi)`` that the uniform ``u`` draws, and the
    fraction that decides between its own edge and its alias."""
    m = hi - lo
    x = u * m
    k = min(int(x), m - 1)
    return lo + k, x - k


@numba.njit(inline="always", **_JIT)
def kernel_draw(base, kv, u, wk):
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
def choose_element(o, c, blk, u, mode, geo, wk, wbits, allowed, dense):
    """One weight element of a channel edge (global flat index), or -1 if the
    edge has no allowed element.

    ``mode`` 0: drawn in proportion to ``|w|`` among the allowed elements
    (uniformly when they all weigh zero) by inverse CDF with the uniform
    ``u``; ``mode`` 1: the largest-``|w|`` allowed element not yet kept
    (lowest index on ties), or the first allowed one when all are kept.
    """
    if mode == 0 and dense and geo.b_st[blk] < 0:  # the common case: one whole kernel
        layer = geo.b_layer[blk]
        base = kernel_offset(np.int64(o), np.int64(c), geo.l_woff[layer], geo.l_pgi[layer],
                             geo.l_opg[layer], geo.l_kv[layer])
        return kernel_draw(base, geo.l_kv[layer], u, wk)
    st_idx = geo.st_idx
    ident, k0, k1, g0, kbase, pgi, kv = span(o, c, blk, geo)
    n = 0
    total = acc = r = 0.0
    first = best = last = -1
    best_w = -1.0
    uniform = False
    target = seen = 0
    for sweep in range(2):  # over the edge's allowed elements: 0 weighs them, 1 draws
        if sweep == 1:
            if n == 0:
                return -1
            if mode == 1:
                return best if best >= 0 else first
            uniform = not (total > 0.0)
            if uniform:
                target = min(int(u * n), n - 1)
            else:
                r = u * total
            last = first
        for k in range(k0, k1):
            base = span_kernel(k, ident, st_idx, g0, kbase, pgi, kv)
            if base < 0:
                continue
            for t in range(base, base + kv):
                if not (dense or allowed[t]):
                    continue
                w = abs(np.float64(wk[t]))
                if sweep == 0:
                    if first < 0:
                        first = t
                    n += 1
                    total += w
                    if wbits[t] >= 0 and w > best_w:
                        best = t
                        best_w = w
                elif uniform:
                    if seen == target:
                        return t
                    seen += 1
                elif w > 0.0:
                    acc += w
                    last = t
                    if acc > r:
                        return t
    return last


@numba.njit(**_JIT)
def walk(forward, start, rand, rng, ptr, rec, ntot, terminal, n_input, b_layer, b_st, l_woff,
         l_pgi, l_opg, l_kv, b_soff, b_doff, geo, wk, wbits, allowed, dense, count, budget, full,
         mode, path, elems):
    """One walk from node ``start`` over ``ptr/rec/ntot``: the out-edge CSR
    (forward) or the in-edge CSR (backward) with their alias tables.

    Step ``s`` uses ``rand[2s]`` for the edge and ``rand[2s+1]`` for the
    element; an empty ``rand`` draws them from the generator state ``rng``
    instead, in the same order. Writes the visited nodes to ``path`` and, per
    step, the chosen element to ``elems`` (-1 when the layer was already full).
    Returns ``(steps, elements added, some layer became full)``.

    Hot loop: every array comes unpacked, and the draws (:func:`alias_slot`,
    :func:`kernel_draw`, :func:`~.geometry.kernel_offset`) are inlined and receive
    at most one array, so that numba emits almost no reference counting per step
    (passing the step's dozen arrays to one inlined helper made PHEW twice as
    slow); the next step's record is read before the current step's element is
    chosen, so that their cache misses overlap.
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
        return 0, 0, False  # dead end: cannot happen with tables from refresh
    if draw:
        state, u = splitmix(state)
        state, v = splitmix(state)
    else:
        u = rand[0]
        v = rand[1]
    node = start
    s, frac = alias_slot(lo, hi, u)
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
                go_on = False  # dead end: cannot happen with tables from refresh
            else:
                if draw:
                    state, u = splitmix(state)
                    state, v2 = splitmix(state)
                else:
                    u = rand[2 * steps + 2]
                    v2 = rand[2 * steps + 3]
                s, frac = alias_slot(lo, hi, u)
                prob, nbr, anbr = rec[s].prob, rec[s].nbr, rec[s].anbr
                blk, ablk = rec[s].blk, rec[s].ablk
        if forward:
            o = nxt - b_doff[b]
            c = node - b_soff[b]
        else:
            o = node - b_doff[b]
            c = nxt - b_soff[b]
        layer = b_layer[b]
        elem = -1
        if not full[layer]:
            if fast and b_st[b] < 0:  # one whole kernel, all allowed
                base = kernel_offset(o, c, l_woff[layer], l_pgi[layer], l_opg[layer],
                                     l_kv[layer])
                elem = kernel_draw(base, l_kv[layer], v, wk)
            else:
                elem = choose_element(o, c, b, v, mode, geo, wk, wbits, allowed, dense)
            if elem >= 0 and wbits[elem] >= 0:
                wbits[elem] = wbits[elem] | KEPT_BIT
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
def walk_pair(fstart, bstart, rand, rng, fptr, frec, fntot, bptr, brec, bntot, terminal,
              n_input, b_layer, b_st, l_woff, l_pgi, l_opg, l_kv, b_soff, b_doff, geo, wk,
              wbits, allowed, dense, count, budget, full, mode, paths, elems, steps_out):
    """A forward walk from ``fstart`` and a backward walk from ``bstart``, run in
    lockstep so that the cache misses of the two walks overlap (the walks are
    bound by memory latency). :func:`run_walks` uses it only while every open
    layer has at least two free slots: each walk adds at most one element per
    layer, so no layer can fill while the other walk still has to cross it, and
    the tables stay valid for the whole round.

    Each step takes a pair ``(u, v)`` as in :func:`walk`, in the order: the
    forward walk's first, the backward walk's first, then per lockstep step the
    forward walk's next (if it goes on) and the backward walk's next. An empty
    ``rand`` draws from the generator state ``rng``. ``paths[w]``,
    ``elems[w]`` and ``steps_out[w]`` are as in :func:`walk` for walk ``w``
    (0 forward, 1 backward). Returns ``(elements added, some layer became
    full)``. The two walks' steps are written out side by side on purpose (see
    :func:`walk`); their draws are the same inlined functions.
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
            a_on = False  # dead end: cannot happen with tables from refresh
        else:
            if draw:
                state, u = splitmix(state)
                state, a_v = splitmix(state)
            else:
                u = rand[cur]
                a_v = rand[cur + 1]
                cur += 2
            s, a_frac = alias_slot(lo, hi, u)
            a_prob, a_nbr, a_anbr = frec[s].prob, frec[s].nbr, frec[s].anbr
            a_blk, a_ablk = frec[s].blk, frec[s].ablk
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
                state, u = splitmix(state)
                state, b_v = splitmix(state)
            else:
                u = rand[cur]
                b_v = rand[cur + 1]
                cur += 2
            s, b_frac = alias_slot(lo, hi, u)
            b_prob, b_nbr, b_anbr = brec[s].prob, brec[s].nbr, brec[s].anbr
            b_blk, b_ablk = brec[s].blk, brec[s].ablk
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
                        state, u = splitmix(state)
                        state, a_v = splitmix(state)
                    else:
                        u = rand[cur]
                        a_v = rand[cur + 1]
                        cur += 2
                    s, a_frac = alias_slot(lo, hi, u)
                    a_prob, a_nbr, a_anbr = frec[s].prob, frec[s].nbr, frec[s].anbr
                    a_blk, a_ablk = frec[s].blk, frec[s].ablk
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
                        state, u = splitmix(state)
                        state, b_v = splitmix(state)
                    else:
                        u = rand[cur]
                        b_v = rand[cur + 1]
                        cur += 2
                    s, b_frac = alias_slot(lo, hi, u)
                    b_prob, b_nbr, b_anbr = brec[s].prob, brec[s].nbr, brec[s].anbr
                    b_blk, b_ablk = brec[s].blk, brec[s].ablk
        # -- phase 2: the forward walk's element, then the backward walk's -------------
        if a_on:
            o = a_nxt - b_doff[a_b]
            c = a_node - b_soff[a_b]
            layer = b_layer[a_b]
            elem = -1
            if not full[layer]:
                if fast and b_st[a_b] < 0:  # one whole kernel, all allowed
                    base = kernel_offset(o, c, l_woff[layer], l_pgi[layer], l_opg[layer],
                                         l_kv[layer])
                    elem = kernel_draw(base, l_kv[layer], a_vc, wk)
                else:
                    elem = choose_element(o, c, a_b, a_vc, mode, geo, wk, wbits, allowed, dense)
                if elem >= 0 and wbits[elem] >= 0:
                    wbits[elem] = wbits[elem] | KEPT_BIT
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
        if b_on:
            o = b_node - b_doff[b_b]
            c = b_nxt - b_soff[b_b]
            layer = b_layer[b_b]
            elem = -1
            if not full[layer]:
                if fast and b_st[b_b] < 0:  # one whole kernel, all allowed
                    base = kernel_offset(o, c, l_woff[layer], l_pgi[layer], l_opg[layer],
                                         l_kv[layer])
                    elem = kernel_draw(base, l_kv[layer], b_vc, wk)
                else:
                    elem = choose_element(o, c, b_b, b_vc, mode, geo, wk, wbits, allowed, dense)
                if elem >= 0 and wbits[elem] >= 0:
                    wbits[elem] = wbits[elem] | KEPT_BIT
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
def close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty):
    """A full layer keeps only its channel edges that hold a kept element; the
    ends of every edge it drops get their transition tables rebuilt."""
    e_o, e_c, e_block, l_e0 = edges
    b_st, b_soff, b_doff = geo.b_st, geo.b_soff, geo.b_doff
    woff, pgi, opg, kv = geo.l_woff[layer], geo.l_pgi[layer], geo.l_opg[layer], geo.l_kv[layer]
    for e in range(l_e0[layer], l_e0[layer + 1]):
        if not enabled[e]:
            continue
        blk = e_block[e]
        o = np.int64(e_o[e])
        c = np.int64(e_c[e])
        if b_st[blk] < 0:  # one kernel, scanned here (the common case)
            base = kernel_offset(o, c, woff, pgi, opg, kv)
            kept = False
            for t in range(base, base + kv):
                if wbits[t] < 0:
                    kept = True
                    break
        else:
            kept = edge_kept(o, c, blk, geo, wbits)
        if not kept:
            enabled[e] = 0
            fdirty[b_soff[blk] + c] = 1
            bdirty[b_doff[blk] + o] = 1


@numba.njit(**_JIT)
def reach_sweep(start, stop, step, seed, tables, enabled, marked):
    """``marked[n]`` for ``n`` in ``range(start, stop, step)``: 1 if ``seed[n]``, else
    whether ``n`` has an enabled edge in ``tables`` to a node marked earlier."""
    ptr, rec, eid = tables.ptr, tables.rec, tables.eid
    for n in range(start, stop, step):
        if seed[n]:
            marked[n] = 1
            continue
        hit = 0
        for p in range(ptr[n], ptr[n + 1]):
            if enabled[eid[p]] and marked[rec[p].nbr]:
                hit = 1
                break
        marked[n] = hit


@numba.njit(**_JIT)
def reach(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out):
    """Reachability over the enabled edges: from the inputs, and to the outputs.
    Node ids are ordered by group and edges go from lower to higher groups."""
    n_nodes = reach_in.shape[0]
    is_input = np.zeros(n_nodes, dtype=np.uint8)
    is_input[:n_input] = 1
    reach_sweep(0, n_nodes, 1, is_input, bwd, enabled, reach_in)
    reach_sweep(n_nodes - 1, -1, -1, terminal, fwd, enabled, reach_out)


@numba.njit(**_JIT)
def refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty, bdirty, edges,
            geo, full):
    """Bring reachability and the transition tables up to date after edges were
    disabled (``fdirty``/``bdirty`` mark the nodes whose own edges changed);
    return whether some open layer has an edge on an enabled input-to-output
    path."""
    fptr, frec = fwd.ptr, fwd.rec
    bptr, brec = bwd.ptr, bwd.rec
    old_in = reach_in.copy()
    old_out = reach_out.copy()
    reach(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out)
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
            node_table(n, fwd, enabled, reach_out, q, small, large, alias)
            fdirty[n] = 0
        if bdirty[n]:
            node_table(n, bwd, enabled, reach_in, q, small, large, alias)
            bdirty[n] = 0
    e_o, e_c, e_block, l_e0 = edges
    b_soff, b_doff = geo.b_soff, geo.b_doff
    for layer in range(full.shape[0]):
        if full[layer]:
            continue
        for e in range(l_e0[layer], l_e0[layer + 1]):
            blk = e_block[e]
            if reach_in[b_soff[blk] + e_c[e]] and reach_out[b_doff[blk] + e_o[e]]:
                return True
    return False


@numba.njit(**_JIT)
def run_walks(rng, mode, stall_window, min_added, max_walks, n_input, term_nodes, max_steps, fwd,
              bwd, edges, geo, terminal, wk, wbits, allowed, dense, count, budget, full, enabled,
              reach_in, reach_out, stats, full_after):
    """Rounds of a forward and a backward walk (:func:`walk_pair`, or
    :func:`walk` one at a time near a layer's last slot) until the budgets are
    met or the walks stop adding; tables are updated after a round that filled
    a layer.

    ``stats`` receives (walks, forward, backward, stop reason, elements added,
    refreshes, steps), ``full_after`` the number of walks after which each
    layer was full (0: before walking, -1: never).
    """
    fptr, frec, fntot = fwd.ptr, fwd.rec, fwd.ntot
    bptr, brec, bntot = bwd.ptr, bwd.rec, bwd.ntot
    b_layer, b_st, l_woff, l_pgi, l_opg, l_kv = (geo.b_layer, geo.b_st, geo.l_woff, geo.l_pgi,
                                                 geo.l_opg, geo.l_kv)
    b_soff, b_doff = geo.b_soff, geo.b_doff
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
            close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty)
            closed[layer] = 1
            full_after[layer] = 0
        else:
            full_after[layer] = -1
            n_open += 1
    useful = refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty, bdirty,
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
            added, filled = walk_pair(fstart, bstart, no_rand, rng, fptr, frec, fntot, bptr,
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
                steps, added, filled = walk(forward, fstart, no_rand, rng, fptr, frec, fntot,
                                            terminal, n_input, b_layer, b_st, l_woff, l_pgi,
                                            l_opg, l_kv, b_soff, b_doff, geo, wk, wbits,
                                            allowed, dense, count, budget, full, mode, path,
                                            elems)
            else:
                n_bwd += 1
                steps, added, filled = walk(forward, bstart, no_rand, rng, bptr, brec, bntot,
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
                    close_layer(layer, edges, enabled, geo, wbits, fdirty, bdirty)
                    closed[layer] = 1
                    full_after[layer] = walks
                    n_open -= 1
            useful = refresh(n_input, fwd, bwd, enabled, terminal, reach_in, reach_out, fdirty,
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
