"""Compaction: a masked model rebuilt as a smaller dense model.

:func:`compact` removes every ineffective channel (of a Conv) or unit (of a
Linear) -- the ones :meth:`topo_pai.Topology.effective_nodes` does not count at
channel resolution -- and returns a new ``torch.nn.Module`` whose eval-mode
outputs equal the masked model's. Two things make that exact:

* **Constants are folded.** A unit that no input reaches still outputs a
  constant (its bias, through norms and activations). Where a kept unit reads it,
  its contribution -- the layer applied to that constant -- is added to the kept
  unit's bias; where it is not the same at every position (a padded conv over a
  constant channel), it is added as a per-position bias map. Where a residual add
  keeps a channel that one branch removed, or the network output needs a removed
  unit, the constant is put back in place.
* **Branches stay consistent.** Every value of the traced graph keeps a set of
  channels: a layer's output its effective channels, an add the union of its
  operands', a cat the concatenation, a flatten every feature of its kept
  channels. Each consumer reads exactly the channels it needs.

Units called constant are checked to be constant: the masked model runs on two
random inputs, and a unit whose value differs between them while no path reaches
it is refused (an op that mixes channels, such as GroupNorm, LayerNorm or a
softmax over channels, makes it so). Any other op whose channel semantics are
not known is refused, naming the fx node.

The compacted model is an eval-mode ``torch.fx.GraphModule``: BatchNorm uses
its running statistics, so train it afresh only after converting it yourself.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from topo_pai.checks import check_seed
from topo_pai.errors import UnsupportedOpError

#: Modules that act on each channel on its own and hold no parameters.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
#: Functions and tensor methods that act on each channel on its own; the tensor is the
#: first argument, every other argument is passed through.
_CHANNELWISE_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu, F.relu6, F.leaky_relu,
    F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus,
    torch.sigmoid, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    torch.abs, torch.exp, torch.square, torch.clamp,
}
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "abs", "exp", "clamp",
                        "square", "float", "clone"}
_ADD = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd, operator.isub}
_SCALE = {operator.mul, operator.truediv, torch.mul, torch.div, operator.imul,
          operator.itruediv}
_BINARY_METHODS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
                   "div": operator.truediv, "add_": operator.add, "mul_": operator.mul}

#: Relative tolerance within which a constant unit takes the same value on both probes,
#: and a folded contribution is the same at every position.
_CONSTANT_RTOL = 1e-9


@dataclass
class CompactionReport:
    """Sizes before and after :func:`compact`.

    ``params_*`` count every parameter (weights, biases, norm parameters);
    ``macs_*`` the multiply-accumulates of the Linear and Conv layers per sample
    (``weight elements x output positions``, as :meth:`Topology.effective_flops`).
    ``effective_macs`` is the masked model's effective MACs, the least any dense
    model computing the same function with these layers can cost;
    ``channels`` maps each layer to ``(before, after)`` output channels or units.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    effective_macs: int
    channels: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({_ratio(self.params_after, self.params_before)}), "
                 f"MACs {self.macs_before:,} -> {self.macs_after:,} "
                 f"({_ratio(self.macs_after, self.macs_before)}; effective MACs of the masked "
                 f"model: {self.effective_macs:,})"]
        width = max((len(k) for k in self.channels), default=0)
        for name, (before, after) in self.channels.items():
            lines.append(f"  {name.ljust(width)}  {before} -> {after}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(params_before=self.params_before, params_after=self.params_after,
                    macs_before=self.macs_before, macs_after=self.macs_after,
                    effective_macs=self.effective_macs,
                    channels={k: list(v) for k, v in self.channels.items()})


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1%}" if b else "-"


@dataclass
class Compaction:
    """What :func:`compact_with_report` returns: the compacted model and its report."""

    model: nn.Module
    report: CompactionReport


class _Adapter(nn.Module):
    """Gathers channels ``src`` of its input into positions ``dst`` of an output that
    holds ``fill`` (constants, per position) everywhere else."""

    def __init__(self, fill: torch.Tensor, src: np.ndarray, dst: np.ndarray):
        super().__init__()
        self.register_buffer("fill", fill)
        self.register_buffer("src", torch.as_tensor(src, dtype=torch.long))
        self.register_buffer("dst", torch.as_tensor(dst, dtype=torch.long))
        self.gathers = len(src) > 0  # without, x only gives the batch size
        self.fill_dims = fill.dim()

    def forward(self, x):
        # ops torch.fx can trace (no unpacked shapes, no indexed assignment), so a
        # compacted model still traces
        out = self.fill.unsqueeze(0).repeat(x.size(0), *([1] * self.fill_dims))
        if self.gathers:
            out = out.index_copy(1, self.dst, x.index_select(1, self.src))
        return out


