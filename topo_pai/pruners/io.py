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


#: The formats :func:`load_masks` recognises, as named in its messages.
FORMAT_MASKS = "a {name: 0/1 mask} mapping"
FORMAT_PRUNE = "a state_dict of a model pruned with torch.nn.utils.prune (*_orig and *_mask keys)"
FORMAT_PARAMETRIZE = ("a state_dict of a model parametrised with torch.nn.utils.parametrize "
                      "(*.parametrizations.* keys)")
FORMAT_ZEROS = "a {name: weight} mapping whose zeros are the pruned entries"

_PARAMETRIZED = ".parametrizations."


def _read_raw(path):
    suffix = _suffix(path)
    if suffix == ".npz":
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as exc:
            raise MaskError(f"{os.fspath(path)!r} holds something other than plain arrays: "
                            f"{exc}") from exc
        except zipfile.BadZipFile as exc:
            raise MaskError(f"{os.fspath(path)!r} is not an .npz file: {exc}") from exc
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        if isinstance(exc, FileNotFoundError):
            raise
        raise MaskError(f"{os.fspath(path)!r} is not a mask file torch can load safely: "
                        f"{type(exc).__name__}: {exc}") from exc


def guess_format(raw: Mapping) -> str:
    """Which of the formats :func:`load_masks` reads ``raw`` is (one of the ``FORMAT_*``
    strings), judged by its keys: ``*_orig`` with ``*_mask`` keys are a pruned state_dict,
    ``*.parametrizations.*`` keys a parametrised one, anything else a plain mapping.

    >>> import torch
    >>> guess_format({"fc.weight_orig": torch.ones(1), "fc.weight_mask": torch.ones(1)})[:30]
    'a state_dict of a model pruned'
    """
    keys = [k for k in raw if isinstance(k, str)]
    if any(k.endswith("_mask") and k[:-len("_mask")] + "_orig" in raw for k in keys):
        return FORMAT_PRUNE
    if any(_PARAMETRIZED in k for k in keys):
        return FORMAT_PARAMETRIZE
    return FORMAT_MASKS


def _tensor_entries(raw: Mapping, source: str, fmt: str) -> dict:
    """The entries of ``raw`` with their names checked, values as given."""
    out = {}
    for name, v in raw.items():
        if not isinstance(name, str) or not name:
            raise MaskError(f"{source}: mask names must be non-empty strings, got {name!r} "
                            f"(format guessed: {fmt})")
        out[name] = v
    return out


def _mask_or_error(name, m, source: str, fmt: str, hint: str = "") -> np.ndarray:
    try:
        return _as_bool_numpy(name, m)
    except MaskError as exc:
        raise MaskError(f"{source}: key '{name}': {exc} (format guessed: {fmt}){hint}") from None


def _from_prune(raw: dict, source: str) -> dict:
    out = {}
    for key in raw:
        if key.endswith("_orig") and key[:-len("_orig")] + "_mask" not in raw:
            raise MaskError(f"{source}: key '{key}' has no matching "
                            f"'{key[:-len('_orig')]}_mask' (format guessed: {FORMAT_PRUNE})")
    for key, v in raw.items():
        if key.endswith("_mask") and key[:-len("_mask")] + "_orig" in raw:
            base = key[:-len("_mask")]
            out[base] = _mask_or_error(key, v, source, FORMAT_PRUNE)
    return out


def _from_parametrize(raw: dict, source: str) -> dict:
    """Masks of the parametrised tensors: every tensor a parametrisation of ``T`` holds with
    the shape of ``T``'s original (several act as their product, as a chain applies them)."""
    out = {}
    originals = {k[:-len(".original")]: v for k, v in raw.items()
                 if _PARAMETRIZED in k and k.endswith(".original")}
    for prefix, original in originals.items():
        owner, _, tensor = prefix.partition(_PARAMETRIZED)
        base = f"{owner}.{tensor}"
        held = [k for k in raw if k.startswith(prefix + ".") and k != prefix + ".original"
                and isinstance(raw[k], (torch.Tensor, np.ndarray))
                and tuple(raw[k].shape) == tuple(original.shape)]
        if not held:
            raise MaskError(f"{source}: key '{prefix}.original' is a parametrised tensor whose "
                            f"parametrisations hold no mask of its shape, so its pruned entries "
                            f"are unknown (format guessed: {FORMAT_PARAMETRIZE}); save the "
                            "masks themselves (topo_pai.save_masks(topo_pai.read_masks(model), "
                            "path))")
        mask = None
        for k in held:
            m = _mask_or_error(k, raw[k], source, FORMAT_PARAMETRIZE)
            mask = m if mask is None else mask & m
        out[base] = mask
    return out


