"""Hand masks to standard torch: ``torch.nn.utils.prune`` or ``torch.nn.utils.parametrize``.

These are the only functions in topo_pai that modify a model, and they say so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from topo_pai.errors import MaskError
from topo_pai.masks.mask import Masks
from topo_pai.pruners.targets import prunable_targets

METHODS = ("prune", "parametrize")


class WeightMask(torch.nn.Module):
    """Parametrisation ``weight = original * mask`` (``mask`` a bool buffer)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def _is_weight_mask(mod) -> bool:
    return isinstance(mod, WeightMask)


def _prune_hooks(module):
    from torch.nn.utils import prune

    return [k for k, h in module._forward_pre_hooks.items()
            if isinstance(h, prune.BasePruningMethod)
            and getattr(h, "_tensor_name", None) == "weight"]


def _mask_kind(module) -> str | None:
    """``"prune"``, ``"parametrize"`` (a topo_pai WeightMask) or ``None``."""
    from torch.nn.utils import parametrize

    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return "prune"
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations["weight"]
        if any(_is_weight_mask(p) for p in plist):
            return "parametrize"
    return None


def strip_reparametrization(module, keep_mask: bool) -> None:
    """Remove a weight reparametrisation, leaving a plain Parameter ``weight``.

    ``keep_mask`` bakes the masked value in; otherwise the original (dense)
    weight is restored. Under ``parametrize`` every parametrisation of the weight
    is removed (only topo_pai's own are accepted by the public callers).
    """
    from torch.nn.utils import parametrize

    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        mask = module._buffers.pop("weight_mask")
        for k in _prune_hooks(module):
            del module._forward_pre_hooks[k]
        orig = module._parameters.pop("weight_orig")
        module.__dict__.pop("weight", None)
        if keep_mask:
            with torch.no_grad():
                orig.data = orig.data * mask.to(orig.dtype)
        module.register_parameter("weight", orig)
    elif parametrize.is_parametrized(module, "weight"):
        _own_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_mask)
    else:
        return
    # Linear and Conv register weight before bias; keep that order for named_parameters
    # and state_dict keys (re-registering appends).
    params = module._parameters
    if "weight" in params:
        ordered = {"weight": params["weight"], **{k: v for k, v in params.items() if k != "weight"}}
        params.clear()
        params.update(ordered)


def _own_class(module) -> None:
    """Give a parametrised module a class of its own.

    ``parametrize`` stores the parametrised tensor as a property on a class made
    for the module, and ``copy.deepcopy`` shares that class between the copies;
    ``remove_parametrizations`` deletes the property from the class, which
    would break every other copy of the module. A private copy of the class
    keeps the removal local.
    """
    cls = module.__class__
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def _modules_by_param(model) -> dict:
    return {t.param: (t, model.get_submodule(t.module)) for t in prunable_targets(model)}


