"""Mask intake: find, validate and compact the masks of every prunable layer.

One pass over each mask (a numba kernel) validates that it holds only 0 and 1,
copies it to ``uint8`` (so later edits of the caller's tensors cannot change a
Topology) and counts the unpruned elements of every kernel, which are the
channel-level edge multiplicities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topo_pai.errors import MaskError
from topo_pai.graph.ir import Layer, Program
from topo_pai.kernels import propagate as K


@dataclass
class LayerMask:
    """A validated mask and its channel-level multiplicity matrix ``M`` (CSR)."""

    mask: np.ndarray  # uint8, the weight's shape
    unpruned: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray  # float64 multiplicities
    shape: tuple[int, int]  # (out units, in units)


def attached_masks(model) -> dict:
    """Masks attached to ``model``: ``torch.nn.utils.prune``'s ``<name>_mask`` buffers,
    and ``torch.nn.utils.parametrize`` parametrisations that hold a ``mask`` tensor
    (as :func:`topo_pai.apply_masks` with ``method="parametrize"`` registers)."""
    import torch

    found = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, _ in list(mod.named_parameters(recurse=False)):
            if pname.endswith("_orig"):
                base = pname[: -len("_orig")]
                buf = getattr(mod, base + "_mask", None)
                if buf is not None:
                    found[prefix + base] = buf
        plists = getattr(mod, "parametrizations", None)
        if plists is not None:
            for tensor_name, plist in plists.items():
                held = [p.mask for p in plist if isinstance(getattr(p, "mask", None),
                                                            torch.Tensor)]
                if len(held) == 1:
                    found[prefix + tensor_name] = held[0]
                elif len(held) > 1:  # several masks in a chain act as their product
                    prod = held[0].bool()
                    for extra in held[1:]:
                        prod = prod & extra.bool()
                    found[prefix + tensor_name] = prod
    return found


def _flat_numpy(name: str, m) -> np.ndarray:
    try:
        import torch

        is_tensor = isinstance(m, torch.Tensor)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_tensor = False
    if is_tensor:
        t = m.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_complex():
            raise MaskError(f"mask for '{name}' is complex; masks must hold only 0 and 1")
        arr = t.numpy()
    else:
        arr = np.asarray(m)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind not in "biuf":
        raise MaskError(f"mask for '{name}' has dtype {arr.dtype}; use a bool, integer or float "
                        "array of 0s and 1s")
    return np.ascontiguousarray(arr).reshape(-1)


def validate_keys(masks: dict, program: Program, param_names: set[str]) -> None:
    prunable = {layer.param for layer in program.layers} | set(program.unused_params)
    for key in masks:
        if key in prunable:
            continue
        if isinstance(key, str) and (key.endswith("_orig") or ".parametrizations." in key):
            base = key.replace(".parametrizations.", ".").removesuffix("_orig")
            base = base.removesuffix(".original")
            raise MaskError(f"mask key '{key}' names a re-parametrised tensor; use the weight's "
                            f"name '{base}' instead")
        if key in param_names:
            raise MaskError(f"mask key '{key}' is a parameter but not a prunable weight: only the "
                            "weights of Linear and Conv1d/Conv2d layers carry edges. Drop it.")
        sample = ", ".join(sorted(prunable)[:6])
        raise MaskError(f"mask key '{key}' is not a parameter of the model. Prunable weights "
                        f"are e.g.: {sample}{', ...' if len(prunable) > 6 else ''}")


def scan(name: str, m, shape: tuple[int, ...], group_size: int, per_group_in: int,
         out_per_group: int, index_dtype=np.int32):
    """Validate one mask; return its uint8 copy and its multiplicity CSR arrays."""
    got = tuple(getattr(m, "shape", np.shape(m)))
    if got != tuple(shape):
        raise MaskError(f"mask for '{name}' has shape {got} but the parameter has shape "
                        f"{tuple(shape)}")
    flat = _flat_numpy(name, m)
    out = np.empty(flat.shape[0], dtype=np.uint8)
    if K.validate_copy(flat, out):
        bad = int(np.flatnonzero((flat != 0) & (flat != 1))[0])
        where = np.unravel_index(bad, shape)
        raise MaskError(f"mask for '{name}' holds {flat[bad]!r} at index "
                        f"{tuple(int(i) for i in where)}; masks must hold only 0 and 1 (no NaN)")
    csr = K.kernel_csr(out, group_size, per_group_in, out_per_group, np.zeros(1, dtype=index_dtype))
    return out.reshape(shape), csr


def layer_mask(layer: Layer, in_units: int, m, index_dtype) -> LayerMask:
    shape = layer.weight_shape
    if m is None:
        m = np.ones(shape, dtype=np.uint8)
    out_units, per_group_in = shape[0], shape[1]
    mask, (indptr, indices, data) = scan(layer.param, m, shape, layer.kernel_volume,
                                         per_group_in, out_units // layer.groups, index_dtype)
    return LayerMask(mask, int(data.sum(dtype=np.float64)), indptr, indices, data,
                     (out_units, in_units))
