"""The spatially unrolled graph, propagated op by op.

Per-position edges are never materialised: a conv layer is a list of its
unpruned weight elements, and the kernels slide each element over the spatial
map. Values are flat float64 arrays in (C, H, W) order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topo_pai.graph.ir import Layer, Program, spatial3
from topo_pai.graph.masks import LayerMask
from topo_pai.kernels import propagate as K
from topo_pai.metrics.scaled import Scaled, combine, normalize


@dataclass
class ConvElements:
    """Unpruned elements of a conv weight, grouped by output and by input channel."""

    flat: np.ndarray  # flat index into the weight of every element (output-major)
    ptr_o: np.ndarray
    nz_i: np.ndarray  # global input channel
    nz_kh: np.ndarray
    nz_kw: np.ndarray
    ptr_i: np.ndarray
    by_i_o: np.ndarray
    by_i_kh: np.ndarray
    by_i_kw: np.ndarray
    order: np.ndarray  # permutation from output-major to input-major order
    unit: np.ndarray  # empty: the kernels read it as "every weight is 1"


def conv_elements(layer: Layer, lm: LayerMask, in_channels: int) -> ConvElements:
    O, per_group = layer.weight_shape[:2]
    KH, KW = layer.kernel_hw
    flat, ptr_o, nz_i, kh, kw = K.mask_elements(lm.mask.reshape(-1), O, per_group, KH, KW,
                                                O // layer.groups)
    o = np.repeat(np.arange(O, dtype=np.int32), np.diff(ptr_o))
    ptr_i, order = K.group_by(nz_i, in_channels)
    return ConvElements(flat, ptr_o, nz_i, kh, kw, ptr_i, o[order], kh[order], kw[order], order,
                        np.zeros(0))


class NeuronGraph:
    """Op-by-op propagation; ``weights`` (per layer, flat float64 over the weight's
    elements) turns path counts into path mass, as SynFlow's flows."""

    def __init__(self, program: Program, layer_masks: list[LayerMask],
                 weights: list[np.ndarray] | None = None, elements=None):
        self.p = program
        self.layer_masks = layer_masks
        self.weights = weights
        self._elements: dict[int, ConvElements] = {} if elements is None else elements
        self._values: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def element_values(self, layer: int):
        """Per-element weights in output-major and input-major order (empty: unit)."""
        if self.weights is None:
            unit = self.elements(layer).unit
            return unit, unit
        if layer not in self._values:
            el = self.elements(layer)
            v = np.ascontiguousarray(self.weights[layer][el.flat], dtype=np.float64)
            self._values[layer] = (v, v[el.order])
        return self._values[layer]

    def elements(self, layer: int) -> ConvElements:
        if layer not in self._elements:
            L = self.p.layers[layer]
            op = self.p.layer_ops[layer]
            self._elements[layer] = conv_elements(L, self.layer_masks[layer],
                                                  self.p.values[op.inputs[0]][0])
        return self._elements[layer]

    def size(self, vid: int) -> int:
        return int(np.prod(self.p.values[vid]))

    def _conv_geometry(self, op):
        L = self.p.layers[op.attrs["layer"]]
        _, H, W = spatial3(self.p.values[op.inputs[0]])
        _, OH, OW = spatial3(self.p.values[op.output])
        return L, H, W, OH, OW

    # -- forward -------------------------------------------------------------------
    def forward(self, saturate: bool = False) -> dict[int, Scaled]:
        val: dict[int, Scaled] = {}
        for op in self.p.ops:
            n = self.size(op.output)
            if op.kind == "input":
                val[op.output] = Scaled(np.ones(n))
                continue
            if op.kind == "reshape":
                val[op.output] = val[op.inputs[0]]
                continue
            if op.kind == "add":
                out = combine([val[v] for v in op.inputs], n)
            elif op.kind == "cat":
                parts = [val[v] for v in op.inputs]
                e = max(p.e for p in parts)
                arrays = [(p.m if p.e == e else np.ldexp(p.m, p.e - e)).reshape(self.p.values[v])
                          for p, v in zip(parts, op.inputs)]
                cat = np.concatenate(arrays, axis=op.attrs["axis"]).reshape(-1)
                out = normalize(cat, e, any(p.risky for p in parts))
            else:
                x = val[op.inputs[0]]
                out = normalize(self._forward_op(op, x.m, n), x.e, x.risky)
            if saturate:
                out = Scaled(np.minimum(np.ldexp(out.m, out.e), 1.0))
            val[op.output] = out
        return val

    def _forward_op(self, op, x: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros(n)
        if op.kind == "layer":
            L, H, W, OH, OW = self._conv_geometry(op)
            lm = self.layer_masks[op.attrs["layer"]]
            if L.kind == "Linear":
                K.csr_matvec(lm.indptr, lm.indices, lm.data, x, out)
            else:
                el = self.elements(op.attrs["layer"])
                vals, _ = self.element_values(op.attrs["layer"])
                K.conv_forward(x, H, W, out, OH, OW, el.ptr_o, el.nz_i, el.nz_kh, el.nz_kw,
                               vals, *L.stride, *L.pad, *L.dilation)
        elif op.kind == "pool":
            C, H, W = spatial3(self.p.values[op.inputs[0]])
            _, OH, OW = spatial3(self.p.values[op.output])
            (hp, hi), (wp, wi) = op.attrs["windows"]
            K.pool_forward(x, C, H, W, out, OH, OW, hp, hi, wp, wi)
        elif op.kind == "reduce":
            out[:] = x.reshape(self.p.values[op.inputs[0]]).sum(axis=op.attrs["axes"]).reshape(-1)
        else:  # pragma: no cover
            raise AssertionError(op.kind)
        return out

    # -- backward ------------------------------------------------------------------
    def backward(self, saturate: bool = False) -> dict[int, Scaled]:
        parts: dict[int, list[Scaled]] = {}
        for v in self.p.outputs:
            parts.setdefault(v, []).append(Scaled(np.ones(self.size(v))))
        grad: dict[int, Scaled] = {}
        for op in reversed(self.p.ops):
            g = combine(parts.pop(op.output, []), self.size(op.output))
            if saturate:
                g = Scaled(np.minimum(np.ldexp(g.m, g.e), 1.0))
            grad[op.output] = g
            if op.kind == "input":
                continue
            if op.kind in ("reshape", "add"):
                for v in op.inputs:
                    parts.setdefault(v, []).append(g)
                continue
            if op.kind == "cat":
                shape = self.p.values[op.output]
                axis = op.attrs["axis"]
                splits = np.cumsum([self.p.values[v][axis] for v in op.inputs])[:-1]
                pieces = np.split(g.m.reshape(shape), splits, axis=axis)
                for v, piece in zip(op.inputs, pieces):
                    parts.setdefault(v, []).append(normalize(piece.reshape(-1).copy(), g.e,
                                                             g.risky))
                continue
            v = op.inputs[0]
            parts.setdefault(v, []).append(normalize(self._backward_op(op, g.m, self.size(v)),
                                                     g.e, g.risky))
        return grad

    def _backward_op(self, op, g: np.ndarray, n: int) -> np.ndarray:
        gin = np.zeros(n)
        if op.kind == "layer":
            L, H, W, OH, OW = self._conv_geometry(op)
            lm = self.layer_masks[op.attrs["layer"]]
            if L.kind == "Linear":
                K.csr_rmatvec(lm.indptr, lm.indices, lm.data, g, gin)
            else:
                el = self.elements(op.attrs["layer"])
                _, vals = self.element_values(op.attrs["layer"])
                K.conv_backward(g, H, W, gin, OH, OW, el.ptr_i, el.by_i_o, el.by_i_kh,
                                el.by_i_kw, vals, *L.stride, *L.pad, *L.dilation)
        elif op.kind == "pool":
            C, H, W = spatial3(self.p.values[op.inputs[0]])
            _, OH, OW = spatial3(self.p.values[op.output])
            (hp, hi), (wp, wi) = op.attrs["windows"]
            K.pool_backward(g, C, H, W, gin, OH, OW, hp, hi, wp, wi)
        elif op.kind == "reduce":
            in_shape = self.p.values[op.inputs[0]]
            kept = tuple(1 if a in op.attrs["axes"] else s for a, s in enumerate(in_shape))
            gin[:] = np.broadcast_to(g.reshape(kept), in_shape).reshape(-1)
        else:  # pragma: no cover
            raise AssertionError(op.kind)
        return gin

    # -- effectiveness ---------------------------------------------------------------
    def effective_flags(self, layer: int, fin: np.ndarray, bout: np.ndarray):
        """Per-layer effectiveness: flags per unpruned element (conv) or count (linear)."""
        op = self.p.layer_ops[layer]
        L, H, W, OH, OW = self._conv_geometry(op)
        el = self.elements(layer)
        flags = np.zeros(el.flat.shape[0], dtype=np.uint8)
        K.conv_effective(fin, H, W, bout, OH, OW, el.ptr_o, el.nz_i, el.nz_kh, el.nz_kw,
                         *L.stride, *L.pad, *L.dilation, flags)
        return el.flat, flags

    def weight_flow(self, layer: int, fin: np.ndarray, bout: np.ndarray):
        """Per unpruned element: sum over positions of fin * bout (times nothing)."""
        op = self.p.layer_ops[layer]
        L, H, W, OH, OW = self._conv_geometry(op)
        el = self.elements(layer)
        sums = np.zeros(el.flat.shape[0])
        K.conv_weight_flow(fin, H, W, bout, OH, OW, el.ptr_o, el.nz_i, el.nz_kh, el.nz_kw,
                           *L.stride, *L.pad, *L.dilation, sums)
        return el.flat, sums
