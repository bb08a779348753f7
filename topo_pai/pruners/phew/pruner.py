"""PHEW's masks: the walk state, the deterministic fill, and the public entry points
:func:`phew_run` and :func:`phew_masks` (the method is described in
:mod:`topo_pai.pruners.phew`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from topo_pai.checks import check_int, check_number
from topo_pai.pruners.phew.geometry import WalkGraph, build_walk_graph, mark_bridging
from topo_pai.pruners.phew.walks import (KEPT_BIT, close_layer, reach, refresh, run_walks,
                                         seed_state, walk, walk_pair)

ELEMENT_MODES = {"sample": 0, "largest": 1}
STOP_REASONS = ("budgets_reached", "no_open_path", "stalled", "max_walks")


@dataclass
class WalkState:
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


def initial_state(graph: WalkGraph, budgets: Mapping[str, int]) -> WalkState:
    """The walks' state before the first walk: budgets validated, layers whose budget
    is 0 or every allowed weight settled."""
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
            wk.view(np.int32)[lo:hi][graph.allowed[lo:hi] != 0] |= KEPT_BIT
            count[layer] = b
        full[layer] = b == n_allowed or b == 0
    return WalkState(wk=wk, count=count, budget=budget, full=full,
                      enabled=np.ones(graph.edges.e_o.size, dtype=np.uint8),
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


def fill(graph: WalkGraph, state: WalkState) -> dict[str, int]:
    """Top every layer up to its budget (see the module docstring)."""
    if not np.any(state.count < state.budget):
        return {}
    # Units on kept input-to-output paths: every layer closed to its kept edges.
    kept_edges = state.enabled.copy()
    n_nodes = graph.n_nodes
    scratch = np.zeros(n_nodes, dtype=np.uint8), np.zeros(n_nodes, dtype=np.uint8)
    for layer in range(len(graph.names)):
        close_layer(layer, graph.edges, kept_edges, graph.geo, state.wbits, *scratch)
    reach_in = np.zeros(n_nodes, dtype=np.uint8)
    reach_out = np.zeros(n_nodes, dtype=np.uint8)
    reach(graph.n_input, graph.fwd, graph.bwd, kept_edges, graph.terminal, reach_in, reach_out)
    filled = {}
    for layer, name in enumerate(graph.names):
        need = int(state.budget[layer] - state.count[layer])
        if need <= 0:
            continue
        lo, hi = int(graph.l_woff[layer]), int(graph.l_woff[layer + 1])
        free = ~state.kept(lo, hi) & (graph.allowed[lo:hi] != 0)
        bridging = np.zeros(hi - lo, dtype=np.uint8)
        mark_bridging(layer, graph.edges, graph.geo, reach_in, reach_out, bridging)
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
        state.wbits[idx] |= KEPT_BIT
        state.count[layer] += idx.size
        filled[name] = int(idx.size)
    return filled


def prepare_tables(graph: WalkGraph, state: WalkState) -> bool:
    """Close the full layers and build every transition table (what :func:`run_walks`
    does before its first walk); returns whether some open layer is on a path.
    For tests and tools that call :func:`walk_once` directly."""
    n = graph.n_nodes
    fdirty = np.ones(n, dtype=np.uint8)
    bdirty = np.ones(n, dtype=np.uint8)
    for layer in np.flatnonzero(state.full):
        close_layer(int(layer), graph.edges, state.enabled, graph.geo, state.wbits, fdirty,
                    bdirty)
    return bool(refresh(graph.n_input, graph.fwd, graph.bwd, state.enabled, graph.terminal,
                        state.reach_in, state.reach_out, fdirty, bdirty, graph.edges, graph.geo,
                        state.full))


def walk_once(graph: WalkGraph, state: WalkState, forward: bool, start: int,
              rand: np.ndarray, mode: int = 0):
    """One walk with the pre-drawn uniforms ``rand`` (two per step) on prepared
    tables; returns ``(path, elements, added, a layer filled)`` where
    ``elements[s]`` is the flat index (over all layers) chosen at step ``s``."""
    path = np.empty(graph.max_steps + 2, dtype=np.int64)
    elems = np.empty(graph.max_steps + 1, dtype=np.int64)
    tables = graph.fwd if forward else graph.bwd
    g = graph.geo
    steps, added, filled = walk(
        bool(forward), int(start), np.ascontiguousarray(rand, dtype=np.float64), seed_state(0),
        tables.ptr, tables.rec, tables.ntot, graph.terminal, graph.n_input, g.b_layer, g.b_st,
        g.l_woff, g.l_pgi, g.l_opg, g.l_kv, g.b_soff, g.b_doff, g, state.wk, state.wbits,
        graph.allowed, graph.dense, state.count, state.budget, state.full, mode, path, elems)
    return path[:steps + 1].copy(), elems[:steps].copy(), int(added), bool(filled)


def walk_pair_once(graph: WalkGraph, state: WalkState, fstart: int, bstart: int,
                   rand: np.ndarray, mode: int = 0):
    """:func:`walk_pair` with pre-drawn uniforms on prepared tables; returns
    ``((forward path, forward elements), (backward path, backward elements),
    added, a layer filled)``."""
    paths = np.empty((2, graph.max_steps + 2), dtype=np.int64)
    elems = np.empty((2, graph.max_steps + 1), dtype=np.int64)
    steps = np.zeros(2, dtype=np.int64)
    fw, bw, g = graph.fwd, graph.bwd, graph.geo
    added, filled = walk_pair(
        int(fstart), int(bstart), np.ascontiguousarray(rand, dtype=np.float64), seed_state(0),
        fw.ptr, fw.rec, fw.ntot, bw.ptr, bw.rec, bw.ntot, graph.terminal, graph.n_input,
        g.b_layer, g.b_st, g.l_woff, g.l_pgi, g.l_opg, g.l_kv, g.b_soff, g.b_doff, g, state.wk,
        state.wbits, graph.allowed, graph.dense, state.count, state.budget, state.full, mode,
        paths, elems, steps)
    out = [(paths[w, :steps[w] + 1].copy(), elems[w, :steps[w]].copy()) for w in range(2)]
    return out[0], out[1], int(added), bool(filled)


def walk_all(graph: WalkGraph, state: WalkState, seed: int, mode: int = 0,
             stall_window: int = 10_000, min_yield: float = 0.01,
             max_walks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the walks on ``state`` (see :func:`run_walks`); returns its statistics."""
    stats = np.zeros(7, dtype=np.int64)
    full_after = np.zeros(len(graph.names), dtype=np.int64)
    if max_walks is None:  # a guard against pathological inputs only
        max_walks = 50 * int(state.budget.sum()) + 1_000_000
    min_added = max(1, int(np.ceil(min_yield * stall_window)))
    run_walks(seed_state(seed), mode, int(stall_window), min_added, int(max_walks),
              graph.n_input, graph.term_nodes, graph.max_steps, graph.fwd, graph.bwd, graph.edges,
              graph.geo, graph.terminal, state.wk, state.wbits, graph.allowed, graph.dense,
              state.count, state.budget, state.full, state.enabled, state.reach_in,
              state.reach_out, stats, full_after)
    return stats, full_after


