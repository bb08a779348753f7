"""Save and load masks as ``.pt`` (torch) or ``.npz`` (numpy) files, chosen by suffix.

Both formats hold a plain ``{param name: bool array}`` mapping, readable
without topo_pai: ``torch.load(path, weights_only=True)`` or ``numpy.load(path)``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from topo_pai.errors import MaskError
from topo_pai.graph.masks import check_mask_value

SUFFIXES = (".pt", ".pth", ".npz")


def _suffix(path) -> str:
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"mask files must end in .pt, .pth (torch) or .npz (numpy); got "
                         f"{os.fspath(path)!r}")
    return suffix


def _as_bool_numpy(name, m) -> np.ndarray:
    check_mask_value(name, m)
    if isinstance(m, torch.Tensor):
        if m.is_complex():
            raise MaskError(f"mask '{name}' is complex; masks hold 0 and 1")
        m = m.detach().cpu()
        if m.dtype in (torch.float16, torch.bfloat16):
            m = m.float()
        m = m.numpy()
    if not isinstance(m, np.ndarray):
        raise MaskError(f"mask '{name}' must be a tensor or array, got {type(m).__name__}")
    if m.dtype == np.bool_:
        return m
    if m.dtype.kind not in "biuf":
        raise MaskError(f"mask '{name}' has dtype {m.dtype}; masks are bool (or 0/1 numbers)")
    if np.any((m != 0) & (m != 1)):
        raise MaskError(f"mask '{name}' holds values other than 0 and 1")
    return m != 0


def _validated(masks, source: str) -> dict[str, np.ndarray]:
    if not isinstance(masks, Mapping):
        raise MaskError(f"{source} must hold a mapping from parameter name to mask, got "
                        f"{type(masks).__name__}")
    out = {}
    for name, m in masks.items():
        if not isinstance(name, str) or not name:
            raise MaskError(f"{source}: mask names must be non-empty strings, got {name!r}")
        out[name] = _as_bool_numpy(name, m)
    return out


def save_masks(masks: Mapping, path) -> Path:
    """Write ``masks`` (``{param: bool tensor or array}``) to ``path`` (.pt/.pth or .npz).

    Returns the path. Values must be 0/1 (stored as bool).

    >>> import tempfile, os, torch
    >>> from topo_pai import save_masks, load_masks
    >>> d = tempfile.mkdtemp()
    >>> p = save_masks({"fc.weight": torch.tensor([[True, False]])}, os.path.join(d, "m.npz"))
    >>> load_masks(p)["fc.weight"].tolist()
    [[True, False]]
    """
    suffix = _suffix(path)
    arrays = _validated(masks, "masks")
    path = Path(os.fspath(path))
    if suffix == ".npz":
        # Written entry by entry (as numpy.savez does) so that no mask name can clash
        # with a keyword of numpy.savez.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    else:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    return path


def load_masks(path) -> dict:
    """Read masks written by :func:`save_masks` (or any ``{name: 0/1 array}`` file).

    Returns ``{param: bool torch tensor}`` on the CPU. Raises
    :class:`topo_pai.MaskError` when the file does not hold a name-to-0/1-array
    mapping; nothing is unpickled (``weights_only=True``, ``allow_pickle=False``).
    """
    suffix = _suffix(path)
    if suffix == ".npz":
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise MaskError(f"{os.fspath(path)!r} holds something other than plain arrays: "
                            f"{exc}") from exc
        except zipfile.BadZipFile as exc:
            raise MaskError(f"{os.fspath(path)!r} is not an .npz file: {exc}") from exc
    else:
        try:
            raw = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
            if isinstance(exc, FileNotFoundError):
                raise
            raise MaskError(f"{os.fspath(path)!r} is not a mask file torch can load safely: "
                            f"{type(exc).__name__}: {exc}") from exc
    arrays = _validated(raw, os.fspath(path))
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
