"""Independent test oracles for ``topo_pai``.

Nothing here imports ``topo_pai``: the point of an oracle is to be wrong in
*different* ways than the implementation, so every quantity is rebuilt from
the written semantics with plain Python loops.

Contents
--------
* A tiny architecture *spec* language (frozen dataclasses, so hypothesis can
  print failing examples) and :func:`build_torch`, which turns a spec into an
  fx-traceable ``nn.Module`` mixing module and functional forms.
* :func:`unrolled_graph`: an explicit multigraph (node ids ``(group, unit)``,
  one edge record per unpruned weight element and position) built directly
  from the spec and the masks.
* :func:`dp_counts`: exact Python-int forward/backward DP over that graph.
* :func:`brute_force_paths`: enumerates every path with networkx (tiny graphs).
* :func:`float64_probe`: runs a float64 fx-rewritten copy of a *torch model*
  in which weights are their 0/1 masks and every pooling is a sum, so that
  ``y.sum()`` is the neuron-level path count and weight gradients mark the
  effective weights; ``resolution="channel"`` does the same on (N, C)
  tensors with per-kernel tap counts as channel-to-channel multiplicities.
* hypothesis strategies :func:`specs` and :func:`masks_for`.

Constants and optional arguments (the contract of README's semantics section):
a product by a constant keeps a unit where the constant is non-zero and removes
it where it is zero (at channel resolution: a channel is removed when the
constant is zero at every one of its positions); a division by a non-zero
constant keeps every unit; ``h + c``, ``h - c`` and ``-h`` keep units; ``a - b``
of two input-dependent tensors merges like ``a + b``. In weighted flows a
constant factor scales by ``|c|`` (``1/|c|`` for a division). A model is counted
as ``model(x)`` computes it: every other forward argument at its default.

Semantics reminder (the contract the oracles implement)
-------------------------------------------------------
Nodes are the units of the network input and of every Linear/Conv output.
Edges are unpruned weight elements.  Non-parametric ops are structure: unary
ops keep units, add merges, cat stacks, a pooling output unit connects to every
real input unit of its window, a spatial mean connects to all positions.  At
channel resolution pools/means map channel c to channel c (multiplicity 1) and
flatten keeps channel c as one node whose H*W features all point back to it.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

IntOrTuple = int | tuple

# ---------------------------------------------------------------------------
# Spec language
# ---------------------------------------------------------------------------
# A spec is a tuple of layer records.  The rank of the running per-sample
# tensor decides the torch flavour: (F,) features, (C, L) -> *1d ops,
# (C, H, W) -> *2d ops.


@dataclass(frozen=True)
class Linear:
    out: int
    bias: bool = True


@dataclass(frozen=True)
class Conv:
    """Conv1d/Conv2d; ints or per-dim tuples; ``padding`` may be ``'same'``."""

    out: int
    k: IntOrTuple
    stride: IntOrTuple = 1
    padding: int | tuple | str = 0
    dilation: IntOrTuple = 1
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True)
class Pool:
    """MaxPool/AvgPool (1d or 2d by rank); ``functional`` uses F.*_pool*d."""

    kind: str  # "max" | "avg"
    k: IntOrTuple
    stride: IntOrTuple | None = None
    padding: IntOrTuple = 0
    ceil_mode: bool = False
    functional: bool = False


@dataclass(frozen=True)
class Adaptive:
    """AdaptiveAvgPool / AdaptiveMaxPool (1d or 2d by rank)."""

    out: IntOrTuple
    kind: str = "avg"
    functional: bool = False


@dataclass(frozen=True)
class ReLU:
    functional: bool = False


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm1d/2d chosen by rank (always a module)."""


@dataclass(frozen=True)
class Unary:
    """Other shape-preserving ops: "dropout", "identity", "groupnorm", "layernorm"
    (modules), "gelu" (F.gelu), "sigmoid" (x.sigmoid())."""

    kind: str


_UNARY_MODULE_KINDS = ("dropout", "identity", "groupnorm", "layernorm")


@dataclass(frozen=True)
class Flatten:
    """Flatten to (N, -1); ``form`` is "module" (nn.Flatten()), "torch"
    (torch.flatten(x, 1)) or "view" (x.view(x.size(0), -1))."""

    form: str = "module"


@dataclass(frozen=True)
class SpatialMean:
    """Mean over all spatial dims, always functional: "method" x.mean((2, 3)),
    "torch" torch.mean(x, (2, 3)), "keepdim" x.mean((2, 3), keepdim=True)."""

    form: str = "method"


@dataclass(frozen=True)
class Residual:
    """``body(x) + shortcut(x)``; shortcut ``None`` is the identity.

    ``add`` picks the spelling: "op" (``a + b``), "torch" (``torch.add``) or "sub"
    (``a - b``, which merges like ``a + b``).
    """

    body: tuple
    shortcut: Conv | None = None
    add: str = "op"


@dataclass(frozen=True)
class Concat:
    """``torch.cat([a(x), b(x)], 1)``; an empty branch is the identity."""

    a: tuple
    b: tuple


@dataclass(frozen=True)
class Scale:
    """An elementwise op with a constant ``c`` (never input-dependent).

    ``kind``: "mul" (``x * c``), "rmul" (``c * x``), "div" (``x / c``), "method"
    (``x.mul(c)``), "add" (``x + c``), "sub" (``x - c``), "neg" (``-x``).
    ``source``: "scalar" (a Python float, ``values[0]``), "buffer", "param" (an
    ``nn.Parameter`` no mask covers) or "literal" (``torch.tensor`` built in forward).
    ``values``: one per unit (channel or feature), or with ``spatial`` one per
    element of the per-sample tensor (C-order); ``batch_dim`` gives the tensor a
    leading dimension of size 1.
    """

    kind: str
    source: str
    values: tuple
    spatial: bool = False
    batch_dim: bool = False

    def const_shape(self, shape: tuple) -> tuple:
        per = tuple(shape) if self.spatial else (shape[0],) + (1,) * (len(shape) - 1)
        return ((1,) if self.batch_dim else ()) + per

    def factors(self, shape: tuple) -> np.ndarray:
        """The factor of every element of a per-sample tensor of ``shape``."""
        if self.kind in ("add", "sub", "neg"):
            return np.ones(shape)
        c = np.asarray(self.values, dtype=np.float64)
        if self.source != "scalar":
            c = c.reshape(self.const_shape(shape))
            if self.batch_dim:
                c = c[0]
        else:
            c = c[0]
        f = 1.0 / c if self.kind == "div" else c
        return np.broadcast_to(f, shape)


OPTIONAL_ARGS = {"none": None, "false": False, "true": True, "zero": 0}


@dataclass(frozen=True)
class OptionalBlock:
    """``if <cond on a forward argument>: x = body(x)`` at the top level of a model
    whose forward has the arguments ``opt_none=None, opt_false=False,
    opt_true=True, opt_zero=0``. ``arg`` picks one; ``by_default`` says whether the
    body runs when the argument has its default (``model(x)``) or only when a
    caller passes another value."""

    body: tuple
    arg: str
    by_default: bool = True


PARAMETRIC = (Linear, Conv)


