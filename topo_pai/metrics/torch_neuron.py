"""The neuron-resolution engine on torch ops, on the model's device.

Every op of the :class:`~topo_pai.graph.ir.Program` is applied with torch's own
dense arithmetic in float64: a conv layer is ``F.conv2d`` with the 0/1 mask (or
``mask * |w|``) as its weight, its transpose ``torch.nn.grad.conv2d_input``, the
flow through every weight element ``torch.nn.grad.conv2d_weight``; a Linear
layer is a matrix-vector product; a pool is ``P_h X P_w^T`` with 0/1 window
matrices; sums, concatenations and constant factors as elsewhere. Dense kernels
cost the same at any density, so on the CPU a sparse conv layer (density at most
:data:`~topo_pai.metrics.torch_sparse.SPARSE_MAX_DENSITY`) runs instead as CSR
products over its kept elements (:mod:`topo_pai.metrics.torch_sparse`), a choice
made per layer. The Numba engine's cost follows the kept weights everywhere
(:mod:`topo_pai.metrics.neuron`); ``engine="auto"`` chooses between the two engines
by the network's density (:func:`prefers_torch`, ``docs/architecture.md``).

Counts stay overflow-free as in :mod:`topo_pai.metrics.scaled`: a float64
mantissa tensor plus one Python-int power-of-two exponent per value, rescaled
exactly when its maximum leaves ``2**+-SLACK_BITS``, exponents aligned before
sums and concatenations. Every op sums non-negative products, so a count is
zero exactly when no path exists (up to underflow, which the ``risky`` flag
catches as in the Numba engine); on CUDA, cuDNN is switched off for these ops,
since its FFT and Winograd algorithms would leave rounding residue where a
count is zero. Reachability is read off the counts when no value is risky,
otherwise recomputed in saturated ``min(x, 1)`` arithmetic, exact in float64.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from topo_pai.errors import UnsupportedOpError
from topo_pai.graph.ir import Program, spatial3
from topo_pai.graph.masks import LayerMask
from topo_pai.kernels.vectors import (
    finish_log10_scores,
    masked_values,
    scale_stats,
    scatter_log10_scores,
)
from topo_pai.metrics import exact as X
from topo_pai.metrics import traversal
from topo_pai.metrics.engine import EngineOptions, linear_log10_scores, log10_weights
from topo_pai.metrics.neuron import NeuronEngine
from topo_pai.metrics.scaled import (
    LOG10_2,
    RISKY_BITS,
    SLACK_BITS,
    NodeCounts,
    Scaled,
    log10_scaled,
)
from topo_pai.metrics.torch_sparse import (
    KeptElements,
    SparseConv,
    layer_kept_elements,
    runs_sparse,
)

_INT64_MAX = torch.iinfo(torch.int64).max


def _unsupported(op) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"the torch engine cannot propagate the {op.kind!r} op at fx node '{op.fx_node}'; "
        "use engine='numba' or report the model")


@dataclass
class TScaled:
    """``m * 2**e`` with a flat float64 torch mantissa (see :class:`Scaled`)."""

    m: torch.Tensor
    e: int = 0
    risky: bool = False
    zero: bool = False

    def to_scaled(self) -> Scaled:
        m = self.m.detach()
        arr = m.numpy() if m.device.type == "cpu" else m.cpu().numpy()
        return Scaled(arr, self.e, self.risky, zero=self.zero)


def _stats(t: torch.Tensor) -> tuple[float, float]:
    """``(max, smallest positive)`` of a non-negative tensor (0, inf if none)."""
    if t.numel() == 0:
        return 0.0, math.inf
    if t.device.type == "cpu":
        return scale_stats(t.numpy())
    # Non-negative float64 values order like their bits read as int64 (exact reductions).
    bits = t.view(torch.int64)
    hi = bits.max()
    lo = torch.where(bits > 0, bits, torch.full_like(bits, _INT64_MAX)).min()
    out = torch.stack([hi, lo]).cpu()
    lo_bits = int(out[1])
    f = out.view(torch.float64)
    return float(f[0]), (float(f[1]) if lo_bits != _INT64_MAX else math.inf)


def _log10_in_place(t: torch.Tensor) -> torch.Tensor:
    """``t = log10(t)`` in place (``-inf`` where zero), returned. On the CPU numpy's
    ``log10``: the Numba engine's, and 2-4x faster here than torch's ``log10_`` on
    SynFlow's 11M scores a round."""
    if t.device.type != "cpu":
        return t.log10_()
    arr = t.numpy()
    with np.errstate(divide="ignore"):
        np.log10(arr, out=arr)
    return t


def _times_pow2(t: torch.Tensor, shift: int) -> None:
    """``t *= 2**-shift`` exactly, in place."""
    while shift:
        step = max(-1000, min(1000, shift))
        t.mul_(2.0 ** -step)
        shift -= step


