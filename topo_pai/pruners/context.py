"""What a pruning method may read: the model's prunable weights, a Topology, a
gradient-ready copy of the model and the data -- each built once, on demand,
and never by modifying the caller's model.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from typing import Any

import numpy as np

from topo_pai.errors import InputShapeError, UncoveredWeightsWarning
from topo_pai.graph.trace import validate_input_shape
from topo_pai.pruners.targets import Target, prunable_targets
from topo_pai.pruners.torch_masks import strip_reparametrization

__all__ = ["PruneContext", "Target", "check_batches", "effective_weight", "exclude_patterns",
           "iter_batches", "prunable_targets", "resolve_exclude"]


def _torch():
    import torch

    return torch


def effective_weight(module):
    """The weight the module's forward uses (``weight_orig * weight_mask`` under
    ``torch.nn.utils.prune``, the parametrised value under ``parametrize``)."""
    orig = getattr(module, "weight_orig", None)
    mask = getattr(module, "weight_mask", None)
    if orig is not None and mask is not None:
        return (orig.detach() * mask.detach().to(orig.dtype))
    return module.weight.detach()


def exclude_patterns(exclude) -> list[str]:
    """``exclude`` (None, a name or an iterable of names) as a list of strings: its form,
    checked without the model (:func:`resolve_exclude` matches it against the layers)."""
    if exclude is None:
        return []
    if isinstance(exclude, str):
        exclude = (exclude,)
    try:
        patterns = list(exclude)
    except TypeError as exc:
        raise TypeError(f"exclude must be an iterable of module or parameter names (or fnmatch "
                        f"patterns), got {type(exclude).__name__}") from exc
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"exclude entries must be strings, got {pat!r}")
    return patterns


def resolve_exclude(targets: list[Target], exclude) -> set[str]:
    """Param names matched by ``exclude`` (module names, param names or fnmatch patterns)."""
    out: set[str] = set()
    for pat in exclude_patterns(exclude):
        hit = {t.param for t in targets
               if fnmatch.fnmatchcase(t.param, pat) or fnmatch.fnmatchcase(t.module, pat)}
        if not hit:
            sample = ", ".join(t.module for t in targets[:5])
            raise ValueError(f"exclude entry {pat!r} matches no prunable layer (Linear/Conv "
                             f"weights), e.g. {sample}{', ...' if len(targets) > 5 else ''}")
        out |= hit
    return out


def iter_batches(data, max_batches: int | None = None) -> list:
    """``data`` as a list of ``(x, y)`` tensor pairs: one ``(x, y)`` batch, or any
    iterable of batches (a DataLoader) whose items start with ``x, y``."""
    torch = _torch()

    def is_pair(b):
        return (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], torch.Tensor)
                and isinstance(b[1], torch.Tensor))

    if isinstance(data, (tuple, list)) and len(data) == 2 and is_pair(data):
        batches = [tuple(data)]
    elif isinstance(data, torch.Tensor):
        raise TypeError("data must be an (x, y) batch or a DataLoader of (x, y) batches; got a "
                        "single tensor (the loss needs targets y)")
    else:
        try:
            it = iter(data)
        except TypeError as exc:
            raise TypeError(f"data must be an (x, y) batch or a DataLoader of (x, y) batches, got "
                            f"{type(data).__name__}") from exc
        batches = []
        for b in it:
            if max_batches is not None and len(batches) >= max_batches:
                break
            if not is_pair(b):
                raise TypeError(f"every batch of data must be (x, y, ...) tensors; got "
                                f"{type(b).__name__}")
            batches.append((b[0], b[1]))
    if max_batches is not None:
        batches = batches[:max_batches]
    if not batches:
        raise ValueError("data holds no batch; pass a DataLoader of (x, y) batches or one "
                         "(x, y) batch with at least one sample")
    return batches


def check_batches(batches: list, input_shape) -> None:
    """Refuse data a score could not be taken on: an empty batch, inputs and targets of
    different lengths, non-float or non-finite inputs, or samples whose shape is not
    ``input_shape`` (checked when ``input_shape`` is given)."""
    torch = _torch()
    want = None if input_shape is None else validate_input_shape(input_shape)
    for i, (x, y) in enumerate(batches):
        where = "data" if len(batches) == 1 else f"batch {i} of data"
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{where} holds no sample (inputs of shape {tuple(x.shape)}); the "
                             "data-dependent methods score weights on samples: pass at least one")
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{where} has {x.shape[0]} inputs but targets of shape "
                             f"{tuple(y.shape)}; pass one target per input")
        if want is not None and tuple(x.shape[1:]) != want:
            raise InputShapeError(
                f"{where} holds samples of shape {tuple(x.shape[1:])} (inputs {tuple(x.shape)}), "
                f"but input_shape is {want}; pass inputs of shape (batch, *input_shape), or the "
                "input_shape of your data")
        if not x.is_floating_point():
            raise ValueError(f"{where} holds inputs of dtype {x.dtype}; the model needs floating "
                             "point inputs (convert them, e.g. x.float() / 255)")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{where} holds NaN or infinite inputs")


class PruneContext:
    """Lazy, cached views of the model for the scoring functions.

    Attributes
    ----------
    model : torch.nn.Module
        The caller's model; never modified.
    targets : list of Target
        Every prunable weight, in model order.
    active : list of Target
        The targets being pruned (not excluded).
    seed : int
    input_shape : tuple
    data : object or None
    options : dict
        The data options (``max_batches``, ``loss``, ``train_mode``; see
        :class:`topo_pai.pruners.api.DataOptions`).
    round : int
        The round of an iterative method (1, 2, ...), set by the shared loop before
        each call; 0 outside rounds.
    cache : dict
        A per-run memo for the scoring functions (derived values only, never state a
        result depends on: that is passed explicitly).
    """

    def __init__(self, model, targets, active, seed, input_shape, data, options):
        self.model = model
        self.targets = targets
        self.active = active
        self.seed = seed
        self.input_shape = input_shape
        self.data = data
        self.options = options
        self._topo = None
        self._weights: dict[str, np.ndarray] | None = None
        self._abs: dict[str, np.ndarray] | None = None
        self._plain = None
        self._batches = None
        self.round = 0
        self.cache: dict[str, Any] = {}

    @property
    def active_names(self) -> list[str]:
        return [t.param for t in self.active]

    @property
    def sizes(self) -> dict[str, int]:
        return {t.param: t.numel for t in self.active}

    def topology(self):
        """The model's Topology, traced once, with the masks already attached to the model
        (``torch.nn.utils.prune`` or :func:`~topo_pai.pruners.apply_masks`), if any;
        methods that prune in rounds swap masks with ``Topology.with_masks``."""
        if self._topo is None:
            from topo_pai.topology import from_torch

            with warnings.catch_warnings():  # prune() has said so already
                warnings.simplefilter("ignore", UncoveredWeightsWarning)
                self._topo = from_torch(self.model, None, self.input_shape)
        return self._topo

    def _check_weight_values(self) -> None:
        """Refuse a model whose weights hold no values (the meta device): a method that
        reads weights or runs the model has nothing to score."""
        meta = [n for n, p in self.model.named_parameters() if p.device.type == "meta"]
        if meta:
            raise ValueError(f"the model's parameter {meta[0]!r} is on the meta device, so it "
                             "holds no values to score; materialise the model first (e.g. "
                             "model.to_empty(device='cpu'), then initialise its weights)")

    def weights(self) -> dict[str, np.ndarray]:
        """Effective weights as float64 arrays (every target)."""
        if self._weights is None:
            self._check_weight_values()
            out = {}
            for t in self.targets:
                w = effective_weight(self.model.get_submodule(t.module))
                out[t.param] = w.cpu().to(_torch().float64).numpy()
                if out[t.param].size and not np.isfinite(out[t.param].min()):  # min: NaN too
                    bad = ~np.isfinite(out[t.param])
                    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
                    raise ValueError(
                        f"the model's weight {t.param!r} holds {int(bad.sum())} NaN or infinite "
                        f"value(s) of {bad.size} (the first, {out[t.param][first]}, at index "
                        f"{tuple(int(i) for i in first)}); pruning scores finite weights. Check "
                        "the initialisation or the checkpoint the model was loaded from.")
            self._weights = out
        return self._weights

    def abs_weights(self) -> dict[str, np.ndarray]:
        if self._abs is None:
            self._abs = {k: np.abs(v) for k, v in self.weights().items()}
        return self._abs

    def batches(self) -> list:
        if self._batches is None:
            if self.data is None:
                raise ValueError("this pruning step needs data")
            batches = iter_batches(self.data, self.options.get("max_batches"))
            check_batches(batches, self.input_shape)
            dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()),
                         None)
            for i, (x, _) in enumerate(batches):
                if dtype is not None and x.dtype != dtype:
                    where = "data" if len(batches) == 1 else f"batch {i} of data"
                    raise ValueError(f"{where} holds {x.dtype} inputs but the model's weights "
                                     f"are {dtype}; convert the inputs (e.g. x.to({dtype}))")
            self._batches = batches
        return self._batches

    def plain_model(self):
        """A private deep copy of the model whose prunable weights are plain Parameters
        holding the effective weights (pruning reparametrisations baked in)."""
        if self._plain is None:
            self._check_weight_values()
            # A pruned module keeps its masked weight as a plain (non-leaf) attribute that
            # deepcopy refuses; it is recomputed below, so copy it as None.
            memo: dict[int, Any] = {}
            for t in self.targets:
                mod = self.model.get_submodule(t.module)
                if hasattr(mod, "weight_orig") and "weight" in mod.__dict__:
                    memo[id(mod.__dict__["weight"])] = None
            net = copy.deepcopy(self.model, memo)
            for t in self.targets:
                strip_reparametrization(net.get_submodule(t.module), keep_mask=True)
            for p in net.parameters():
                p.requires_grad_(False)
            self._plain = net
        return self._plain