def check_phew_options(*, element, stall_window, min_yield, max_walks) -> tuple:
    """PHEW's options (see :func:`phew_masks`) checked and normalised, as
    ``(element, stall_window, min_yield, max_walks)``; they need no model, so the
    ``phew`` method's options dataclass checks them when it is built.

    >>> check_phew_options(element="largest", stall_window=100, min_yield=0.5, max_walks=None)
    ('largest', 100, 0.5, None)
    """
    if element not in ELEMENT_MODES:
        raise ValueError(f"element must be one of {sorted(ELEMENT_MODES)}, got {element!r}")
    # the bounds keep min_yield * stall_window and the walk counters inside int64
    stall_window = check_int("stall_window", stall_window, minimum=1, maximum=2**40)
    min_yield = check_number("min_yield", min_yield, minimum=0.0, maximum=1e6,
                             hint="new weights per walk that count as progress")
    if max_walks is not None:
        max_walks = check_int("max_walks", max_walks, minimum=0, maximum=2**62,
                              hint="or None for no cap")
    return element, stall_window, min_yield, max_walks


def phew_run(topo, abs_weights: Mapping[str, Any], budgets: Mapping[str, int], seed: int, *,
             element: str = "sample", stall_window: int = 10_000, min_yield: float = 0.01,
             max_walks: int | None = None) -> tuple[dict[str, np.ndarray], PhewStats]:
    """:func:`phew_masks` that also returns a :class:`PhewStats` on the walks."""
    element, stall_window, min_yield, max_walks = check_phew_options(
        element=element, stall_window=stall_window, min_yield=min_yield, max_walks=max_walks)
    missing = [layer.param for layer in topo.layers if layer.param not in budgets]
    if missing:
        raise KeyError(f"budgets lacks {missing}")
    graph = build_walk_graph(topo, abs_weights)
    state = initial_state(graph, budgets)
    stats, full_after = walk_all(graph, state, 0 if seed is None else int(seed),
                                  ELEMENT_MODES[element], stall_window,
                                  min_yield, max_walks)
    walk_kept = {name: int(state.count[i]) for i, name in enumerate(graph.names)}
    filled = fill(graph, state)
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