def _tup(v, nd: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _conv_geometry(layer: Conv, shape: tuple):
    """Per-dim (kernel, stride, dilation, left padding) and output spatial size."""
    nd = len(shape) - 1
    k, s, d = _tup(layer.k, nd), _tup(layer.stride, nd), _tup(layer.dilation, nd)
    if layer.padding == "same":
        # torch pads d*(k-1) in total, putting the smaller half on the left.
        left = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
        out = tuple(shape[1:])
    else:
        p = _tup(layer.padding, nd)
        left = p
        out = tuple((L + 2 * pp - dd * (kk - 1) - 1) // ss + 1
                    for L, pp, dd, kk, ss in zip(shape[1:], p, d, k, s))
    return k, s, d, left, out


def _pool_out_len(L: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    # Written from torch's documented formula; the torch forward in the
    # self-checks confirms it (a wrong size would fail build_torch's check).
    num = L + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= L + p:
        out -= 1  # the last window would start inside the right padding
    return out


def _pool_geometry(layer: Pool, shape: tuple):
    nd = len(shape) - 1
    k = _tup(layer.k, nd)
    s = k if layer.stride is None else _tup(layer.stride, nd)
    p = _tup(layer.padding, nd)
    out = tuple(_pool_out_len(L, kk, ss, pp, layer.ceil_mode)
                for L, kk, ss, pp in zip(shape[1:], k, s, p))
    return k, s, p, out


def _adaptive_out(layer: Adaptive, shape: tuple) -> tuple:
    nd = len(shape) - 1
    out = _tup(layer.out, nd)
    return tuple(L if o is None else o for o, L in zip(out, shape[1:]))


def out_shape(layer, shape: tuple) -> tuple:
    """Per-sample output shape of ``layer`` applied to a tensor of ``shape``."""
    if isinstance(layer, Linear):
        assert len(shape) == 1, "Linear is only used on (F,) tensors"
        return (layer.out,)
    if isinstance(layer, Conv):
        return (layer.out,) + _conv_geometry(layer, shape)[-1]
    if isinstance(layer, Pool):
        return (shape[0],) + _pool_geometry(layer, shape)[-1]
    if isinstance(layer, Adaptive):
        return (shape[0],) + _adaptive_out(layer, shape)
    if isinstance(layer, (ReLU, BatchNorm, Unary)):
        return shape
    if isinstance(layer, Flatten):
        return (math.prod(shape),)
    if isinstance(layer, SpatialMean):
        return (shape[0],) + ((1,) * (len(shape) - 1) if layer.form == "keepdim" else ())
    if isinstance(layer, Residual):
        return chain_out_shape(layer.body, shape)
    if isinstance(layer, Scale):
        return shape
    if isinstance(layer, OptionalBlock):
        return chain_out_shape(layer.body, shape) if layer.by_default else shape
    if isinstance(layer, Concat):
        a, b = chain_out_shape(layer.a, shape), chain_out_shape(layer.b, shape)
        assert a[1:] == b[1:], (a, b)
        return (a[0] + b[0],) + a[1:]
    raise TypeError(layer)


def chain_out_shape(layers: Sequence, shape: tuple) -> tuple:
    for layer in layers:
        shape = out_shape(layer, shape)
    return tuple(shape)


# ---------------------------------------------------------------------------
# torch construction
# ---------------------------------------------------------------------------

def _is_module_form(layer) -> bool:
    """Layers that nn.Sequential can hold as-is (no functional flavour)."""
    if isinstance(layer, (Linear, Conv, BatchNorm, Scale)):
        return True
    if isinstance(layer, (Pool, Adaptive, ReLU)):
        return not layer.functional
    if isinstance(layer, Flatten):
        return layer.form == "module"
    if isinstance(layer, Unary):
        return layer.kind in _UNARY_MODULE_KINDS
    return False


def _is_sequential(spec: Sequence) -> bool:
    # Plain specs become nn.Sequential so that param names look like "0.weight"
    # (the common user case); anything else goes through _Chain ("l0.weight").
    return len(spec) > 0 and all(_is_module_form(layer) for layer in spec)


def _child_prefix(parent: str, i: int, sequential: bool) -> str:
    local = str(i) if sequential else f"l{i}"
    return f"{parent}.{local}" if parent else local


def _make_module(layer, shape: tuple) -> nn.Module | None:
    """Module for a module-form layer; None for functional layers."""
    nd = len(shape) - 1
    if isinstance(layer, Linear):
        return nn.Linear(shape[0], layer.out, bias=layer.bias)
    if isinstance(layer, Conv):
        cls = {1: nn.Conv1d, 2: nn.Conv2d}[nd]
        return cls(shape[0], layer.out, layer.k, stride=layer.stride, padding=layer.padding,
                   dilation=layer.dilation, groups=layer.groups, bias=layer.bias)
    if isinstance(layer, BatchNorm):
        return nn.BatchNorm2d(shape[0]) if nd == 2 else nn.BatchNorm1d(shape[0])
    if isinstance(layer, Residual):
        return _Residual(layer, shape)
    if isinstance(layer, Concat):
        return _Concat(layer, shape)
    if isinstance(layer, Scale):
        return _Scale(layer, shape)
    if isinstance(layer, OptionalBlock):
        return _Chain(layer.body, shape)
    if isinstance(layer, Unary):
        if layer.kind not in _UNARY_MODULE_KINDS:
            return None
        return {"dropout": lambda: nn.Dropout(0.5), "identity": nn.Identity,
                "groupnorm": lambda: nn.GroupNorm(1, shape[0]),
                "layernorm": lambda: nn.LayerNorm(shape[-1])}[layer.kind]()
    if isinstance(layer, Flatten):
        return nn.Flatten() if layer.form == "module" else None
    if getattr(layer, "functional", True):
        return None
    if isinstance(layer, Pool):
        cls = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d,
               ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}[(layer.kind, nd)]
        return cls(layer.k, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
    if isinstance(layer, Adaptive):
        cls = {("max", 1): nn.AdaptiveMaxPool1d, ("max", 2): nn.AdaptiveMaxPool2d,
               ("avg", 1): nn.AdaptiveAvgPool1d, ("avg", 2): nn.AdaptiveAvgPool2d}[(layer.kind, nd)]
        return cls(layer.out)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    raise TypeError(layer)


def _apply_functional(layer, nd: int, x):
    """Functional forms; ``nd`` is fixed at build time so fx sees no shape logic."""
    if isinstance(layer, ReLU):
        return F.relu(x)
    if isinstance(layer, Unary):
        return F.gelu(x) if layer.kind == "gelu" else x.sigmoid()
    if isinstance(layer, Flatten):
        return torch.flatten(x, 1) if layer.form == "torch" else x.view(x.size(0), -1)
    if isinstance(layer, SpatialMean):
        dims = tuple(range(2, 2 + nd))
        if layer.form == "torch":
            return torch.mean(x, dims)
        return x.mean(dims, keepdim=layer.form == "keepdim")
    if isinstance(layer, Pool):
        fn = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d,
              ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d}[(layer.kind, nd)]
        return fn(x, layer.k, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
    if isinstance(layer, Adaptive):
        fn = {("max", 1): F.adaptive_max_pool1d, ("max", 2): F.adaptive_max_pool2d,
              ("avg", 1): F.adaptive_avg_pool1d, ("avg", 2): F.adaptive_avg_pool2d}[(layer.kind, nd)]
        return fn(x, layer.out)
    raise TypeError(layer)


class _Chain(nn.Module):
    """Runs a list of spec layers; submodules are attributes ``l{i}``."""

    def __init__(self, layers: Sequence, shape: tuple):
        super().__init__()
        self._steps: list = []  # ("mod", attr) or ("fn", layer, nd); static for fx
        self._layers = tuple(layers)
        for i, layer in enumerate(layers):
            mod = _make_module(layer, shape)
            if mod is None:
                self._steps.append(("fn", layer, len(shape) - 1))
            else:
                self.add_module(f"l{i}", mod)
                self._steps.append(("mod", f"l{i}", None))
            shape = out_shape(layer, shape)

    def forward(self, x):
        for kind, what, nd in self._steps:
            x = getattr(self, what)(x) if kind == "mod" else _apply_functional(what, nd, x)
        return x


class _Residual(nn.Module):
    def __init__(self, layer: Residual, shape: tuple):
        super().__init__()
        self.torch_add = layer.add == "torch"
        self.sub = layer.add == "sub"
        self.body = _Chain(layer.body, shape)
        self.has_shortcut = layer.shortcut is not None
        if self.has_shortcut:
            self.shortcut = _make_module(layer.shortcut, shape)

    def forward(self, x):
        sc = self.shortcut(x) if self.has_shortcut else x
        if self.sub:
            return self.body(x) - sc
        return torch.add(self.body(x), sc) if self.torch_add else self.body(x) + sc


class _Scale(nn.Module):
    def __init__(self, layer: Scale, shape: tuple):
        super().__init__()
        self.kind = layer.kind
        self.source = layer.source
        self.scalar = float(layer.values[0])
        self.values = [float(v) for v in layer.values]
        self.cshape = layer.const_shape(shape)
        if layer.source == "scalar":
            return
        c = torch.tensor(self.values).reshape(self.cshape)
        if layer.source == "buffer":
            self.register_buffer("c", c)
        elif layer.source == "param":
            self.c = nn.Parameter(c)

    def const(self):
        if self.source == "scalar":
            return self.scalar
        if self.source == "literal":
            return torch.tensor(self.values).reshape(self.cshape)
        return self.c

    def forward(self, x):
        if self.kind == "neg":
            return -x
        c = self.const()
        if self.kind == "mul":
            return x * c
        if self.kind == "rmul":
            return c * x
        if self.kind == "div":
            return x / c
        if self.kind == "method":
            return x.mul(c)
        return x + c if self.kind == "add" else x - c


def _runs(arg: str, value, by_default: bool) -> bool:
    """The condition of an :class:`OptionalBlock` body on its argument's value."""
    at_default = {"none": value is None, "false": not value, "true": bool(value),
                  "zero": value == 0}[arg]
    return at_default if by_default else not at_default


class _OptionalChain(_Chain):
    """A top-level chain whose forward has optional arguments (see :class:`OptionalBlock`)."""

    def forward(self, x, opt_none=None, opt_false=False, opt_true=True, opt_zero=0):
        values = {"none": opt_none, "false": opt_false, "true": opt_true, "zero": opt_zero}
        for (kind, what, nd), layer in zip(self._steps, self._layers):
            if isinstance(layer, OptionalBlock):
                if _runs(layer.arg, values[layer.arg], layer.by_default):
                    x = getattr(self, what)(x)
            else:
                x = getattr(self, what)(x) if kind == "mod" else _apply_functional(what, nd, x)
        return x


class _Concat(nn.Module):
    def __init__(self, layer: Concat, shape: tuple):
        super().__init__()
        self.a = _Chain(layer.a, shape)
        self.b = _Chain(layer.b, shape)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def build_torch(spec: Sequence, input_shape: tuple, seed: int = 0) -> nn.Module:
    """fx-traceable eval-mode torch model for ``spec`` (random weights from ``seed``)."""
    torch.manual_seed(seed)
    shape = tuple(input_shape)
    if any(isinstance(layer, OptionalBlock) for layer in spec):
        model = _OptionalChain(spec, shape)
    elif _is_sequential(spec):
        mods = []
        for layer in spec:
            mods.append(_make_module(layer, shape))
            shape = out_shape(layer, shape)
        model = nn.Sequential(*mods)
    else:
        model = _Chain(spec, shape)
    return model.eval()  # BatchNorm on batch 1 / 1x1 spatial would fail in train mode


def prunable_weight_names(model: nn.Module) -> list:
    """Names of the Linear/Conv weights, i.e. the parameters that get masks."""
    return [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


# ---------------------------------------------------------------------------
# Explicit multigraph
# ---------------------------------------------------------------------------

Node = tuple  # (group_name, flat unit index)


@dataclass
class Edge:
    src: Node
    dst: Node
    mult: int = 1
    param: str | None = None   # weight that produced the edge (None: structure)
    index: tuple | None = None  # element of that weight


@dataclass
class UnrolledGraph:
    """Explicit layered multigraph.

    ``groups`` lists the *real* node groups (input and every Linear/Conv
    output) with their sizes; other groups are virtual helpers for pooling,
    means and adds (they only compose edges and are never counted as nodes).
    ``nodes`` is in creation order, which is topological by construction.
    """

    resolution: str
    groups: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # param name -> weight shape

    def is_real(self, node: Node) -> bool:
        return node[0] in self.groups


@dataclass
class _T:
    """Running tensor: per-sample shape and the graph node behind each unit.

    Neuron resolution: one entry per element (row-major, as torch).
    Channel resolution: one entry per channel/feature (after a channel-level
    flatten several features point at the same channel node).
    """

    shape: tuple
    units: list


def _as_numpy_mask(m) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    return np.asarray(m) != 0


class _Builder:
    def __init__(self, resolution: str, masks: dict):
        assert resolution in ("channel", "neuron")
        self.res = resolution
        self.masks = {k: _as_numpy_mask(v) for k, v in masks.items()}
        self.g = UnrolledGraph(resolution)
        self._virtual = 0

    # -- helpers ---------------------------------------------------------
    def group(self, name: str, n: int, real: bool) -> list:
        if not real:
            self._virtual += 1
            name = f"~{self._virtual}:{name}"
        else:
            assert name not in self.g.groups, name
            self.g.groups[name] = n
        nodes = [(name, u) for u in range(n)]
        self.g.nodes.extend(nodes)
        return nodes

    def edge(self, src, dst, param=None, index=None):
        self.g.edges.append(Edge(src, dst, 1, param, index))

    def weight(self, prefix: str, shape: tuple) -> tuple:
        name = f"{prefix}.weight"
        if name in self.masks:
            mask = self.masks[name]
            assert mask.shape == shape, (name, mask.shape, shape)
        else:  # an unmasked weight is dense
            mask = np.ones(shape, dtype=bool)
        self.g.params[name] = shape
        return name, mask

    # -- spec walk -------------------------------------------------------
    def chain(self, layers, t: _T, parent: str, sequential: bool) -> _T:
        for i, layer in enumerate(layers):
            t = self.layer(layer, t, _child_prefix(parent, i, sequential))
        return t

    def layer(self, layer, t: _T, prefix: str) -> _T:
        new_shape = out_shape(layer, t.shape)
        if isinstance(layer, Linear):
            return self.linear(layer, t, prefix)
        if isinstance(layer, Conv):
            return self.conv(layer, t, prefix)
        if isinstance(layer, (ReLU, BatchNorm, Unary)):
            return _T(new_shape, t.units)
        if isinstance(layer, Flatten):
            if self.res == "neuron":
                return _T(new_shape, t.units)  # c-major row-major order is already flat
            per = math.prod(t.shape[1:])
            return _T(new_shape, [u for u in t.units for _ in range(per)])
        if isinstance(layer, (Pool, Adaptive, SpatialMean)):
            if self.res == "channel":
                return _T(new_shape, t.units)  # channel c -> channel c, multiplicity 1
            return self.window_op(layer, t, new_shape)
        if isinstance(layer, Residual):
            body = self.chain(layer.body, t, f"{prefix}.body", False)
            sc = t if layer.shortcut is None else self.conv(layer.shortcut, t, f"{prefix}.shortcut")
            assert body.shape == sc.shape
            out = self.group("add", len(body.units), real=False)
            for a, b, o in zip(body.units, sc.units, out):
                self.edge(a, o)
                self.edge(b, o)
            return _T(new_shape, out)
        if isinstance(layer, Concat):
            a = self.chain(layer.a, t, f"{prefix}.a", False)
            b = self.chain(layer.b, t, f"{prefix}.b", False)
            return _T(new_shape, a.units + b.units)
        if isinstance(layer, Scale):
            return self.scale(layer, t)
        if isinstance(layer, OptionalBlock):
            if layer.by_default:
                return self.chain(layer.body, t, prefix, False)
            self.unused(layer.body, t.shape, prefix)
            return t
        raise TypeError(layer)

    def scale(self, layer: Scale, t: _T) -> _T:
        """Unit u goes on through an edge iff its factor is non-zero (channel: at some
        position); a removed unit becomes a node without incoming edges."""
        keep = layer.factors(t.shape) != 0
        if self.res == "channel":
            if len(t.shape) > 1:
                keep = keep.reshape(t.shape[0], -1).any(axis=1)
            keep = keep.reshape(-1)
        else:
            keep = keep.reshape(-1)
        out = self.group("scale", len(t.units), real=False)
        for u, (src, dst) in enumerate(zip(t.units, out)):
            if keep[u]:
                self.edge(src, dst)
        return _T(t.shape, out)

    def unused(self, layers, shape: tuple, prefix: str) -> None:
        """Register the weights of layers that are never called (no edges)."""
        ghost = _Builder(self.res, {})
        n = math.prod(shape) if self.res == "neuron" else shape[0]
        ghost.chain(layers, _T(shape, [("~ghost", u) for u in range(n)]), prefix, False)
        self.g.params.update(ghost.g.params)

    def linear(self, layer: Linear, t: _T, prefix: str) -> _T:
        (F_in,) = t.shape
        name, mask = self.weight(prefix, (layer.out, F_in))
        out = self.group(prefix, layer.out, real=True)
        for j, f in zip(*np.nonzero(mask)):
            self.edge(t.units[f], out[j], name, (int(j), int(f)))
        return _T((layer.out,), out)

    def conv(self, layer: Conv, t: _T, prefix: str) -> _T:
        cin, in_sp = t.shape[0], t.shape[1:]
        k, s, d, left, out_sp = _conv_geometry(layer, t.shape)
        g = layer.groups
        cin_g, cout_g = cin // g, layer.out // g
        name, mask = self.weight(prefix, (layer.out, cin_g) + k)
        if self.res == "channel":
            out = self.group(prefix, layer.out, real=True)
            for idx in zip(*np.nonzero(mask)):
                o, i = int(idx[0]), int(idx[1])
                src = t.units[(o // cout_g) * cin_g + i]
                self.edge(src, out[o], name, tuple(int(v) for v in idx))
            return _T((layer.out,) + out_sp, out)
        n_out = math.prod(out_sp)
        out = self.group(prefix, layer.out * n_out, real=True)
        positions = list(np.ndindex(*out_sp))
        for idx in zip(*np.nonzero(mask)):
            idx = tuple(int(v) for v in idx)
            o, i, kk = idx[0], idx[1], idx[2:]
            c = (o // cout_g) * cin_g + i
            for pos in positions:
                # input position = out_pos*stride - left_pad + tap*dilation
                q = tuple(p * ss - ll + kt * dd for p, ss, ll, kt, dd in zip(pos, s, left, kk, d))
                if all(0 <= qq < L for qq, L in zip(q, in_sp)):
                    src = t.units[np.ravel_multi_index((c,) + q, t.shape)]
                    dst = out[np.ravel_multi_index((o,) + pos, (layer.out,) + out_sp)]
                    self.edge(src, dst, name, idx)
        return _T((layer.out,) + out_sp, out)

    def window_op(self, layer, t: _T, new_shape: tuple) -> _T:
        """Neuron-level pooling/mean: each output unit <- every real unit in its window."""
        in_sp = t.shape[1:]
        if isinstance(layer, Pool):
            k, s, p, out_sp = _pool_geometry(layer, t.shape)
            windows = [[range(max(i * ss - pp, 0), min(i * ss - pp + kk, L)) for i in range(o)]
                       for L, kk, ss, pp, o in zip(in_sp, k, s, p, out_sp)]
        elif isinstance(layer, Adaptive):
            out_sp = _adaptive_out(layer, t.shape)
            windows = [[range((i * L) // o, -(-((i + 1) * L) // o)) for i in range(o)]
                       for L, o in zip(in_sp, out_sp)]
        else:  # SpatialMean: one window covering everything
            out_sp = ()
            windows = []
        out = self.group(type(layer).__name__, math.prod(new_shape), real=False)
        for c in range(t.shape[0]):
            for pos in np.ndindex(*out_sp):
                # (a keepdim mean has trailing 1s in new_shape, same flat index)
                dst = out[np.ravel_multi_index((c,) + pos, (new_shape[0],) + tuple(out_sp))]
                ranges = [windows[dim][pos[dim]] for dim in range(len(pos))] if windows else \
                    [range(L) for L in in_sp]
                for q in _product(ranges):
                    self.edge(t.units[np.ravel_multi_index((c,) + q, t.shape)], dst)
        return _T(new_shape, out)


def _product(ranges):
    if not ranges:
        yield ()
        return
    for head in ranges[0]:
        for tail in _product(ranges[1:]):
            yield (head,) + tail


def unrolled_graph(spec: Sequence, input_shape: tuple, masks: dict, resolution: str) -> UnrolledGraph:
    """Explicit multigraph of ``spec`` (as built by :func:`build_torch`) under ``masks``."""
    b = _Builder(resolution, masks)
    input_shape = tuple(input_shape)
    n_in = math.prod(input_shape) if resolution == "neuron" else input_shape[0]
    inputs = b.group("input", n_in, real=True)
    t = b.chain(spec, _T(input_shape, inputs), "", _is_sequential(spec))
    assert t.shape == chain_out_shape(spec, input_shape)
    # Output units must be distinct nodes (a trailing channel-level flatten
    # would duplicate them, and the generator never produces one).
    assert len(set(t.units)) == len(t.units), "ambiguous output units"
    b.g.inputs = inputs
    b.g.outputs = list(t.units)
    return b.g


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------

@dataclass
class PathStats:
    count: int
    effective_nodes: dict      # real group -> set of unit indices on some path
    effective_weights: dict    # param name -> bool np.ndarray of the weight's shape

    @property
    def total_effective_nodes(self) -> int:
        return sum(len(v) for v in self.effective_nodes.values())

    @property
    def total_effective_params(self) -> int:
        return int(sum(int(v.sum()) for v in self.effective_weights.values()))


def _stats_from_marks(g: UnrolledGraph, count: int, node_ok, edge_ok) -> PathStats:
    nodes = {name: set() for name in g.groups}
    for n in g.nodes:
        if g.is_real(n) and node_ok(n):
            nodes[n[0]].add(n[1])
    weights = {name: np.zeros(shape, dtype=bool) for name, shape in g.params.items()}
    for i, e in enumerate(g.edges):
        if e.param is not None and edge_ok(i, e):
            weights[e.param][e.index] = True
    return PathStats(count, nodes, weights)


def dp_counts(g: UnrolledGraph) -> PathStats:
    """Exact path count and effective sets by forward/backward Python-int DP.

    fwd[n] = paths from any input unit to n, bwd[n] = paths from n to any
    output unit; a node/edge lies on a path iff both ends are non-zero.
    """
    order = {n: i for i, n in enumerate(g.nodes)}
    assert len(order) == len(g.nodes), "duplicate node ids"
    incoming = [[] for _ in g.nodes]
    outgoing = [[] for _ in g.nodes]
    for e in g.edges:
        s, d = order[e.src], order[e.dst]
        assert s < d, "creation order must be topological"
        incoming[d].append((s, e.mult))
        outgoing[s].append((d, e.mult))
    fwd = [0] * len(g.nodes)
    for n in g.inputs:
        fwd[order[n]] = 1
    for i in range(len(g.nodes)):
        fwd[i] += sum(m * fwd[s] for s, m in incoming[i])
    bwd = [0] * len(g.nodes)
    for n in g.outputs:
        bwd[order[n]] = 1
    for i in reversed(range(len(g.nodes))):
        bwd[i] += sum(m * bwd[d] for d, m in outgoing[i])
    count = sum(fwd[order[n]] for n in g.outputs)
    assert count == sum(bwd[order[n]] for n in g.inputs)  # both directions agree
    return _stats_from_marks(
        g, count,
        lambda n: fwd[order[n]] > 0 and bwd[order[n]] > 0,
        lambda i, e: fwd[order[e.src]] > 0 and bwd[order[e.dst]] > 0)


def brute_force_paths(g: UnrolledGraph, limit: int = 200_000) -> PathStats:
    """Enumerate every input->output path in a networkx MultiDiGraph.

    Each edge of multiplicity m becomes m parallel edges, so counting
    enumerated edge-paths counts multiplicity without any arithmetic.
    Raises if more than ``limit`` paths exist (tiny graphs only).
    """
    G = nx.MultiDiGraph()
    G.add_nodes_from(g.nodes)
    for i, e in enumerate(g.edges):
        for _ in range(e.mult):
            G.add_edge(e.src, e.dst, edge_id=i)
    assert nx.is_directed_acyclic_graph(G)
    outputs = set(g.outputs)
    count = 0
    on_path_nodes: set = set()
    on_path_edges: set = set()
    for src in g.inputs:
        # networkx yields [] when src is itself an output: a zero-length path,
        # counted once like the DP does (fwd(input) = 1).
        for path in nx.all_simple_edge_paths(G, src, outputs):
            count += 1
            if count > limit:
                raise ValueError("graph too large for brute force")
            on_path_nodes.add(src)
            for u, v, key in path:
                on_path_nodes.update((u, v))
                on_path_edges.add(G.edges[u, v, key]["edge_id"])
    return _stats_from_marks(g, count, lambda n: n in on_path_nodes,
                             lambda i, e: i in on_path_edges)


# ---------------------------------------------------------------------------
# float64 probe (works on any fx-traceable torch model, not only spec-built ones)
# ---------------------------------------------------------------------------

@dataclass
class ProbeResult:
    total: float             # y.sum() = path count (exact below 2**53)
    effective_weights: dict  # param name -> bool np.ndarray (unpruned & non-zero grad)
    effective_nodes: int = 0  # input units and Linear/Conv output units with fwd > 0, grad > 0
    flows: dict | None = None  # with weights: param name -> w * dR/dw (float64 np.ndarray)


_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Sigmoid, nn.Tanh,
                  nn.Hardswish, nn.Hardtanh, nn.Dropout, nn.Identity, nn.BatchNorm1d,
                  nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.AvgPool1d: 1, nn.AvgPool2d: 2}
_ADAPTIVE_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2,
                     nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2}
_UNARY_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.dropout,
                    torch.sigmoid, torch.tanh, F.hardswish, F.hardtanh, F.batch_norm,
                    F.layer_norm, F.group_norm}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}
_KEEP_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.cat, torch.flatten, getattr}
_KEEP_METHODS = {"flatten", "view", "reshape", "size", "add", "add_"}
_POOL_ARGS = {  # positional parameter order of the functional pools
    "max": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
            "divisor_override"),
}
_POOL_FUNCTIONS = {F.max_pool1d: ("max", 1), F.max_pool2d: ("max", 2),
                   F.avg_pool1d: ("avg", 1), F.avg_pool2d: ("avg", 2)}
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
                       F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2}


def sum_pool(x, kernel_size, stride, padding, ceil_mode, nd):
    """Sum over each pooling window (torch's own window/output-size logic)."""
    k, p = _tup(kernel_size, nd), _tup(padding, nd)
    s = k if stride is None or stride == [] or stride == () else _tup(stride, nd)
    if nd == 1:  # avg_pool1d has no divisor_override: lift to 2-d with a 1-row kernel
        y = F.avg_pool2d(x.unsqueeze(-2), (1,) + k, (1,) + s, (0,) + p, ceil_mode, True, 1)
        return y.squeeze(-2)
    return F.avg_pool2d(x, k, s, p, ceil_mode, True, 1)  # divisor 1 => plain sum


def _adaptive_window_matrix(L: int, out: int, dtype) -> torch.Tensor:
    # Ask torch which inputs each adaptive window covers: pool the one-hot
    # signals e_l; entry (l, i) is non-zero iff l is in window i.
    eye = torch.eye(L, dtype=torch.float64).unsqueeze(1)
    member = F.adaptive_avg_pool1d(eye, out)[:, 0, :] > 0  # (L, out)
    return member.T.to(dtype)


def adaptive_sum_pool(x, output_size, nd):
    out = _tup(output_size, nd)
    out = tuple(L if o is None else o for o, L in zip(out, x.shape[2:]))
    mats = [_adaptive_window_matrix(L, o, x.dtype) for L, o in zip(x.shape[2:], out)]
    if nd == 1:
        return torch.einsum("ncl,il->nci", x, mats[0])
    return torch.einsum("nchw,ih,jw->ncij", x, mats[0], mats[1])


def channel_conv(x, weight, groups: int):
    """Channel-level conv on (N, C): multiplicity(o, c) = unpruned taps of kernel (o, i)."""
    taps = weight.sum(dim=tuple(range(2, weight.dim())))  # (O, Cin/g)
    # block_diag places group g's (O/g, Cin/g) block at rows/cols of group g.
    full = torch.block_diag(*taps.split(weight.shape[0] // groups))  # (O, Cin)
    return x @ full.T


def channel_linear(x, weight):
    """Channel-level linear on (N, C): a flattened channel owns C_in/C consecutive features."""
    per = weight.shape[1] // x.shape[1]
    return x @ weight.reshape(weight.shape[0], x.shape[1], per).sum(2).T


def _identity(node: fx.Node):
    node.replace_all_uses_with(node.args[0])


def _replace(graph: fx.Graph, node: fx.Node, fn, args):
    with graph.inserting_before(node):
        new = graph.call_function(fn, args)
    node.replace_all_uses_with(new)
    return new


_TAPPED: dict = {}  # node-group key -> tensor, filled by _tap during one probe run


def _tap(t, key):
    """Record a node group's values (forward) and keep its gradient (backward)."""
    if t.requires_grad:
        t.retain_grad()
    _TAPPED[key] = t
    return t


def probe_gate(h, c, divide: bool, weighted: bool, channel: bool, full_shape):
    """``h`` times a constant under the semantics: 0/1 (c == 0 / c != 0) for counts,
    ``|c|`` (``1/|c|`` for a division) for flows; at channel resolution a channel's
    factor is 1 if ``c`` is non-zero at any of its positions (flows: the common ``|c|``
    of its non-zero positions). ``full_shape`` is the batched shape ``h`` has in the
    real model."""
    c = torch.as_tensor(c, dtype=torch.float64)
    if channel:
        c = torch.broadcast_to(c, full_shape).reshape(full_shape[0], full_shape[1], -1)
        a = c.abs()
        if weighted:
            hi = a.amax(-1)
            lo = torch.where(a > 0, a, torch.full_like(a, math.inf)).amin(-1)
            if bool(((hi > 0) & (lo != hi)).any()):
                raise ValueError("probe: |c| varies within a channel (no channel-level flow)")
            f = hi
        else:
            f = (a > 0).any(-1).double()
    else:
        f = c.abs() if weighted else (c != 0).double()
    if weighted and divide:
        f = 1.0 / f
    return h * f


_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCTIONS = {operator.truediv, operator.itruediv, torch.div}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_SUB_FUNCTIONS = {operator.sub, operator.isub, torch.sub}


class _ShapesOnly(ShapeProp):
    """Shape propagation that passes shape-preserving unary ops through (a norm on a
    1x1 map, legal in the graph, cannot run on one sample)."""

    def call_module(self, target, args, kwargs):
        if isinstance(self.fetch_attr(target), _UNARY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def call_function(self, target, args, kwargs):
        if target in _UNARY_FUNCTIONS:
            return args[0]
        return super().call_function(target, args, kwargs)


def _forward_defaults(model: nn.Module) -> dict:
    """Every forward argument after the input at its default: what ``model(x)`` runs."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def _rewrite_constant_op(graph, node, dep, channel, weighted) -> bool:
    """Products, divisions, offsets and negations with constants; ``a - b`` of two
    input-dependent tensors becomes ``a + b``. Returns whether ``node`` was handled."""
    fn, args = node.target, list(node.args)
    if node.op == "call_method":
        kind = {"mul": "mul", "div": "div", "add": "add", "sub": "sub", "neg": "neg"}.get(fn)
    elif node.op == "call_function":
        kind = ("mul" if fn in _MUL_FUNCTIONS else "div" if fn in _DIV_FUNCTIONS else
                "add" if fn in _ADD_FUNCTIONS else "sub" if fn in _SUB_FUNCTIONS else
                "neg" if fn is operator.neg else None)
    else:
        kind = None
    if kind is None:
        return False
    if kind == "neg":
        _identity(node)
        return True
    a, b = args[0], args[1]
    a_dep, b_dep = dep(a), dep(b)
    if a_dep and b_dep:
        assert kind in ("add", "sub"), f"probe: product of two input-dependent tensors {node}"
        if kind == "sub":
            _replace(graph, node, operator.add, (a, b))
        return True
    h, c = (a, b) if a_dep else (b, a)
    if kind in ("add", "sub"):  # an offset: biases are zero in the probe, so are offsets
        node.replace_all_uses_with(h)
        return True
    shape = tuple(node.meta["tensor_meta"].shape)  # = h's shape: c may not expand it
    _replace(graph, node, probe_gate, (h, c, kind == "div", weighted, channel, shape))
    return True


def _pool_call(kind: str, args, kwargs) -> tuple:
    named = dict(zip(_POOL_ARGS[kind], args))
    named.update(kwargs)
    assert named.get("dilation", 1) in (1, (1,), (1, 1)), "dilated pooling not supported"
    assert not named.get("return_indices", False)
    return (named["input"], named["kernel_size"], named.get("stride"),
            named.get("padding", 0), bool(named.get("ceil_mode", False)))


def _to_probe(model: nn.Module, masks: dict, resolution: str, input_shape: tuple,
              weights: dict | None = None) -> fx.GraphModule:
    """float64 fx copy: weights := masks (or masks * ``weights``), biases := 0,
    unary ops := id, constants := their 0/1 pattern (``|c|`` with ``weights``).

    neuron: pools/means become sums over their windows.
    channel: tensors are (N, C); convs/linears become channel multiplicity
    matrices, pools/means the identity, flatten is already the identity.
    Every Linear/Conv output and the input are tapped (:func:`_tap`).
    """
    assert resolution in ("neuron", "channel")
    channel = resolution == "channel"
    model = copy.deepcopy(model).double().eval()  # never touch the caller's model
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, _PRUNABLE):
                key = f"{name}.weight" if name else "weight"
                m = masks.get(key)
                w = torch.ones_like(mod.weight) if m is None else \
                    torch.as_tensor(_as_numpy_mask(m), dtype=torch.float64)
                assert w.shape == mod.weight.shape, key
                if weights is not None:
                    w = w * torch.as_tensor(np.asarray(weights[key]), dtype=torch.float64)
                mod.weight = nn.Parameter(w.clone())
                if mod.bias is not None:
                    mod.bias = nn.Parameter(torch.zeros_like(mod.bias), requires_grad=False)
    gm = fx.symbolic_trace(model, concrete_args=_forward_defaults(model) or None)
    _ShapesOnly(gm).propagate(torch.ones((1,) + tuple(input_shape), dtype=torch.float64))
    graph = gm.graph
    modules = dict(gm.named_modules())
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    depends = {placeholders[0]}  # nodes whose value depends on the input
    for node in graph.nodes:
        if node.op != "placeholder" and any(a in depends for a in node.all_input_nodes):
            depends.add(node)
    original = set(graph.nodes)

    def dep(n) -> bool:  # nodes made by the rewrite replace input-dependent ones
        return isinstance(n, fx.Node) and (n in depends or n not in original)

    with graph.inserting_after(placeholders[-1]):
        tapped_input = graph.call_function(_tap, (placeholders[0], "input"))
    placeholders[0].replace_all_uses_with(tapped_input)
    tapped_input.args = (placeholders[0], "input")
    for node in list(graph.nodes):
        if node not in depends or node.op == "placeholder":
            continue  # constants (and asserts on defaults) run as they are
        if _rewrite_constant_op(graph, node, dep, channel, weights is not None):
            continue
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, nn.Flatten):
                continue
            if isinstance(mod, _PRUNABLE):
                out = node
                if channel:
                    with graph.inserting_before(node):
                        w = graph.get_attr(f"{node.target}.weight")
                    if isinstance(mod, nn.Linear):
                        out = _replace(graph, node, channel_linear, (node.args[0], w))
                    else:
                        out = _replace(graph, node, channel_conv, (node.args[0], w, mod.groups))
                with graph.inserting_after(out):
                    tap = graph.call_function(_tap, (out, node.target))
                out.replace_all_uses_with(tap)
                tap.args = (out, node.target)
            elif isinstance(mod, _UNARY_MODULES):
                _identity(node)
            elif type(mod) in _POOL_MODULES:
                if getattr(mod, "dilation", 1) not in (1, (1,), (1, 1)) or \
                        getattr(mod, "return_indices", False):
                    raise NotImplementedError("probe: dilated pooling / indices")
                if channel:
                    _identity(node)
                else:
                    _replace(graph, node, sum_pool, (node.args[0], mod.kernel_size, mod.stride,
                                                     mod.padding, mod.ceil_mode,
                                                     _POOL_MODULES[type(mod)]))
            elif type(mod) in _ADAPTIVE_MODULES:
                if channel:
                    _identity(node)
                else:
                    _replace(graph, node, adaptive_sum_pool,
                             (node.args[0], mod.output_size, _ADAPTIVE_MODULES[type(mod)]))
            else:
                raise NotImplementedError(f"probe: module {type(mod).__name__}")
        elif node.op == "call_function":
            fn = node.target
            if fn in _KEEP_FUNCTIONS:
                continue
            if fn in _UNARY_FUNCTIONS:
                _identity(node)
            elif fn in _POOL_FUNCTIONS:
                kind, nd = _POOL_FUNCTIONS[fn]
                call = _pool_call(kind, node.args, node.kwargs)
                if channel:
                    node.replace_all_uses_with(call[0])
                else:
                    _replace(graph, node, sum_pool, call + (nd,))
            elif fn in _ADAPTIVE_FUNCTIONS:
                if channel:
                    _identity(node)
                else:
                    out = node.kwargs.get("output_size",
                                          node.args[1] if len(node.args) > 1 else None)
                    _replace(graph, node, adaptive_sum_pool,
                             (node.args[0], out, _ADAPTIVE_FUNCTIONS[fn]))
            elif fn is torch.mean:
                if channel:
                    _identity(node)
                else:
                    node.target = torch.sum  # a mean over positions becomes their sum
            else:
                raise NotImplementedError(f"probe: function {fn}")
        elif node.op == "call_method":
            if node.target == "mean":
                if channel:
                    _identity(node)
                else:
                    node.target = "sum"
            elif node.target in _UNARY_METHODS:
                _identity(node)
            elif node.target not in _KEEP_METHODS:
                raise NotImplementedError(f"probe: method {node.target}")
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def float64_probe(model: nn.Module, masks: dict, input_shape: tuple,
                  resolution: str = "neuron", weights: dict | None = None) -> ProbeResult:
    """Path count, effective weights and nodes via one float64 forward/backward pass.

    With weights = masks and sum-pools, every output element equals the number
    of input->output-unit paths ending there, so y.sum() is the path count.
    d y.sum() / d W[e] = sum over positions of fwd(src) * bwd(dst) >= 0 without
    cancellation, so a non-zero gradient marks a weight on some path (pruned
    weights are removed afterwards since their gradient can be non-zero too).
    A node (an input unit or a Linear/Conv output unit) is effective when both
    its value and the gradient of y.sum() at it are non-zero.
    ``resolution="channel"`` runs the same idea on (N, C) tensors (see
    :func:`_to_probe`); it assumes every mean/pool/flatten is over spatial dims.
    With ``weights`` (``{name: |w|}``) the masked weights are ``mask * |w|`` and
    constants ``|c|``: ``total`` is SynFlow's ``R`` and ``flows`` is ``w * dR/dw``.
    A model that is itself a Linear/Conv is probed as a one-layer Sequential.
    """
    if isinstance(model, _PRUNABLE):
        wrapped = float64_probe(nn.Sequential(model), {f"0.{k}": v for k, v in masks.items()},
                                input_shape, resolution,
                                None if weights is None else {"0.weight": weights["weight"]})
        strip = lambda d: None if d is None else {k[2:]: v for k, v in d.items()}  # noqa: E731
        return ProbeResult(wrapped.total, strip(wrapped.effective_weights),
                           wrapped.effective_nodes, strip(wrapped.flows))
    gm = _to_probe(model, masks, resolution, input_shape, weights)
    shape = tuple(input_shape) if resolution == "neuron" else (input_shape[0],)
    x = torch.ones((1,) + shape, dtype=torch.float64, requires_grad=True)
    _TAPPED.clear()
    y = gm(x)
    tapped = dict(_TAPPED)
    _TAPPED.clear()
    y.sum().backward()
    eff, flows = {}, {}
    for name, mod in gm.named_modules():
        if isinstance(mod, _PRUNABLE):
            key = f"{name}.weight" if name else "weight"
            grad = mod.weight.grad
            grad = torch.zeros_like(mod.weight) if grad is None else grad
            eff[key] = ((grad != 0) & (mod.weight != 0)).numpy()
            flows[key] = (mod.weight.detach() * grad).numpy()
    for name, mod in model.named_modules():  # layers that forward never calls
        key = f"{name}.weight" if name else "weight"
        if isinstance(mod, _PRUNABLE) and key not in eff:
            eff[key] = np.zeros(tuple(mod.weight.shape), dtype=bool)
            flows[key] = np.zeros(tuple(mod.weight.shape))
    nodes = 0
    for t in tapped.values():
        g = torch.zeros_like(t) if t.grad is None else t.grad
        nodes += int(((t.detach() != 0) & (g != 0)).sum())
    return ProbeResult(float(y.sum().item()), eff, nodes, flows if weights is not None else None)


# ---------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------

_UNARY_CHOICES = [ReLU(), ReLU(True), BatchNorm(), Unary("dropout"), Unary("identity"),
                  Unary("groupnorm"), Unary("layernorm"), Unary("gelu"), Unary("sigmoid")]


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _conv(draw, shape: tuple, max_ch: int, stride_ok: bool = True) -> Conv:
    """A Conv valid for ``shape`` (invalid draws fall back to a 1x1 tap)."""
    nd = len(shape) - 1
    cin = shape[0]
    g = draw(st.sampled_from(_divisors(cin)))
    depthwise = g == cin and draw(st.booleans())
    mult = draw(st.integers(1, max(1, max_ch // g)))
    cout = g * mult if not depthwise else cin
    rect = nd == 2 and draw(st.integers(0, 4)) == 0  # occasionally per-dim values
    per_dim = (lambda s: tuple(draw(s) for _ in range(nd))) if rect else (lambda s: draw(s))
    k = per_dim(st.integers(1, 3))
    d = per_dim(st.integers(1, 2))
    s = per_dim(st.integers(1, 2)) if stride_ok else 1
    if _tup(s, nd) == (1,) * nd and draw(st.integers(0, 3)) == 0:
        padding = "same"
    else:
        padding = per_dim(st.integers(0, 2))
    layer = Conv(cout, k, s, padding, d, g, bias=draw(st.booleans()))
    if any(o < 1 for o in out_shape(layer, shape)[1:]):
        layer = Conv(cout, 1, s, 0, 1, g)
    return layer


@st.composite
def _pool(draw, shape: tuple) -> Pool:
    k = draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.integers(1, 3)))
    p = draw(st.integers(0, k // 2))  # torch: padding <= kernel/2
    layer = Pool(draw(st.sampled_from(["max", "avg"])), k, stride, p, draw(st.booleans()),
                 functional=draw(st.booleans()))
    if any(L + 2 * p < k for L in shape[1:]) or any(o < 1 for o in out_shape(layer, shape)[1:]):
        layer = Pool(layer.kind, 1, stride, 0, layer.ceil_mode, layer.functional)
    return layer


@st.composite
def _same_size_branch(draw, shape: tuple, stride: int, max_ch: int, conv_only: bool,
                      cout: int | None = None) -> tuple:
    """Layers whose output spatial size is floor((L-1)/stride)+1 (= input when stride 1).

    ``conv_only`` forces a parametric branch: concat's first branch and a
    residual body always start with a conv, so every network has a Linear/
    Conv and channel-level output units are distinct nodes.  ``cout`` fixes
    the output width (an identity residual needs it equal to the input's).
    """
    nd = len(shape) - 1
    choice = draw(st.sampled_from(["conv", "conv1x1"] + ([] if conv_only else ["pool", "id"])))
    if choice == "id" and stride == 1:
        return ()
    if choice == "pool":
        kind = draw(st.sampled_from(["max", "avg"]))
        if stride == 1:
            return (Pool(kind, 3, 1, 1, functional=draw(st.booleans())),)
        return (Pool(kind, 1, stride, functional=draw(st.booleans())),)
    cin = shape[0]
    if cout is None:
        g = draw(st.sampled_from(_divisors(cin)))
        cout = g * draw(st.integers(1, max(1, max_ch // g)))
    else:
        g = draw(st.sampled_from(_divisors(math.gcd(cin, cout))))
    if choice == "conv1x1":
        return (Conv(cout, 1, stride, 0, 1, g),)
    k, d = draw(st.sampled_from([1, 3])), draw(st.integers(1, 2))
    pad = "same" if stride == 1 and draw(st.booleans()) else d * (k - 1) // 2
    layers = [Conv(cout, k, stride, pad, d, g)]
    if nd == 2 and draw(st.booleans()):
        layers.append(draw(st.sampled_from(_UNARY_CHOICES)))
    return tuple(layers)


_SCALE_KINDS = ("mul", "rmul", "div", "method", "add", "sub", "neg")
_SCALE_SOURCES = ("scalar", "buffer", "param", "literal")
_GATE_VALUES = (0.0, 0.0, 1.0, -1.0, 0.5, -2.0, 3.0)  # zeros remove units
_DIVISORS = (1.0, -1.0, 0.5, -2.0, 4.0)  # a division by zero is refused, never drawn


@st.composite
def scales(draw, shape: tuple, uniform: bool = False) -> Scale:
    """A product, division, offset or negation by a constant that fits ``shape``.

    ``uniform``: a per-position (spatial) constant has one magnitude per channel
    where it is non-zero (its channel-resolution flow exists)."""
    kind = draw(st.sampled_from(_SCALE_KINDS))
    source = draw(st.sampled_from(_SCALE_SOURCES))
    spatial = len(shape) > 1 and source != "scalar" and draw(st.booleans())
    pool = _DIVISORS if kind == "div" else _GATE_VALUES
    if source == "scalar":
        values = (draw(st.sampled_from(pool)),)
    elif spatial and uniform:
        per = math.prod(shape[1:])
        values = ()
        for _ in range(shape[0]):
            mag = draw(st.sampled_from([v for v in pool if v > 0]))
            values += tuple(draw(st.sampled_from([mag, -mag] + ([0.0] if kind != "div" else [])))
                            for _ in range(per))
    else:
        n = math.prod(shape) if spatial else shape[0]
        values = tuple(draw(st.sampled_from(pool)) for _ in range(n))
    return Scale(kind, source, values, spatial, source != "scalar" and draw(st.booleans()))


@st.composite
def _residual(draw, shape: tuple, max_ch: int, extras: bool = False) -> Residual:
    """Basic-block-like residual: identity shortcut, or a strided 1x1 projection."""
    cin = shape[0]
    identity = draw(st.booleans())
    stride = 1 if identity else draw(st.integers(1, 2))
    two_convs = draw(st.booleans())
    first_out = cin if identity and not two_convs else None
    body = list(draw(_same_size_branch(shape, stride, max_ch, conv_only=True, cout=first_out)))
    if two_convs:  # a second, stride-1 conv
        body.append(draw(st.sampled_from([ReLU(), ReLU(True)])))
        cout = cin if identity else draw(st.integers(1, max_ch))
        k = draw(st.sampled_from([1, 3]))
        body.append(Conv(cout, k, 1, "same" if draw(st.booleans()) else k // 2))
    out = chain_out_shape(body, shape)
    shortcut = None if identity else Conv(out[0], 1, stride, 0)
    sc_shape = shape if shortcut is None else out_shape(shortcut, shape)
    assert sc_shape == out, (sc_shape, out)  # add needs equal shapes
    if extras and draw(st.booleans()):
        body.append(draw(scales(out)))
    return Residual(tuple(body), shortcut,
                    draw(st.sampled_from(["op", "torch"] + (["sub"] if extras else []))))


@st.composite
def _concat(draw, shape: tuple, max_ch: int) -> Concat:
    stride = draw(st.integers(1, 2))
    a = draw(_same_size_branch(shape, stride, max_ch, conv_only=True))
    b = draw(_same_size_branch(shape, stride, max_ch, conv_only=False))
    return Concat(a, b)


@st.composite
def specs(draw, max_channels: int = 4, max_spatial: int = 7, max_blocks: int = 4,
          kinds: Sequence = ("mlp", "conv1d", "conv2d", "conv2d"),
          min_spatial: int = 1, min_blocks: int = 1, extras: bool = False,
          uniform: bool = False):
    """Random small architectures as ``(spec, input_shape)``.

    Channels stay <= ``max_channels`` per layer (a concat may double them),
    input spatial sizes lie in [``min_spatial``, ``max_spatial``]; the last
    layer is never a flatten so the output units are unambiguous at channel
    resolution.  Raise the minimums to get larger graphs (hypothesis favours
    small draws). ``extras`` adds products/divisions/offsets by constants
    (:class:`Scale`), ``a - b`` residuals and blocks that depend on optional
    forward arguments (:class:`OptionalBlock`); ``uniform`` as in :func:`scales`.
    """
    kind = draw(st.sampled_from(list(kinds)))
    mc = max_channels
    if kind == "mlp":
        shape = (draw(st.integers(1, 5)),)
        input_shape = shape
        layers = []
        for i in range(draw(st.integers(1, 3))):
            if i:
                layers.append(draw(st.sampled_from(_UNARY_CHOICES)))
            if extras and draw(st.booleans()):
                layers.append(draw(scales(shape, uniform)))
            layers.append(Linear(draw(st.integers(1, mc)), bias=draw(st.booleans())))
            shape = out_shape(layers[-1], shape)
        if extras:
            layers = draw(_with_optional(layers, input_shape, shape, mc))
        return tuple(layers), input_shape

    nd = 1 if kind == "conv1d" else 2
    spatial = tuple(draw(st.integers(min_spatial, max_spatial)) for _ in range(nd))
    shape = (draw(st.integers(1, min(3, mc))),) + spatial
    input_shape = shape
    layers = []
    n_param = 0
    for _ in range(draw(st.integers(min_blocks, max_blocks))):
        opts = ["conv", "conv", "unary"]
        if nd == 2:
            opts += ["pool", "adaptive", "residual", "concat"]
        if extras:
            opts += ["scale"]
        choice = draw(st.sampled_from(opts))
        if shape[0] > mc and choice in ("residual", "concat"):
            choice = "conv"  # keep widths small after a concat
        if choice == "conv":
            layer = draw(_conv(shape, mc))
        elif choice == "unary":
            layer = draw(st.sampled_from(_UNARY_CHOICES))
        elif choice == "pool":
            layer = draw(_pool(shape))
        elif choice == "adaptive":
            layer = Adaptive(tuple(draw(st.integers(1, min(L + 1, 4))) for L in shape[1:]),
                             draw(st.sampled_from(["avg", "avg", "max"])), draw(st.booleans()))
        elif choice == "residual":
            layer = draw(_residual(shape, mc, extras))
        elif choice == "scale":
            layer = draw(scales(shape, uniform))
        else:
            layer = draw(_concat(shape, mc))
        n_param += isinstance(layer, (Conv, Residual, Concat))
        layers.append(layer)
        shape = out_shape(layer, shape)
    structural = (ReLU, BatchNorm, Unary, Pool, Adaptive, Scale)
    last_block = next((layer for layer in reversed(layers) if not isinstance(layer, structural)), None)
    if n_param == 0 or isinstance(last_block, Concat):
        # A trailing concat may pass input units straight to the output,
        # i.e. zero-length paths at channel level: legal but degenerate, so
        # finish with a conv instead.
        layers.append(draw(_conv(shape, mc)))
        shape = out_shape(layers[-1], shape)
    head = draw(st.sampled_from(["none", "none", "mean", "mean_linear", "flatten_linear",
                                 "adaptive_linear"]))
    flatten_forms = st.sampled_from(["module", "torch", "view"])
    if head == "mean":
        layers.append(SpatialMean(draw(st.sampled_from(["method", "torch"]))))
    elif head == "mean_linear":
        mean = SpatialMean(draw(st.sampled_from(["method", "torch", "keepdim"])))
        layers += [mean] + ([Flatten(draw(flatten_forms))] if mean.form == "keepdim" else [])
        layers.append(Linear(draw(st.integers(1, mc))))
    elif head == "flatten_linear":
        layers += [Flatten(draw(flatten_forms)), Linear(draw(st.integers(1, mc)))]
    elif head == "adaptive_linear":
        layers += [Adaptive(1, functional=draw(st.booleans())), Flatten(draw(flatten_forms)),
                   Linear(draw(st.integers(1, mc)))]
    if extras:
        if draw(st.booleans()):
            shape = chain_out_shape(layers, input_shape)
            layers.append(draw(scales(shape, uniform)))
        layers = draw(_with_optional(layers, input_shape, chain_out_shape(layers, input_shape),
                                     mc))
    return tuple(layers), input_shape


@st.composite
def _with_optional(draw, layers: list, input_shape: tuple, shape: tuple, mc: int) -> list:
    """Put the last layer in a block that runs when its forward argument has its
    default (as a classifier head that ``features_only=None`` keeps), and/or append
    a parametric block that runs only when the argument is given."""
    layers = list(layers)
    if len(layers) > 1 and draw(st.booleans()):
        head = layers.pop()
        layers.append(OptionalBlock((head,), draw(st.sampled_from(list(OPTIONAL_ARGS)))))
    if draw(st.booleans()):
        body = (Linear(draw(st.integers(1, mc))),) if len(shape) == 1 else \
            (draw(_conv(shape, mc)),)
        layers.append(OptionalBlock(body, draw(st.sampled_from(list(OPTIONAL_ARGS))),
                                    by_default=False))
    return layers


def masks_for(model: nn.Module, rng_or_draw, density: float | None = None) -> dict:
    """Random 0/1 masks (float torch tensors) for every Linear/Conv weight.

    ``rng_or_draw`` is a numpy Generator, an int seed, or a hypothesis
    ``draw``/``data.draw`` callable (a seed is drawn so failures replay).
    Per layer: 10% all-zero, 15% dense, else Bernoulli(``density``), where a
    ``None`` density is drawn per layer.
    """
    if isinstance(rng_or_draw, np.random.Generator):
        rng = rng_or_draw
    elif isinstance(rng_or_draw, (int, np.integer)):
        rng = np.random.default_rng(int(rng_or_draw))
    elif callable(rng_or_draw):
        rng = np.random.default_rng(rng_or_draw(st.integers(0, 2**32 - 1)))
    else:
        raise TypeError(rng_or_draw)
    params = dict(model.named_parameters())
    masks = {}
    for name in prunable_weight_names(model):
        shape = tuple(params[name].shape)
        u = rng.random()
        if u < 0.10:
            m = np.zeros(shape)
        elif u < 0.25:
            m = np.ones(shape)
        else:
            p = rng.uniform(0.2, 0.9) if density is None else density
            m = (rng.random(shape) < p).astype(np.float64)
        masks[name] = torch.as_tensor(m, dtype=torch.float32)
    return masks