def apply_masks(model, masks: Mapping, method: str = "prune"):
    """Attach ``masks`` to ``model`` **in place**; return the model.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place: each masked weight is reparametrised.
    masks : Masks or mapping
        Parameter name (e.g. ``"layer1.0.conv1.weight"``) to a bool/0-1 tensor or
        array of the weight's shape, as returned by :func:`topo_pai.prune`
        (validated as :class:`~topo_pai.Masks` against ``model``).
    method : {"prune", "parametrize"}
        ``"prune"``: ``torch.nn.utils.prune.custom_from_mask`` (``weight_orig``
        parameter, ``weight_mask`` buffer, forward pre-hook).
        ``"parametrize"``: ``torch.nn.utils.parametrize.register_parametrization``
        with a ``weight = original * mask`` module (:class:`WeightMask`, a ``mask``
        buffer). ``topo_pai.from_torch(model)`` reads masks of either kind.

    A weight that already carries a mask (from either method) has it
    *replaced*: the original dense weight is restored, then the new mask applied.

    Examples
    --------
    >>> import torch
    >>> import topo_pai
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> _ = topo_pai.apply_masks(net, {"0.weight": torch.eye(3, 4, dtype=torch.bool)})
    >>> int((net[0].weight != 0).sum())
    3
    >>> _ = topo_pai.remove_masks(net)
    >>> int((net[0].weight != 0).sum())
    12
    """
    if method not in METHODS:
        raise ValueError(f"method must be 'prune' or 'parametrize', got {method!r}")
    from torch.nn.utils import parametrize, prune

    checked = Masks(masks, model=model)  # a copy: the model never shares the caller's tensors
    by_param = _modules_by_param(model)
    prepared = []
    for name, m in checked.items():  # validate everything before touching the model
        _, mod = by_param[name]
        if parametrize.is_parametrized(mod, "weight") and not all(
                _is_weight_mask(p) for p in mod.parametrizations["weight"]):
            # replacing the mask would strip the whole chain, the other one included
            raise ValueError(f"'{name}' already has a parametrisation that is not a topo_pai "
                             "mask; remove it first (torch.nn.utils.parametrize."
                             "remove_parametrizations)")
        w = getattr(mod, "weight_orig", None)
        prepared.append((mod, m.to(device=(w if w is not None else mod.weight).device)))
    for mod, mask in prepared:
        kind = _mask_kind(mod)
        if kind is not None:
            strip_reparametrization(mod, keep_mask=False)
        if method == "prune":
            prune.custom_from_mask(mod, "weight", mask)
        else:
            parametrize.register_parametrization(mod, "weight", WeightMask(mask))
    return model


def _masked_modules(model):
    out = []
    for name, (_, mod) in _modules_by_param(model).items():
        kind = _mask_kind(mod)
        if kind == "parametrize" and not all(_is_weight_mask(p)
                                             for p in mod.parametrizations["weight"]):
            raise ValueError(f"'{name}' carries other parametrisations besides its topo_pai mask; "
                             "remove them with torch.nn.utils.parametrize first")
        if kind is not None:
            out.append(mod)
    return out


def remove_masks(model):
    """Drop every mask attached by :func:`apply_masks` (or ``torch.nn.utils.prune``)
    **in place**, restoring the original dense weights; return the model."""
    for mod in _masked_modules(model):
        strip_reparametrization(mod, keep_mask=False)
    return model


def bake_masks(model):
    """Make pruning permanent **in place**: ``weight = weight * mask`` as a plain
    Parameter, reparametrisation removed; return the model."""
    for mod in _masked_modules(model):
        strip_reparametrization(mod, keep_mask=True)
    return model


def baked_copy(model):
    """A deep copy of ``model`` with every attached mask baked in (:func:`bake_masks`);
    ``model`` is not modified."""
    # A pruned module keeps its masked weight as a plain (non-leaf) attribute that
    # deepcopy refuses; bake_masks recomputes it, so it is copied as None.
    memo = {id(mod.__dict__["weight"]): None for mod in model.modules()
            if hasattr(mod, "weight_orig") and "weight" in mod.__dict__}
    return bake_masks(copy.deepcopy(model, memo))


def read_masks(model) -> Masks:
    """The masks attached to ``model`` by either method, as :class:`~topo_pai.Masks`
    (``{param: bool tensor}`` on the CPU).

    ``topo_pai.from_torch(model, None, ...)`` reads the same masks by itself.
    """
    out = {}
    for name, (_, mod) in _modules_by_param(model).items():
        kind = _mask_kind(mod)
        if kind is not None:  # a mask on the meta device has no values to read
            held = mod.weight_mask if kind == "prune" else next(
                p.mask for p in mod.parametrizations["weight"] if _is_weight_mask(p))
            if held.device.type == "meta":
                raise MaskError(f"the mask of '{name}' is on the meta device, so it holds no "
                                "values; materialise the model first (e.g. "
                                "model.to_empty(device='cpu')) and attach the masks again")
        if kind == "prune":
            out[name] = mod.weight_mask.detach().cpu() != 0
        elif kind == "parametrize":
            m = None
            for p in mod.parametrizations["weight"]:
                if _is_weight_mask(p):
                    m = p.mask if m is None else (m & p.mask)
            out[name] = m.detach().cpu().clone()
    return Masks._trusted(out)
