"""Channel-level structure maps: how each value's units draw on the node groups.

At channel resolution a value's units are its channels (or features, for a
per-sample 1-d tensor), i.e. ``shape[0]``. Non-parametric ops are fixed linear
maps on units: pools and spatial reductions keep channel ``c`` (multiplicity
1), adds sum, cats stack, a reshape into features maps channel ``c`` to its
``H*W`` features, and a product by constants is diagonal (a channel whose factor
is zero everywhere is removed; ``weighted`` maps carry ``|factor|`` instead of
0/1, for flows). Composing them gives, for every value, a dict
``{group: S}`` with ``value_units = sum_g S_g @ group_units``; ``S`` is a
scipy CSR array or ``None`` for the identity.

These maps depend on the architecture only, never on masks, so they are built
once per trace and reused by :meth:`topo_pai.Topology.with_masks`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from topo_pai.errors import UnsupportedOpError
from topo_pai.graph.ir import Program, unit_factors

StructureMap = dict  # group index -> scipy.sparse.csr_array | None


class Structure(NamedTuple):
    """The channel structure maps of a traced program (see :func:`build_structure`)."""

    layer_inputs: list[StructureMap]  # per layer: the map of its input value
    outputs: StructureMap  # the network output units (all outputs stacked)
    sizes: dict[int, int]  # node group -> number of units


def _dense(S, n):
    return sp.identity(n, dtype=np.float64, format="csr") if S is None else S


def _merge(parts: list[StructureMap], sizes: dict[int, int]) -> StructureMap:
    out: StructureMap = {}
    for part in parts:
        for g, S in part.items():
            if g in out:
                out[g] = sp.csr_array(_dense(out[g], sizes[g]) + _dense(S, sizes[g]))
            else:
                out[g] = S
    return out


def _stack(parts: list[StructureMap], unit_counts: list[int], sizes: dict[int, int]) -> StructureMap:
    """Units of part k occupy rows [offset_k, offset_k + n_k) of the result."""
    total = sum(unit_counts)
    out: StructureMap = {}
    offset = 0
    for part, n in zip(parts, unit_counts):
        place = sp.csr_array((np.ones(n), (np.arange(offset, offset + n), np.arange(n))),
                             shape=(total, n))
        for g, S in part.items():
            term = sp.csr_array(place @ _dense(S, sizes[g]))
            out[g] = term if g not in out else sp.csr_array(out[g] + term)
        offset += n
    return out


def _scaled(D, S, n: int):
    out = sp.csr_array(D @ _dense(S, n))
    out.eliminate_zeros()
    return out


def reshape_units(old_shape, new_shape) -> sp.csr_array | None:
    """Unit map of an order-preserving reshape (split or merge of whole units);
    ``None`` when units map one to one."""
    n_old, n_new = old_shape[0], new_shape[0]
    if n_old == n_new:
        return None
    a = int(np.prod(old_shape[1:]))
    b = int(np.prod(new_shape[1:]))
    if a % b == 0:  # each old unit splits into a // b new units
        r = a // b
        rows = np.arange(n_new)
        cols = rows // r
    else:  # each new unit merges b // a old units
        r = b // a
        cols = np.arange(n_old)
        rows = cols // r
    return sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n_new, n_old))


def has_factors(program: Program) -> bool:
    """Whether weighted structure maps differ from the counting ones."""
    return any(op.kind == "scale" for op in program.ops)


def build_structure(program: Program, weighted: bool = False) -> Structure:
    """Return the :class:`Structure` ``(layer_inputs, outputs, sizes)``.

    ``layer_inputs[l]`` is the structure map of layer ``l``'s input value;
    ``outputs`` that of the network output units (all outputs stacked). With
    ``weighted``, products by constants carry ``|factor|`` (flows), else 0/1
    (counts and reachability).
    """
    sizes = {0: program.values[program.ops[0].output][0]}
    for layer in program.layers:
        sizes[layer.group] = layer.weight_shape[0]
    maps: dict[int, StructureMap] = {}
    layer_inputs: list[StructureMap] = [None] * len(program.layers)  # type: ignore[list-item]
    for op in program.ops:
        if op.kind == "input":
            maps[op.output] = {0: None}
        elif op.kind == "layer":
            layer = op.attrs["layer"]
            layer_inputs[layer] = maps[op.inputs[0]]
            maps[op.output] = {program.layers[layer].group: None}
        elif op.kind in ("pool", "reduce"):
            maps[op.output] = maps[op.inputs[0]]
        elif op.kind == "add" or (op.kind == "cat" and op.attrs["axis"] != 0):
            maps[op.output] = _merge([maps[v] for v in op.inputs], sizes)
        elif op.kind == "cat":
            maps[op.output] = _stack([maps[v] for v in op.inputs],
                                     [program.values[v][0] for v in op.inputs], sizes)
        elif op.kind == "reshape":
            R = reshape_units(program.values[op.inputs[0]], program.values[op.output])
            maps[op.output] = maps[op.inputs[0]] if R is None else {
                g: sp.csr_array(R @ _dense(S, sizes[g])) for g, S in maps[op.inputs[0]].items()}
        elif op.kind == "scale":
            try:
                d = unit_factors(op.attrs["factor"], program.values[op.output], weighted,
                                 op.fx_node)
            except ValueError as exc:
                raise UnsupportedOpError(str(exc)) from None
            D = sp.csr_array(sp.diags_array(d, format="csr"))
            D.eliminate_zeros()  # a removed unit has no entries, as if it had no edges
            maps[op.output] = {g: _scaled(D, S, sizes[g]) for g, S in maps[op.inputs[0]].items()}
        else:  # pragma: no cover - trace emits no other kinds
            raise AssertionError(op.kind)
    outputs = _stack([maps[v] for v in program.outputs],
                     [program.values[v][0] for v in program.outputs], sizes)
    return Structure(layer_inputs, outputs, sizes)