def normalize(t: torch.Tensor, e: int = 0, risky: bool = False) -> TScaled:
    """Wrap ``t`` (flat, non-negative, owned) as ``t * 2**e``, rescaled in place when its
    maximum left the slack window (:func:`topo_pai.metrics.scaled.normalize`)."""
    hi, lo = _stats(t)
    if hi == 0.0:
        return TScaled(t, 0, risky, zero=True)
    if not math.isfinite(hi):
        raise FloatingPointError("a count became infinite; please report this as a bug")
    risky = risky or (math.log2(hi) - math.log2(lo) > RISKY_BITS)
    shift = math.frexp(hi)[1]
    if -SLACK_BITS < shift <= SLACK_BITS:
        return TScaled(t, e, risky)
    _times_pow2(t, shift)
    return TScaled(t, e + shift, risky)


def _aligned(p: TScaled, e: int) -> torch.Tensor:
    """``p``'s mantissa expressed at exponent ``e >= p.e`` (a new tensor when it differs)."""
    gap = e - p.e
    if gap == 0:
        return p.m
    t = p.m * 2.0 ** -min(gap, 1000)
    _times_pow2(t, gap - min(gap, 1000))
    return t


def combine(parts: list[TScaled], n: int, device) -> TScaled:
    """Sum of scaled tensors of length ``n``, exponents aligned first; parts untouched.
    A lone non-zero part is the sum: it comes back sharing its mantissa (every scaled
    tensor left :func:`normalize` in the window, and none is changed in place after)."""
    live = [p for p in parts if not p.zero]
    risky = any(p.risky for p in parts)
    if not live:
        return TScaled(torch.zeros(n, dtype=torch.float64, device=device), 0, risky, zero=True)
    if len(live) == 1:
        return TScaled(live[0].m, live[0].e, risky)
    e = max(p.e for p in live)
    risky = risky or any(e - p.e > RISKY_BITS for p in live)
    acc = _aligned(live[0], e)
    acc = acc.clone() if acc is live[0].m else acc
    for p in live[1:]:
        acc.add_(_aligned(p, e))
    return normalize(acc, e, risky)


def _saturate(s: TScaled) -> TScaled:
    """``min(value, 1)`` of every unit, as a plain 0/1 (or fractional, never here) tensor."""
    if s.zero:
        return TScaled(s.m, 0, False, zero=True)
    return TScaled(torch.ldexp(s.m, torch.tensor(float(s.e), dtype=torch.float64,
                                                 device=s.m.device)).clamp_(max=1.0))


