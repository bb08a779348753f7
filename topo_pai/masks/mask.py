"""``Masks``: parameter name to a bool torch tensor, validated once, when it is built.

Every public function of topo_pai that takes masks accepts a plain mapping (numpy or torch,
bool or 0/1 numbers) or a :class:`Masks`; every one that returns masks returns a
:class:`Masks`. The checks live in :mod:`topo_pai.masks.validate`, the file formats in
:mod:`topo_pai.masks.files`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from topo_pai.errors import MaskError
from topo_pai.masks import files
from topo_pai.masks.validate import (
    check_keys,
    check_mapping,
    mask_array,
    model_weights,
    parameter_names,
    without_unprunable,
)


def _torch():
    import torch

    return torch


class Masks(dict):
    """A mapping from parameter name (e.g. ``"layer1.0.conv1.weight"``) to a bool torch
    tensor on the CPU, validated when it is built.

    ``Masks(masks)`` checks every value (a torch tensor or numpy array, bool or numbers
    that are all 0 or 1, no NaN) and copies it to a bool tensor, so later edits of the
    caller's tensors do not reach it. ``Masks(masks, model=model)`` also checks the keys
    (prunable weights of ``model``: Linear and Conv1d/Conv2d ``weight``) and the shapes,
    and keeps checking them for entries set later. Errors are
    :class:`~topo_pai.MaskError` naming the parameter.

    It is a ``dict``, so ``masks[name].numpy()``, ``np.asarray(masks[name])`` and every
    function that takes a plain dict keep working; ``torch.save(masks, path)`` writes a
    plain ``OrderedDict`` (as a ``state_dict`` is) that ``torch.load(path,
    weights_only=True)`` and :meth:`load` read.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from topo_pai import Masks
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> m = Masks({"0.weight": np.array([[1, 0, 1], [0, 0, 1]])}, model=net)
    >>> m["0.weight"].dtype, m.n_kept, m.n_total
    (torch.bool, 3, 6)
    >>> Masks({"0.weight": np.full((2, 3), 0.5)}, model=net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    topo_pai.errors.MaskError: mask for '0.weight' holds 0.5 at index (0, 0), a value other ...
    """

    def __init__(self, masks: Mapping | None = None, *, model=None):
        super().__init__()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._params: set[str] = set()
        if model is not None:
            self._shapes = model_weights(model)
            self._params = parameter_names(model)
        masks = check_mapping({} if masks is None else masks)
        for name in masks:
            _check_name(name)
        if self._shapes is not None:
            check_keys(masks, self._shapes, self._params)
        for name, m in masks.items():
            self[name] = m

    @classmethod
    def _trusted(cls, tensors: Mapping) -> "Masks":
        """Wrap bool CPU tensors that topo_pai built itself (no second pass over them)."""
        out = cls.__new__(cls)
        dict.__init__(out, tensors)
        out._shapes, out._params = None, set()
        return out

    # -- every entry goes through the validator ---------------------------------------------
    def __setitem__(self, name, m) -> None:
        _check_name(name)
        shapes = getattr(self, "_shapes", None)  # unset while unpickling
        shape = None
        if shapes is not None:
            check_keys([name], shapes, self._params)
            shape = shapes[name]
        if isinstance(m, _torch().Tensor) and m.dtype == _torch().bool and m.device.type == "cpu" \
                and m.layout == _torch().strided and (shape is None or tuple(m.shape) == shape):
            tensor = m.detach().clone()  # already a valid mask: one copy, no numpy pass
        else:
            tensor = _torch().from_numpy(mask_array(name, m, shape))
        dict.__setitem__(self, name, tensor)

    def update(self, *args, **kwargs) -> None:
        for name, m in dict(*args, **kwargs).items():
            self[name] = m

    def setdefault(self, name, default=None):
        if name not in self:
            self[name] = default
        return self[name]

    def __ior__(self, other):
        self.update(other)
        return self

    def copy(self) -> "Masks":
        """A copy whose tensors are copies too."""
        out = Masks._trusted({k: v.clone() for k, v in self.items()})
        out._shapes, out._params = self._shapes, self._params
        return out

    __copy__ = copy

    def __deepcopy__(self, memo) -> "Masks":
        return self.copy()

    def __reduce__(self):
        # Pickles (and torch.save) as an OrderedDict of bool tensors, as a state_dict is:
        # files stay readable with torch.load(weights_only=True) and without topo_pai.
        return (collections.OrderedDict, (), None, None, iter(dict(self).items()))

    # -- views ----------------------------------------------------------------------------
    def numpy(self) -> dict[str, np.ndarray]:
        """``{name: bool numpy array}`` (views of the tensors)."""
        return {k: v.numpy() for k, v in self.items()}

    @property
    def n_kept(self) -> int:
        """Number of kept (True) entries over all masks."""
        return int(sum(int(v.sum()) for v in self.values()))

    @property
    def n_total(self) -> int:
        """Number of entries over all masks."""
        return int(sum(v.numel() for v in self.values()))

    @property
    def density(self) -> float:
        """``n_kept / n_total`` (1.0 for no masks)."""
        total = self.n_total
        return self.n_kept / total if total else 1.0

    def __repr__(self) -> str:
        parts = ", ".join(f"{k!r}: {tuple(v.shape)} {int(v.sum())} kept" for k, v in self.items())
        return f"Masks({{{parts}}})"

    # -- files ----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write to ``path`` (``.pt``/``.pth``: torch, ``.npz``: numpy, by suffix); return
        the path. Both hold a plain ``{name: bool array}`` mapping, readable without
        topo_pai: ``torch.load(path, weights_only=True)`` or ``numpy.load(path)``."""
        return files.write({k: v.numpy() for k, v in self.items()}, path)

    @classmethod
    def load(cls, path, *, model=None, from_zeros: bool = False) -> "Masks":
        """Read masks from a ``.pt``/``.pth`` or ``.npz`` file (checked against ``model``
        when given).

        Formats, told apart by their keys (an error names the key at fault and the format
        guessed):

        * a ``{name: 0/1 array}`` mapping, as :meth:`save` writes;
        * the ``state_dict`` of a model pruned with ``torch.nn.utils.prune``: the masks are
          its ``<name>_mask`` buffers, stored under ``<name>`` (the weight's name); other
          entries (biases, norm statistics, the ``<name>_orig`` weights) are skipped;
        * the ``state_dict`` of a model parametrised with ``torch.nn.utils.parametrize``
          (e.g. by :func:`topo_pai.apply_masks` with ``method="parametrize"``): the mask of
          ``<module>.<tensor>`` is the tensor its parametrisations hold with the original's
          shape (the product of several);
        * with ``from_zeros=True``, a ``{name: weight}`` mapping (e.g. the ``state_dict`` of
          a model whose pruned weights were set to zero): the mask of every tensor of two or
          more dimensions is its non-zeros; 1-d and 0-d entries (biases, norms, counters)
          are skipped. In a pruned or parametrised ``state_dict`` the weights stored as
          plain tensors (e.g. made permanent with ``prune.remove``) get masks from their
          zeros too.

        Raises :class:`topo_pai.MaskError` when the file holds none of these; nothing is
        unpickled (``weights_only=True``, ``allow_pickle=False``).
        """
        arrays = files.read(path, from_zeros=from_zeros)
        if model is None:
            return cls._trusted({k: _torch().from_numpy(v) for k, v in arrays.items()})
        try:
            return cls(without_unprunable(arrays, model, repr(os.fspath(path))), model=model)
        except MaskError as exc:
            raise MaskError(f"{os.fspath(path)!r}: {exc}") from None


def _check_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise MaskError(f"mask names must be non-empty strings (parameter names such as "
                        f"'fc.weight'), got {name!r}")


def as_masks(masks, *, model=None) -> Masks:
    """``masks`` as a :class:`Masks`: itself when it already is one (checked against
    ``model`` when given), else validated into a new one. For functions that read masks
    and never keep them."""
    if isinstance(masks, Masks):
        if model is not None:
            shapes = model_weights(model)
            check_keys(masks, shapes, parameter_names(model))
            for name, t in masks.items():
                if tuple(t.shape) != shapes[name]:
                    raise MaskError(f"mask for '{name}' has shape {tuple(t.shape)} but the "
                                    f"weight has shape {shapes[name]}; give one of the "
                                    "weight's shape")
        return masks
    return Masks(masks, model=model)


def save_masks(masks: Mapping, path) -> Path:
    """Write ``masks`` (``{param: bool or 0/1 tensor or array}``, or a :class:`Masks`) to
    ``path`` (.pt/.pth or .npz); return the path. Same as ``Masks(masks).save(path)``.

    >>> import tempfile, os, torch
    >>> from topo_pai import save_masks, load_masks
    >>> d = tempfile.mkdtemp()
    >>> p = save_masks({"fc.weight": torch.tensor([[True, False]])}, os.path.join(d, "m.npz"))
    >>> load_masks(p)["fc.weight"].tolist()
    [[True, False]]
    """
    files.check_suffix(path)
    if masks is None:  # Masks(None) is "no masks"; a file of none is a mistake
        raise MaskError("save_masks(None, ...): give the masks to save, e.g. the result of "
                        "topo_pai.prune or topo_pai.read_masks(model)")
    return as_masks(masks).save(path)


def load_masks(path, *, from_zeros: bool = False, model=None) -> Masks:
    """Read masks from a ``.pt``/``.pth`` or ``.npz`` file: :meth:`Masks.load` (see there
    for the formats). Returns a :class:`Masks` (bool tensors on the CPU).

    >>> import tempfile, os, torch, torch.nn.utils.prune
    >>> from topo_pai import load_masks
    >>> net = torch.nn.Linear(2, 1)
    >>> _ = torch.nn.utils.prune.l1_unstructured(net, "weight", amount=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.pt")
    >>> torch.save(net.state_dict(), path)
    >>> load_masks(path)["weight"].sum().item()
    1
    """
    return Masks.load(path, model=model, from_zeros=from_zeros)
