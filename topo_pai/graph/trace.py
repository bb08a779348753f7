"""torch.fx bridge: trace a model into a :class:`~topo_pai.graph.ir.Program`.

The model is never executed. Shapes are inferred op by op from the module
hyper-parameters and ``input_shape``, which is what lets one trace feed any
number of mask sets cheaply, and lets a wrong ``input_shape`` be reported at
the fx node where it stops fitting.

Unknown ops are errors, never identities: a silently skipped op would give a
silently wrong path count.

What is traced is what ``model(x)`` computes: the model is traced as the one
submodule of a wrapper whose forward is ``model(x)``, so every extra argument
of ``model.forward`` takes its default, ``*args``/``**kwargs`` are empty, and
the model's own hooks run as they would in a call. Values that do not depend on
the input (buffers, literals, sizes) are evaluated on the real tensors, so a
product by such a constant knows its values: a constant factor becomes a
``scale`` op (see :mod:`topo_pai.graph.ir`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import operator
from typing import Any

import numpy as np

from topo_pai.errors import InputShapeError, NoPrunableLayerError, TraceError, UnsupportedOpError
from topo_pai.graph.ir import Layer, Op, Program, windows_csr
from topo_pai.graph.modules import (
    check_untied,
    param_name,
    prunable_modules,
    weight_shape,
    weight_tensors,
)
from topo_pai.graph.mutation import check_hooks, check_in_place, in_place_tracer
from topo_pai.graph.windows import adaptive_windows, conv_out_size, pool_windows


class _Tensor:
    """A traced tensor: the id of its value in the program."""

    __slots__ = ("vid",)

    def __init__(self, vid: int):
        self.vid = vid


class _Weight:
    """A prunable weight read outside its layer (``self.fc.weight``): its shape may
    be read, but any arithmetic with it would ignore its mask."""

    __slots__ = ("name", "tensor")

    def __init__(self, name: str, tensor):
        self.name = name
        self.tensor = tensor


#: Attribute under which the wrapper that is traced holds the model.
_ROOT = "model"
#: Reads of a prunable weight that do not depend on its values.
_METADATA = frozenset({"shape", "ndim", "dtype", "device", "size", "dim", "numel"})


def _torch():
    import torch

    return torch


def _op_tables():
    """Map torch callables and module types onto the structural op they are."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    unary_modules = (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
        nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
        nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.BatchNorm1d, nn.BatchNorm2d,
        nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
        nn.InstanceNorm2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
        nn.AlphaDropout, nn.Identity,
    )
    unary_functions = {
        F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu,
        F.selu, F.celu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, torch.sigmoid,
        F.tanh, torch.tanh, F.softplus, F.softsign, F.logsigmoid, F.prelu, F.dropout,
        F.dropout1d, F.dropout2d, F.alpha_dropout, F.batch_norm, F.layer_norm, F.group_norm,
        F.instance_norm, torch.clone, torch.nn.functional.relu6,
    }
    unary_methods = {
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "float",
        "double", "half", "to", "detach", "type_as", "requires_grad_",
    }
    pool_functions = {
        F.max_pool1d: ("max", 1), F.max_pool2d: ("max", 2), torch.max_pool1d: ("max", 1),
        torch.max_pool2d: ("max", 2), F.avg_pool1d: ("avg", 1), F.avg_pool2d: ("avg", 2),
        torch.avg_pool1d: ("avg", 1), F.adaptive_avg_pool1d: ("adaptive", 1),
        F.adaptive_avg_pool2d: ("adaptive", 2), F.adaptive_max_pool1d: ("adaptive", 1),
        F.adaptive_max_pool2d: ("adaptive", 2), torch.adaptive_avg_pool1d: ("adaptive", 1),
    }
    return unary_modules, unary_functions, unary_methods, pool_functions


def _whole_units(old, new) -> bool:
    """Whether reshaping per-sample shape ``old`` to ``new`` splits each unit (dim 0) into
    whole units or merges whole units into one."""
    a, b = int(np.prod(old[1:])), int(np.prod(new[1:]))
    return a % b == 0 or b % a == 0


def _pair(v, n):
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return tuple(v) * n
        return tuple(v)
    return (v,) * n


