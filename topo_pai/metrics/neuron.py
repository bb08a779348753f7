"""The spatially unrolled graph, propagated op by op.

Per-position edges are never materialised: a conv layer is a list of its
unpruned weight elements, and the kernels slide each element over the spatial
map. Values are flat float64 arrays in (C, H, W) order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from topo_pai.graph.ir import Layer, Program, spatial3
from topo_pai.graph.masks import LayerMask
from topo_pai.kernels.complement import (
    channel_sums,
    complement_backward,
    complement_forward,
    mask_effective,
    positive_rows,
)
from topo_pai.kernels.elements import by_input, count_words, mask_elements
from topo_pai.kernels.planes import (
    image_to_rows,
    plane_backward,
    plane_backward_image,
    plane_effective,
    plane_forward,
    plane_forward_image,
    plane_weight_flow,
    to_planes,
)
from topo_pai.kernels.pooling import pool_backward, pool_forward
from topo_pai.metrics import exact as X
from topo_pai.metrics import traversal
from topo_pai.metrics.engine import (
    TableEngine,
    linear_log10_scores,
    log10_weights,
    unit_effective,
    weighted_layer_masks,
)
from topo_pai.metrics.scaled import NodeCounts, Scaled, combine, log10_sum, normalize


@dataclass(frozen=True)
class ConvPlan:
    """Geometry of one conv on the phase-plane layout (see :mod:`topo_pai.kernels.planes`).

    The input (C, H, W) becomes ``C`` blocks of ``plane`` values (``sh * sw`` planes
    of Hq x Wq); the output is computed with row stride ``Wq`` (``ostride`` values
    per channel), every unpruned element adding one span of ``n`` values.
    """

    C: int
    H: int
    W: int
    O: int
    OH: int
    OW: int
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    Hq: int
    Wq: int

    @property
    def phases(self) -> int:
        return self.stride[0] * self.stride[1]

    @property
    def plane(self) -> int:
        return self.phases * self.Hq * self.Wq

    @property
    def n(self) -> int:
        return (self.OH - 1) * self.Wq + self.OW if self.OH > 0 and self.OW > 0 else 0

    @property
    def ostride(self) -> int:
        return self.OH * self.Wq

    @property
    def same_input(self) -> bool:
        """The planes are the input itself (unit stride, no padding, all of it read)."""
        return (self.phases == 1 and self.pad == (0, 0) and self.Hq == self.H
                and self.Wq == self.W)

    @property
    def same_output(self) -> bool:
        return self.Wq == self.OW

    def to_planes(self, x: np.ndarray) -> np.ndarray:
        if self.same_input:
            return x
        xq = np.empty(self.C * self.plane)
        to_planes(x, self.C, self.H, self.W, *self.stride, *self.pad, self.Hq, self.Wq, xq)
        return xq

    def out_to_rows(self, y: np.ndarray) -> np.ndarray:
        """(O, OH, OW) values laid out with row stride Wq, scratch columns zero."""
        if self.same_output:
            return y
        yq = np.empty(self.O * self.OH * self.Wq)
        image_to_rows(y, self.O, self.OH, self.OW, self.Wq, yq)
        return yq

    def out_from_rows(self, yq: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`out_to_rows` (a view when no copy is needed)."""
        if self.same_output:
            return yq
        return yq.reshape(self.O, self.OH, self.Wq)[:, :, :self.OW].reshape(-1)


