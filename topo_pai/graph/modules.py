"""The model's prunable layers: which modules carry edges, the names and shapes of
their weights, and the refusal of weights that several layers share.

One definition for every concern that meets a model's weights (tracing, masks,
pruning, the CLI), so that they agree on which parameters a mask covers. torch is
imported inside the functions, as the package imports it lazily.
"""

from __future__ import annotations

from typing import Any

from topo_pai.errors import UnsupportedOpError


def stored_weight(mod):
    """The weight tensor a prunable module stores (under pruning or parametrisation,
    the original it masks)."""
    orig = getattr(mod, "weight_orig", None)
    if orig is not None:
        return orig
    parametrizations = getattr(mod, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        plist = parametrizations["weight"]
        if not hasattr(plist, "original"):  # e.g. weight_norm: a direction and a norm
            parts = ", ".join(name for name, _ in plist.named_parameters(recurse=False))
            raise UnsupportedOpError(
                f"the weight of a {type(mod).__name__} is parametrized from several tensors "
                f"({parts}, e.g. by torch.nn.utils.parametrizations.weight_norm), so topo_pai "
                "cannot tell which of them a mask stands for. Remove the parametrization "
                "first: torch.nn.utils.parametrize.remove_parametrizations(module, 'weight').")
        return plist.original
    return mod.weight


def weight_shape(mod):
    """The shape of a prunable module's weight (under pruning or parametrisation, of
    the original it masks)."""
    return stored_weight(mod).shape


def weight_tensors(mod) -> list:
    """Every tensor that holds (a view of) the module's weight values."""
    import torch

    out = [stored_weight(mod)]
    w = mod.__dict__.get("weight", mod._parameters.get("weight"))
    if isinstance(w, torch.Tensor):
        out.append(w)
    return out


def param_name(module_name: str) -> str:
    """The name of a prunable module's weight (``"weight"`` for the model itself)."""
    return f"{module_name}.weight" if module_name else "weight"


def user_param_name(name: str) -> str:
    """A parameter's name as users know it: the stored original of a pruned
    (``w_orig``) or parametrised (``m.parametrizations.w.original``) tensor is ``w``.

    >>> user_param_name("fc.weight_orig"), user_param_name("fc.parametrizations.weight.original")
    ('fc.weight', 'fc.weight')
    >>> user_param_name("parametrizations.weight.original0")  # the model itself
    'weight'
    """
    owner, sep, rest = name.partition(".parametrizations.")
    if sep:
        tensor = rest.split(".")[0]
        return f"{owner}.{tensor}" if owner else tensor
    if owner.startswith("parametrizations."):  # the model itself is parametrised
        return owner.split(".")[1]
    return name.removesuffix("_orig")


def prunable_modules(model) -> dict[str, Any]:
    """Modules whose ``weight`` carries edges: Linear, Conv1d and Conv2d."""
    import torch

    nn = torch.nn
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


def check_untied(modules: dict[str, Any]) -> None:
    """Refuse prunable modules that share their weight tensor (weight tying): one mask
    would have to stand for several layers, as for a module called twice."""
    seen: dict[Any, str] = {}
    for name, mod in modules.items():
        w = stored_weight(mod)
        keys = [("id", id(w))]
        if w.device.type != "meta" and w.numel() and w.data_ptr():
            keys.append(("memory", w.device, w.data_ptr(), tuple(w.shape), tuple(w.stride())))
        for key in keys:
            if key in seen and seen[key] != name:
                first = seen[key]
                raise UnsupportedOpError(
                    f"the prunable weights '{param_name(first)}' and '{param_name(name)}' are one "
                    "tensor (tied weights); one mask would stand for two layers, which topo_pai "
                    "does not count or prune. Untie them: give each layer its own Parameter.")
            seen[key] = name


__all__ = ["check_untied", "param_name", "prunable_modules", "stored_weight", "weight_shape",
           "weight_tensors"]
