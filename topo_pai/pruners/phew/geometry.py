"""PHEW's channel graph as flat arrays: the units and edges the walks move on, and
the weight elements behind every edge.

Nodes are the input channels and the output channels (or features) of every
Linear and Conv layer, numbered group by group (``WalkGraph.goff``); edges are the
entries of the channel blocks of :meth:`Topology.flows`, numbered block by block.
:class:`Geometry` maps a channel edge of a block to its weight elements in the
concatenated flat weights (:func:`span`): the kernel ``w[o, i]`` of a conv, or the
``H*W`` features of a channel flattened into a Linear (a structure map).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

from topo_pai.kernels.sorting import group_by
from topo_pai.masks.validate import abs_weights_array
from topo_pai.pruners.phew.alias import Tables, edge_records

_JIT = {"nogil": True, "cache": True}


class Geometry(NamedTuple):
    """Blocks and layers of the channel graph, for the kernels (numba reads the
    fields by name). Block ``b`` runs from node ``b_soff[b] + c`` to node
    ``b_doff[b] + o``; layer ``l``'s weights are ``[l_woff[l], l_woff[l + 1])`` of
    the concatenated flat weights."""

    b_layer: np.ndarray  # int64 per block: its layer
    b_st: np.ndarray  # int64 per block: offset of its structure map in st_ptr, -1: identity
    st_ptr: np.ndarray  # int64: CSR pointers of the transposed structure maps
    st_idx: np.ndarray  # int64: their layer-input units
    l_woff: np.ndarray  # int64 per layer + 1: offset of its flat weights
    l_pgi: np.ndarray  # int64 per layer: input channels per conv group (weight_shape[1])
    l_opg: np.ndarray  # int64 per layer: output channels per conv group
    l_kv: np.ndarray  # int64 per layer: kernel volume (elements per channel pair)
    b_soff: np.ndarray  # int64 per block: node id of its source group's first unit
    b_doff: np.ndarray  # int64 per block: node id of its layer's first output unit


class Edges(NamedTuple):
    """Every edge of the channel graph: block row ``e_o`` and column ``e_c`` of block
    ``e_block``; the edges of layer ``l`` are ``[l_e0[l], l_e0[l + 1])``."""

    e_o: np.ndarray
    e_c: np.ndarray
    e_block: np.ndarray
    l_e0: np.ndarray


@dataclass
class WalkGraph:
    """The channel graph as flat arrays for the kernels (see :func:`build_walk_graph`)."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    n_input: int
    goff: np.ndarray  # node id of every group's first unit, and the node count
    term_nodes: np.ndarray
    terminal: np.ndarray  # uint8 per node
    fwd: Tables  # out-edges
    bwd: Tables  # in-edges
    edges: Edges
    geo: Geometry
    absw: list  # float64 |w| per layer, flat
    allowed: np.ndarray  # uint8 per weight element: unpruned in ``topo``
    max_steps: int

    @property
    def l_woff(self) -> np.ndarray:
        return self.geo.l_woff

    @property
    def n_nodes(self) -> int:
        return int(self.goff[-1])

    @property
    def dense(self) -> bool:
        """Whether every weight element may be kept (the kernels skip ``allowed`` then)."""
        return bool(np.all(self.allowed != 0))


