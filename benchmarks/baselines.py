"""Baselines timed against topo_pai in the same run.

* :func:`float64_probe` (``bench_core.py``): the float64 forward/backward "probe";
* :func:`float64_synflow` (``bench_pruners.py``): an independent float64 torch SynFlow
  loop, as published (Tanaka et al. 2020), with a global top-k every round.

The float64 forward/backward "probe".

This is how the official NPB code (``Utils/metrics.py: measure_node_path``)
and SynFlow-style scripts obtain path counts, effective parameters and
effective nodes: copy the network, make it linear with all-ones weights on the
unpruned positions, push an all-ones input through it and differentiate the
sum of the outputs.

:func:`float64_probe` does this generically with ``torch.fx`` (no model names
are hard-coded):

1. ``copy.deepcopy`` the model and convert it to float64 (``.double()``);
2. replace every Linear/Conv weight by its 0/1 mask (a float64 leaf tensor that
   requires grad) and zero the biases;
3. trace it and rewrite the graph: BatchNorm/other norms, activations, dropout
   and identity become the identity; every pooling (max, avg, adaptive max,
   adaptive avg, functional or module) becomes a *sum* over its window; a mean
   over dimensions becomes a sum;
4. run one all-ones input (batch 1); ``y.sum()`` is then the neuron-resolution
   path count (exact as long as float64 represents it, i.e. ``< 2**53`` for
   bit-exactness and ``< ~1.8e308`` before it overflows to ``inf``);
5. ``y.sum().backward()``; ``dy.sum()/dW[e]`` is a sum of non-negative products
   ``paths-into-source * paths-out-of-destination``, so it is non-zero exactly
   when the unpruned weight ``e`` lies on some input-to-output path (pruned
   weights are excluded explicitly, since their gradient can be non-zero);
6. effective nodes as NPB counts them: for every prunable layer, the input
   channels (or input features of a Linear) that carry at least one effective
   weight, plus the output units of the network with a non-zero count.  NPB
   skips layers whose name contains ``shortcut`` so that a block input is not
   counted twice; here a tensor consumed by several layers is counted once as
   the union over its consumers (same numbers for the NPB models, no reliance
   on names).  Note that this is a *channel* count derived from the
   *neuron-level* gradient, and that in a residual network the sum of two
   branches is one node set, whereas topo_pai counts every Linear/Conv output
   as its own node group; the two effective-node numbers are therefore only
   comparable for plain feed-forward nets such as VGG.

Everything above, including the deep copy and the dtype conversion, is what a
user pays and is part of the timed call.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["ProbeResult", "float64_probe", "float64_synflow", "prunable_weight_names"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _classes(*names):
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


# Modules that keep units one-to-one: they become the identity.
_IDENTITY_MODULES = _classes(
    "Identity", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm",
    "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
    "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
    "Softsign", "Tanhshrink", "LogSigmoid",
)
_KEEP_MODULES = _classes("Flatten", "Unflatten")
_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
                 nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_ADAPTIVE_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
                     nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}

_IDENTITY_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.sigmoid, torch.tanh,
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm,
}
_KEEP_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.cat, torch.concat,
                   torch.flatten, torch.reshape, getattr, operator.getitem}
_IDENTITY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous",
                     "clone"}
_KEEP_METHODS = {"flatten", "view", "reshape", "size", "add", "add_", "unsqueeze", "squeeze",
                 "view_as", "reshape_as", "dim"}
_POOL_FUNCTIONS = {F.max_pool1d: ("max", 1), F.max_pool2d: ("max", 2), F.max_pool3d: ("max", 3),
                   F.avg_pool1d: ("avg", 1), F.avg_pool2d: ("avg", 2), F.avg_pool3d: ("avg", 3)}
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
                       F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
                       F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3}
_POOL_ARGS = {  # positional parameter order of the functional pools
    "max": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
            "return_indices"),
    "avg": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
            "divisor_override"),
}


def prunable_weight_names(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv weights, i.e. the parameters that get masks."""
    return [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
            if isinstance(m, _PRUNABLE)]


