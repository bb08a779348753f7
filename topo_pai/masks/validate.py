"""The one validator of masks (and of ``|w|``): every public function that takes masks
or edge weights checks them here, so each mistake gets the same message everywhere.

A mask is a bool tensor or array, or numbers that are all 0 or 1 (NaN and infinities
are neither), of its weight's shape, under the weight's parameter name. Errors are
:class:`~topo_pai.errors.MaskError` naming the parameter and saying how to fix it.
torch loads on first use, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from topo_pai.errors import MaskError
from topo_pai.graph.ir import MAX_FLOW_WEIGHT
from topo_pai.graph.modules import (
    check_untied,
    param_name,
    prunable_modules,
    user_param_name,
    weight_shape,
)


def _torch():
    import torch

    return torch


def _is_tensor(x) -> bool:
    torch = _torch()
    return isinstance(x, torch.Tensor)


def check_mapping(masks, what: str = "masks") -> Mapping:
    """``masks`` itself if it is a mapping; otherwise a :class:`MaskError`."""
    if not isinstance(masks, Mapping):
        raise MaskError(f"{what} must be a mapping from parameter name to a 0/1 tensor or "
                        f"array, got {type(masks).__name__}")
    return masks


def check_mask_value(name: str, m, what: str = "mask") -> None:
    """Refuse a mask (or edge weights: ``what``) that holds no dense values: ``None``, a
    sparse tensor, a tensor on the meta device. A weight left out of the masks is
    dense; a weight given ``None`` is a mistake, not a request for a dense mask."""
    if m is None:
        raise MaskError(f"{what} for '{name}' is None; give a 0/1 tensor or array of the "
                        f"weight's shape, or leave '{name}' out to keep it dense")
    if _is_tensor(m):
        torch = _torch()
        if m.layout != torch.strided:
            raise MaskError(f"{what} for '{name}' is a sparse tensor (layout {m.layout}); pass "
                            "a dense one, e.g. mask.to_dense()")
        if m.device.type == "meta":
            raise MaskError(f"{what} for '{name}' is on the meta device, so it holds no values; "
                            "pass a tensor with real values (on the CPU or an accelerator)")


def numeric_array(name: str, m, what: str = "mask") -> np.ndarray:
    """``m`` (a torch tensor on any device, or a numpy array) as a numpy array on the CPU,
    without a copy where one is not needed: bool, integer or real dtype (half precision
    widened to float32). Anything else (lists, strings, objects, complex) is refused."""
    check_mask_value(name, m, what)
    if _is_tensor(m):
        torch = _torch()
        t = m.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_complex():
            raise MaskError(f"{what} for '{name}' is complex; give real numbers (a mask "
                            "holds only 0 and 1)")
        try:
            arr = t.numpy()
        except TypeError as exc:  # quantized and float8 dtypes have no numpy dtype
            raise MaskError(f"{what} for '{name}' has dtype {t.dtype}, which numpy cannot "
                            "hold; give a bool, integer or float tensor") from exc
    elif isinstance(m, np.ndarray):
        arr = m
    else:
        raise MaskError(f"{what} for '{name}' must be a tensor or array (torch or numpy), got "
                        f"{type(m).__name__}; wrap it, e.g. torch.tensor(...)")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "c":
        raise MaskError(f"{what} for '{name}' is complex; give real numbers (a mask "
                        "holds only 0 and 1)")
    elif arr.dtype.kind not in "biuf":
        raise MaskError(f"{what} for '{name}' has dtype {arr.dtype}; use a bool, integer or "
                        "float array of 0s and 1s")
    return arr


def check_shape(name: str, got, shape, what: str = "mask") -> None:
    """A :class:`MaskError` unless ``got == shape`` (both tuples of ints)."""
    got, shape = tuple(int(s) for s in got), tuple(int(s) for s in shape)
    if got != shape:
        raise MaskError(f"{what} for '{name}' has shape {got} but the weight has shape {shape}; "
                        "give one of the weight's shape")


def bad_value(name: str, flat: np.ndarray, shape) -> MaskError:
    """The error for the first element of ``flat`` (a mask of ``shape``, flattened) that is
    neither 0 nor 1, naming its index."""
    bad = int(np.flatnonzero((flat != 0) & (flat != 1))[0])
    where = np.unravel_index(bad, tuple(shape)) if len(shape) else ()
    return MaskError(f"mask for '{name}' holds {flat[bad].item()!r} at index "
                     f"{tuple(int(i) for i in where)}, a value other than 0 and 1; masks must "
                     "hold only 0 and 1 (bool, or 0/1 numbers; no NaN)")


def mask_array(name: str, m, shape=None) -> np.ndarray:
    """The one mask validator: ``m`` as a new bool numpy array (never a view of ``m``),
    after checking its type, its shape (when ``shape`` is given) and that it holds only
    0 and 1."""
    arr = numeric_array(name, m)
    if shape is not None:
        check_shape(name, arr.shape, shape)
    if arr.dtype == np.bool_:
        return arr.copy()
    out = arr != 0
    if not np.any(out & (arr != 1)):
        return out
    raise bad_value(name, np.ascontiguousarray(arr).reshape(-1), arr.shape)


def model_weights(model) -> dict[str, tuple[int, ...]]:
    """The prunable weights of ``model`` (Linear and Conv1d/Conv2d ``weight``, under
    pruning or parametrisation the original they mask), name to shape."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = prunable_modules(model)
    check_untied(modules)
    return {param_name(n): tuple(int(s) for s in weight_shape(mod)) for n, mod in modules.items()}