class _Select(nn.Module):
    """Keeps channels ``index`` of its input (dimension 1)."""

    def __init__(self, index: np.ndarray):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))

    def forward(self, x):
        return x.index_select(1, self.index)


class _BiasMap(nn.Module):
    """Adds a per-position bias (the folded contribution of constant units that is not
    the same at every position, e.g. at a padded border)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, x):
        return x + self.bias


@dataclass
class _Act:
    """A batched activation of the traced graph: ``keep`` are its kept channels
    (dimension 1), in order; the new graph's node holds exactly them."""

    node: fx.Node  # in the new graph; with no kept channel, the input (for its batch size)
    keep: np.ndarray
    full: int
    old: fx.Node | None = None  # the traced graph's node whose reference values it holds

    @property
    def empty(self) -> bool:
        return self.keep.size == 0


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _node_desc(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(
        node.target, "__name__", str(node.target))
    return f"fx node '{node.name}' ({node.op} {target})"


def _refuse(node: fx.Node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"cannot compact {_node_desc(node)}: {what}")


class _Compactor:
    def __init__(self, model: nn.Module, masks: Mapping, input_shape, topo, seed: int):
        self.topo = topo
        from topo_pai.pruners.torch_masks import baked_copy

        # attached masks act as their weights' zeros; the rebuilding runs on the CPU
        work = baked_copy(model).eval().cpu()
        self.masks = {k: np.asarray(v, dtype=bool) for k, v in topo.masks_numpy.items()}
        with torch.no_grad():
            for name, m in self.masks.items():
                mod = work.get_submodule(name.rpartition(".")[0])
                mod.weight.mul_(torch.as_tensor(m, dtype=mod.weight.dtype))
        self.dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()),
                          torch.float32)
        try:
            graph = fx.Tracer().trace(work)
        except Exception as exc:  # noqa: BLE001 - re-raised as ours, naming the model
            raise UnsupportedOpError(f"torch.fx could not trace {type(model).__name__} for "
                                     f"compaction: {type(exc).__name__}: {exc}") from exc
        self.gm = fx.GraphModule(work, graph)
        # The reference: the masked model in float64, on two random probes.
        ref = copy.deepcopy(self.gm).double().eval()
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((2, *input_shape), generator=gen, dtype=torch.float64)
        rec = _Recorder(ref)
        with torch.no_grad():
            rec.run(x)
        self.ref = {n: rec.values[n.name] for n in self.gm.graph.nodes}
        self.layers = {layer.name: layer for layer in topo.layers}
        fwd, bwd = topo.forward_counts(), topo.backward_counts()
        self.effective = {name: np.flatnonzero((fwd[name].mantissa > 0)
                                               & (bwd[name].mantissa > 0))
                          for name in self.layers}
        self.graph = fx.Graph()
        self.modules: dict[str, nn.Module] = {}
        self.env: dict[fx.Node, object] = {}
        self.macs_before = 0
        self.macs_after = 0
        self.channels: dict[str, tuple[int, int]] = {}

    # -- helpers ------------------------------------------------------------------------
    def add_module(self, name: str, mod: nn.Module) -> str:
        base, k = name, 1
        while name in self.modules:
            k += 1
            name = f"{base}_{k}"
        self.modules[name] = mod
        return name

    def call(self, name: str, mod: nn.Module, arg: fx.Node) -> fx.Node:
        return self.graph.call_module(self.add_module(name, mod), (arg,))

    def constants(self, node: fx.Node, channels: np.ndarray, why: str) -> torch.Tensor:
        """The constant values of ``channels`` of ``node`` (per position, float64),
        checked to be the same on both probes."""
        v = self.ref[node][:, torch.as_tensor(channels, dtype=torch.long)]
        a, b = v[0], v[1]
        scale = torch.maximum(a.abs(), b.abs()).clamp_min(1.0)
        if not torch.all((a - b).abs() <= _CONSTANT_RTOL * scale):
            bad = channels[((a - b).abs() > _CONSTANT_RTOL * scale).reshape(len(channels), -1)
                           .any(dim=1).numpy()]
            raise UnsupportedOpError(
                f"cannot compact: channel(s) {bad.tolist()[:8]} of {_node_desc(node)} carry no "
                f"path from the input but change with it ({why}); an op before it mixes "
                "channels (e.g. GroupNorm, LayerNorm or a softmax over channels), so removing "
                "channels would change the outputs")
        return a

    def adapt(self, act: _Act, target: np.ndarray, why: str) -> fx.Node:
        """A node holding channels ``target`` of ``act`` (constants where ``act`` lacks them)."""
        if np.array_equal(act.keep, target) and not act.empty:
            return act.node
        pos = {int(c): i for i, c in enumerate(act.keep)}
        present = np.array([c in pos for c in target.tolist()], dtype=bool)
        if present.all() and target.size:
            src = np.array([pos[int(c)] for c in target], dtype=np.int64)
            return self.call(f"{act.node.name}_select", _Select(src), act.node)
        old = act.old
        fill = torch.zeros((len(target), *self.ref[old].shape[2:]), dtype=self.dtype)
        fill[torch.as_tensor(~present)] = self.constants(old, target[~present], why).to(
            self.dtype)
        src = np.array([pos[int(c)] for c in target[present]], dtype=np.int64)
        dst = np.flatnonzero(present)
        return self.call(f"{act.node.name}_adapt", _Adapter(fill.contiguous(), src, dst),
                         act.node)

    def const_operand(self, value, act: _Act, node: fx.Node):
        """A constant operand of an elementwise op with ``act``: sliced to its kept
        channels where it varies along the channel axis."""
        if not isinstance(value, torch.Tensor):
            return value
        nd = self.ref[node].dim()
        if value.dim() > nd:
            raise _refuse(node, "a constant operand has more dimensions than the activation")
        aligned = value.reshape((1,) * (nd - value.dim()) + tuple(value.shape))
        if aligned.shape[1] == act.full and act.full > 1:
            aligned = aligned.index_select(1, torch.as_tensor(act.keep, dtype=torch.long))
        aligned = aligned.to(self.dtype if value.is_floating_point() else value.dtype)
        name = self.add_module(f"{node.name}_const", nn.Module())
        self.modules[name].register_buffer("value", aligned.contiguous())
        return self.graph.get_attr(f"{name}.value")

    def new_arg(self, a):
        """An argument of the new graph: activations as their nodes, constants as values."""
        def one(x):
            v = self.env[x]
            if isinstance(v, _Act):
                return v.node
            if isinstance(v, _Const):
                raise _refuse(x, "a constant tensor is used where compaction cannot slice it")
            return v
        return fx.node.map_arg(a, one)

    # -- which channels reach the outputs ---------------------------------------------
    def is_activation(self) -> dict:
        """Whether each node's value depends on the input."""
        dep = {}
        for node in self.gm.graph.nodes:
            ins = []
            fx.node.map_arg((node.args, node.kwargs), ins.append)
            dep[node] = node.op == "placeholder" or any(dep[i] for i in ins)
        return dep

    def reaching(self) -> dict:
        """For every activation: which of its channels (dimension 1) lie on a path of
        unpruned weights to an output (conservatively: ops without a rule pass every
        channel on). Channels the outputs do not depend on need no value."""
        dep = self.is_activation()
        acts = {n for n, d in dep.items() if d and isinstance(self.ref.get(n), torch.Tensor)
                and self.ref[n].dim() >= 2}
        reach = {n: np.zeros(self.ref[n].shape[1], dtype=bool) for n in acts}
        for node in reversed(list(self.gm.graph.nodes)):
            if node.op == "output":
                fx.node.map_arg(node.args, lambda x: reach[x].__ior__(True)
                                if x in reach else None)
                continue
            if node not in reach:
                continue
            out = reach[node]
            ins = []
            fx.node.map_arg((node.args, node.kwargs), ins.append)
            ins = [i for i in ins if i in reach]
            mod = self.gm.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) and node.target in self.layers:
                mask = self.masks[self.layers[node.target].param]
                O, per_group = mask.shape[:2]
                groups = getattr(mod, "groups", 1)
                used = mask.reshape(O, per_group, -1).any(axis=2)[out]  # (kept rows, in/group)
                group_of_row = np.flatnonzero(out) // (O // groups)
                cols = (group_of_row[:, None] * per_group + np.arange(per_group)[None, :])
                reach[ins[0]][np.unique(cols[used])] = True
            elif node.target is torch.cat:
                offset = 0
                for t in node.args[0]:
                    n = self.ref[t].shape[1]
                    reach[t] |= out[offset:offset + n]
                    offset += n
            else:
                for i in ins:
                    if len(reach[i]) == len(out):
                        reach[i] |= out
                    elif len(out) % len(reach[i]) == 0:  # a flatten: features -> channels
                        reach[i] |= out.reshape(len(reach[i]), -1).any(axis=1)
                    else:
                        reach[i][:] = True
        return reach

    # -- the pass ---------------------------------------------------------------------
    def run(self) -> Compaction:
        self.reach = self.reaching()
        for node in self.gm.graph.nodes:
            handler = getattr(self, f"op_{node.op}")
            out = handler(node)
            if isinstance(out, _Act) and out.old is None:
                out.old = node
            self.env[node] = out
        gm = fx.GraphModule(self.modules_root(), self.graph)
        gm.eval()
        params_before = sum(p.numel() for p in self.gm.parameters())
        params_after = sum(p.numel() for p in gm.parameters())
        report = CompactionReport(int(params_before), int(params_after), int(self.macs_before),
                                  int(self.macs_after), int(self.topo.effective_flops()),
                                  self.channels)
        return Compaction(gm, report)

    def modules_root(self) -> nn.Module:
        root = nn.Module()
        for name, mod in self.modules.items():
            parent = root
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, mod)
        return root

    def op_placeholder(self, node):
        new = self.graph.placeholder(node.name)
        self.input_node = new
        v = self.ref[node]
        return _Act(new, np.arange(v.shape[1]), v.shape[1])

    def op_get_attr(self, node):
        return _Const(self.ref[node])

    def op_output(self, node):
        def out(x):
            v = self.env[x]
            if isinstance(v, _Act):
                return self.adapt(v, np.arange(v.full), "the network output")
            if isinstance(v, _Const):
                raise _refuse(x, "the output is a constant tensor")
            return v
        self.graph.output(fx.node.map_arg(node.args[0], out))
        return None

    def acts(self, node) -> list:
        found = []
        fx.node.map_arg((node.args, node.kwargs),
                        lambda x: found.append(x) if isinstance(self.env[x], _Act) else None)
        return found

    def constant_node(self, node):
        """A node that depends on no activation: its value, as a constant."""
        return _Const(self.ref[node]) if isinstance(self.ref[node], torch.Tensor) \
            else self.ref[node]

    def channelwise(self, node, emit):
        acts = self.acts(node)
        if len(acts) != 1 or (node.args and acts[0] is not node.args[0]):
            raise _refuse(node, "expected one activation as the first argument")
        act = self.env[acts[0]]
        if act.empty:
            return _Act(act.node, act.keep, act.full)
        new = emit(self.new_arg(node.args), self.new_arg(node.kwargs))
        return _Act(new, act.keep, act.full)

    def op_call_module(self, node):
        mod = self.gm.get_submodule(node.target)
        if not self.acts(node):
            return self.constant_node(node)
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return self.layer(node, mod)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.batch_norm(node, mod)
        if isinstance(mod, _CHANNELWISE_MODULES):
            name = self.add_module(node.target, copy.deepcopy(mod))
            return self.channelwise(node, lambda a, k: self.graph.call_module(name, a, k))
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise _refuse(node, "only a flatten of every dimension after the batch")
            return self.flatten(node, self.env[node.args[0]])
        raise _refuse(node, f"module of type {type(mod).__name__} (supported: Linear, Conv1d/2d "
                            "(not grouped other than depthwise), BatchNorm, activations, "
                            "dropout, pools, flatten, +, -, cat, products by constants, "
                            "spatial means)")

    def op_call_function(self, node):
        fn = node.target
        if not self.acts(node):
            return self.constant_node(node)
        if fn in _CHANNELWISE_FUNCTIONS:
            return self.channelwise(node, lambda a, k: self.graph.call_function(fn, a, k))
        if fn in _ADD or fn in _SCALE:
            return self.binary(node, fn, node.args[0], node.args[1])
        if fn is torch.cat:
            return self.cat(node)
        if fn is torch.flatten:
            return self.flatten_call(node, node.args[1:], node.kwargs)
        if fn is torch.mean:
            return self.mean(node)
        raise _refuse(node, f"function {getattr(fn, '__name__', fn)} has no known channel "
                            "semantics")

    def op_call_method(self, node):
        name = node.target
        if not self.acts(node):
            return self.constant_node(node)
        if name in _CHANNELWISE_METHODS:
            return self.channelwise(node, lambda a, k: self.graph.call_method(name, a, k))
        if name in _BINARY_METHODS:
            return self.binary(node, _BINARY_METHODS[name], node.args[0], node.args[1])
        if name == "size":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dim != 0:
                raise _refuse(node, "only the batch size (size(0)) may be read: other sizes "
                                    "change with compaction")
            return self.graph.call_method("size", (self.env[node.args[0]].node, 0))
        if name == "flatten":
            return self.flatten_call(node, node.args[1:], node.kwargs)
        if name in ("view", "reshape"):
            rest = node.args[1:]
            if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
                rest = tuple(rest[0])
            if len(rest) == 2 and rest[1] == -1 and self.ref[node].dim() == 2:
                act = self.env[node.args[0]]
                out = self.flatten(node, act)
                return out
            raise _refuse(node, "only a view/reshape to (batch, -1) is supported")
        if name == "mean":
            return self.mean(node)
        raise _refuse(node, f"method .{name}() has no known channel semantics")

    # -- ops --------------------------------------------------------------------------------
    def flatten_call(self, node, args, kwargs):
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        if start != 1 or end != -1:
            raise _refuse(node, "only a flatten of every dimension after the batch "
                                "(flatten(x, 1))")
        return self.flatten(node, self.env[node.args[0]])

    def flatten(self, node, act: _Act) -> _Act:
        src = self.ref[act.old]
        per = int(np.prod(src.shape[2:], dtype=np.int64))
        keep = (act.keep[:, None] * per + np.arange(per)[None, :]).reshape(-1)
        if act.empty:
            return _Act(act.node, keep, act.full * per)
        new = self.graph.call_function(torch.flatten, (act.node, 1))
        return _Act(new, keep, act.full * per)

    def mean(self, node):
        x = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        nd = self.ref[x].dim()
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        norm = {d % nd for d in dims}
        if not dims or 0 in norm or 1 in norm:
            raise _refuse(node, "only means over spatial dimensions keep channels apart")
        return self.channelwise(node, lambda a, k: self.graph.create_node(
            node.op, node.target, a, k))

    def binary(self, node, fn, a, b):
        va = self.env[a] if isinstance(a, fx.Node) else a
        vb = self.env[b] if isinstance(b, fx.Node) else b
        if isinstance(va, _Act) and isinstance(vb, _Act):
            if fn in _SCALE:
                raise _refuse(node, "a product of two activations")
            keep = np.intersect1d(np.union1d(va.keep, vb.keep),
                                  np.flatnonzero(self.reach[node]))
            if keep.size == 0:
                return _Act(self.input_node, keep, va.full)
            why = f"it meets another branch at {_node_desc(node)}"
            args = (self.adapt(va, keep, why), self.adapt(vb, keep, why))
            alpha = node.kwargs.get("alpha")
            kwargs = {} if alpha is None else {"alpha": alpha}
            return _Act(self.graph.call_function(fn, args, kwargs), keep, va.full)
        act, other, first = (va, vb, True) if isinstance(va, _Act) else (vb, va, False)
        if act.empty:
            return _Act(act.node, act.keep, act.full)
        if isinstance(other, _Const):
            other = self.const_operand(other.value, act, node)
        args = (act.node, other) if first else (other, act.node)
        return _Act(self.graph.call_function(fn, args), act.keep, act.full)

    def cat(self, node):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % self.ref[node].dim() != 1:
            raise _refuse(node, "only a cat along the channel dimension (dim=1)")
        keeps, offset, parts = [], 0, []
        for t in tensors:
            v = self.env[t]
            if not isinstance(v, _Act):
                raise _refuse(node, "a cat of an activation with a constant")
            keeps.append(v.keep + offset)
            offset += v.full
            if not v.empty:
                parts.append(v.node)
        if not parts:
            return _Act(self.input_node, np.zeros(0, dtype=np.int64), offset)
        new = parts[0] if len(parts) == 1 else self.graph.call_function(torch.cat, (parts, 1))
        return _Act(new, np.concatenate(keeps), offset)

    def batch_norm(self, node, mod):
        act = self.env[node.args[0]]
        if act.empty:
            return _Act(act.node, act.keep, act.full)
        idx = torch.as_tensor(act.keep, dtype=torch.long)
        new = copy.deepcopy(mod)
        new.num_features = len(act.keep)
        with torch.no_grad():
            for name in ("weight", "bias"):
                p = getattr(mod, name)
                if p is not None:
                    setattr(new, name, nn.Parameter(p.detach()[idx].clone()))
            for name in ("running_mean", "running_var"):
                b = getattr(mod, name)
                if b is not None:
                    setattr(new, name, b[idx].clone())
        return _Act(self.call(node.target, new, act.node), act.keep, act.full)

    def layer(self, node, mod):
        act = self.env[node.args[0]]
        if not isinstance(act, _Act) or len(node.args) != 1 or node.kwargs:
            raise _refuse(node, "a layer must be called on one activation")
        name = node.target
        if name not in self.layers:
            raise _refuse(node, "the layer is not on the traced input-to-output graph")
        ref_in, ref_out = self.ref[node.args[0]], self.ref[node]
        if isinstance(mod, nn.Linear) and ref_in.dim() != 2:
            raise _refuse(node, "a Linear layer on a tensor of more than one feature dimension")
        weight = mod.weight.detach().double()
        mask = self.masks[self.layers[name].param]
        keep_out = self.effective[name]
        groups = getattr(mod, "groups", 1)
        positions = int(np.prod(ref_out.shape[2:], dtype=np.int64))
        self.macs_before += mod.weight.numel() * positions
        self.channels[name] = (int(ref_out.shape[1]), int(len(keep_out)))
        if keep_out.size == 0:  # every unit is constant or unused: consumers read constants
            return _Act(self.input_node, keep_out, int(ref_out.shape[1]))
        rows = torch.as_tensor(keep_out, dtype=torch.long)
        used = mask.reshape(mask.shape[0], mask.shape[1], -1)[keep_out].any(axis=(0, 2))
        bias = (mod.bias.detach().double()[rows] if mod.bias is not None
                else torch.zeros(len(keep_out), dtype=torch.float64))
        bias_map = None
        if groups == 1:
            cols = np.intersect1d(act.keep, np.flatnonzero(used))
            missing = np.setdiff1d(np.flatnonzero(used), act.keep)
            if missing.size:  # constant units feeding kept ones: fold their contribution
                const = self.constants(node.args[0], missing, f"it feeds {name}")
                x = torch.zeros(ref_in.shape[1:], dtype=torch.float64)
                x[torch.as_tensor(missing)] = const
                w = weight[rows]
                contrib = (F.linear(x, w) if isinstance(mod, nn.Linear)
                           else mod._conv_forward(x.unsqueeze(0), w, None)[0])
                flat = contrib.reshape(len(keep_out), -1)
                lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
                uniform = (hi - lo) <= _CONSTANT_RTOL * torch.maximum(hi.abs(), lo.abs()).clamp_min(1)
                bias = bias + flat.mean(dim=1) * uniform
                if not bool(uniform.all()):
                    bias_map = (contrib - (flat.mean(dim=1) * uniform).reshape(
                        (-1,) + (1,) * (contrib.dim() - 1))) * (~uniform).reshape(
                        (-1,) + (1,) * (contrib.dim() - 1))
            new_w = weight[rows][:, torch.as_tensor(cols, dtype=torch.long)]
            new_groups = 1
        elif groups == mod.in_channels == mod.out_channels:  # depthwise
            cols = keep_out
            if np.setdiff1d(cols, act.keep).size:
                raise _refuse(node, "a depthwise conv's kept channel is missing from its input")
            new_w = weight[rows]
            new_groups = max(1, len(keep_out))
        else:
            raise _refuse(node, f"a grouped convolution (groups={groups}) other than depthwise "
                                "(groups = in = out channels)")
        pos = {int(c): i for i, c in enumerate(act.keep)}
        x_node = act.node
        if not np.array_equal(cols, act.keep):
            x_node = self.call(f"{node.name}_select",
                               _Select(np.array([pos[int(c)] for c in cols], dtype=np.int64)),
                               act.node)
        has_bias = mod.bias is not None or bool(torch.any(bias != 0))
        with warnings.catch_warnings():  # a layer left without units: an empty weight
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            if isinstance(mod, nn.Linear):
                new = nn.Linear(len(cols), len(keep_out), bias=has_bias)
            else:
                new = type(mod)(len(cols), len(keep_out), mod.kernel_size, stride=mod.stride,
                                padding=mod.padding, dilation=mod.dilation, groups=new_groups,
                                bias=has_bias, padding_mode=mod.padding_mode)
        new = new.to(dtype=mod.weight.dtype, device=mod.weight.device)
        with torch.no_grad():
            new.weight.copy_(new_w.reshape(new.weight.shape))
            if has_bias:
                new.bias.copy_(bias)
        out = self.call(name, new, x_node)
        if bias_map is not None:
            out = self.call(f"{node.name}_bias_map", _BiasMap(bias_map.to(self.dtype)), out)
        self.macs_after += new.weight.numel() * positions
        return _Act(out, keep_out, int(ref_out.shape[1]))