@numba.njit(inline="always", **_JIT)
def kernel_offset(o, c, woff, pgi, opg, kv):
    """Flat index of the first element of kernel ``w[o, i]`` of a layer whose weights
    start at ``woff``, where ``c`` is the input unit (numbered across groups) and ``i``
    its index within ``o``'s conv group. Scalars only: numba counts references to the
    arrays an inlined function receives, once per call of the walks' hot loop."""
    i = c
    if o >= opg:  # grouped conv: input units are numbered across groups
        i -= (o // opg) * pgi
    return woff + (o * pgi + i) * kv


@numba.njit(**_JIT)
def span(o, c, blk, geo):
    """The weight elements behind channel edge ``(c -> o)`` of block ``blk``.

    Returns ``(ident, k0, k1, g0, kbase, pgi, kv)``: for ``k`` in ``[k0, k1)``
    the layer-input unit is ``j = k`` (identity structure map) or
    ``j = st_idx[k]``; it is in ``o``'s conv group iff ``0 <= j - g0 < pgi``,
    and then its kernel is ``kbase + (j - g0) * kv + [0, kv)`` in the
    concatenated flat weights.
    """
    o = np.int64(o)
    c = np.int64(c)
    layer = geo.b_layer[blk]
    pgi = geo.l_pgi[layer]
    kv = geo.l_kv[layer]
    g0 = (o // geo.l_opg[layer]) * pgi
    kbase = geo.l_woff[layer] + o * pgi * kv
    s = geo.b_st[blk]
    if s < 0:
        return True, c, c + 1, g0, kbase, pgi, kv
    return False, geo.st_ptr[s + c], geo.st_ptr[s + c + 1], g0, kbase, pgi, kv


@numba.njit(inline="always", **_JIT)
def span_kernel(k, ident, st_idx, g0, kbase, pgi, kv):
    """Flat index of the first element of the kernel behind entry ``k`` of a
    :func:`span` (``k0 <= k < k1``), or -1 when its input unit lies outside the
    edge's conv group: every loop over a channel edge's elements goes through it.
    Scalars and one array, as :func:`kernel_offset`."""
    j = k if ident else st_idx[k]
    i = j - g0
    if i < 0 or i >= pgi:
        return np.int64(-1)
    return np.int64(kbase + i * kv)


@numba.njit(**_JIT)
def edge_kept(o, c, blk, geo, wbits):
    """Whether a channel edge holds a kept element."""
    st_idx = geo.st_idx
    ident, k0, k1, g0, kbase, pgi, kv = span(o, c, blk, geo)
    for k in range(k0, k1):
        base = span_kernel(k, ident, st_idx, g0, kbase, pgi, kv)
        if base < 0:
            continue
        for t in range(base, base + kv):
            if wbits[t] < 0:
                return True
    return False


@numba.njit(**_JIT)
def mark_bridging(layer, edges, geo, reach_in, reach_out, flags):
    """``flags[t - l_woff[layer]] = 1`` for the elements of the layer's channel
    edges whose two ends are both on kept input-to-output paths."""
    e_o, e_c, e_block, l_e0 = edges
    st_idx, l_woff, b_soff, b_doff = geo.st_idx, geo.l_woff, geo.b_soff, geo.b_doff
    off = l_woff[layer]
    for e in range(l_e0[layer], l_e0[layer + 1]):
        blk = e_block[e]
        if not (reach_in[b_soff[blk] + e_c[e]] and reach_out[b_doff[blk] + e_o[e]]):
            continue
        ident, k0, k1, g0, kbase, pgi, kv = span(e_o[e], e_c[e], blk, geo)
        for k in range(k0, k1):
            base = span_kernel(k, ident, st_idx, g0, kbase, pgi, kv)
            if base < 0:
                continue
            for t in range(base, base + kv):
                flags[t - off] = 1


def build_walk_graph(topo, abs_weights: Mapping[str, Any]) -> WalkGraph:
    """The channel graph of ``topo`` weighted by ``abs_weights``, with its transition
    tables allocated (they are filled by ``walks.refresh``)."""
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
    masks = topo.masks_numpy
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
    geo = Geometry(b_layer, b_st, st_ptr, st_idx, l_woff, l_pgi, l_opg, l_kv, b_soff, b_doff)

    tables = []
    for key, far in ((e_src, e_dst), (e_dst, e_src)):
        ptr, order = group_by(key, n_nodes)  # stable: block order, then row order
        tables.append(Tables(ptr, edge_records(order, far, e_block), order.astype(np.int32),
                              data[order], np.zeros(n_nodes)))
    del e_src, e_dst

    terminal = np.zeros(n_nodes, dtype=np.uint8)
    for g, S in channel.outputs.items():
        if S is None:
            terminal[goff[g]:goff[g + 1]] = 1
        else:
            col = np.asarray(abs(sp.csr_array(S)).sum(axis=0)).ravel()
            terminal[goff[g]:goff[g + 1]] = col > 0
    return WalkGraph(
        names=[layer.param for layer in layers],
        shapes=[tuple(layer.weight_shape) for layer in layers],
        n_input=sizes[0], goff=goff, term_nodes=np.flatnonzero(terminal).astype(np.int64),
        terminal=terminal, fwd=tables[0], bwd=tables[1], edges=Edges(e_o, e_c, e_block, l_e0),
        geo=geo, absw=flat, allowed=allowed, max_steps=n_groups,
    )
