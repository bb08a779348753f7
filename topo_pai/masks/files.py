"""The mask file formats: ``.pt`` (torch) or ``.npz`` (numpy) files, chosen by suffix.

:meth:`topo_pai.Masks.save` and :meth:`topo_pai.Masks.load` (and :func:`topo_pai.save_masks`,
:func:`topo_pai.load_masks`) read and write through this module.

Both formats hold a plain ``{param name: bool array}`` mapping, readable
without topo_pai: ``torch.load(path, weights_only=True)`` or ``numpy.load(path)``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from topo_pai.errors import MaskError
from topo_pai.masks.validate import check_mapping, mask_array

SUFFIXES = (".pt", ".pth", ".npz")


def check_suffix(path) -> str:
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"mask files must end in .pt, .pth (torch) or .npz (numpy); got "
                         f"{os.fspath(path)!r}")
    return suffix


def write(arrays: Mapping[str, np.ndarray], path) -> Path:
    """Write validated bool arrays to ``path`` (.pt/.pth or .npz, by suffix); return the
    path. :meth:`topo_pai.Masks.save` (and :func:`topo_pai.save_masks`) call this."""
    suffix = check_suffix(path)
    path = Path(os.fspath(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write masks to {str(path)!r}: directory "
                                f"{str(path.parent)!r} does not exist; create it first")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write masks to {str(path)!r}: it is a directory; "
                                "name a file in it")
    # np.require keeps a 0-d array 0-d (np.ascontiguousarray makes it 1-d)
    arrays = {k: np.require(v, requirements="C") for k, v in arrays.items()}
    # Written next to the target and moved onto it: a kill mid-write leaves the previous
    # file (or none), never a truncated one under the final name.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if suffix == ".npz":
                # Written entry by entry (as numpy.savez does) so that no mask name can
                # clash with a keyword of numpy.savez.
                with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    for name, arr in arrays.items():
                        with zf.open(name + ".npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, arr, allow_pickle=False)
            else:
                torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


#: The formats :func:`load_masks` recognises, as named in its messages.
FORMAT_MASKS = "a {name: 0/1 mask} mapping"
FORMAT_PRUNE = "a state_dict of a model pruned with torch.nn.utils.prune (*_orig and *_mask keys)"
FORMAT_PARAMETRIZE = ("a state_dict of a model parametrised with torch.nn.utils.parametrize "
                      "(*.parametrizations.* keys)")
FORMAT_ZEROS = "a {name: weight} mapping whose zeros are the pruned entries"

_PARAMETRIZED = ".parametrizations."


def _parametrized(key: str) -> bool:
    """Whether ``key`` belongs to a parametrisation (also of the model itself, whose keys
    start with ``parametrizations.``)."""
    return _PARAMETRIZED in "." + key


def _read_raw(path):
    suffix = check_suffix(path)
    if Path(os.fspath(path)).is_dir():
        raise MaskError(f"{os.fspath(path)!r} is a directory, not a masks file")
    if suffix == ".npz":
        if Path(os.fspath(path)).is_file() and not zipfile.is_zipfile(os.fspath(path)):
            raise MaskError(f"{os.fspath(path)!r} is not an .npz file (numpy.savez writes a zip "
                            "archive of .npy arrays); a torch file is named .pt or .pth")
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                other = [k for k in z.zip.namelist() if not k.endswith(".npy")]
                if not other:
                    # by the archive's own entry names: z["a.npy"] would read entry "a.npy",
                    # which holds the array named "a", not the one named "a.npy"
                    return {n[:-len(".npy")]: np.lib.format.read_array(z.zip.open(n),
                                                                       allow_pickle=False)
                            for n in z.zip.namelist()}
        except ValueError as exc:
            raise MaskError(f"{os.fspath(path)!r} holds something other than plain arrays: "
                            f"{exc}") from exc
        except zipfile.BadZipFile as exc:
            raise MaskError(f"{os.fspath(path)!r} is not an .npz file: {exc}") from exc
        raise MaskError(f"{os.fspath(path)!r} is a zip archive but not an .npz file: it holds "
                        f"{other[0]!r}, not .npy arrays (a torch file is named .pt or .pth)")
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        if isinstance(exc, FileNotFoundError):
            raise
        if isinstance(exc, pickle.UnpicklingError):
            raise MaskError(f"{os.fspath(path)!r} holds Python objects beyond tensors (a whole "
                            "model saved with torch.save(model)?), which are not loaded, as "
                            "unpickling runs code; save model.state_dict() or the masks "
                            "(topo_pai.save_masks) instead") from exc
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = ("it is empty or cut short" if isinstance(exc, EOFError)
                  else f"{type(exc).__name__}: {first}")
        raise MaskError(f"{os.fspath(path)!r} is not a mask file torch can load safely "
                        f"({reason}); expected a file written by topo_pai.save_masks or "
                        "torch.save") from exc


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
    if any(_parametrized(k) for k in keys):
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
        return mask_array(name, m)
    except MaskError as exc:
        raise MaskError(f"{source}: key '{name}': {exc} (format guessed: {fmt}){hint}") from None


def _in_reparametrization(key: str, raw: Mapping) -> bool:
    """Whether ``key`` of a pruned or parametrised state_dict is part of how it stores a
    masked tensor (``*_orig``/``*_mask`` pairs, ``*.parametrizations.*``)."""
    for suffix, partner in (("_orig", "_mask"), ("_mask", "_orig")):
        if key.endswith(suffix) and key[:-len(suffix)] + partner in raw:
            return True
    return _parametrized(key)


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
                 if _parametrized(k) and k.endswith(".original")}
    for prefix, original in originals.items():
        owner, _, tensor = ("." + prefix).partition(_PARAMETRIZED)
        base = f"{owner[1:]}.{tensor}" if owner else tensor  # the model itself: no owner
        # a mask: a 0/1 tensor of the original's shape (WeightMask's "mask" buffer); other
        # parametrisations (spectral_norm's vectors, orthogonal's base) are not masks
        held = [k for k in raw if k.startswith(prefix + ".") and k != prefix + ".original"
                and isinstance(raw[k], (torch.Tensor, np.ndarray))
                and tuple(raw[k].shape) == tuple(original.shape) and _zero_one(raw[k])]
        if not held:  # parametrised, not masked: dense
            continue
        mask = None
        for k in held:
            m = _mask_or_error(k, raw[k], source, FORMAT_PARAMETRIZE)
            mask = m if mask is None else mask & m
        out[base] = mask
    return out


def _zero_one(t) -> bool:
    """Whether every entry of the tensor or array ``t`` is 0 or 1."""
    try:
        t = torch.as_tensor(t) if isinstance(t, np.ndarray) else t.detach()
    except (TypeError, RuntimeError):  # an array torch cannot hold (objects, strings)
        return False
    return not t.is_complex() and bool(((t == 0) | (t == 1)).all())


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
    check_mapping(raw, source)
    fmt = guess_format(raw)
    if from_zeros and fmt == FORMAT_MASKS:
        fmt = FORMAT_ZEROS
    raw = _tensor_entries(raw, source, fmt)
    if fmt in (FORMAT_PRUNE, FORMAT_PARAMETRIZE):
        out = _from_prune(raw, source) if fmt == FORMAT_PRUNE else {}
        if any(_parametrized(k) for k in raw):  # a model may mix both ways of masking
            for key, m in _from_parametrize(raw, source).items():
                if key in out:
                    raise MaskError(f"{source}: '{key}' is masked twice, by *_orig/*_mask keys "
                                    "and by a parametrisation; keep one")
                out[key] = m
        if not out:  # parametrisations, none of them a mask: not a masks file
            first = next((k for k in raw if _parametrized(k) and k.endswith(".original")),
                         next(k for k in raw if _parametrized(k)))
            raise MaskError(f"{source}: key '{first}' is a parametrised tensor whose "
                            "parametrisations hold no mask of its shape, and no other weight "
                            f"is masked, so the file holds no masks (format guessed: {fmt}); "
                            "save the masks themselves (topo_pai.save_masks("
                            "topo_pai.read_masks(model), path))")
        if from_zeros:  # the state_dict's other weights (e.g. pruned, then prune.remove'd)
            rest = {k: v for k, v in raw.items() if not _in_reparametrization(k, raw)}
            out.update({k: m for k, m in _from_zeros(rest, source).items() if k not in out})
        return out
    nested = next((k for k, v in raw.items() if isinstance(v, Mapping)), None)
    if nested is not None:
        raise MaskError(f"{source}: key {nested!r} holds a mapping, not a mask: a checkpoint "
                        "that keeps the weights or masks under a key? Save that mapping itself "
                        f"(e.g. torch.save(checkpoint[{nested!r}], path)) and load that")
    if fmt == FORMAT_ZEROS:
        return _from_zeros(raw, source)
    hint = ("; if these are weights whose zeros are the pruned entries, pass from_zeros=True "
            "(--masks-from-zeros on the command line)")
    return {name: _mask_or_error(name, m, source, fmt, hint) for name, m in raw.items()}


def read(path, *, from_zeros: bool = False) -> dict[str, np.ndarray]:
    """The masks in ``path`` as validated bool arrays, in any format
    :meth:`topo_pai.Masks.load` reads (see there)."""
    return masks_from_mapping(_read_raw(path), from_zeros=from_zeros,
                              source=repr(os.fspath(path)))
