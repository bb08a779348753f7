"""What torch.fx does not record: in-place changes and hooks of leaf modules.

**In-place changes** in a traced forward: refuse those that a later read would miss.

The tracer follows values, not memory: ``h.add_(y)`` (or ``h += y``, or
``torch.add(h, y, out=h)``) becomes a new value, and only code that uses the
op's result sees the sum. Code that reads ``h`` again afterwards (or another
name for the same tensor: ``identity = h``, a view ``h.view(...)``, an
in-place activation's result) would see the sum in torch, but the old value in
the trace: a silently wrong count. So such a forward is refused, naming the op
and the later read; one that only ever uses the result of the in-place op, as
ResNets' ``out += identity`` does, is traced as if written ``out = out + identity``.

Only in-place ops that change the topology are checked: in-place activations
(``relu_``, ``ReLU(inplace=True)``) keep every unit, so whoever reads the tensor
they changed still counts the same paths. fx's own proxies have no ``__iadd__``,
so Python runs ``h += y`` as ``h = h + y`` and the trace would not show the change:
:func:`in_place_tracer` records it.

**Hooks**: fx records a leaf module (Linear, ReLU, ...) as one call and runs
neither its forward hooks nor its pre-hooks, so :func:`check_hooks` refuses them.
"""

from __future__ import annotations

import functools
import operator

from topo_pai.errors import UnsupportedOpError

#: Methods that change their tensor in place with a second operand.
_IN_PLACE_METHODS = frozenset({"add_", "sub_", "mul_", "div_"})
_IN_PLACE_FUNCTIONS = frozenset({operator.iadd, operator.isub, operator.imul,
                                 operator.itruediv})
#: Methods whose result may share memory with the tensor they are called on.
_ALIAS_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze",
    "unsqueeze", "expand", "expand_as", "contiguous", "detach", "to", "float", "double",
    "half", "type_as", "requires_grad_", "relu_", "sigmoid_", "tanh_", "neg_",
    "__getitem__",
}) | _IN_PLACE_METHODS


def _alias_functions():
    import torch

    F = torch.nn.functional
    return {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem,
            F.relu_, torch.relu_, F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
            *_IN_PLACE_FUNCTIONS}


def _alias_module(mod) -> bool:
    import torch

    nn = torch.nn
    return (isinstance(mod, (nn.Identity, nn.Flatten, nn.Unflatten,
                             nn.modules.dropout._DropoutNd))
            or getattr(mod, "inplace", False) is True)


def _changed_in_place(node):
    """The fx node whose tensor ``node`` changes in place, or ``None``."""
    out = node.kwargs.get("out")
    if hasattr(out, "users"):
        return out
    target = node.args[0] if node.args else None
    if not hasattr(target, "users"):
        return None
    if node.op == "call_method" and node.target in _IN_PLACE_METHODS:
        return target
    if node.op == "call_function" and node.target in _IN_PLACE_FUNCTIONS:
        return target
    return None


def _aliases(node, model, functions) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if node.op == "call_method":
        return node.target in _ALIAS_METHODS
    if node.op == "call_function":
        return node.target in functions or node.kwargs.get("inplace") is True
    if node.op == "call_module":
        return _alias_module(model.get_submodule(node.target))
    return False


def check_in_place(graph, model) -> None:
    """Refuse an in-place change of a tensor that is read again after it (see the
    module's docstring). ``graph`` is the fx graph with targets relative to ``model``."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    functions = _alias_functions()
    for node in graph.nodes:
        changed = _changed_in_place(node)
        if changed is None:
            continue
        at = order[node]
        group, todo = set(), [changed]
        while todo:  # every name of the changed memory made before the change
            n = todo.pop()
            if n in group:
                continue
            group.add(n)
            if _aliases(n, model, functions) and n.args and hasattr(n.args[0], "users"):
                todo.append(n.args[0])
            todo.extend(u for u in n.users if order[u] < at and _aliases(u, model, functions))
        for n in sorted(group, key=order.get):
            later = [u for u in n.users if u is not node and order[u] > at]
            if later:
                raise UnsupportedOpError(
                    f"fx node '{node.name}' changes '{changed.name}' in place, and fx node "
                    f"'{later[0].name}' reads '{n.name}' (the same memory) after that; "
                    "topo_pai follows values, not memory, so that read would miss the change. "
                    "Write the result to a name of its own, e.g. `h = h + y` instead of "
                    "`h += y` or `h.add_(y)`, and use that name afterwards.")


@functools.cache
def in_place_tracer():
    """torch.fx's Tracer, recording ``h += y`` (``-=``, ``*=``, ``/=``) as
    ``operator.iadd`` and friends instead of ``h + y``."""
    import torch

    fx = torch.fx

    class InPlaceProxy(fx.Proxy):
        pass

    for name, fn in (("__iadd__", operator.iadd), ("__isub__", operator.isub),
                     ("__imul__", operator.imul), ("__itruediv__", operator.itruediv)):
        def in_place(self, other, _fn=fn):
            return self.tracer.create_proxy("call_function", _fn, (self, other), {})
        setattr(InPlaceProxy, name, in_place)

    class Tracer(fx.Tracer):
        def proxy(self, node):
            return InPlaceProxy(node, self)

    return Tracer


def check_hooks(node, mod) -> None:
    """Refuse forward (pre-)hooks on the module of the fx node ``node``, which fx
    records as one call without running them. The hooks that only recompute the weight
    from what it masks (``torch.nn.utils.prune``, the old ``weight_norm`` and
    ``spectral_norm``) are allowed: the mask given is what is counted."""
    from torch.nn.modules import module as module_globals
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    weight_only = (BasePruningMethod, WeightNorm, SpectralNorm)
    hooks = [*mod._forward_pre_hooks.values(), *mod._forward_hooks.values(),
             *module_globals._global_forward_pre_hooks.values(),
             *module_globals._global_forward_hooks.values()]
    hooks = [h for h in hooks if not isinstance(h, weight_only)]
    if hooks:
        where = f"module '{node.target}'" if node.target else "the model"
        names = ", ".join(getattr(h, "__name__", type(h).__name__) for h in hooks)
        raise UnsupportedOpError(
            f"{where} ({type(mod).__name__}, fx node '{node.name}') has forward hook(s) "
            f"({names}); torch.fx records it as one call and does not run them, so what they "
            "change would not be counted. Remove the hooks, or do what they do in the forward "
            "of the module that calls it.")


__all__ = ["check_hooks", "check_in_place", "in_place_tracer"]