class _Tracer:
    def __init__(self, model, root, input_shape, prunable: dict[str, Any]):
        self.model = model
        self.root = root  # the traced wrapper: holds the model and fx's tensor constants
        self.input_shape = input_shape
        self.prunable = prunable  # module name -> module, for Linear/Conv
        self.weights = {id(w): param_name(name) for name, m in prunable.items()
                        for w in weight_tensors(m)}
        self.values: list[tuple[int, ...]] = []
        self.ops: list[Op] = []
        self.layers: list[Layer] = []
        self.outputs: list[int] = []
        self.used_modules: set[str] = set()
        self.tables = _op_tables()
        # value made by a reshape -> the value that reshape chain started from (see reshape)
        self.reshaped_from: dict[int, int] = {}

    # -- helpers ----------------------------------------------------------------
    def new_value(self, shape) -> int:
        self.values.append(tuple(int(s) for s in shape))
        return len(self.values) - 1

    def shape(self, t: _Tensor) -> tuple[int, ...]:
        return self.values[t.vid]

    def emit(self, kind, node, inputs, shape, **attrs) -> _Tensor:
        out = self.new_value(shape)
        self.ops.append(Op(kind, node.name, tuple(t.vid for t in inputs), out, attrs))
        return _Tensor(out)

    def unsupported(self, node, what, hint=""):
        raise UnsupportedOpError(
            f"fx node '{node.name}' ({node.op} {what}) has no known topology; topo_pai does not "
            f"treat unknown ops as identity. {hint}".rstrip()
        )

    def shape_error(self, node, msg):
        raise InputShapeError(
            f"input_shape={tuple(self.input_shape)} does not fit the model at fx node "
            f"'{node.name}': {msg}"
        )

    # -- dispatch ---------------------------------------------------------------
    def run(self, graph) -> Program:
        env: dict[Any, Any] = {}
        for node in graph.nodes:
            if node.op == "placeholder":  # the wrapper's one argument: the input
                vid = self.new_value(self.input_shape)
                self.ops.append(Op("input", node.name, (), vid))
                env[node] = _Tensor(vid)
                continue
            if node.op == "output":
                self.collect_outputs(node, node.args[0], env)
                continue
            args = _map(node.args, env)
            kwargs = _map(node.kwargs, env)
            if node.op == "get_attr":
                env[node] = self.get_attr(node)
            elif node.op == "call_module":
                env[node] = self.call_module(node, args, kwargs)
            elif node.op == "call_function":
                env[node] = self.call_function(node, args, kwargs)
            elif node.op == "call_method":
                env[node] = self.call_method(node, args, kwargs)
            else:  # pragma: no cover - fx has no other opcodes
                self.unsupported(node, node.op)
        if not self.layers:
            raise NoPrunableLayerError(
                "the model has no Linear or Conv1d/Conv2d layer between its input and output; "
                "there is nothing to count paths through"
            )
        unused = {param_name(name): tuple(weight_shape(m)) for name, m in self.prunable.items()
                  if name not in self.used_modules}
        return Program(self.values, self.ops, self.layers, self.outputs, unused)

    def get_attr(self, node):
        value = _fetch_attr(self.root, node.target)
        torch = _torch()
        if isinstance(value, torch.Tensor):
            path = node.target.removeprefix(_ROOT + ".")
            owner, _, attr = path.partition(".parametrizations.")
            if not attr:
                owner, _, attr = path.rpartition(".")
            if owner in self.prunable and attr.split(".")[0] in ("weight", "weight_orig"):
                return _Weight(param_name(owner), value)
            if id(value) in self.weights:
                return _Weight(self.weights[id(value)], value)
            # A private copy: evaluating the forward's constant part (even an in-place
            # op on a buffer) must not change the caller's model.
            return value.detach().clone()
        return value

    def evaluate(self, node, fn, args, kwargs):
        """Run an op whose arguments do not depend on the input, on the real values."""
        weights = _find(args, kwargs, _Weight)
        if weights:
            attr = args[1] if fn is getattr and len(args) > 1 else getattr(fn, "_topo_pai_name",
                                                                           None)
            if attr not in _METADATA:
                raise UnsupportedOpError(
                    f"fx node '{node.name}' ({node.op} {_callable_name(fn)}) computes with the "
                    f"prunable weight '{weights[0].name}' outside its layer; its mask would not "
                    "apply there (tied or reused weights are not supported). Use the weight "
                    "only through its Linear/Conv module.")
            args, kwargs = _unwrap_weights(args), _unwrap_weights(kwargs)
        torch = _torch()
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise TraceError(f"could not evaluate fx node '{node.name}' ({node.target}) on "
                             f"constant arguments: {type(exc).__name__}: {exc}") from exc

    def collect_outputs(self, node, arg, env):
        if isinstance(arg, (tuple, list)):
            for a in arg:
                self.collect_outputs(node, a, env)
        elif isinstance(arg, dict):
            for a in arg.values():
                self.collect_outputs(node, a, env)
        else:
            v = env.get(arg) if _is_fx_node(arg) else None
            if isinstance(v, _Tensor):
                self.outputs.append(v.vid)

    # -- modules ------------------------------------------------------------------
    def call_module(self, node, args, kwargs):
        torch = _torch()
        nn = torch.nn
        mod = self.model.get_submodule(node.target)
        check_hooks(node, mod)
        unary_modules = self.tables[0]
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) and type(mod).__name__ not in (
                "LazyLinear", "LazyConv1d", "LazyConv2d"):
            return self.layer(node, mod, x)
        if not _find(args, kwargs, _Tensor):
            # A module applied to constants (e.g. an activation of a buffer): run a private
            # copy, so that state it updates (running statistics) stays out of the model.
            return self.evaluate(node, copy.deepcopy(mod), args, kwargs)
        if isinstance(mod, unary_modules):
            return self.unary(node, x)
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            if mod.return_indices:
                self.unsupported(node, f"{type(mod).__name__}(return_indices=True)")
            dims = 1 if isinstance(mod, nn.MaxPool1d) else 2
            return self.pool(node, x, dims, mod.kernel_size, mod.stride, mod.padding,
                             mod.dilation, mod.ceil_mode)
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
            dims = 1 if isinstance(mod, nn.AvgPool1d) else 2
            return self.pool(node, x, dims, mod.kernel_size, mod.stride, mod.padding, 1,
                             mod.ceil_mode)
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                            nn.AdaptiveMaxPool2d)):
            if getattr(mod, "return_indices", False):
                self.unsupported(node, f"{type(mod).__name__}(return_indices=True)")
            dims = 1 if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else 2
            return self.adaptive_pool(node, x, dims, mod.output_size)
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, x, mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.Unflatten):
            shape = self.batched(x)
            dim = mod.dim % len(shape)
            new = shape[:dim] + tuple(mod.unflattened_size) + shape[dim + 1:]
            return self.reshape(node, x, new)
        self.unsupported(
            node, f"module '{node.target}' of type {type(mod).__name__}",
            "Supported: Linear, Conv1d/2d, activations, norms, dropout, pools, Flatten.")

    def layer(self, node, mod, x):
        torch = _torch()
        nn = torch.nn
        where = f"'{node.target}'" if node.target else "(the model itself)"
        if not isinstance(x, _Tensor):
            self.unsupported(node, f"module {where} applied to a value that does not depend on "
                                   "the input")
        if node.target in self.used_modules:
            raise UnsupportedOpError(
                f"module {where} is called more than once (fx node '{node.name}'); shared "
                "weights would make one mask stand for several layers. Use separate modules."
            )
        self.used_modules.add(node.target)
        shape = self.shape(x)
        kind = type(mod).__name__ if not isinstance(mod, nn.Linear) else "Linear"
        wshape = tuple(weight_shape(mod))
        group = len(self.layers) + 1
        if isinstance(mod, nn.Linear):
            if len(shape) != 1:
                self.shape_error(node, f"Linear {where} receives per-sample shape {shape}; "
                                       "topo_pai supports Linear on (batch, features) tensors only")
            if shape[0] != mod.in_features:
                self.shape_error(node, f"Linear {where} expects {mod.in_features} input "
                                       f"features but receives {shape[0]}")
            layer = Layer(group, node.target, param_name(node.target), "Linear", node.name, wshape)
            self.layers.append(layer)
            return self.emit("layer", node, [x], (mod.out_features,), layer=group - 1)
        is1d = isinstance(mod, nn.Conv1d)
        kind = "Conv1d" if is1d else "Conv2d"
        if mod.padding_mode != "zeros":
            self.unsupported(node, f"{kind} {where} with padding_mode="
                                   f"'{mod.padding_mode}'",
                             "Only zero padding adds no edges; use padding_mode='zeros'.")
        want = 2 if is1d else 3
        if len(shape) != want:
            self.shape_error(node, f"{kind} {where} needs a per-sample tensor of "
                                   f"{want} dims, got shape {shape}")
        if shape[0] != mod.in_channels:
            self.shape_error(node, f"{kind} {where} expects {mod.in_channels} input "
                                   f"channels but receives {shape[0]} (per-sample shape {shape})")
        spatial = shape[1:]
        ks = tuple(mod.kernel_size)
        stride = tuple(mod.stride)
        dil = tuple(mod.dilation)
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                pl = (0,) * len(ks)
                ptot = pl
            else:  # 'same': torch pads d*(k-1) in total, the extra unit on the right
                ptot = tuple(d * (k - 1) for d, k in zip(dil, ks))
                pl = tuple(p // 2 for p in ptot)
        else:
            pl = tuple(mod.padding)
            ptot = tuple(2 * p for p in pl)
        out_sp = tuple(conv_out_size(n, k, s, pt, d) for n, k, s, pt, d in
                       zip(spatial, ks, stride, ptot, dil))
        if any(o <= 0 for o in out_sp):
            self.shape_error(node, f"{kind} {where} input of spatial size {spatial} is "
                                   f"smaller than its kernel {ks} (dilation {dil})")
        if is1d:
            stride, pl, dil = (1,) + stride, (0,) + pl, (1,) + dil
        layer = Layer(group, node.target, param_name(node.target), kind, node.name, wshape,
                      groups=mod.groups, stride=tuple(stride), pad=tuple(pl), dilation=tuple(dil))
        self.layers.append(layer)
        return self.emit("layer", node, [x], (mod.out_channels,) + out_sp, layer=group - 1)

    # -- structural ops -------------------------------------------------------------
    def unary(self, node, x):
        if isinstance(x, _Tensor):
            return x
        self.unsupported(node, "elementwise op whose first argument does not depend on the "
                               "input")

    def batched(self, x) -> tuple[int, ...]:
        return (1,) + self.shape(x)

    def pool(self, node, x, dims, kernel, stride, padding, dilation, ceil_mode):
        shape = self.shape(x)
        if len(shape) != dims + 1:
            self.shape_error(node, f"a {dims}-d pool needs a per-sample tensor of {dims + 1} "
                                   f"dims, got shape {shape}")
        ks = _pair(kernel, dims)
        ss = _pair(stride if stride not in (None, (), []) else kernel, dims)
        ps = _pair(padding, dims)
        ds = _pair(dilation, dims)
        windows, out_sp = [], []
        for n, k, s, p, d in zip(shape[1:], ks, ss, ps, ds):
            o = conv_out_size(n, k, s, 2 * p, d, ceil_mode, p_left=p)
            if o <= 0:
                self.shape_error(node, f"pool window {ks} does not fit spatial size {shape[1:]}")
            out_sp.append(o)
            windows.append(pool_windows(n, o, k, s, p, d))
        return self.emit_pool(node, x, shape, out_sp, windows)

    def adaptive_pool(self, node, x, dims, output_size):
        shape = self.shape(x)
        if len(shape) != dims + 1:
            self.shape_error(node, f"a {dims}-d adaptive pool needs a per-sample tensor of "
                                   f"{dims + 1} dims, got shape {shape}")
        outs = _pair(output_size, dims)
        windows, out_sp = [], []
        for n, o in zip(shape[1:], outs):
            o = n if o is None else int(o)
            out_sp.append(o)
            windows.append(adaptive_windows(n, o))
        return self.emit_pool(node, x, shape, out_sp, windows)

    def emit_pool(self, node, x, shape, out_sp, windows):
        if len(windows) == 1:  # 1-d pools act on the width of a (C, 1, L) view
            windows = [windows_csr([np.zeros(1, np.int64)])] + windows
        return self.emit("pool", node, [x], (shape[0],) + tuple(out_sp), windows=windows)

    def reduce(self, node, x, dim, keepdim):
        shape = self.batched(x)
        if dim is None:
            self.unsupported(node, "reduction over all dims",
                             "Reduce over spatial dims only, e.g. x.mean((2, 3)).")
        dims = sorted({d % len(shape) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))})
        if 0 in dims or 1 in dims:
            self.unsupported(node, f"reduction over dims {tuple(dims)} of a tensor of shape "
                                   f"{shape}", "Only reductions over spatial dims (>= 2) are "
                                               "supported; dims 0 and 1 are batch and channel.")
        axes = tuple(d - 1 for d in dims)
        per = self.shape(x)
        out = tuple(1 if i in axes else s for i, s in enumerate(per)) if keepdim else \
            tuple(s for i, s in enumerate(per) if i not in axes)
        return self.emit("reduce", node, [x], out, axes=axes)

    def flatten(self, node, x, start_dim=0, end_dim=-1):
        shape = self.batched(x)
        s, e = start_dim % len(shape), end_dim % len(shape)
        if s > e:
            raise TraceError(f"fx node '{node.name}' flattens from dim {start_dim} to dim "
                             f"{end_dim} of a tensor of shape {shape}: start_dim comes after "
                             "end_dim, which torch refuses too")
        if s == 0:
            self.unsupported(node, "flatten of the batch dimension",
                             "Flatten from dim 1, e.g. torch.flatten(x, 1).")
        new = shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
        return self.reshape(node, x, new)

    def reshape(self, node, x, new_batched):
        """A reshape that keeps dim 0 as the batch and splits or merges whole units.

        A chain of reshapes is one reshape of the value it started from, where that one
        splits or merges whole units: at channel resolution each reshape maps units to
        units (a split copies a channel's count to each of its features, a merge sums), so
        ``x.flatten(1).view(x.shape)`` or ``h.unsqueeze(1).squeeze(1)`` taken step by step
        would join units that the tensor keeps apart and multiply the counts."""
        old = self.batched(x)
        total = int(np.prod(old))
        new = [int(v) for v in new_batched]
        if new.count(-1) > 1:
            self.unsupported(node, f"reshape to {tuple(new)}")
        if -1 in new:
            known = int(np.prod([v for v in new if v != -1]))
            new[new.index(-1)] = total // known if known else 0
        if int(np.prod(new)) != total:
            self.shape_error(node, f"cannot reshape per-sample shape {old[1:]} to {tuple(new)}")
        if not new or new[0] != 1:
            self.unsupported(node, f"reshape from {old} to {tuple(new)} mixes the batch "
                                   "dimension", "Keep dim 0 as the batch, e.g. x.view(x.size(0), -1).")
        new_ps = tuple(new[1:])
        if new_ps == self.shape(x):
            return x
        if len(new_ps) == 0:
            self.unsupported(node, "reshape to a per-sample scalar")
        source = _Tensor(self.reshaped_from.get(x.vid, x.vid))
        if new_ps == self.shape(source):
            return source
        if not _whole_units(self.shape(source), new_ps):
            source = x
        if not _whole_units(self.shape(source), new_ps):
            self.unsupported(node, f"reshape from {old} to {tuple(new)}: its channels (dim 1) "
                                   "neither split nor merge whole channels",
                             "Reshape into features, e.g. x.flatten(1).")
        out = self.emit("reshape", node, [source], new_ps)
        self.reshaped_from[out.vid] = source.vid
        return out

    def add(self, node, a, b, alpha=1):
        """``a + alpha * b`` or ``a - alpha * b``: a merge of two input-dependent tensors
        (counts add, as the sign is not a topology), or an offset by a constant, which
        keeps the units and adds no edges."""
        ta, tb = isinstance(a, _Tensor), isinstance(b, _Tensor)
        if ta and tb:
            if self.shape(a) != self.shape(b):
                self.unsupported(node, f"add of shapes {self.shape(a)} and {self.shape(b)}",
                                 "Broadcasting adds between graph tensors are not supported.")
            if alpha != 1:  # torch.add(a, b, alpha=...) scales b before the merge
                b = self.scale(node, b, self.factor(node, b, alpha))
            return self.emit("add", node, [a, b], self.shape(a))
        t, c = (a, b) if ta else (b, a)
        self.constant_operand(node, t, c, "added to")
        if alpha != 1 and t is b:  # c + alpha * t scales the tensor, as for two tensors
            return self.scale(node, t, self.factor(node, t, alpha))
        return t

    def constant_operand(self, node, t, c, verb: str) -> np.ndarray | None:
        """Check that the constant ``c`` combines elementwise with the input-dependent
        ``t`` without changing its shape; return its values (``None`` for ``None``)."""
        torch = _torch()
        if isinstance(c, _Weight):
            raise UnsupportedOpError(
                f"fx node '{node.name}' ({node.op} {_callable_name(node.target)}) computes with "
                f"the prunable weight '{c.name}' outside its layer; its mask would not apply there "
                "(tied or reused weights are not supported). Use the weight only through its "
                "Linear/Conv module.")
        if c is None:
            return None
        if isinstance(c, numbers.Real):
            return np.asarray(float(c))
        if isinstance(c, torch.Tensor):
            what = f"a constant tensor of shape {tuple(c.shape)}"
            if c.layout != torch.strided or c.is_complex():
                self.unsupported(node, f"{node.target} {verb} {what} that is sparse or complex")
            try:
                out = torch.broadcast_shapes(tuple(c.shape), self.batched(t))
            except RuntimeError:
                out = None
            if out != self.batched(t):
                self.unsupported(
                    node, f"tensor of per-sample shape {self.shape(t)} {verb} {what}",
                    "The constant would broadcast the tensor to a new shape, which mixes its "
                    "units (or samples); a constant must broadcast per unit, e.g. shape (C, 1, 1) "
                    "for a (C, H, W) tensor.")
            if c.device.type == "meta":
                self.unsupported(node, f"{node.target} {verb} {what} on the meta device",
                                 "Its values decide which units it removes; give it real values.")
            arr = c.detach().to("cpu", torch.float64).numpy()
            # Drop the batch dimension (size 1 after the check above) and left-pad to the
            # per-sample rank, so the values broadcast against the per-sample shape.
            rank = len(self.shape(t))
            arr = arr.reshape((1,) * (rank + 1 - arr.ndim) + arr.shape)[0]
            return np.ascontiguousarray(arr)
        self.unsupported(node, f"{node.target} {verb} a {type(c).__name__}")

    def factor(self, node, t, c) -> np.ndarray:
        """Values of a constant factor of ``t`` (finite), broadcastable to its shape."""
        f = self.constant_operand(node, t, c, "multiplied by")
        if f is None:
            self.unsupported(node, f"{node.target} with None")
        if not np.all(np.isfinite(f)):
            self.unsupported(node, f"{node.target} by a constant holding inf or NaN",
                             "Units scaled by a non-finite value have no path semantics.")
        return f

    def scale(self, node, t, f: np.ndarray):
        """``t * f`` for constant factors ``f``: a unit stays where its factor is non-zero
        and is removed where it is zero; weighted flows scale by ``|f|``."""
        if np.all(np.abs(f) == 1.0):
            return t  # +-1: the identity for counts and flows alike
        return self.emit("scale", node, [t], self.shape(t), factor=f)

    def multiply(self, node, a, b):
        if isinstance(a, _Tensor) and isinstance(b, _Tensor):
            self.unsupported(node, f"{_callable_name(node.target)} of two tensors that both "
                                   "depend on the input",
                             "A product of input-dependent tensors (gating, attention) has no "
                             "path semantics here.")
        t, c = (a, b) if isinstance(a, _Tensor) else (b, a)
        return self.scale(node, t, self.factor(node, t, c))

    def divide(self, node, a, b, rounding_mode=None):
        if isinstance(b, _Tensor):
            self.unsupported(node, f"{_callable_name(node.target)} by a tensor that depends on "
                                   "the input", "Only division by constants keeps units.")
        if rounding_mode is not None:
            self.unsupported(node, f"division with rounding_mode={rounding_mode!r}")
        f = self.factor(node, a, b)
        if np.any(f == 0):
            self.unsupported(node, f"{_callable_name(node.target)} by a constant that holds zero",
                             "Dividing by zero makes inf or NaN units, which have no path "
                             "semantics; divide by non-zero constants only.")
        return self.scale(node, a, 1.0 / f)

    def cat(self, node, tensors, dim):
        if not all(isinstance(t, _Tensor) for t in tensors):
            self.unsupported(node, "cat with a tensor that is not on the graph")
        shapes = [self.batched(t) for t in tensors]
        d = dim % len(shapes[0])
        if d == 0:
            self.unsupported(node, "cat along the batch dimension")
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or any(x != y for i, (x, y) in
                                               enumerate(zip(s, shapes[0])) if i != d):
                self.shape_error(node, f"cat of mismatched shapes {shapes}")
        out = list(shapes[0][1:])
        out[d - 1] = sum(s[d] for s in shapes)
        if len(tensors) == 1:
            return tensors[0]
        return self.emit("cat", node, tensors, tuple(out), axis=d - 1)

    # -- functions and methods --------------------------------------------------------
    def call_function(self, node, args, kwargs):
        torch = _torch()
        fn = node.target
        _, unary_functions, _, pool_functions = self.tables
        if not _find(args, kwargs, _Tensor):
            return self.evaluate(node, fn, args, kwargs)
        if fn in unary_functions or fn in (operator.neg, operator.pos, torch.neg):
            # -x is a factor of -1: the identity for counts and for |.|-weighted flows
            return self.unary(node, args[0] if args else kwargs.get("input"))
        if fn in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
                  torch.subtract):
            a = args[0] if args else kwargs["input"]
            b = args[1] if len(args) > 1 else kwargs.get("other")
            return self.add(node, a, b, kwargs.get("alpha", 1))
        if fn in (operator.mul, operator.imul, torch.mul, torch.multiply):
            a = args[0] if args else kwargs["input"]
            return self.multiply(node, a, args[1] if len(args) > 1 else kwargs.get("other"))
        if fn in (operator.truediv, operator.itruediv, torch.div, torch.divide,
                  torch.true_divide):
            a = args[0] if args else kwargs["input"]
            return self.divide(node, a, args[1] if len(args) > 1 else kwargs.get("other"),
                               kwargs.get("rounding_mode"))
        if fn in pool_functions:
            return self.pool_function(node, fn, pool_functions[fn], args, kwargs)
        if fn is torch.flatten:
            x = args[0]
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end)
        if fn is torch.reshape:
            return self.reshape(node, args[0], args[1])
        if fn in (torch.cat, torch.concat, torch.concatenate):
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            return self.cat(node, list(tensors), dim)
        if fn in (torch.mean, torch.sum, torch.amax):
            return self.reduce(node, args[0], args[1] if len(args) > 1 else kwargs.get("dim"),
                               args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        if fn is getattr:
            return self.attribute(node, args[0], args[1])
        if fn is operator.getitem and isinstance(args[0], _Tensor):
            self.unsupported(node, "indexing/slicing a tensor")
        if fn in (torch.squeeze, torch.unsqueeze):
            return self.call_method(node, (args[0], *args[1:]), kwargs, name=fn.__name__)
        self.unsupported(node, f"function {getattr(fn, '__module__', '')}."
                               f"{getattr(fn, '__name__', repr(fn))}")

    def pool_function(self, node, fn, spec, args, kwargs):
        style, dims = spec
        x = args[0]
        names = {
            "max": ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
            "avg": ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                    "divisor_override"],
            "adaptive": ["output_size", "return_indices"],
        }[style]
        params = dict(zip(names, args[1:]))
        params.update({k: v for k, v in kwargs.items() if k != "input"})
        if params.get("return_indices"):
            self.unsupported(node, "pool with return_indices=True")
        if style == "adaptive":
            return self.adaptive_pool(node, x, dims, params["output_size"])
        return self.pool(node, x, dims, params["kernel_size"], params.get("stride"),
                         params.get("padding", 0), params.get("dilation", 1),
                         bool(params.get("ceil_mode", False)))

    def attribute(self, node, x, name):
        if isinstance(x, _Tensor):
            if name == "shape":
                return _torch().Size(self.batched(x))
            if name == "ndim":
                return len(self.batched(x))
            self.unsupported(node, f"tensor attribute '{name}'")
        return self.evaluate(node, getattr, (x, name), {})

    def call_method(self, node, args, kwargs, name=None):
        name = name or node.target
        x = args[0]
        rest = args[1:]
        if not isinstance(x, _Tensor):
            if not _find(args, kwargs, _Tensor):
                return self.evaluate(node, _method(name), args, kwargs)
            other = rest[0] if rest else kwargs.get("other")
            if name in ("mul", "multiply") and isinstance(other, _Tensor):
                return self.multiply(node, other, x)  # c.mul(t) = t * c
            if name == "add" and isinstance(other, _Tensor):
                return self.add(node, x, other, kwargs.get("alpha", 1))  # c + alpha * t
            self.unsupported(node, f"method '{name}' of a value that does not depend on the "
                                   "input, with an argument that does")
        unary_methods = self.tables[2]
        if name in unary_methods:
            return x
        if name == "size":
            shape = _torch().Size(self.batched(x))
            d = rest[0] if rest else kwargs.get("dim")
            return shape if d is None else shape[d]
        if name == "dim":
            return len(self.batched(x))
        if name in ("view", "reshape"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            if len(rest) == 1 and not isinstance(rest[0], (tuple, list, int)):
                self.unsupported(node, f"{name} with a dtype or tensor argument")
            return self.reshape(node, x, tuple(shape))
        if name == "view_as" or name == "reshape_as":
            other = rest[0]
            return self.reshape(node, x, self.batched(other) if isinstance(other, _Tensor)
                                else tuple(other.shape))
        if name == "flatten":
            start = rest[0] if rest else kwargs.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end)
        if name in ("squeeze", "unsqueeze"):
            shape = list(self.batched(x))
            dim = rest[0] if rest else kwargs.get("dim")
            if name == "unsqueeze":
                d = dim % (len(shape) + 1)
                shape.insert(d, 1)
            else:
                dims = range(len(shape)) if dim is None else (
                    dim if isinstance(dim, (tuple, list)) else (dim,))
                dims = {d % len(shape) for d in dims}
                shape = [s for i, s in enumerate(shape) if not (i in dims and s == 1 and i > 0)]
            return self.reshape(node, x, tuple(shape))
        if name in ("mean", "sum", "amax"):
            dim = rest[0] if rest else kwargs.get("dim")
            keep = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
            return self.reduce(node, x, dim, keep)
        other = rest[0] if rest else kwargs.get("other")
        if name in ("add", "add_", "sub", "sub_", "subtract"):
            return self.add(node, x, other, kwargs.get("alpha", 1))
        if name in ("neg", "neg_", "negative"):
            return x
        if name in ("mul", "mul_", "multiply"):
            return self.multiply(node, x, other)
        if name in ("div", "div_", "divide", "true_divide"):
            return self.divide(node, x, other, kwargs.get("rounding_mode"))
        self.unsupported(node, f"method '{name}'")