@dataclass
class _Const:
    value: torch.Tensor


def compact_with_report(model: nn.Module, masks: Mapping | None = None, input_shape=None, *,
                        seed: int = 0) -> Compaction:
    """Like :func:`compact`, but return a :class:`Compaction` (``.model``, ``.report``)."""
    from topo_pai.topology import from_torch

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    topo = from_torch(model, masks, input_shape)
    if any(layer.name == "" for layer in topo.layers):  # e.g. a bare nn.Linear
        raise UnsupportedOpError(
            f"cannot compact {type(model).__name__}: the model is itself one layer, whose "
            "inputs and outputs are the network's, so it has no unit to remove; compaction "
            "rebuilds models that hold their layers as submodules")
    seed = check_seed("compact's seed", seed)
    return _Compactor(model, masks, tuple(input_shape), topo, seed).run()


def compact(model: nn.Module, masks: Mapping | None = None, input_shape=None, *,
            seed: int = 0) -> nn.Module:
    """A new, smaller dense model: ``model`` under ``masks`` without its ineffective units.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified. Traced with torch.fx (as :func:`topo_pai.from_torch` does).
    masks : mapping, optional
        ``{param name: 0/1 tensor}``; ``None``: the masks attached to ``model``.
        Masks attached to ``model`` (``torch.nn.utils.prune``, ``apply_masks``) stay
        in force either way, since the model's forward applies them: given ``masks``
        prune further (:func:`topo_pai.from_torch` counts the given masks only).
    input_shape : tuple of int
        One sample's shape without the batch dimension.
    seed : int
        Seeds the two random probe inputs that check constant units.

    Returns
    -------
    torch.fx.GraphModule
        On the CPU (move it with ``.to(device)``), in eval mode. Each Linear and Conv
        keeps exactly its effective units
        (channel resolution) and is dense; its outputs equal the masked model's
        eval-mode outputs to float32 rounding. It traces with torch.fx, but where
        compaction had to move channels (a residual add or a concat whose sides
        keep different channels) it holds helper modules built on
        ``index_select``/``index_copy``, which :func:`topo_pai.from_torch` refuses
        (no topology for them yet): count paths on the masked original, whose
        effective units and paths the compacted model keeps.

    Raises
    ------
    topo_pai.UnsupportedOpError
        An op compaction cannot rebuild, named (e.g. a grouped conv other than
        depthwise, a GroupNorm before a removed channel).

    Examples
    --------
    >>> import torch, topo_pai
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> mask = torch.ones(3, 4)
    >>> mask[1] = 0                      # hidden unit 1 has no input: only its bias is left
    >>> small = topo_pai.compact(net, {"0.weight": mask}, (4,))
    >>> small.get_submodule("0").weight.shape
    torch.Size([2, 4])
    >>> x = torch.randn(5, 4)
    >>> with torch.no_grad():
    ...     _ = net[0].weight.mul_(mask)     # the masked model, to compare
    ...     torch.allclose(small(x), net(x), atol=1e-6)
    True
    """
    return compact_with_report(model, masks, input_shape, seed=seed).model


__all__ = ["compact", "compact_with_report", "Compaction", "CompactionReport"]