def _from_zeros(raw: dict, source: str) -> dict:
    """Masks that are the non-zeros of every tensor of two or more dimensions (the shape
    of Linear and Conv weights; 1-d biases and norm parameters and 0-d counters are not
    masks)."""
    out = {}
    for name, w in raw.items():
        if not isinstance(w, (torch.Tensor, np.ndarray)):
            raise MaskError(f"{source}: key '{name}' holds {type(w).__name__}, not a tensor "
                            f"(format guessed: {FORMAT_ZEROS})")
        if w.ndim < 2:
            continue
        if isinstance(w, torch.Tensor):
            w = w.detach().cpu()
            if w.is_complex() or w.dtype in (torch.float16, torch.bfloat16):
                w = w.to(torch.complex64 if w.is_complex() else torch.float32)
            w = w.numpy()
        if w.dtype.kind not in "biufc":
            raise MaskError(f"{source}: key '{name}' has dtype {w.dtype}, not a number "
                            f"(format guessed: {FORMAT_ZEROS})")
        if w.dtype.kind in "fc" and not np.all(np.isfinite(w)):
            raise MaskError(f"{source}: key '{name}' holds NaN or infinite values, so its zeros "
                            f"are not a mask (format guessed: {FORMAT_ZEROS})")
        out[name] = w != 0
    return out


def masks_from_mapping(raw, *, from_zeros: bool = False, source: str = "masks") -> dict:
    """Masks ``{param: bool array}`` read from ``raw`` in any format :func:`load_masks` reads.

    ``source`` names where ``raw`` came from in error messages.
    """
    if not isinstance(raw, Mapping):
        raise MaskError(f"{source} must hold a mapping from parameter name to mask, got "
                        f"{type(raw).__name__}")
    fmt = guess_format(raw)
    if from_zeros and fmt == FORMAT_MASKS:
        fmt = FORMAT_ZEROS
    raw = _tensor_entries(raw, source, fmt)
    if fmt == FORMAT_PRUNE:
        return _from_prune(raw, source)
    if fmt == FORMAT_PARAMETRIZE:
        return _from_parametrize(raw, source)
    if fmt == FORMAT_ZEROS:
        return _from_zeros(raw, source)
    hint = ("; if these are weights whose zeros are the pruned entries, pass from_zeros=True "
            "(--masks-from-zeros on the command line)")
    return {name: _mask_or_error(name, m, source, fmt, hint) for name, m in raw.items()}


def load_masks(path, *, from_zeros: bool = False) -> dict:
    """Read masks from a ``.pt``/``.pth`` or ``.npz`` file.

    Formats, told apart by their keys (an error names the key at fault and the format
    guessed):

    * a ``{name: 0/1 array}`` mapping, as :func:`save_masks` writes;
    * the ``state_dict`` of a model pruned with ``torch.nn.utils.prune``: the masks are its
      ``<name>_mask`` buffers, stored under ``<name>`` (the weight's name); other entries
      (biases, norm statistics, the ``<name>_orig`` weights) are skipped;
    * the ``state_dict`` of a model parametrised with ``torch.nn.utils.parametrize``
      (e.g. by :func:`topo_pai.apply_masks` with ``method="parametrize"``): the mask of
      ``<module>.<tensor>`` is the tensor its parametrisations hold with the original's
      shape (the product of several);
    * with ``from_zeros=True``, a ``{name: weight}`` mapping (e.g. the ``state_dict`` of a
      model whose pruned weights were set to zero): the mask of every tensor of two or more
      dimensions is its non-zeros; 1-d and 0-d entries (biases, norms, counters) are
      skipped.

    Returns ``{param: bool torch tensor}`` on the CPU. Raises
    :class:`topo_pai.MaskError` when the file holds none of these; nothing is unpickled
    (``weights_only=True``, ``allow_pickle=False``).

    >>> import tempfile, os, torch
    >>> from topo_pai import load_masks
    >>> net = torch.nn.Linear(2, 1)
    >>> _ = torch.nn.utils.prune.l1_unstructured(net, "weight", amount=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.pt")
    >>> torch.save(net.state_dict(), path)
    >>> load_masks(path)["weight"].sum().item()
    1
    """
    raw = _read_raw(path)
    arrays = masks_from_mapping(raw, from_zeros=from_zeros, source=repr(os.fspath(path)))
    return {k: torch.from_numpy(np.array(v, dtype=bool)) for k, v in arrays.items()}