def _method(name: str):
    """``obj.name(*args, **kwargs)`` as a function (for evaluating constants)."""
    def call(obj, *args, **kwargs):
        return getattr(obj, name)(*args, **kwargs)

    call._topo_pai_name = name
    call.__name__ = name
    return call


def _callable_name(fn) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


def _is_fx_node(x) -> bool:
    torch = _torch()
    return isinstance(x, torch.fx.Node)


def _map(obj, env):
    torch = _torch()
    return torch.fx.node.map_arg(obj, lambda n: env[n])


def _find(args, kwargs, cls) -> list:
    """Every ``cls`` instance in the (nested) arguments."""
    found = []

    def visit(v):
        if isinstance(v, cls):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    visit(args)
    visit(kwargs)
    return found


def _unwrap_weights(obj):
    if isinstance(obj, _Weight):
        return obj.tensor
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap_weights(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _unwrap_weights(v) for k, v in obj.items()}
    return obj


def _fetch_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@functools.cache
def _root_class():
    """The wrapper traced in place of the model: its forward is ``model(x)`` (a class
    made on first use, as torch is imported lazily)."""
    torch = _torch()

    class Root(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            setattr(self, _ROOT, model)

        def forward(self, x):
            return getattr(self, _ROOT)(x)

    return Root


def _check_signature(model) -> None:
    """Refuse a forward that ``model(x)`` cannot call: an argument besides the input
    that has no default, named in the error."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C forward: let fx decide
        return
    try:
        sig.bind(None)
    except TypeError as exc:
        params = list(sig.parameters.values())
        required = [p.name for p in params[1:] if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        what = (f"argument(s) {', '.join(map(repr, required))} without a default besides the "
                "input" if required else f"a signature that model(x) cannot call ({exc})")
        raise TraceError(
            f"{type(model).__name__}.forward takes {what}; topo_pai counts what model(x) "
            "computes, with every other argument at its default. Give them defaults, or wrap "
            "the model so that forward takes one tensor.") from None


def _strip_root(graph) -> None:
    """Name the nodes as if the model itself had been traced: targets and names lose
    the wrapper's prefix (the model itself is the target ``""``)."""
    prefix = _ROOT + "."
    for node in graph.nodes:
        if node.op == "call_module":
            node.target = "" if node.target == _ROOT else node.target.removeprefix(prefix)
        if node.op in ("call_module", "get_attr") and node.name.startswith(_ROOT + "_"):
            rest = node.name[len(_ROOT) + 1:]
            node.name = f"_{rest}" if rest[:1].isdigit() else rest  # as fx names "0": "_0"


def validate_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` (one sample's shape, without the batch dimension) as a tuple of ints:
    the one check of its form, for every entry point that takes one (tracing, pruning
    with any method, data). Whether it fits a model is found when the model is traced.

    >>> validate_input_shape([1, 28, 28])
    (1, 28, 28)
    >>> validate_input_shape((0, 28, 28))
    Traceback (most recent call last):
    ...
    topo_pai.errors.InputShapeError: input_shape must be a non-empty tuple of positive ints without the batch dimension, e.g. (3, 32, 32); got (0, 28, 28)
    """
    if input_shape is None:
        raise InputShapeError("input_shape is required: the shape of one input sample without "
                              "the batch dimension, e.g. input_shape=(3, 32, 32)")
    try:  # operator.index refuses 4.5 instead of truncating it to 4
        shape = tuple(operator.index(s) for s in input_shape)
        if any(isinstance(s, (bool, np.bool_)) for s in input_shape):
            raise TypeError("a bool is not a dimension")
    except TypeError as exc:
        raise InputShapeError(
            f"input_shape must be a tuple of ints without the batch dimension, e.g. (3, 32, 32); "
            f"got {input_shape!r}") from exc
    if not shape or any(s <= 0 for s in shape):
        raise InputShapeError(
            f"input_shape must be a non-empty tuple of positive ints without the batch dimension, "
            f"e.g. (3, 32, 32); got {input_shape!r}")
    return shape


def trace(model, input_shape) -> Program:
    """Trace ``model`` with torch.fx and infer every value's shape from ``input_shape``."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = validate_input_shape(input_shape)
    prunable = prunable_modules(model)
    check_untied(prunable)
    _check_signature(model)
    # The model is traced as what model(x) calls: defaults of extra arguments, empty
    # *args/**kwargs, its own hooks. fx stores the tensor constants it meets on the
    # wrapper, never on the caller's model.
    root = _root_class()(model)
    try:
        # Tracer.trace gives the Graph without compiling a GraphModule, which we never run.
        graph = in_place_tracer()().trace(root)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; all become TraceError
        hint = ("Data-dependent control flow (if/for on tensor values) cannot be traced; make "
                "it static or move it out of forward." if isinstance(exc, torch.fx.proxy.TraceError)
                else "torch.fx traces forward with symbolic tensors; see its error above.")
        raise TraceError(f"torch.fx could not trace {type(model).__name__}: "
                         f"{type(exc).__name__}: {exc}. {hint}") from exc
    _strip_root(graph)
    check_in_place(graph, model)
    return _Tracer(model, root, shape, prunable).run(graph)


__all__ = ["trace", "validate_input_shape"]
