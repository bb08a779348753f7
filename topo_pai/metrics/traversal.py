"""One traversal of a :class:`~topo_pai.graph.ir.Program`'s ops for the neuron engines.

The Numba engine (:mod:`topo_pai.metrics.neuron`) and the torch engine
(:mod:`topo_pai.metrics.torch_neuron`) walk the same ops in the same order and
differ only in their arithmetic: how a scaled array is built, summed,
re-expressed, cut and pushed through one op. :func:`forward` and
:func:`backward` hold the walk (which value feeds which, how a sum or a
concatenation is formed, where a gradient is split and collected), and an
:class:`Arithmetic` object supplies the numbers.

A value here is a scaled array ``m * 2**e`` with a ``risky`` flag
(:class:`~topo_pai.metrics.scaled.Scaled` or its torch twin); the traversal
reads only ``e``, ``m`` (to hand it back to the arithmetic) and ``risky``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from topo_pai.graph.ir import Program


class Arithmetic(Protocol):
    """The numbers behind one engine's traversal (``S``: its scaled-array type)."""

    def ones(self, n: int) -> Any:
        """``n`` units of count 1."""

    def combine(self, parts: list, n: int) -> Any:
        """The sum of scaled arrays of length ``n`` (none: zeros); parts untouched."""

    def normalize(self, arr, e: int, risky: bool) -> Any:
        """``arr * 2**e`` (``arr`` owned by the callee) as a scaled array."""

    def saturate(self, s) -> Any:
        """``min(value, 1)`` of every unit."""

    def aligned(self, s, e: int, shape: tuple[int, ...]):
        """``s``'s mantissa at exponent ``e >= s.e``, viewed with ``shape``."""

    def concat(self, arrays: list, axis: int):
        """The arrays joined along ``axis``, flat."""

    def split(self, m, shape: tuple[int, ...], sizes: list[int], axis: int) -> list:
        """``m`` viewed with ``shape``, cut along ``axis`` into ``sizes``: flat, owned copies."""

    def apply(self, op, x, n: int, saturate: bool) -> Any:
        """A one-input op (layer, pool, reduce, scale) applied to ``x``: ``n`` outputs."""

    def transpose_into(self, op, g, n: int, pending: list, saturate: bool) -> None:
        """Append the op's transpose applied to ``g`` (``n`` values) to ``pending``, the
        parts collected so far for the op's input (an engine may fold one of them in)."""


def size(program: Program, vid: int) -> int:
    """Number of units of value ``vid``."""
    return math.prod(program.values[vid])


def forward(program: Program, arith: Arithmetic, saturate: bool = False) -> dict[int, Any]:
    """Per value: the number of paths from the input to each unit (``saturate``:
    ``min(count, 1)``, i.e. reachability)."""
    val: dict[int, Any] = {}
    for op in program.ops:
        n = size(program, op.output)
        if op.kind == "input":
            val[op.output] = arith.ones(n)
            continue
        if op.kind == "reshape":
            val[op.output] = val[op.inputs[0]]
            continue
        if op.kind == "add":
            out = arith.combine([val[v] for v in op.inputs], n)
        elif op.kind == "cat":
            parts = [val[v] for v in op.inputs]
            e = max(p.e for p in parts)
            arrays = [arith.aligned(p, e, program.values[v]) for p, v in zip(parts, op.inputs)]
            out = arith.normalize(arith.concat(arrays, op.attrs["axis"]), e,
                                  any(p.risky for p in parts))
        else:
            out = arith.apply(op, val[op.inputs[0]], n, saturate)
        if saturate:
            out = arith.saturate(out)
        val[op.output] = out
    return val


def backward(program: Program, arith: Arithmetic, saturate: bool = False) -> dict[int, Any]:
    """Per value: the number of paths from each unit to the outputs (``saturate``:
    ``min(count, 1)``). Every op sends its part to its inputs; a value's parts are
    summed when the walk reaches the op that produced it."""
    parts: dict[int, list] = {}
    for v in program.outputs:
        parts.setdefault(v, []).append(arith.ones(size(program, v)))
    grad: dict[int, Any] = {}
    for op in reversed(program.ops):
        g = arith.combine(parts.pop(op.output, []), size(program, op.output))
        if saturate:
            g = arith.saturate(g)
        grad[op.output] = g
        if op.kind == "input":
            continue
        if op.kind in ("reshape", "add"):
            for v in op.inputs:
                parts.setdefault(v, []).append(g)
            continue
        if op.kind == "cat":
            axis = op.attrs["axis"]
            sizes = [program.values[v][axis] for v in op.inputs]
            pieces = arith.split(g.m, program.values[op.output], sizes, axis)
            for v, piece in zip(op.inputs, pieces):
                parts.setdefault(v, []).append(arith.normalize(piece, g.e, g.risky))
            continue
        v = op.inputs[0]
        arith.transpose_into(op, g, size(program, v), parts.setdefault(v, []), saturate)
    return grad