# ---------------------------------------------------------------------------
# Sum pools (inserted into the rewritten graph)
# ---------------------------------------------------------------------------

def _tup(v, nd: int) -> tuple:
    if isinstance(v, (tuple, list)):
        return tuple(v) * nd if len(v) == 1 else tuple(v)
    return (v,) * nd


def sum_pool(x, kernel_size, stride, padding, ceil_mode, nd: int):
    """Sum of the real input elements of every pooling window.

    Uses torch's own window and output-size logic (that of max/avg pooling):
    ``avg_pool`` with ``divisor_override=1`` sums the window, padding adds zeros.
    """
    k, p = _tup(kernel_size, nd), _tup(padding, nd)
    s = k if stride is None or stride == [] or stride == () else _tup(stride, nd)
    if nd == 1:  # avg_pool1d has no divisor_override: lift to 2-d with a one-row window
        y = F.avg_pool2d(x.unsqueeze(-2), (1,) + k, (1,) + s, (0,) + p, ceil_mode, True, 1)
        return y.squeeze(-2)
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    return pool(x, k, s, p, ceil_mode, True, 1)


def _adaptive_counts(L: int, out: int) -> list[int]:
    """Window sizes of adaptive pooling: [floor(i L / o), ceil((i+1) L / o))."""
    return [-((-(i + 1) * L) // out) - (i * L) // out for i in range(out)]


def adaptive_sum_pool(x, output_size, nd: int):
    """Adaptive pooling as a sum: the adaptive mean times each window's size."""
    spatial = tuple(x.shape[-nd:])
    out = _tup(output_size, nd)
    out = tuple(L if o is None else int(o) for o, L in zip(out, spatial))
    y = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[nd - 1](x, out)
    if all(o == 1 for o in out):
        return y * float(math.prod(spatial))
    counts = torch.ones((), dtype=x.dtype)
    for L, o in zip(spatial, out):
        c = torch.tensor(_adaptive_counts(L, o), dtype=x.dtype)
        counts = counts.unsqueeze(-1) * c
    return y * counts


# ---------------------------------------------------------------------------
# Graph rewrite
# ---------------------------------------------------------------------------

def _identity(node: fx.Node) -> None:
    node.replace_all_uses_with(node.args[0])


def _replace(graph: fx.Graph, node: fx.Node, fn, args) -> None:
    with graph.inserting_before(node):
        new = graph.call_function(fn, args)
    node.replace_all_uses_with(new)


def _pool_call(kind: str, args, kwargs) -> tuple:
    named = dict(zip(_POOL_ARGS[kind], args))
    named.update(kwargs)
    if named.get("dilation", 1) not in (1, (1,), (1, 1), (1, 1, 1), [1], [1, 1], [1, 1, 1]):
        raise NotImplementedError("float64_probe: dilated pooling is not supported")
    if named.get("return_indices", False):
        raise NotImplementedError("float64_probe: pooling with return_indices is not supported")
    return (named["input"], named["kernel_size"], named.get("stride"),
            named.get("padding", 0), bool(named.get("ceil_mode", False)))


def _rewrite(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Linearise ``gm`` in place; return {layer module path: its input node}."""
    graph = gm.graph
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, (_PRUNABLE, _KEEP_MODULES)):
                continue
            if isinstance(mod, _IDENTITY_MODULES):
                _identity(node)
            elif type(mod) in _POOL_MODULES:
                if getattr(mod, "return_indices", False) or \
                        any(d != 1 for d in _tup(getattr(mod, "dilation", 1), 3)):
                    raise NotImplementedError("float64_probe: dilated pooling / return_indices")
                _replace(graph, node, sum_pool, (node.args[0], mod.kernel_size, mod.stride,
                                                 mod.padding, mod.ceil_mode,
                                                 _POOL_MODULES[type(mod)]))
            elif type(mod) in _ADAPTIVE_MODULES:
                if getattr(mod, "return_indices", False):
                    raise NotImplementedError("float64_probe: pooling with return_indices")
                _replace(graph, node, adaptive_sum_pool,
                         (node.args[0], mod.output_size, _ADAPTIVE_MODULES[type(mod)]))
            else:
                raise NotImplementedError(f"float64_probe: module {type(mod).__name__}")
        elif node.op == "call_function":
            fn = node.target
            if fn in _KEEP_FUNCTIONS:
                continue
            if fn in _IDENTITY_FUNCTIONS:
                _identity(node)
            elif fn in _POOL_FUNCTIONS:
                kind, nd = _POOL_FUNCTIONS[fn]
                _replace(graph, node, sum_pool, _pool_call(kind, node.args, node.kwargs) + (nd,))
            elif fn in _ADAPTIVE_FUNCTIONS:
                if node.kwargs.get("return_indices", False) or \
                        (len(node.args) > 2 and node.args[2]):
                    raise NotImplementedError("float64_probe: pooling with return_indices")
                out = node.kwargs.get("output_size",
                                      node.args[1] if len(node.args) > 1 else None)
                _replace(graph, node, adaptive_sum_pool,
                         (node.args[0], out, _ADAPTIVE_FUNCTIONS[fn]))
            elif fn is torch.mean:
                node.target = torch.sum  # a mean over positions becomes their sum
            else:
                raise NotImplementedError(f"float64_probe: function {fn}")
        elif node.op == "call_method":
            if node.target == "mean":
                node.target = "sum"
            elif node.target in _IDENTITY_METHODS:
                _identity(node)
            elif node.target not in _KEEP_METHODS:
                raise NotImplementedError(f"float64_probe: method {node.target}")
    graph.eliminate_dead_code()
    gm.recompile()
    return {node.target: node.args[0] for node in graph.nodes
            if node.op == "call_module" and isinstance(modules[node.target], _PRUNABLE)}


# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------

@dataclass
class ProbeResult:
    paths: float                 # y.sum() in float64 (inf when it overflows)
    effective_params: int        # unpruned weights with a non-zero gradient
    effective_nodes: int         # NPB-style channel count (see module docstring)
    unpruned: int                # sum of the masks
    per_layer_effective: dict = field(default_factory=dict)  # weight name -> count

    @property
    def log10_paths(self) -> float:
        if self.paths == 0:
            return -math.inf
        return math.log10(self.paths) if math.isfinite(self.paths) else math.inf

    @property
    def exact(self) -> bool:
        """True when the float64 count is finite (it is then exact to ~1e-15 relative)."""
        return math.isfinite(self.paths)


def _input_unit_flags(eff: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    """Input channels / features of ``mod`` that carry at least one effective weight."""
    if isinstance(mod, nn.Linear):
        return eff.any(dim=0)
    per_kernel = eff.flatten(2).any(dim=2)  # (O, I/g)
    g = mod.groups
    O, per_group = per_kernel.shape
    return per_kernel.reshape(g, O // g, per_group).any(dim=1).reshape(g * per_group)


def float64_probe(model: nn.Module, masks: dict, input_shape: tuple) -> ProbeResult:
    """Path count, effective params and NPB-style effective nodes of ``model``.

    ``masks`` maps parameter names (``model.named_parameters()``) to 0/1
    tensors; a prunable weight without a mask is dense.
    """
    net = copy.deepcopy(model).double().eval()  # never touch the caller's model
    weights: dict[str, nn.Parameter] = {}
    layers: dict[str, nn.Module] = {}
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for name, mod in net.named_modules():
            if not isinstance(mod, _PRUNABLE):
                continue
            key = f"{name}.weight" if name else "weight"
            m = masks.get(key)
            w = torch.ones_like(mod.weight) if m is None else \
                torch.as_tensor(m).to(torch.float64, copy=True)
            if w.shape != mod.weight.shape:
                raise ValueError(f"mask {key!r} has shape {tuple(w.shape)}, "
                                 f"weight has {tuple(mod.weight.shape)}")
            mod.weight = nn.Parameter(w)  # a float64 leaf that requires grad
            if mod.bias is not None:
                mod.bias.zero_()
            weights[key], layers[name] = mod.weight, mod
    gm = fx.symbolic_trace(net)
    inputs = _rewrite(gm)

    x = torch.ones((1,) + tuple(input_shape), dtype=torch.float64)
    y = gm(x)
    total = y.sum()
    if total.requires_grad:
        total.backward()

    eff_params = 0
    unpruned = 0
    per_layer = {}
    node_flags: dict[fx.Node, torch.Tensor] = {}
    with torch.no_grad():
        for name, mod in layers.items():
            key = f"{name}.weight" if name else "weight"
            w = weights[key]
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            eff = (grad != 0) & (w != 0)
            n = int(eff.sum())
            per_layer[key] = n
            eff_params += n
            unpruned += int(torch.count_nonzero(w))
            flags = _input_unit_flags(eff, mod)
            src = inputs[name]
            prev = node_flags.get(src)
            node_flags[src] = flags if prev is None or prev.shape != flags.shape else prev | flags
        out_units = y.detach()[0]
        out_units = out_units.reshape(out_units.shape[0], -1) if out_units.dim() > 1 \
            else out_units.reshape(-1, 1)
        nodes = sum(int(f.sum()) for f in node_flags.values())
        nodes += int((out_units != 0).any(dim=1).sum())
    return ProbeResult(float(total.item()), eff_params, nodes, unpruned, per_layer)


# ---------------------------------------------------------------------------
# SynFlow as a plain float64 torch loop
# ---------------------------------------------------------------------------

def float64_synflow(model: nn.Module, sparsity: float, input_shape: tuple,
                    rounds: int = 100) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020) as the published code runs it, in plain float64 torch.

    The model is copied to float64 in eval mode with every parameter replaced by its
    absolute value (the published ``linearize``); each round pushes one all-ones input,
    takes ``R = sum(outputs)``, back-propagates, scores every Linear/Conv weight by
    ``|w * dR/dw|``, keeps the global top ``round(n * density**(r / rounds))`` scores
    (``torch.topk`` over all weights at once, the exponential schedule of the paper)
    and multiplies the weights by the new masks in place. Two choices make it count
    what topo_pai counts, so that single-shot masks are equal (tested): biases are
    zeroed and every BatchNorm gets ``eps = 0`` (with fresh statistics it is then the
    identity). Nothing guards against overflow: on a deep network ``R`` becomes
    ``inf`` and the scores ``nan``, as in the published code.

    Returns the masks ``{weight name: bool tensor}`` of the Linear/Conv weights.
    """
    net = copy.deepcopy(model).double().eval()
    weights: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for name, mod in net.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eps = 0.0
            if isinstance(mod, _PRUNABLE):
                if mod.bias is not None:
                    mod.bias.zero_()
                weights[f"{name}.weight" if name else "weight"] = mod.weight
    leaves = {id(w) for w in weights.values()}
    for p in net.parameters():
        p.requires_grad_(id(p) in leaves)
    names = list(weights)
    sizes = [weights[n].numel() for n in names]
    total = sum(sizes)
    keep = min(total, max(0, int(math.floor((1.0 - sparsity) * total + 0.5))))
    density = keep / total
    ones = torch.ones((1,) + tuple(input_shape), dtype=torch.float64)
    masks = {n: torch.ones_like(weights[n], dtype=torch.bool) for n in names}
    for r in range(1, rounds + 1):
        for w in weights.values():
            w.grad = None
        net(ones).sum().backward()
        scores = torch.cat([(weights[n].grad * weights[n]).abs().reshape(-1) for n in names])
        k = keep if r == rounds else int(math.floor(total * density ** (r / rounds) + 0.5))
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[torch.topk(scores, k, sorted=False).indices] = True
        with torch.no_grad():
            for n, part in zip(names, torch.split(chosen, sizes)):
                masks[n] = part.view(weights[n].shape)
                weights[n].mul_(masks[n])
    return masks