def conv_plan(layer: Layer, in_shape, out_shape) -> ConvPlan:
    C, H, W = spatial3(in_shape)
    O, OH, OW = spatial3(out_shape)
    KH, KW = layer.kernel_hw
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    return ConvPlan(C, H, W, O, OH, OW, tuple(layer.stride), tuple(layer.pad),
                    tuple(layer.dilation), OH + ((KH - 1) * dh) // sh, OW + ((KW - 1) * dw) // sw)


@dataclass
class ConvElements:
    """Unpruned elements of a conv weight, grouped by output and by input channel,
    as span starts in the phase-plane input of their layer's :class:`ConvPlan`."""

    flat: np.ndarray  # flat index into the weight of every element (output-major)
    ptr_o: np.ndarray
    src: np.ndarray  # start of the element's input span
    ptr_i: np.ndarray
    by_i_o: np.ndarray
    by_i_src: np.ndarray
    order: np.ndarray  # permutation from output-major to input-major order
    unit: np.ndarray  # empty: the kernels read it as "every weight is 1"
    # Most elements of any output (input) channel: with unit weights an output
    # count is at most max_fan_in times the largest input count, since one
    # element reads one input position per output position; max_fan_out bounds
    # the transpose the same way.
    max_fan_in: int = 0
    max_fan_out: int = 0


def tap_offsets(plan: ConvPlan, kernel_hw: tuple[int, int]) -> np.ndarray:
    """Span start of every kernel tap ``(kh, kw)`` (row-major) within an input
    channel's phase planes: tap ``(kh, kw)`` reads plane ``((kh*dh) % sh, (kw*dw) % sw)``
    shifted by ``((kh*dh) // sh, (kw*dw) // sw)``."""
    KH, KW = kernel_hw
    (sh, sw), (dh, dw) = plan.stride, plan.dilation
    qh = np.repeat(np.arange(KH) * dh, KW)
    qw = np.tile(np.arange(KW) * dw, KH)
    phase = (qh % sh) * sw + qw % sw
    return ((phase * plan.Hq + qh // sh) * plan.Wq + qw // sw).astype(np.int64)


def conv_elements(layer: Layer, lm: LayerMask, plan: ConvPlan) -> ConvElements:
    O, per_group = layer.weight_shape[:2]
    KH, KW = layer.kernel_hw
    mask = lm.mask.reshape(-1)
    counts = lm.counts
    if counts is None:  # a LayerMask built from CSR arrays only
        counts = mask.reshape(O * per_group, KH * KW).sum(axis=1, dtype=np.int32)
    index = np.int32 if plan.C * plan.plane < 2 ** 31 else np.int64
    flat_index = np.int32 if mask.shape[0] < 2 ** 31 else np.int64  # a layer may be that large
    flat, ptr_o, nz_i, src = mask_elements(
        mask, counts, count_words(counts, KH * KW), O, per_group, KH * KW, layer.out_per_group,
        plan.plane, tap_offsets(plan, (KH, KW)), np.zeros(1, dtype=index),
        np.zeros(1, dtype=flat_index), lm.unpruned)
    ptr_i, by_i_o, by_i_src, order = by_input(ptr_o, nz_i, src, plan.C,
                                              numba.get_num_threads())
    return ConvElements(flat, ptr_o, src, ptr_i, by_i_o, by_i_src, order, np.zeros(0),
                        int(np.diff(ptr_o).max(initial=0)), int(np.diff(ptr_i).max(initial=0)))


_NO_BASE = np.zeros(0)


def conv_forward(plan: ConvPlan, el: ConvElements, x: np.ndarray, val: np.ndarray,
                 xq: np.ndarray | None = None) -> np.ndarray:
    """``conv(x)`` for flat (C, H, W) ``x``, as a new flat (O, OH, OW) array.

    ``xq`` is ``plan.to_planes(x)`` when the caller already has it.
    """
    if plan.n == 0:
        return np.zeros(plan.O * plan.OH * plan.OW)
    if xq is None:
        xq = plan.to_planes(x)
    if plan.same_output:
        out = np.empty(plan.O * plan.ostride)  # every value is written: init=True
        plane_forward(xq, out, plan.ostride, plan.n, el.ptr_o, el.src, val, True)
    else:
        out = np.empty(plan.O * plan.OH * plan.OW)
        plane_forward_image(xq, plan.n, el.ptr_o, el.src, val, plan.OH, plan.OW, plan.Wq, out)
    return out


def conv_backward(plan: ConvPlan, el: ConvElements, g: np.ndarray, val: np.ndarray,
                  gq: np.ndarray | None = None, base: np.ndarray | None = None) -> np.ndarray:
    """``conv(.)^T g (+ base)`` (the transpose of :func:`conv_forward`), as a new flat
    (C, H, W) array; ``gq`` is ``plan.out_to_rows(g)`` when the caller already has it."""
    if plan.n == 0:
        return np.zeros(plan.C * plan.H * plan.W) if base is None else base.copy()
    if gq is None:
        gq = plan.out_to_rows(g)
    base = _NO_BASE if base is None else base
    if plan.same_input:
        gin = np.empty(plan.C * plan.plane)
        plane_backward(gq, gin, plan.ostride, plan.n, el.ptr_i, el.by_i_o, el.by_i_src, val,
                       plan.plane, True, base)
    else:
        gin = np.empty(plan.C * plan.H * plan.W)
        plane_backward_image(gq, plan.ostride, plan.n, el.ptr_i, el.by_i_o, el.by_i_src, val,
                             plan.plane, plan.H, plan.W, *plan.stride, *plan.pad, plan.Hq,
                             plan.Wq, gin, base)
    return gin


#: Conv layers at least this dense (unpruned elements / weight elements) are counted by
#: their complement in unweighted engines (path counts and reachability): the full
#: layer's box filter minus the spans of the pruned elements, so the cost follows
#: min(kept, pruned). Sparser layers use the element lists. This is the threshold of
#: 1x1 (one-tap) kernels; kernels with more taps use
#: :data:`COMPLEMENT_MIN_DENSITY_TAPS`. The crossovers are measured in docs/complement.md.
COMPLEMENT_MIN_DENSITY = 0.2
#: :data:`COMPLEMENT_MIN_DENSITY` of kernels with more than one tap (3x3, 7x7, ...):
#: their complement kernels skip empty kernels and handle a kernel's taps together,
#: and beat the element lists from about density 0.05 (measured per layer on VGG-19
#: and ResNet-50), where on 1x1 kernels the lists still win at 0.1.
COMPLEMENT_MIN_DENSITY_TAPS = 0.08
#: Relative error a complement count may carry; channels whose proven bound exceeds it
#: are recomputed by the direct sum (see :func:`complement_factor`).
COMPLEMENT_REL_TOL = 2.0 ** -36
_UNIT_ROUNDOFF = 2.0 ** -53
_EXACT_LIMIT = 2.0 ** 53  # integer sums below this are exact in float64


def complement_factor(tol: float = COMPLEMENT_REL_TOL) -> float:
    """Per-term factor ``c`` of the complement kernels' acceptance test
    ``c * M * (full + pruned) <= result`` (``M``: the most terms of one sum plus 2).

    Non-negative terms summed in any order carry an error of at most
    ``gamma_M = M u / (1 - M u)`` times their exact sum (``u = 2**-53``). The full
    map and the pruned sum are such sums, and their difference adds ``u`` of the
    result, so ``|result - exact| <= 1.01 M u (full + pruned)`` while ``M u`` stays
    below 1e-3; the test makes that at most ``tol * result``. A result that passes
    is therefore within ``tol`` of the exact value and is zero exactly when the
    exact value is (a positive bound cannot be at most ``tol`` times zero), which
    keeps reachability read off these counts exact.
    """
    return 1.01 * _UNIT_ROUNDOFF / tol


@dataclass
class DenseConv:
    """What the complement kernels read of a dense conv layer: the 0/1 mask (flat,
    output-major) with its per-kernel unpruned counts, the unpruned elements of every
    output and input channel, and the plan's geometry (tap offsets, the plane
    positions that are image positions, the taps that meet the image)."""

    mask: np.ndarray
    counts: np.ndarray
    kept_out: np.ndarray
    kept_in: np.ndarray
    taps: np.ndarray
    on_plane: np.ndarray
    out_valid: np.ndarray  # per output row position (row stride Wq): not a scratch column
    tap_hits: np.ndarray
    per_group: int
    out_per_group: int
    max_fan_in: int
    max_fan_out: int


def dense_conv(layer: Layer, lm: LayerMask, plan: ConvPlan) -> DenseConv:
    O, per_group = layer.weight_shape[:2]
    KH, KW = layer.kernel_hw
    kk = KH * KW
    mask = lm.mask.reshape(-1)
    counts = lm.counts
    if counts is None:  # a LayerMask built from CSR arrays only
        counts = mask.reshape(O * per_group, kk).sum(axis=1, dtype=np.int32)
    groups = layer.groups
    opg = O // groups
    kept_out = counts.reshape(O, per_group).sum(axis=1, dtype=np.int64)
    kept_in = counts.reshape(groups, opg, per_group).sum(axis=1, dtype=np.int64).reshape(-1)
    taps = tap_offsets(plan, (KH, KW))
    (sh, sw), (ph, pw) = plan.stride, plan.pad
    a = np.arange(sh)[:, None, None, None]
    b = np.arange(sw)[None, :, None, None]
    h = np.arange(plan.Hq)[None, None, :, None] * sh + a - ph
    w = np.arange(plan.Wq)[None, None, None, :] * sw + b - pw
    on_plane = ((h >= 0) & (h < plan.H) & (w >= 0) & (w < plan.W)).reshape(-1)
    valid = (np.arange(plan.OH)[:, None] * plan.Wq + np.arange(plan.OW)[None, :]).reshape(-1)
    tap_hits = np.array([on_plane[t + valid].any() for t in taps], dtype=np.uint8)
    out_valid = np.zeros(plan.ostride, dtype=np.uint8)
    out_valid[valid] = 1
    return DenseConv(mask, counts, kept_out, kept_in, taps, on_plane.astype(np.uint8), out_valid,
                     tap_hits, per_group, opg, int(kept_out.max(initial=0)),
                     int(kept_in.max(initial=0)))


def complement_conv_forward(plan: ConvPlan, dc: DenseConv, xq: np.ndarray,
                            factor: float) -> tuple[np.ndarray, int]:
    """The unit-weight conv of :func:`conv_forward` by the complement kernels, from the
    input planes ``xq``; returns the flat (O, OH, OW) result and the number of output
    channels whose complement failed the error bound (recomputed directly)."""
    if plan.n == 0:
        return np.zeros(plan.O * plan.OH * plan.OW), 0
    groups = plan.C // dc.per_group
    xsum = np.empty(groups * plan.plane)
    channel_sums(xq, dc.per_group, plan.plane, xsum)
    out = np.empty(plan.O * plan.OH * plan.OW)
    fell = np.zeros(plan.O, dtype=np.uint8)
    complement_forward(xq, xsum, dc.mask, dc.counts, dc.per_group, dc.taps.shape[0],
                       dc.out_per_group, dc.taps, plan.plane, plan.n, plan.OH, plan.OW, plan.Wq,
                       dc.kept_out, factor, out, fell)
    return out, int(fell.sum())


def complement_conv_backward(plan: ConvPlan, dc: DenseConv, gq: np.ndarray, factor: float,
                             base: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The transpose of :func:`complement_conv_forward` applied to the output rows
    ``gq`` (plus ``base``); returns the flat (C, H, W) result and the number of input
    channels recomputed directly."""
    if plan.n == 0:
        return (np.zeros(plan.C * plan.H * plan.W) if base is None else base.copy()), 0
    groups = plan.C // dc.per_group
    gsum = np.empty(groups * plan.ostride)
    channel_sums(gq, dc.out_per_group, plan.ostride, gsum)
    gin = np.empty(plan.C * plan.H * plan.W)
    fell = np.zeros(plan.C, dtype=np.uint8)
    complement_backward(gq, gsum, dc.mask, dc.counts, dc.per_group, dc.taps.shape[0],
                        dc.out_per_group, dc.taps, plan.plane, plan.ostride, plan.n, dc.kept_in,
                        factor, dc.on_plane, plan.H, plan.W, *plan.stride, *plan.pad, plan.Hq,
                        plan.Wq, gin, _NO_BASE if base is None else base, fell)
    return gin, int(fell.sum())


def complement_effective(plan: ConvPlan, dc: DenseConv, fq: np.ndarray, bq: np.ndarray,
                         flags: bool = True) -> tuple[np.ndarray, int]:
    """The unpruned elements on a path, given the reachability planes ``fq`` and output
    rows ``bq`` (positive: reached): flat uint8 flags over the weight's elements
    (empty unless ``flags``) and their number."""
    eff = np.zeros(dc.mask.shape[0] if flags else 0, dtype=np.uint8)
    if plan.n == 0:
        return eff, 0
    in_full = np.empty(plan.C, dtype=np.uint8)
    positive_rows(fq, plan.plane, dc.on_plane, in_full)
    out_full = np.empty(plan.O, dtype=np.uint8)
    positive_rows(bq, plan.ostride, dc.out_valid, out_full)
    row_counts = np.empty(plan.O, dtype=np.int64)
    mask_effective(fq, bq, dc.mask, dc.counts, dc.per_group, dc.taps.shape[0],
                   dc.out_per_group, dc.taps, plan.plane, plan.ostride, plan.n, dc.tap_hits,
                   in_full, out_full, dc.kept_out, eff, row_counts)
    return eff, int(row_counts.sum())


class NeuronGraph:
    """Op-by-op propagation; ``weights`` (per layer, flat float64 over the weight's
    elements) turns path counts into path mass, as SynFlow's flows.

    A ``scale`` op (a product by constants) multiplies each unit by 1 or 0 (its
    factor is non-zero or zero) for counts, and by ``|factor|`` for flows.
    """

    def __init__(self, program: Program, layer_masks: list[LayerMask],
                 weights: list[np.ndarray] | None = None, elements=None,
                 complement_min_density: float | None = None, dense_products=None):
        self.p = program
        self.layer_masks = layer_masks
        self.weights = weights
        # Per conv layer, built on first use; ``elements`` shares another graph's cache
        # (one over the same masks).
        self.elements_cache: dict[int, ConvElements] = {} if elements is None else elements
        self.integer = weights is None  # plain path counts: see scaled.normalize
        self._values: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._plans: dict[int, ConvPlan] = {}
        # Re-laid-out conv inputs (forward) and outputs (backward), kept for the
        # effectiveness and flow queries, which read the same arrays again:
        # layer -> (array, its planes or rows). Only layouts that needed a copy.
        self._in_planes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._out_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._factors: dict[int, np.ndarray] = {}  # scale op output -> flat factors
        # Conv layers counted by their complement (unweighted graphs only): layer ->
        # DenseConv, built on first use; None: the layer uses its element lists.
        # None: per layer, COMPLEMENT_MIN_DENSITY or COMPLEMENT_MIN_DENSITY_TAPS
        self.complement_min_density = complement_min_density
        self._dense: dict[int, DenseConv | None] = {}
        # Of the layers counted by their complement, those whose unit-weight products a
        # dense float64 product computes instead, cheaper at middling densities
        # (engine="auto": topo_pai.metrics.torch_neuron.TorchConvCounts, whose
        # ``takes(layer)`` chooses); None: the complement kernels take them all.
        self.dense_products = dense_products
        # Channels recomputed directly because their complement failed the error bound:
        # (layer, "forward" | "backward") -> count, summed over the passes run so far.
        self.fallbacks: dict[tuple[int, str], int] = {}

    def factors(self, op) -> np.ndarray:
        """Flat per-unit factors of a ``scale`` op: 0/1 for counts, ``|factor|`` for flows."""
        if op.output not in self._factors:
            f = np.abs(op.attrs["factor"]) if self.weights is not None else \
                (op.attrs["factor"] != 0).astype(np.float64)
            self._factors[op.output] = np.ascontiguousarray(
                np.broadcast_to(f, self.p.values[op.output]), dtype=np.float64).reshape(-1)
        return self._factors[op.output]

    def plan(self, layer: int) -> ConvPlan:
        if layer not in self._plans:
            op = self.p.layer_ops[layer]
            self._plans[layer] = conv_plan(self.p.layers[layer], self.p.values[op.inputs[0]],
                                           self.p.values[op.output])
        return self._plans[layer]

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
        if layer not in self.elements_cache:
            self.elements_cache[layer] = conv_elements(self.p.layers[layer],
                                                       self.layer_masks[layer], self.plan(layer))
        return self.elements_cache[layer]

    def dense(self, layer: int) -> DenseConv | None:
        """The layer's :class:`DenseConv` if it is counted by its complement: a conv of
        an unweighted graph whose density is at least ``complement_min_density``
        (default: :data:`COMPLEMENT_MIN_DENSITY` for one-tap kernels,
        :data:`COMPLEMENT_MIN_DENSITY_TAPS` for larger ones)."""
        if layer not in self._dense:
            spec, lm = self.p.layers[layer], self.layer_masks[layer]
            threshold = self.complement_min_density
            if threshold is None:
                threshold = (COMPLEMENT_MIN_DENSITY if spec.kernel_volume == 1
                             else COMPLEMENT_MIN_DENSITY_TAPS)
            use = (self.weights is None and spec.kind != "Linear" and lm.mask.size > 0
                   and lm.unpruned >= threshold * lm.mask.size)
            self._dense[layer] = dense_conv(spec, lm, self.plan(layer)) if use else None
        return self._dense[layer]

    def _dense_product(self, layer: int) -> bool:
        """Whether a layer counted by its complement takes ``dense_products`` instead.
        Its results are sums of non-negative terms in float64, like the direct sums of
        the element lists (same error bound, zero exactly when no path exists), and its
        effective elements are still read off the mask (:meth:`dense`)."""
        return self.dense_products is not None and self.dense_products.takes(layer)

    def _exactness(self, x: Scaled, fan: int) -> float:
        """The complement kernels' bound factor for input counts ``x`` through sums of at
        most ``fan`` terms each: 0 (no test needed) when the sums are exact, i.e. the
        mantissas are integer path counts (``e == 0``) whose largest sum stays below
        2**53."""
        if self.integer and x.e == 0:
            hi = x.hi if x.hi is not None else float(x.m.max(initial=0.0))
            if hi * fan < _EXACT_LIMIT:
                return 0.0
        return complement_factor()

    def _record_fallbacks(self, layer: int, direction: str, n: int) -> None:
        key = (layer, direction)
        self.fallbacks[key] = self.fallbacks.get(key, 0) + n

    # -- the traversal's arithmetic (topo_pai.metrics.traversal.Arithmetic) ------------
    def forward(self, saturate: bool = False) -> dict[int, Scaled]:
        return traversal.forward(self.p, self, saturate)

    def backward(self, saturate: bool = False) -> dict[int, Scaled]:
        return traversal.backward(self.p, self, saturate)

    def ones(self, n: int) -> Scaled:
        return Scaled(np.ones(n))

    def combine(self, parts: list[Scaled], n: int) -> Scaled:
        return combine(parts, n, integer=self.integer)

    def normalize(self, arr: np.ndarray, e: int, risky: bool) -> Scaled:
        return normalize(arr, e, risky, integer=self.integer)

    @staticmethod
    def saturate(s: Scaled) -> Scaled:
        return Scaled(np.minimum(np.ldexp(s.m, s.e), 1.0), hi=1.0)

    @staticmethod
    def aligned(s: Scaled, e: int, shape: tuple[int, ...]) -> np.ndarray:
        return (s.m if s.e == e else np.ldexp(s.m, s.e - e)).reshape(shape)

    @staticmethod
    def concat(arrays: list[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(arrays, axis=axis).reshape(-1)

    @staticmethod
    def split(m: np.ndarray, shape, sizes: list[int], axis: int) -> list[np.ndarray]:
        pieces = np.split(m.reshape(shape), np.cumsum(sizes)[:-1], axis=axis)
        return [piece.reshape(-1).copy() for piece in pieces]

    def apply(self, op, x: Scaled, n: int, saturate: bool) -> Scaled:
        del saturate  # counts and reachability share the 0/1 arithmetic here
        return normalize(self._forward_op(op, x, n), x.e, x.risky, integer=self.integer,
                         bound=self._bound(op, x.hi, "forward"))

    def transpose_into(self, op, g: Scaled, n: int, pending: list[Scaled],
                       saturate: bool) -> None:
        del saturate
        if (op.kind == "layer" and len(pending) == 1 and pending[0].e == g.e
                and self.p.layers[op.attrs["layer"]].kind != "Linear"):
            # Another branch already sent its part (a residual block's input):
            # the conv kernel adds it in the same pass instead of a separate sum.
            other = pending.pop()
            arr = self._backward_op(op, g, n, base=other.m)
            bound = self._bound(op, g.hi, "backward")
            bound = None if bound is None or other.hi is None else bound + other.hi
            pending.append(normalize(arr, g.e, g.risky or other.risky, integer=self.integer,
                                     bound=bound))
            return
        pending.append(normalize(self._backward_op(op, g, n), g.e, g.risky,
                                 integer=self.integer, bound=self._bound(op, g.hi, "backward")))

    def _bound(self, op, hi: float | None, direction: str) -> float | None:
        """An upper bound on the op's output mantissas from its input's bound ``hi``
        (None: unknown, or not worth a bound), so that most ops need no scan
        for their maximum (see :func:`~topo_pai.metrics.scaled.normalize`)."""
        if hi is None or not self.integer:
            return None
        if op.kind == "scale":  # 0/1 factors never raise a count
            return hi
        if op.kind == "layer" and self.p.layers[op.attrs["layer"]].kind != "Linear":
            layer = op.attrs["layer"]
            el = self.dense(layer) or self.elements(layer)
            return hi * (el.max_fan_in if direction == "forward" else el.max_fan_out)
        return None

    def _forward_op(self, op, xs: Scaled, n: int):
        x = xs.m
        if op.kind == "layer":
            layer = op.attrs["layer"]
            if self.p.layers[layer].kind == "Linear":
                out = np.zeros(n)
                self.layer_masks[layer].matvec(x, out)
                return out
            dc = self.dense(layer)
            if dc is not None and self._dense_product(layer):
                return self.dense_products.forward(layer, x)
            if dc is not None:
                out, fell = complement_conv_forward(
                    self.plan(layer), dc, self.in_planes(layer, x),
                    self._exactness(xs, dc.per_group * dc.taps.shape[0]))
                self._record_fallbacks(layer, "forward", fell)
                return out
            vals, _ = self.element_values(layer)
            return conv_forward(self.plan(layer), self.elements(layer), x, vals,
                                self.in_planes(layer, x))
        if op.kind == "pool":
            return self._pool(pool_forward, op, x, n)
        if op.kind == "reduce":
            return x.reshape(self.p.values[op.inputs[0]]).sum(axis=op.attrs["axes"]).reshape(-1)
        if op.kind == "scale":
            return x * self.factors(op)
        raise AssertionError(op.kind)  # pragma: no cover

    def _pool(self, kernel, op, x: np.ndarray, n: int) -> np.ndarray:
        """``kernel`` (:func:`~topo_pai.kernels.pooling.pool_forward` or its transpose
        ``pool_backward``) of the pool op ``op`` applied to ``x``: ``n`` new values."""
        out = np.zeros(n)
        C, H, W = spatial3(self.p.values[op.inputs[0]])
        _, OH, OW = spatial3(self.p.values[op.output])
        (hp, hi), (wp, wi) = op.attrs["windows"]
        kernel(x, C, H, W, out, OH, OW, hp, hi, wp, wi)
        return out

    def in_planes(self, layer: int, x: np.ndarray) -> np.ndarray:
        """``plan(layer).to_planes(x)``, computed once per input array."""
        plan = self.plan(layer)
        return x if plan.same_input else self._relaid(self._in_planes, layer, x, plan.to_planes)

    def out_rows(self, layer: int, g: np.ndarray) -> np.ndarray:
        """``plan(layer).out_to_rows(g)``, computed once per output array."""
        plan = self.plan(layer)
        return g if plan.same_output else self._relaid(self._out_rows, layer, g,
                                                       plan.out_to_rows)

    @staticmethod
    def _relaid(cache: dict, layer: int, arr: np.ndarray, relay) -> np.ndarray:
        hit = cache.get(layer)
        if hit is None or hit[0] is not arr:
            hit = cache[layer] = (arr, relay(arr))
        return hit[1]

    def _backward_op(self, op, gs: Scaled, n: int, base: np.ndarray | None = None):
        """The op's transpose applied to ``gs`` (plus ``base``, for convs)."""
        g = gs.m
        if op.kind == "layer":
            layer = op.attrs["layer"]
            if self.p.layers[layer].kind == "Linear":
                gin = np.zeros(n)
                self.layer_masks[layer].rmatvec(g, gin)
                return gin
            dc = self.dense(layer)
            if dc is not None and self._dense_product(layer):
                return self.dense_products.backward(layer, g, base)
            if dc is not None:
                gin, fell = complement_conv_backward(
                    self.plan(layer), dc, self.out_rows(layer, g),
                    self._exactness(gs, dc.out_per_group * dc.taps.shape[0]), base)
                self._record_fallbacks(layer, "backward", fell)
                return gin
            _, vals = self.element_values(layer)
            return conv_backward(self.plan(layer), self.elements(layer), g, vals,
                                 self.out_rows(layer, g), base)
        if op.kind == "pool":
            return self._pool(pool_backward, op, g, n)
        if op.kind == "reduce":
            in_shape = self.p.values[op.inputs[0]]
            kept = tuple(1 if a in op.attrs["axes"] else s for a, s in enumerate(in_shape))
            gin = np.empty(n)
            gin.reshape(in_shape)[...] = g.reshape(kept)
            return gin
        if op.kind == "scale":  # diagonal: its own transpose
            return g * self.factors(op)
        raise AssertionError(op.kind)  # pragma: no cover

    # -- reachability (0/1 arithmetic, exact) -----------------------------------------
    def reach_forward(self) -> dict[int, np.ndarray]:
        """Per value: 1 where a unit is reached from the input, else 0."""
        return {v: s.m for v, s in self.forward(saturate=True).items()}

    def reach_backward(self) -> dict[int, np.ndarray]:
        """Per value: 1 where a unit reaches the output, else 0."""
        return {v: s.m for v, s in self.backward(saturate=True).items()}

    # -- effectiveness ---------------------------------------------------------------
    def _planes(self, layer: int, fin: np.ndarray, bout: np.ndarray):
        return self.plan(layer), self.in_planes(layer, fin), self.out_rows(layer, bout)

    def effective_flags(self, layer: int, fin: np.ndarray, bout: np.ndarray):
        """A conv layer's effective elements as ``(flat, flags)``: uint8 flags of the
        unpruned elements at the flat weight indices ``flat``, or, for a layer counted
        by its complement, ``flat`` None and one flag per weight element."""
        dc = self.dense(layer)
        if dc is not None:
            plan, fq, bq = self._planes(layer, fin, bout)
            return None, complement_effective(plan, dc, fq, bq)[0]
        el = self.elements(layer)
        flags = np.zeros(el.flat.shape[0], dtype=np.uint8)
        plan, fq, bq = self._planes(layer, fin, bout)
        if plan.n:
            plane_effective(fq, bq, plan.ostride, plan.n, el.ptr_o, el.src, flags)
        return el.flat, flags

    def effective_count(self, layer: int, fin: np.ndarray, bout: np.ndarray) -> int:
        """Number of a conv layer's unpruned elements on a path."""
        dc = self.dense(layer)
        if dc is not None:
            plan, fq, bq = self._planes(layer, fin, bout)
            return complement_effective(plan, dc, fq, bq, flags=False)[1]
        return int(np.count_nonzero(self.effective_flags(layer, fin, bout)[1]))

    def weight_flow(self, layer: int, fin: np.ndarray, bout: np.ndarray):
        """Per unpruned element: sum over positions of fin * bout (times nothing)."""
        el = self.elements(layer)
        sums = np.zeros(el.flat.shape[0])
        plan, fq, bq = self._planes(layer, fin, bout)
        if plan.n:
            plane_weight_flow(fq, bq, plan.ostride, plan.n, el.ptr_o, el.src, sums)
        return el.flat, sums


class NeuronEngine(TableEngine):
    """The neuron-resolution :class:`~topo_pai.metrics.engine.Engine`: the spatially
    unrolled graph, propagated op by op over :class:`NeuronGraph` (see the engine
    contract). Its tables hold every value of the program, keyed by value id."""

    resolution = "neuron"

    def __init__(self, program: Program, structure, layer_masks: list[LayerMask], shared: dict,
                 *, weights: list[np.ndarray] | None = None,
                 elements: dict[int, ConvElements] | None = None,
                 complement_min_density: float | None = None, options=None,
                 dense_products=None):
        super().__init__()
        # the unrolled graph needs neither structure nor shared; options (EngineOptions)
        # choose among implementations in neuron_engine, and this one runs on the CPU only
        del structure, shared, options
        self.program = program
        self.layer_masks = layer_masks
        # complement_min_density (default: per kernel size, COMPLEMENT_MIN_DENSITY or
        # COMPLEMENT_MIN_DENSITY_TAPS; 0: every conv, > 1:
        # none) chooses which conv layers of unweighted engines are counted by their
        # complement; an internal knob (the tests force each path with it).
        # dense_products: see NeuronGraph (engine="auto" passes torch's convolutions).
        self.graph = NeuronGraph(program, layer_masks, weights, elements,
                                 complement_min_density, dense_products)
        self.group_keys = program.group_values

    def group_shape(self, group: int) -> tuple[int, ...]:
        return tuple(self.program.values[self.group_keys[group]])

    def _propagate_forward(self) -> dict:
        return self.graph.forward()

    def _propagate_backward(self) -> dict:
        return self.graph.backward()

    def _exact_reach(self) -> tuple[dict, dict]:
        return self.graph.reach_forward(), self.graph.reach_backward()

    def _io(self, layer: int) -> tuple[int, int]:
        op = self.program.layer_ops[layer]
        return op.inputs[0], op.output

    def log10_total(self) -> float:
        fwd = self.fwd
        return log10_sum([fwd[v] for v in self.program.outputs])

    def exact_total(self) -> int:
        return X.neuron_exact(self.program, self.layer_masks)

    def exact_cost(self, log10_total: float) -> tuple[float, float]:
        return X.estimate(self.program, self.layer_masks, self.resolution, log10_total, 0)

    def _flags(self, layer: int):
        rf, rb = self.reach
        vin, vout = self._io(layer)
        return self.graph.effective_flags(layer, rf[vin], rb[vout])

    def effective_params(self) -> list[int]:
        rf, rb = self.reach
        counts = []
        for i, (layer, lm) in enumerate(zip(self.program.layers, self.layer_masks)):
            if layer.kind == "Linear":
                vin, vout = self._io(i)
                counts.append(int(lm.bilinear(rb[vout], rf[vin])))
            else:
                vin, vout = self._io(i)
                counts.append(self.graph.effective_count(i, rf[vin], rb[vout]))
        return counts

    def effective_mask(self, layer: int) -> np.ndarray:
        spec, lm = self.program.layers[layer], self.layer_masks[layer]
        if spec.kind == "Linear":
            rf, rb = self.reach
            vin, vout = self._io(layer)
            return unit_effective(lm, spec, rf[vin] > 0, rb[vout] > 0)
        flat, flags = self._flags(layer)
        if flat is None:
            return flags.view(bool).reshape(lm.mask.shape)
        eff = np.zeros(lm.mask.size, dtype=bool)
        eff[flat] = flags.astype(bool)
        return eff.reshape(lm.mask.shape)

    def layer_reach(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        rf, rb = self.reach
        vin, vout = self._io(layer)
        shape_in, shape_out = self.program.values[vin], self.program.values[vout]
        return ((rf[vin].reshape(shape_in[0], -1) > 0).any(axis=1),
                (rb[vout].reshape(shape_out[0], -1) > 0).any(axis=1))

    def layer_input_counts(self, layer: int) -> NodeCounts:
        vin, _ = self._io(layer)
        f = self.fwd[vin]
        return NodeCounts(f.m.reshape(self.program.values[vin][0], -1).sum(axis=1), f.e)

    def layer_flows(self, layer: int) -> tuple[NodeCounts, NodeCounts]:
        vin, vout = self._io(layer)
        fin, bout = self.fwd[vin], self.bwd[vout]
        return (NodeCounts(fin.m.reshape(self.program.values[vin]), fin.e),
                NodeCounts(bout.m.reshape(self.program.values[vout]), bout.e))

    def log10_through_weights(self, layer: int) -> np.ndarray:
        vin, vout = self._io(layer)
        fin, bout = self.fwd[vin], self.bwd[vout]
        weights = self.graph.weights
        logw = log10_weights(self.layer_masks[layer], None if weights is None else weights[layer])
        if self.program.layers[layer].kind == "Linear":
            return linear_log10_scores(logw, fin, bout)
        flat, sums = self.graph.weight_flow(layer, fin.m, bout.m)
        score = np.full(logw.size, -np.inf)
        score[flat] = Scaled(sums, fin.e + bout.e).log10()
        return score.reshape(logw.shape) + logw

    def with_weights(self, weights: list[np.ndarray]) -> NeuronEngine:
        # The weighted graph shares the unweighted one's conv elements (same masks).
        return NeuronEngine(self.program, None,
                            weighted_layer_masks(self.program.layers, self.layer_masks, weights),
                            {}, weights=weights, elements=self.graph.elements_cache)
