"""Arbitrary-precision path counts with Python ints (numpy ``object`` arrays).

These share the op-by-op structure of the float engines but none of their
arithmetic: every sum is a Python-int sum, so the result is exact however deep
the network. The cost grows with the number of edges times the number of
machine words of the count, and the memory with the values held as Python ints
at once, so :func:`estimate` lets callers refuse hopeless requests up front.
Only what is really allocated is charged: the masks are read in place (as
uint8, never copied as integer or object weights), and each value is freed
after its last use.
"""

from __future__ import annotations

import math

import numpy as np

from topo_pai.graph.ir import Program, spatial3
from topo_pai.kernels import reference as R

#: Default ceiling on the work of an exact count, in (edge x 64-bit word) units.
#: About a minute of Python-int arithmetic on a laptop core.
EXACT_MAX_WORK = 3e8
#: Default ceiling on the memory an exact count may allocate, in bytes (2 GiB).
EXACT_MAX_MEMORY = 2 ** 31
#: Bytes per entry of an object array of Python ints of ``w`` 64-bit words, an upper
#: bound: the 8-byte pointer and the int object (header 28 bytes, 8 per word), times
#: two for the temporaries of the arithmetic on it.
_ENTRY_BYTES = 2 * (8 + 28)
_WORD_BYTES = 2 * 8


def words(log10_paths: float) -> int:
    if not math.isfinite(log10_paths):
        return 1
    return max(1, math.ceil((log10_paths / math.log10(2.0) + 1) / 64))


def _csr_matvec(indptr, indices, data, x):
    """Exact ``A @ x`` over object arrays via a cumulative sum per row."""
    prod = data.astype(np.int64).astype(object) * x[indices]
    csum = np.zeros(len(prod) + 1, dtype=object)
    if len(prod):
        csum[1:] = np.cumsum(prod)
    return csum[indptr[1:]] - csum[indptr[:-1]]


def _ones(n):
    return np.ones(n, dtype=object)


def channel_exact(graph) -> int:
    """Exact path count over the channel blocks."""
    fwd = [_ones(graph.sizes[0])]
    for g in range(1, graph.n_groups):
        acc = np.zeros(graph.sizes[g], dtype=object)
        for b in graph.incoming[g]:
            acc = acc + _csr_matvec(*b.arrays, fwd[b.src])
        fwd.append(acc)
    total = 0
    for g, S in graph.outputs.items():
        if S is None:
            total += int(fwd[g].sum())
        else:
            colsum = np.asarray(S.sum(axis=0)).reshape(-1).astype(np.int64).astype(object)
            total += int((colsum * fwd[g]).sum())
    return total


def _last_uses(program: Program) -> dict[int, int]:
    """Index of the last op that reads each value (outputs: never freed)."""
    last = {}
    for k, op in enumerate(program.ops):
        for v in op.inputs:
            last[v] = k
    for v in program.outputs:
        last[v] = len(program.ops)
    return last


def neuron_exact(program: Program, layer_masks) -> int:
    """Exact path count of the unrolled graph, using the numpy reference kernels."""
    val = {}
    last = _last_uses(program)
    for k, op in enumerate(program.ops):
        shape = program.values[op.output]
        if op.kind == "input":
            val[op.output] = _ones(int(np.prod(shape))).reshape(shape)
        elif op.kind == "reshape":
            val[op.output] = val[op.inputs[0]].reshape(shape)
        elif op.kind == "add":
            val[op.output] = val[op.inputs[0]] + val[op.inputs[1]]
        elif op.kind == "cat":
            val[op.output] = np.concatenate([val[v] for v in op.inputs], axis=op.attrs["axis"])
        elif op.kind == "reduce":
            val[op.output] = val[op.inputs[0]].sum(axis=op.attrs["axes"]).reshape(shape)
        elif op.kind == "scale":  # a unit is kept where its factor is non-zero
            keep = np.broadcast_to(op.attrs["factor"] != 0, shape)
            val[op.output] = np.where(keep, val[op.inputs[0]], 0).astype(object)
        elif op.kind == "pool":
            x = val[op.inputs[0]]
            x3 = x.reshape(spatial3(x.shape))
            (hp, hi), (wp, wi) = op.attrs["windows"]
            hwin = [hi[hp[k]:hp[k + 1]] for k in range(len(hp) - 1)]
            wwin = [wi[wp[k]:wp[k + 1]] for k in range(len(wp) - 1)]
            val[op.output] = R.pool_forward(x3, hwin, wwin).reshape(shape)
        elif op.kind == "layer":
            L = program.layers[op.attrs["layer"]]
            lm = layer_masks[op.attrs["layer"]]
            x = val[op.inputs[0]]
            if L.kind == "Linear":
                val[op.output] = _csr_matvec(lm.indptr, lm.indices, lm.data, x)
            else:  # the uint8 mask is the weight: read in place, only its ones visited
                w = lm.mask.reshape(L.weight_shape[0], L.weight_shape[1], *L.kernel_hw)
                out3 = spatial3(shape)
                y = R.conv_forward(x.reshape(spatial3(x.shape)), w, L.groups, L.stride, L.pad,
                                   L.dilation, out3[1:])
                val[op.output] = y.reshape(shape)
        else:  # pragma: no cover
            raise AssertionError(op.kind)
        for v in set(op.inputs):
            if last[v] == k:
                del val[v]
    return int(sum(int(val[v].sum()) for v in program.outputs))


def estimate(program: Program, layer_masks, resolution: str, log10_paths: float,
             n_block_entries: int, group_sizes=None) -> tuple[float, float]:
    """``(work, memory)`` of an exact count: work in (edge x 64-bit word) units over
    every entry the arithmetic touches, memory in bytes of the Python-int arrays alive
    at once (an upper bound)."""
    w = words(log10_paths)
    entry = _ENTRY_BYTES + _WORD_BYTES * w
    if resolution == "channel":
        units = sum(group_sizes.values()) if group_sizes else 0
        # every group's counts stay alive; each block entry makes one product
        memory = (units + n_block_entries) * entry
        return float(n_block_entries + units) * w, float(memory)
    work = 0.0
    last = _last_uses(program)
    alive = peak = 0
    for k, op in enumerate(program.ops):
        size = int(np.prod(program.values[op.output]))
        if op.kind == "layer":
            lm = layer_masks[op.attrs["layer"]]
            positions = int(np.prod(spatial3(program.values[op.output])[1:]))
            work += lm.unpruned * (positions * w + 50) + size * w
        elif op.kind in ("pool", "reduce", "add", "cat", "scale"):
            work += int(np.prod(program.values[op.inputs[0]])) * w * 4 + size * w
        if op.kind != "reshape":  # a reshape is a view
            alive += size
        peak = max(peak, alive)
        for v in set(op.inputs):
            if last[v] == k and not _is_view_source(program, v, k):
                alive -= int(np.prod(program.values[v]))
    return work, float(peak * entry)


def _is_view_source(program: Program, v: int, k: int) -> bool:
    """Whether value ``v`` lives on in op ``k``'s output (a reshape is a view)."""
    op = program.ops[k]
    return op.kind == "reshape" and op.inputs[0] == v