def parameter_names(model) -> set[str]:
    """Every parameter name of ``model``, with ``torch.nn.utils.prune``'s ``_orig``
    suffix removed (so a pruned weight is known by its own name)."""
    names = {name for name, _ in model.named_parameters()}
    return names | {name.removesuffix("_orig") for name in names}


def without_unprunable(masks: Mapping, model, source: str) -> dict:
    """``masks`` without the keys that name a parameter of ``model`` that is not a prunable
    weight (a bias or an Embedding pruned with ``torch.nn.utils.prune``, zeros of a norm
    weight read with ``from_zeros``), with a warning naming them: they carry no edges, and
    the user did not name them. Other keys are left for :func:`check_keys` to judge."""
    import warnings

    prunable = {param_name(n) for n in prunable_modules(model)}
    params = {user_param_name(n) for n, _ in model.named_parameters()}
    skipped = sorted(k for k in masks if k not in prunable and k in params)
    if skipped:
        warnings.warn(f"{source}: skipped the masks of {', '.join(map(repr, skipped))}: not "
                      "Linear or Conv weights, so they carry no edges", stacklevel=3)
    return {k: v for k, v in masks.items() if k not in skipped}


def check_keys(keys, prunable, param_names) -> None:
    """Refuse every key that is not a prunable weight, saying what it is instead: a
    re-parametrised tensor (use the weight's name), another parameter (drop it) or no
    parameter at all (the prunable names are listed)."""
    for key in keys:
        if key in prunable:
            continue
        # "." + key: a root module's parametrized keys start with "parametrizations."
        if isinstance(key, str) and (key.endswith("_orig") or ".parametrizations." in "." + key):
            base = user_param_name(key)
            raise MaskError(f"mask key '{key}' names a re-parametrised tensor; use the weight's "
                            f"name '{base}' instead")
        if key in param_names:
            raise MaskError(f"mask key '{key}' is a parameter but not a prunable weight: only the "
                            "weights of Linear and Conv1d/Conv2d layers carry edges. Drop it.")
        for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
            if isinstance(key, str) and key.startswith(prefix) and key[len(prefix):] in prunable:
                raise MaskError(f"mask key {key!r} is the weight {key[len(prefix):]!r} with the "
                                f"prefix {prefix!r} of a wrapped model (DataParallel, "
                                "DistributedDataParallel or torch.compile); strip it, e.g. "
                                f"{{k.removeprefix({prefix!r}): v for k, v in masks.items()}}")
        sample = ", ".join(sorted(prunable)[:6])
        raise MaskError(f"mask key {key!r} is not a parameter of the model, so not a prunable "
                        f"weight. Prunable weights are e.g.: {sample}"
                        f"{', ...' if len(prunable) > 6 else ''}")


def abs_weights_array(name: str, w, shape) -> np.ndarray:
    """The one validator of edge weights (``|w|``): ``w`` as a flat contiguous float64
    array, after checking its shape and that it is finite and non-negative."""
    arr = numeric_array(name, w, "weights")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise MaskError(f"weights for '{name}' have shape {arr.shape}, expected {tuple(shape)} "
                        "(the weight's shape)")
    bad = ~np.isfinite(arr) | (arr < 0)
    if np.any(bad):
        where = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape))
        raise MaskError(f"weights for '{name}' hold {arr[where].item()!r} at index {where}: they "
                        "must be finite and non-negative (pass |w|, e.g. weight.abs(); NaN or "
                        "inf there means the model's weight holds one)")
    if arr.size and float(arr.max()) > MAX_FLOW_WEIGHT:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))
        raise MaskError(f"weights for '{name}' hold {arr[where].item():.3g} at index {where}, "
                        f"above the {MAX_FLOW_WEIGHT:.3g} that flows can scale without "
                        "overflow (topo_pai.graph.ir.MAX_FLOW_WEIGHT); pass smaller weights")
    # a copy: the caller's float64 array must not be able to change weights once checked
    return np.array(arr, dtype=np.float64, order="C", copy=True).reshape(-1)