@dataclass(frozen=True)
class ConvGeometry:
    """A conv layer viewed as 2-d: per-sample input ``(C, H, W)``, output ``(O, OH, OW)``,
    and the zero padding that makes it a valid (unpadded) conv: ``(left, right)`` per
    axis, ``right`` negative where trailing input rows are never read."""

    C: int
    H: int
    W: int
    O: int
    OH: int
    OW: int
    weight4: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_h: tuple[int, int]
    pad_w: tuple[int, int]

    @property
    def symmetric(self) -> bool:
        return self.pad_h[0] == self.pad_h[1] and self.pad_w[0] == self.pad_w[1]

    @property
    def native(self) -> bool:
        """Whether torch's own padding (``pad_h[0]``, ``pad_w[0]`` on both sides) gives
        this layer: the same output size, and no read past the trailing pads, which are
        then smaller than the leading ones or crop unread input (a stride-2 conv with
        padding 1 on an even input, which torch pads on both sides but reads on one).
        The extra zeros are never read, so no copy of the padded input is needed."""
        (sh, sw), (dh, dw), (_, _, KH, KW) = self.stride, self.dilation, self.weight4
        (top, bottom), (left, right) = self.pad_h, self.pad_w
        return (bottom <= top and right <= left
                and (self.H + 2 * top - dh * (KH - 1) - 1) // sh + 1 == self.OH
                and (self.W + 2 * left - dw * (KW - 1) - 1) // sw + 1 == self.OW)

    @property
    def padded(self) -> tuple[int, int, int, int]:
        return (1, self.C, self.H + sum(self.pad_h), self.W + sum(self.pad_w))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.native else F.pad(x, (*self.pad_w, *self.pad_h))

    def unpad(self, g: torch.Tensor) -> torch.Tensor:
        if self.native:
            return g
        return F.pad(g, (-self.pad_w[0], -self.pad_w[1], -self.pad_h[0], -self.pad_h[1]))

    @property
    def padding(self) -> tuple[int, int]:
        return (self.pad_h[0], self.pad_w[0]) if self.native else (0, 0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.pad(x.view(1, self.C, self.H, self.W))
        return F.conv2d(x, w.view(self.weight4), None, self.stride, self.padding,
                        self.dilation, self.groups).reshape(-1)

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded, ungrouped conv: a matrix product over positions."""
        return (self.weight4[2:] == (1, 1) and self.stride == (1, 1) and self.groups == 1
                and self.pad_h == (0, 0) and self.pad_w == (0, 0))

    @property
    def flips(self) -> bool:
        """Whether :meth:`backward_flipped` applies: stride 1, one group, symmetric
        padding of at most the kernel's dilated reach on each side."""
        (dh, dw), (_, _, KH, KW) = self.dilation, self.weight4
        return (self.stride == (1, 1) and self.groups == 1 and self.symmetric
                and self.pad_h[0] <= dh * (KH - 1) and self.pad_w[0] <= dw * (KW - 1))

    def backward(self, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.pointwise:  # W^T G, read through a transposed view (no unfold, no copy)
            return torch.mm(w.view(self.O, self.C).t(), g.view(self.O, -1)).reshape(-1)
        size = (1, self.C, self.H, self.W) if self.native else self.padded
        gin = conv2d_input(size, w.view(self.weight4), g.view(1, self.O, self.OH, self.OW),
                           self.stride, self.padding, self.dilation, self.groups)
        return self.unpad(gin).reshape(-1)

    def backward_flipped(self, g: torch.Tensor, w_flipped: torch.Tensor) -> torch.Tensor:
        """:meth:`backward` for a conv that :attr:`flips`, as the forward conv of ``g``
        with the weight transposed (input and output channels swapped) and flipped in
        both spatial axes (``w_flipped``, shape ``(C, O, KH, KW)``), padded by the
        kernel's dilated reach minus the padding: the same sums of products, which
        torch's forward conv computes faster than its input gradient here."""
        (dh, dw), (_, _, KH, KW) = self.dilation, self.weight4
        pad = (dh * (KH - 1) - self.pad_h[0], dw * (KW - 1) - self.pad_w[0])
        return F.conv2d(g.view(1, self.O, self.OH, self.OW), w_flipped, None, 1, pad,
                        self.dilation).reshape(-1)

    def backward_and_through(self, g: torch.Tensor, w: torch.Tensor,
                             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`backward` and :meth:`through` in one call, sharing the unfolded input
        (as autograd computes both gradients of a conv)."""
        xp = self.pad(x.view(1, self.C, self.H, self.W))
        gin, through, _ = torch.ops.aten.convolution_backward(
            g.view(1, self.O, self.OH, self.OW), xp, w.view(self.weight4), None, self.stride,
            self.padding, self.dilation, False, (0, 0), self.groups, (True, True, False))
        return self.unpad(gin).reshape(-1), through

    def through(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per weight element, the sum over output positions of ``x[in] * g[out]``."""
        x = self.pad(x.view(1, self.C, self.H, self.W))
        return conv2d_weight(x, self.weight4, g.view(1, self.O, self.OH, self.OW), self.stride,
                             self.padding, self.dilation, self.groups)


def conv_geometry(layer, in_shape, out_shape) -> ConvGeometry:
    C, H, W = spatial3(in_shape)
    O, OH, OW = spatial3(out_shape)
    KH, KW = layer.kernel_hw
    (sh, sw), (dh, dw), (ph, pw) = layer.stride, layer.dilation, layer.pad
    right_h = (OH - 1) * sh + (KH - 1) * dh + 1 - H - ph
    right_w = (OW - 1) * sw + (KW - 1) * dw + 1 - W - pw
    O_, per_group = layer.weight_shape[:2]
    return ConvGeometry(C, H, W, O, OH, OW, (O_, per_group, KH, KW), (sh, sw), (dh, dw),
                        layer.groups, (ph, right_h), (pw, right_w))


def shared_geometry(program: Program, shared: dict, layer: int) -> ConvGeometry:
    """The layer's :class:`ConvGeometry`, kept in the trace's cache ``shared``."""
    key = ("torch conv geometry", layer)
    if key not in shared:
        op = program.layer_ops[layer]
        shared[key] = conv_geometry(program.layers[layer], program.values[op.inputs[0]],
                                    program.values[op.output])
    return shared[key]


def _window_matrix(ptr: np.ndarray, idx: np.ndarray, n_in: int, device) -> torch.Tensor:
    """Dense ``(n_out, n_in)`` matrix of a pool axis' windows (entry: times read)."""
    n_out = ptr.shape[0] - 1
    mat = np.zeros((n_out, n_in))
    rows = np.repeat(np.arange(n_out), np.diff(ptr))
    np.add.at(mat, (rows, idx), 1.0)
    return torch.from_numpy(mat).to(device)


class TorchNeuronEngine:
    """The neuron-resolution :class:`~topo_pai.metrics.engine.Engine` on torch ops
    (see the module docstring and the engine contract).

    ``device``: where tensors live (the model's device). ``weights``: flat float64
    edge weights per layer (:meth:`with_weights`), ``None`` for path counts.
    """

    resolution = "neuron"

    def __init__(self, program: Program, structure, layer_masks: list[LayerMask], shared: dict,
                 *, device=None, weights: list[np.ndarray] | None = None):
        del structure  # the unrolled graph needs no channel maps
        self.program = program
        self.layer_masks = layer_masks
        self.shared = shared
        self.device = torch.device("cpu" if device is None else device)
        self.weights = weights
        self.group_keys = program.group_values
        self._layer_weights: dict[tuple[int, bool], torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}
        self._fwd: dict[int, TScaled] | None = None
        self._bwd: dict[int, TScaled] | None = None
        self._reach: tuple[dict, dict] | None = None
        self._tables: dict[str, list[Scaled]] = {}
        # from the backward pass: (flows, exponent, the kept elements they are listed
        # by, or None when every element's flow is there in the weight's layout)
        self._through: dict[int, tuple[torch.Tensor, int, KeptElements | None]] = {}
        self._runs_sparse: dict[int, bool] = {}
        self._sparse: dict[tuple[int, bool], SparseConv] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _ops_context(self):
        if self.device.type == "cuda":  # sums of products only: no FFT / Winograd residue
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()

    def _geometry(self, layer: int) -> ConvGeometry:
        return shared_geometry(self.program, self.shared, layer)

    def _pool_matrices(self, op) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("torch pool", op.output, str(self.device))
        if key not in self.shared:
            _, H, W = spatial3(self.program.values[op.inputs[0]])
            (hp, hi), (wp, wi) = op.attrs["windows"]
            self.shared[key] = (_window_matrix(hp, hi, H, self.device),
                                _window_matrix(wp, wi, W, self.device))
        return self.shared[key]

    def _on_device(self, layer: int, what: str) -> torch.Tensor:
        """The layer's edge weights (``what="w"``) or their log10 (``"log10 w"``) as a flat
        float64 tensor on the device, kept in the trace's cache while the same weights
        array comes back (a pruning run passes one array per layer to every round)."""
        arr = self.weights[layer]
        key = ("torch weights", what, layer, str(self.device))
        hit = self.shared.get(key)
        if hit is None or hit[0] is not arr:
            t = torch.from_numpy(arr).to(self.device)
            if what == "log10 w":
                t = _log10_in_place(t.clone())
            hit = self.shared[key] = (arr, t)
        return hit[1]

    def _kept(self, layer: int) -> torch.Tensor:
        """The layer's mask as a bool tensor of the weight's shape on the device: on the
        CPU a view of the 0/1 bytes (no copy), elsewhere one byte per element moved."""
        kept = self._masks.get(layer)
        if kept is None:
            kept = torch.from_numpy(self.layer_masks[layer].mask)
            if kept.device != self.device:
                kept = kept.to(self.device)
            kept = self._masks[layer] = kept.view(torch.bool)
        return kept

    def _weight(self, layer: int, unit: bool) -> torch.Tensor:
        """The layer's weight as a float64 tensor on the device: the 0/1 mask, times
        the edge weights unless ``unit``. Built in one pass from the bool mask: ``w``
        where kept and ``0.0`` elsewhere is ``1.0 * w`` and ``0.0 * w`` bit for bit,
        since edge weights are finite and non-negative."""
        unit = unit or self.weights is None
        key = (layer, unit)
        if key not in self._layer_weights:
            kept = self._kept(layer)
            if unit:
                w = kept.to(torch.float64)
            elif self.device.type == "cpu":
                w = torch.empty(kept.shape, dtype=torch.float64)
                masked_values(kept.numpy().reshape(-1), self._on_device(layer, "w").numpy(),
                              w.numpy().reshape(-1))
            else:
                w = torch.where(kept, self._on_device(layer, "w").view(kept.shape), 0.0)
            self._layer_weights[key] = w
        return self._layer_weights[key]

    def _factor(self, op, unit: bool) -> torch.Tensor:
        """A scale op's constant factor (``|c|``, or ``c != 0`` when ``unit``) as a flat
        tensor on the device; it depends on the program alone, so it is built once per
        trace and shared by the engines of every mask and weight."""
        unit = unit or self.weights is None
        key = ("torch factor", op.output, unit, str(self.device))
        hit = self.shared.get(key)
        if hit is None:
            f = np.asarray(op.attrs["factor"], dtype=np.float64)
            f = (f != 0).astype(np.float64) if unit else np.abs(f)
            flat = np.ascontiguousarray(np.broadcast_to(f, self.program.values[op.output]))
            hit = self.shared[key] = torch.from_numpy(flat.reshape(-1).copy()).to(self.device)
        return hit

    def _is_sparse(self, layer: int) -> bool:
        """Whether the layer runs on its kept elements (:func:`runs_sparse`)."""
        hit = self._runs_sparse.get(layer)
        if hit is None:
            spec = self.program.layers[layer]
            out = self.program.values[self.program.layer_ops[layer].output]
            hit = self._runs_sparse[layer] = runs_sparse(
                self.layer_masks[layer], spec.kind, spec.groups, math.prod(out[1:]),
                self.device)
        return hit

    def _sparse_conv(self, layer: int, unit: bool) -> SparseConv:
        unit = unit or self.weights is None
        key = (layer, unit)
        if key not in self._sparse:
            lm = self.layer_masks[layer]
            kept = layer_kept_elements(self.shared, layer, lm, self.program.layers[layer]
                                       .weight_shape[0])
            self._sparse[key] = SparseConv(self._geometry(layer), kept,
                                           None if unit else self.weights[layer])
        return self._sparse[key]

    # -- ops ---------------------------------------------------------------------------
    def _layer_forward(self, layer: int, x: torch.Tensor, unit: bool) -> torch.Tensor:
        spec = self.program.layers[layer]
        if self._is_sparse(layer):
            return self._sparse_conv(layer, unit).forward(x)
        w = self._weight(layer, unit)
        if spec.kind == "Linear":
            return torch.mv(w, x)
        return self._geometry(layer).forward(x, w)

    def _layer_backward(self, layer: int, g: torch.Tensor, unit: bool) -> torch.Tensor:
        spec = self.program.layers[layer]
        if self._is_sparse(layer):
            return self._sparse_conv(layer, unit).backward(g)
        w = self._weight(layer, unit)
        if spec.kind == "Linear":
            return torch.mv(w.t(), g)
        return self._geometry(layer).backward(g, w)

    def _op_forward(self, op, x: torch.Tensor, unit: bool) -> torch.Tensor:
        if op.kind == "layer":
            return self._layer_forward(op.attrs["layer"], x, unit)
        if op.kind == "pool":
            ph, pw = self._pool_matrices(op)
            C, H, W = spatial3(self.program.values[op.inputs[0]])
            return (ph @ x.view(C, H, W) @ pw.t()).reshape(-1)
        if op.kind == "reduce":
            shape = self.program.values[op.inputs[0]]
            return x.view(shape).sum(dim=tuple(op.attrs["axes"])).reshape(-1)
        if op.kind == "scale":
            return x * self._factor(op, unit)
        raise _unsupported(op)

    def _op_backward(self, op, g: torch.Tensor, unit: bool) -> torch.Tensor:
        if op.kind == "layer":
            return self._layer_backward(op.attrs["layer"], g, unit)
        if op.kind == "pool":
            ph, pw = self._pool_matrices(op)
            _, OH, OW = spatial3(self.program.values[op.output])
            C = spatial3(self.program.values[op.inputs[0]])[0]
            return (ph.t() @ g.view(C, OH, OW) @ pw).reshape(-1)
        if op.kind == "reduce":
            in_shape = self.program.values[op.inputs[0]]
            axes = op.attrs["axes"]
            kept = tuple(1 if a in axes else s for a, s in enumerate(in_shape))
            return g.view(kept).expand(in_shape).reshape(-1)
        if op.kind == "scale":
            return g * self._factor(op, unit)
        raise _unsupported(op)

    # -- propagation: the traversal's arithmetic (topo_pai.metrics.traversal) ----------
    def _forward(self, saturate: bool) -> dict[int, TScaled]:
        with torch.no_grad(), self._ops_context():
            return traversal.forward(self.program, self, saturate)

    def _backward(self, saturate: bool) -> dict[int, TScaled]:
        with torch.no_grad(), self._ops_context():
            return traversal.backward(self.program, self, saturate)

    def ones(self, n: int) -> TScaled:
        return TScaled(torch.ones(n, dtype=torch.float64, device=self.device))

    def combine(self, parts: list[TScaled], n: int) -> TScaled:
        return combine(parts, n, self.device)

    @staticmethod
    def normalize(t: torch.Tensor, e: int, risky: bool) -> TScaled:
        return normalize(t, e, risky)

    @staticmethod
    def saturate(s: TScaled) -> TScaled:
        return _saturate(s)

    @staticmethod
    def aligned(s: TScaled, e: int, shape: tuple[int, ...]) -> torch.Tensor:
        return _aligned(s, e).view(shape)

    @staticmethod
    def concat(arrays: list[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(arrays, dim=axis).reshape(-1)

    @staticmethod
    def split(m: torch.Tensor, shape, sizes: list[int], axis: int) -> list[torch.Tensor]:
        return [piece.reshape(-1).clone() for piece in torch.split(m.view(shape), sizes, dim=axis)]

    def apply(self, op, x: TScaled, n: int, saturate: bool) -> TScaled:
        del n
        return normalize(self._op_forward(op, x.m, saturate), x.e, x.risky)

    def transpose_into(self, op, g: TScaled, n: int, pending: list[TScaled],
                       saturate: bool) -> None:
        del n
        if op.kind == "layer" and not saturate and self._fuses(op.attrs["layer"]):
            # Weighted flows: the flow through every weight now, with the input
            # gradient, as SynFlow's scores will ask for it (one conv call, not two).
            layer, x = op.attrs["layer"], self._fwd[op.inputs[0]]
            if self._is_sparse(layer):
                sparse = self._sparse_conv(layer, False)
                gin, through = sparse.backward(g.m), sparse.through(x.m, g.m)
                self._through[layer] = (through, x.e + g.e, sparse.kept)
            else:
                gin, through = self._geometry(layer).backward_and_through(
                    g.m, self._weight(layer, False), x.m)
                self._through[layer] = (through, x.e + g.e, None)
        else:
            gin = self._op_backward(op, g.m, saturate)
        pending.append(normalize(gin, g.e, g.risky))

    def _fuses(self, layer: int) -> bool:
        return self.weights is not None and self.program.layers[layer].kind != "Linear"

    def _propagate(self) -> None:
        if self._fwd is None:
            self._fwd = self._forward(False)
            self._bwd = self._backward(False)

    @property
    def fwd(self) -> dict[int, TScaled]:
        self._propagate()
        return self._fwd

    @property
    def bwd(self) -> dict[int, TScaled]:
        self._propagate()
        return self._bwd

    def may_have_underflowed(self) -> bool:
        return any(s.risky for s in self.fwd.values()) or any(s.risky for s in self.bwd.values())

    @property
    def reach(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """``(rf, rb)``: per value, a tensor positive exactly where a unit is reached from
        the input (reaches the output); from the counts unless one may have underflowed."""
        if self._reach is None:
            fwd, bwd = self.fwd, self.bwd
            if any(s.risky for s in fwd.values()) or any(s.risky for s in bwd.values()):
                self._reach = ({k: s.m for k, s in self._forward(True).items()},
                               {k: s.m for k, s in self._backward(True).items()})
            else:
                self._reach = ({k: s.m for k, s in fwd.items()}, {k: s.m for k, s in bwd.items()})
        return self._reach

    # -- the protocol ---------------------------------------------------------------------
    def group_shape(self, group: int) -> tuple[int, ...]:
        return tuple(self.program.values[self.group_keys[group]])

    def _table(self, name: str) -> list[Scaled]:
        if name not in self._tables:
            table = self.fwd if name == "forward" else self.bwd
            self._tables[name] = [table[k].to_scaled() for k in self.group_keys]
        return self._tables[name]

    def forward(self) -> list[Scaled]:
        return self._table("forward")

    def backward(self) -> list[Scaled]:
        return self._table("backward")

    def log10_total(self) -> float:
        totals = [(float(s.m.sum()), s.e) for s in (self.fwd[v] for v in self.program.outputs)]
        totals = [(t, e) for t, e in totals if t > 0.0]
        if not totals:
            return -math.inf
        e_max = max(e for _, e in totals)
        return log10_scaled(sum(math.ldexp(t, e - e_max) for t, e in totals), e_max)

    def exact_total(self) -> int:
        return X.neuron_exact(self.program, self.layer_masks)

    def exact_cost(self, log10_total: float) -> tuple[float, float]:
        return X.estimate(self.program, self.layer_masks, self.resolution, log10_total, 0)

    def _io(self, layer: int) -> tuple[int, int]:
        op = self.program.layer_ops[layer]
        return op.inputs[0], op.output

    def effective_nodes(self) -> list[int]:
        rf, rb = self.reach
        return [int(((rf[k] > 0) & (rb[k] > 0)).sum()) for k in self.group_keys]

    def _effective(self, layer: int) -> torch.Tensor:
        """Bool tensor of the weight's shape: unpruned elements on a path (exact: 0/1
        reach, sums of non-negative products)."""
        rf, rb = self.reach
        vin, vout = self._io(layer)
        fin = (rf[vin] > 0).to(torch.float64)
        bout = (rb[vout] > 0).to(torch.float64)
        spec = self.program.layers[layer]
        mask = self._kept(layer)
        if spec.kind == "Linear":
            return mask & (bout[:, None] > 0) & (fin[None, :] > 0)
        with torch.no_grad(), self._ops_context():
            through = self._geometry(layer).through(fin, bout)
        return mask & (through.view(mask.shape) > 0)

    def effective_params(self) -> list[int]:
        return [int(self._effective(i).sum()) for i in range(len(self.program.layers))]

    def effective_mask(self, layer: int) -> np.ndarray:
        return self._effective(layer).cpu().numpy()

    def layer_reach(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        rf, rb = self.reach
        vin, vout = self._io(layer)
        shape_in, shape_out = self.program.values[vin], self.program.values[vout]
        return ((rf[vin].view(shape_in[0], -1) > 0).any(dim=1).cpu().numpy(),
                (rb[vout].view(shape_out[0], -1) > 0).any(dim=1).cpu().numpy())

    def layer_input_counts(self, layer: int) -> NodeCounts:
        vin, _ = self._io(layer)
        f = self.fwd[vin]
        sums = f.m.view(self.program.values[vin][0], -1).sum(dim=1)
        return NodeCounts(sums.cpu().numpy(), f.e)

    def layer_flows(self, layer: int) -> tuple[NodeCounts, NodeCounts]:
        vin, vout = self._io(layer)
        fin, bout = self.fwd[vin].to_scaled(), self.bwd[vout].to_scaled()
        return (NodeCounts(fin.m.reshape(self.program.values[vin]), fin.e),
                NodeCounts(bout.m.reshape(self.program.values[vout]), bout.e))

    @staticmethod
    def finish_scores(score: torch.Tensor, shift: float, log_w: torch.Tensor | None,
                      kept: torch.Tensor) -> None:
        """In place: ``score = (score + shift) + log_w`` (no ``log_w``: none) where
        ``kept``, ``-inf`` elsewhere, for flat tensors on one device. On the CPU one
        numba pass (:func:`~topo_pai.kernels.vectors.finish_log10_scores`), elsewhere
        torch's ops; the same additions in the same order, so both give the same bits."""
        if score.device.type == "cpu":
            weighted = log_w is not None
            finish_log10_scores(score.numpy(), shift,
                                log_w.numpy() if weighted else score.numpy()[:0], weighted,
                                kept.numpy())
            return
        score.add_(shift)
        if log_w is not None:
            score.add_(log_w)
        score.masked_fill_(kept.logical_not(), -math.inf)

    def log10_through_weights(self, layer: int) -> np.ndarray:
        vin, vout = self._io(layer)
        fin, bout = self.fwd[vin], self.bwd[vout]
        spec, lm = self.program.layers[layer], self.layer_masks[layer]
        if spec.kind == "Linear":
            logw = log10_weights(lm, None if self.weights is None else self.weights[layer])
            return linear_log10_scores(logw, fin.to_scaled(), bout.to_scaled())
        with torch.no_grad(), self._ops_context():
            through, e, kept = self._through.pop(layer, (None, fin.e + bout.e, None))
            if through is None:
                through = self._geometry(layer).through(fin.m, bout.m)
            score = _log10_in_place(through.reshape(-1))
            log_w = None if self.weights is None else self._on_device(layer, "log10 w")
            if kept is not None:  # flows of the kept elements only: -inf elsewhere
                out = np.full(self.layer_masks[layer].mask.size, -math.inf)
                weighted = log_w is not None
                scatter_log10_scores(kept.flat, score.numpy(), e * LOG10_2,
                                     log_w.numpy() if weighted else out[:0], weighted, out)
                return out.reshape(self.layer_masks[layer].mask.shape)
            self.finish_scores(score, e * LOG10_2, log_w, self._kept(layer).reshape(-1))
        return score.cpu().numpy().reshape(self.layer_masks[layer].mask.shape)

    def with_weights(self, weights: list[np.ndarray]) -> TorchNeuronEngine:
        return TorchNeuronEngine(self.program, None, self.layer_masks, self.shared,
                                 device=self.device, weights=weights)


#: The cost model behind ``engine="auto"`` for weighted flows on the CPU, fitted to
#: ``benchmarks/results_engines.md`` (ResNet-20 and ResNet-18 at 64x64, densities
#: 1 ... 0.01): the Numba kernels cost about ``kept_work`` (kept weights times the
#: output positions each slides over), the torch engine about
#: ``TORCH_MIN_DENSITY * total_work`` (the same over all weights) plus a fixed cost per
#: layer worth ``TORCH_LAYER_WORK`` units of Numba work. Torch runs when it is the
#: cheaper. Since its sparse layers (:mod:`topo_pai.metrics.torch_sparse`) the torch
#: engine is at least as fast as Numba on ResNet-18 at every density measured (down to
#: 0.01), and on ResNet-20 within 5 % from 0.1 down (the table, 2026-12-04); published
#: SynFlow on ResNet-20 (100 rounds, alternated 3 times) took 3.4-3.6 s with these
#: constants against 3.9-4.5 s with the previous 0.1 and 1e6. One choice per network,
#: not per layer: alternating Numba's and torch's thread pools within one pass slowed
#: torch's convolutions 3-4x on the shared CPUs measured here.
TORCH_MIN_DENSITY = 0.03
TORCH_LAYER_WORK = 5e4


def layer_work(program: Program, layer_masks: list[LayerMask]) -> tuple[int, int]:
    """``(kept_work, total_work)``: kept weights and all weights, each times the output
    positions of its layer, summed over layers."""
    kept = total = 0
    for i, lm in enumerate(layer_masks):
        out = program.values[program.layer_ops[i].output]
        positions = math.prod(out[1:]) if len(out) > 1 else 1
        kept += lm.unpruned * positions
        total += lm.mask.size * positions
    return kept, total


def work_density(program: Program, layer_masks: list[LayerMask]) -> float:
    """``kept_work / total_work`` (:func:`layer_work`; 1.0 without weights)."""
    kept, total = layer_work(program, layer_masks)
    return kept / total if total else 1.0


def prefers_torch(program: Program, layer_masks: list[LayerMask], device) -> bool:
    """Whether ``engine="auto"`` computes weighted flows with :class:`TorchNeuronEngine`:
    always on an accelerator; on the CPU where the cost model of
    :data:`TORCH_MIN_DENSITY` and :data:`TORCH_LAYER_WORK` finds it cheaper."""
    if torch.device(device).type != "cpu":
        return True
    kept, total = layer_work(program, layer_masks)
    return kept >= TORCH_MIN_DENSITY * total + TORCH_LAYER_WORK * len(layer_masks)


#: ``engine="auto"`` counts a conv layer with torch's float64 convolutions (a dense
#: product: its cost follows all of the layer's elements times the positions each
#: slides over, plus one conversion of its mask to float64) instead of the complement
#: kernels (cost: ``min(kept, pruned)`` elements times positions) when
#: ``min(kept, pruned) * positions >= TORCH_COUNT_MIN_SHARE * elements * positions +
#: TORCH_COUNT_ELEMENT_WORK * elements + TORCH_COUNT_LAYER_WORK``: at densities from
#: about 0.2 to 0.8 on layers with many output positions, never on layers with only a
#: few (a conversion per element then costs more than the arithmetic saved), nor on
#: small layers (torch's calls cost about 0.4 ms a layer beyond their arithmetic,
#: which the complement's work on a ResNet-20 layer does not repay). Fitted to the
#: per-layer times of ResNet-50 at density 0.5 and of ResNet-20 and Conv-4 at 32x32,
#: and checked against the crossover measured in docs/complement.md
#: (``benchmarks/complement_crossover.py``).
TORCH_COUNT_MIN_SHARE = 0.2
TORCH_COUNT_ELEMENT_WORK = 8.0
TORCH_COUNT_LAYER_WORK = 4e6


class TorchConvCounts:
    """Unit-weight (0/1 mask) products of a Numba engine's middling-density conv layers
    on torch's float64 conv ops, on the CPU: the ``dense_products`` of
    :class:`~topo_pai.metrics.neuron.NeuronGraph`.

    A layer is taken where its cost model says torch is the cheaper
    (:data:`TORCH_COUNT_MIN_SHARE`, :data:`TORCH_COUNT_ELEMENT_WORK`,
    :data:`TORCH_COUNT_LAYER_WORK`). There the
    complement kernels add or subtract about half of the layer's spans one add at a
    time, while a float64 GEMM does all of them at BLAS speed. The results are sums of
    non-negative products (mask entries are 0 or 1, so each product is exact), within
    the error bound of any other order of summation, and zero exactly when every term
    is. Counts and reachability read off them keep the Numba engine's guarantees.
    Arrays are numpy in and out (shared memory, no copies), and each layer's float64
    weight is built once.
    """

    def __init__(self, program: Program, layer_masks: list[LayerMask], shared: dict,
                 min_share: float | None = None, element_work: float | None = None,
                 layer_work: float | None = None):
        self.program = program
        self.layer_masks = layer_masks
        self.shared = shared
        self.min_share = TORCH_COUNT_MIN_SHARE if min_share is None else min_share
        self.element_work = TORCH_COUNT_ELEMENT_WORK if element_work is None else element_work
        self.layer_work = TORCH_COUNT_LAYER_WORK if layer_work is None else layer_work
        self._takes: dict[int, bool] = {}
        self._weights: dict[tuple[int, str], torch.Tensor] = {}

    def takes(self, layer: int) -> bool:
        """Whether torch counts this layer (a conv with elements, where it is cheaper)."""
        if layer not in self._takes:
            lm, spec = self.layer_masks[layer], self.program.layers[layer]
            elements = lm.mask.size
            take = spec.kind != "Linear" and elements > 0
            if take:
                out = self.program.values[self.program.layer_ops[layer].output]
                positions = math.prod(out[1:])
                complement = min(lm.unpruned, elements - lm.unpruned) * positions
                take = complement >= ((self.min_share * positions + self.element_work)
                                      * elements + self.layer_work)
            self._takes[layer] = take
        return self._takes[layer]

    def _geometry(self, layer: int) -> ConvGeometry:
        return shared_geometry(self.program, self.shared, layer)

    def _weight(self, layer: int, flipped: bool) -> torch.Tensor:
        """The 0/1 mask as float64: as laid out (``flipped`` False), or transposed and
        flipped for :meth:`ConvGeometry.backward_flipped`; each converted in one pass."""
        key = (layer, "flipped" if flipped else "plain")
        if key not in self._weights:
            geo = self._geometry(layer)
            mask = torch.from_numpy(self.layer_masks[layer].mask).view(geo.weight4)
            if flipped:
                mask = mask.flip(2, 3).transpose(0, 1)
            self._weights[key] = mask.to(torch.float64, memory_format=torch.contiguous_format)
        return self._weights[key]

    def forward(self, layer: int, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self._geometry(layer).forward(torch.from_numpy(x), self._weight(layer, False))
        return out.numpy()

    def backward(self, layer: int, g: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        geo = self._geometry(layer)
        with torch.no_grad():
            gt = torch.from_numpy(g)
            if geo.flips and not geo.pointwise:
                gin = geo.backward_flipped(gt, self._weight(layer, True))
            else:
                gin = geo.backward(gt, self._weight(layer, False))
            if base is not None:
                gin = gin + torch.from_numpy(base)
        return gin.numpy()


class AutoNeuronEngine(NeuronEngine):
    """``engine="auto"`` at neuron resolution: path counts and reachability on the Numba
    engine (its cost follows the kept weights), with the conv layers that
    :class:`TorchConvCounts` takes on torch's dense float64 convolutions; weighted flows
    (:meth:`with_weights`) on :class:`TorchNeuronEngine` where :func:`prefers_torch` says
    so."""

    def __init__(self, program: Program, structure, layer_masks: list[LayerMask], shared: dict,
                 *, device=None):
        super().__init__(program, structure, layer_masks, shared,
                         dense_products=TorchConvCounts(program, layer_masks, shared))
        self.shared = shared
        self.device = torch.device("cpu" if device is None else device)

    def with_weights(self, weights: list[np.ndarray]):
        if not prefers_torch(self.program, self.layer_masks, self.device):
            return super().with_weights(weights)
        return TorchNeuronEngine(self.program, None, self.layer_masks, self.shared,
                                 device=self.device, weights=weights)


def neuron_engine(program: Program, structure, layer_masks: list[LayerMask], shared: dict, *,
                  options: EngineOptions | None = None):
    """The engine factory of neuron resolution (``topo_pai.topology.ENGINES["neuron"]``):
    ``options.engine`` ``"numba"`` (:class:`~topo_pai.metrics.neuron.NeuronEngine`),
    ``"torch"`` (:class:`TorchNeuronEngine` for everything) or ``"auto"``
    (:class:`AutoNeuronEngine`), on ``options.device``."""
    options = EngineOptions() if options is None else options
    if options.engine == "numba":
        return NeuronEngine(program, structure, layer_masks, shared)
    if options.engine == "torch":
        return TorchNeuronEngine(program, structure, layer_masks, shared, device=options.device)
    return AutoNeuronEngine(program, structure, layer_masks, shared, device=options.device)
