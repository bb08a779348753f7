"""``prune``: validation, layer budgets, thresholding and rounds shared by every method."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from topo_pai.checks import check_bool, check_int, did_you_mean
from topo_pai.coverage import warn_uncovered
from topo_pai.errors import MaskError
from topo_pai.graph.trace import validate_input_shape
from topo_pai.masks.mask import Masks, as_masks
from topo_pai.pruners import allocation as A
from topo_pai.pruners.context import (PruneContext, exclude_patterns, prunable_targets,
                                      resolve_exclude)
from topo_pai.pruners.registry import Method, MethodOutput, get_method
from topo_pai.pruners.select import check_finite_or_inf, rng_for, select_top

SCOPES = ("global", "layer")


@dataclass
class PruneResult:
    """What :func:`prune_with_scores` returns.

    Attributes
    ----------
    masks : Masks
        ``{param: bool tensor}`` for every prunable weight (excluded ones all True).
    scores : dict or None
        The scores of the last scoring round for the pruned (non-excluded) layers,
        float64 arrays, higher = keep; ``-inf`` where a weight was pruned in an
        earlier round. ``None`` for methods that build masks directly.
    budgets : dict or None
        Per-layer kept counts when the budgets were fixed per layer (allocation,
        ``scope="layer"``), ``None`` for a global threshold.
    method : str
    sparsity : float
    report : object or None
        The method's own account of the run, if it gives one: for ``"npb"`` a
        :class:`topo_pai.npb.pruner.BalanceReport` (per layer: budget, K, effective
        channels, paths, objective and its bound; prints as a table).
    """

    masks: Masks
    scores: dict | None
    budgets: dict | None
    method: str
    sparsity: float
    report: Any = None  # a method's own account of the run (NPB: its balance report)


def _check_sparsity(sparsity) -> float:
    ok = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool)
    if not ok or not (0.0 <= float(sparsity) < 1.0):  # NaN fails the comparison too
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of prunable weights "
                         f"removed), got {sparsity!r}")
    return float(sparsity)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class DataOptions:
    """Options of every data-dependent method (read by the gradient scores)."""

    max_batches: int | None = None
    loss: Callable | None = None
    train_mode: bool = False

    def __post_init__(self):
        if self.max_batches is not None:
            object.__setattr__(self, "max_batches", check_int(
                "max_batches", self.max_batches, minimum=1, hint="None reads every batch of data"))
        object.__setattr__(self, "train_mode", check_bool("train_mode", self.train_mode))
        if self.loss is not None and not callable(self.loss):
            raise ValueError(f"loss must be a callable (logits, y) -> scalar loss, or None for "
                             f"cross-entropy; got {self.loss!r}")


_DATA_FIELDS = [f.name for f in fields(DataOptions)]


def _fields_of(params) -> dict[str, Any]:
    """A params dataclass as ``{field: value}`` (shallow: option values are not copied)."""
    return {} if params is None else {f.name: getattr(params, f.name) for f in fields(params)}


@dataclass(frozen=True)
class _Options:
    """``prune``'s keyword options split by the dataclass that declares each: the method's
    params (plus options a forwarding method passes on), the allocation's and the data's."""

    method: Any
    forwarded: dict
    allocation: Any
    data: DataOptions


#: :func:`prune`'s keyword arguments that are options of the run, as a command line's
#: ``--option`` or a sweep arm names them.
PRUNE_KEYWORDS = ("scope", "allocation", "exclude")


def _split_options(m: Method, options: dict, allocation_spec, needs_data: bool) -> _Options:
    """Split the options by owner and build their dataclasses, which check the values."""
    method_names = m.entry.option_names()
    data_names = _DATA_FIELDS if needs_data else []
    alloc_owners = A.allocation_options()
    valid = [*method_names, *data_names, *alloc_owners]
    unknown = [k for k in options if k not in valid]
    if unknown and not m.forwards_options:
        named = [*valid, *PRUNE_KEYWORDS]  # prune's own keywords are options too (CLI, sweeps)
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                         f"{m.name!r}.{did_you_mean(unknown[0], named)} Valid options: "
                         f"{', '.join(sorted(named))}")
    spec = allocation_spec if isinstance(allocation_spec, str) else None
    alloc = A.ALLOCATIONS.entry(spec) if spec in A.ALLOCATIONS else None
    for key in options:
        if key in alloc_owners and (alloc is None or key not in alloc.option_names()):
            owners = "/".join(map(repr, alloc_owners[key]))
            raise ValueError(f"option {key!r} applies to allocation {owners}, but the "
                             f"allocation is {allocation_spec!r}; pass "
                             f"allocation={alloc_owners[key][0]!r} with it")
    alloc_params = None if alloc is None else alloc.make_params(
        {k: v for k, v in options.items() if k in alloc_owners}, owner=f"allocation {spec!r}")
    return _Options(
        method=m.make_params({k: v for k, v in options.items() if k in method_names}),
        forwarded={k: v for k, v in options.items() if k in unknown},
        allocation=alloc_params,
        data=DataOptions(**{k: v for k, v in options.items() if k in data_names}))


def _needs_data_message(m: Method, via: str = "") -> str:
    return (f"method {m.name!r}{via} needs data: pass data= a torch DataLoader of (x, y) batches "
            "or one (x, y) batch")


def _ratio_method(spec) -> Method | None:
    if isinstance(spec, str) and spec.startswith("ratios:"):
        m = get_method(spec.split(":", 1)[1])
        if m.kind == "masks":
            raise ValueError(f"allocation {spec!r} needs a method that ranks weights globally; "
                             f"{m.name!r} builds masks directly")
        return m
    return None


def _order_in_topology(ctx) -> tuple[str | None, str | None]:
    """First and last prunable layer in topological order, if they are being pruned."""
    layers = ctx.topology().layers
    active = set(ctx.active_names)
    first, last = layers[0].param, layers[-1].param
    return (first if first in active else None), (last if last in active else None)


def _resolve_allocation(spec, ctx: PruneContext, sparsity: float, params,
                        method: Method | None = None, method_params=None) -> dict[str, int]:
    sizes = ctx.sizes
    total = sum(sizes.values())
    keep = A.n_keep(total, sparsity)
    density = keep / total
    if isinstance(spec, Mapping):
        return _dict_budgets(spec, ctx, sparsity, keep)
    ratio = _ratio_method(spec)
    if ratio is not None:
        # the method's own options when it ranks for itself ("synflow" with
        # "ratios:synflow" and rounds=2); another method ranks with its defaults
        params = method_params if method is not None and ratio.name == method.name else \
            ratio.make_params({})
        result = _run(ratio, ctx, sparsity, None, params, {})
        return {n: int(np.count_nonzero(result.masks[n])) for n in sizes}
    shapes = {t.param: t.shape for t in ctx.active}
    dens = A.ALLOCATIONS.get(spec)(shapes, density, lambda: _order_in_topology(ctx), params)
    return A.counts_from_densities(sizes, dens, keep)


def _dict_budgets(spec: Mapping, ctx: PruneContext, sparsity: float, keep: int) -> dict[str, int]:
    """Counts of a ``{name: density}`` allocation: each layer within one weight of its
    density (a density of 0 or 1 exactly), refused when no such counts keep ``keep``."""
    sizes = ctx.sizes
    by_module = {t.module: t.param for t in ctx.targets}
    dens, named = {}, {}
    for key, d in spec.items():
        name = by_module.get(key, key)
        if name not in sizes:
            where = "an excluded layer" if name in {t.param for t in ctx.targets} else \
                "not a prunable weight"
            raise ValueError(f"allocation names {key!r}, which is {where}")
        if name in named:
            raise ValueError(f"allocation names layer {name!r} twice ({named[name]!r} and "
                             f"{key!r}); give it once")
        named[name] = key
        if not isinstance(d, numbers.Real) or isinstance(d, bool):
            raise ValueError(  # noqa: TRY004 - ValueError for every bad allocation, as before
                f"allocation density for {key!r} must be a number (a Python or numpy float), "
                f"got {type(d).__name__} {d!r}")
        if not 0.0 <= float(d) <= 1.0:  # NaN fails the comparison
            raise ValueError(f"allocation density for {key!r} must lie in [0, 1], got {d!r}")
        dens[name] = float(d)
    missing = [n for n in sizes if n not in dens]
    if missing:
        raise ValueError(f"allocation dict gives no density for {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; name every pruned layer")
    targets = {n: sizes[n] * dens[n] for n in sizes}
    # every layer within one weight of its target: floor or ceil (tolerant of rounding)
    lo = sum(math.floor(t + 1e-9) for t in targets.values())
    hi = sum(math.ceil(t - 1e-9) for t in targets.values())
    if not lo <= keep <= hi:
        total = sum(sizes.values())
        implied = sum(targets.values())
        span = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"the allocation densities keep {span} weights (each layer within one "
                         f"weight of its density), but sparsity={sparsity:g} keeps {keep} of "
                         f"{total}; pass sparsity={1 - implied / total:.6g}, the densities' own")
    return A.counts_from_densities(sizes, dens, keep)


def _scores_checked(m: Method, raw: dict, ctx: PruneContext) -> dict[str, np.ndarray]:
    out = {}
    for t in ctx.active:
        if t.param not in raw:
            raise RuntimeError(f"method {m.name!r} returned no scores for '{t.param}'")
        s = np.asarray(raw[t.param], dtype=np.float64)
        if s.shape != t.shape:
            raise RuntimeError(f"method {m.name!r} returned scores of shape {s.shape} for "
                               f"'{t.param}', expected {t.shape}")
        check_finite_or_inf(t.param, m.name, s)
        out[t.param] = s
    return out


def _select(scores: dict[str, np.ndarray], alive: dict[str, np.ndarray] | None,
            budgets: dict[str, int] | None, total: int, seed: int, tag,
            workspace: dict | None = None) -> dict[str, np.ndarray]:
    """Keep the top scores among the ``alive`` weights: ``budgets`` per layer, or
    ``total`` over all layers with one threshold."""
    names = list(scores)
    if budgets is not None:
        return {n: select_top([scores[n]], budgets[n], rng_for(seed, "ties", tag, n),
                              None if alive is None else [alive[n]], workspace)[0]
                for n in names}
    kept = select_top([scores[n] for n in names], total, rng_for(seed, "ties", tag),
                      None if alive is None else [alive[n] for n in names], workspace)
    return dict(zip(names, kept))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


#: Progress of the rounds of iterative methods: one INFO record per round, with the
#: ``round`` and ``rounds`` attributes (the command line draws them as a progress bar).
progress_log = logging.getLogger("topo_pai.prune")


def _call(m: Method, ctx: PruneContext, arg, opts: dict, reports: list):
    """Call the method; keep the report of a :class:`MethodOutput`, return its result."""
    out = m.fn(ctx, arg, **opts)
    if isinstance(out, MethodOutput):
        reports.append(out.report)
        return out.result
    return out


def _run(m: Method, ctx: PruneContext, sparsity: float, budgets: dict[str, int] | None,
         params, forwarded: dict) -> PruneResult:
    sizes = ctx.sizes
    total = sum(sizes.values())
    keep = A.n_keep(total, sparsity)
    opts = {**_fields_of(params), **forwarded}
    reports: list = []
    if m.kind == "score":
        scores = _scores_checked(m, _call(m, ctx, None, opts, reports), ctx)
        masks = _select(scores, None, budgets, keep, ctx.seed, "once")
    elif m.kind == "iterative":
        rounds = check_int("rounds", opts.pop("rounds"), minimum=1)
        masks = None  # everything alive before the first round
        workspace: dict = {}
        density = keep / total
        scores = {}
        for r in range(1, rounds + 1):
            alive = masks
            ctx.round = r
            scores = _scores_checked(m, _call(m, ctx, alive, opts, reports), ctx)
            frac = r / rounds
            if budgets is None:
                k_r = keep if r == rounds else _round_half_up(total * density ** frac)
                b_r = None
            else:
                k_r = 0
                b_r = {n: b if r == rounds else _round_half_up(sizes[n] * (b / sizes[n]) ** frac)
                       for n, b in budgets.items()}
            masks = _select(scores, alive, b_r, k_r, ctx.seed, r, workspace)
            if progress_log.isEnabledFor(logging.INFO):
                kept = k_r if b_r is None else sum(b_r.values())
                progress_log.info("%s round %d/%d: %d weights kept", m.name, r, rounds, kept,
                                  extra={"round": r, "rounds": rounds})
        ctx.round = 0  # outside rounds again (a ratios: ranking runs before the method)
        if alive is not None:  # report weights pruned in earlier rounds as -inf
            scores = {n: np.where(alive[n], s, -np.inf) for n, s in scores.items()}
    else:
        if budgets is None:
            raise RuntimeError(f"method {m.name!r} builds masks and needs layer budgets")
        raw = _call(m, ctx, budgets, opts, reports)
        masks = {}
        for t in ctx.active:
            arr = np.asarray(raw[t.param]).astype(bool, copy=False)
            if arr.shape != t.shape:
                raise RuntimeError(f"method {m.name!r} returned a mask of shape {arr.shape} for "
                                   f"'{t.param}', expected {t.shape}")
            got = int(np.count_nonzero(arr))
            if got != budgets[t.param]:
                raise RuntimeError(f"method {m.name!r} kept {got} weights of '{t.param}', but its "
                                   f"budget is {budgets[t.param]}")
            masks[t.param] = arr
        scores = None
    out = {}
    for t in ctx.targets:
        arr = masks.get(t.param)
        out[t.param] = (torch.ones(t.shape, dtype=torch.bool) if arr is None
                        else torch.from_numpy(np.ascontiguousarray(arr, dtype=bool)))
    return PruneResult(Masks._trusted(out), scores, budgets, m.name, sparsity,
                       reports[-1] if reports else None)


def _check_allocation_spec(spec) -> None:
    if spec is None or isinstance(spec, Mapping) or _ratio_method(spec) is not None:
        return
    names = A.ALLOCATIONS.names()
    if not isinstance(spec, str):
        raise ValueError(f"allocation must be one of {', '.join(names)}, "
                         f"'ratios:<method>' or a dict name -> density; got {spec!r}")
    if spec not in A.ALLOCATIONS:
        raise ValueError(f"unknown allocation {spec!r}; valid: {', '.join(names)}, "
                         "'ratios:<method>' (e.g. 'ratios:snip') or a dict name -> density")


def _plan(method, scope, allocation, options: dict):
    """What can be checked without the model: the method, scope, allocation and options."""
    m = get_method(method)
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if m.budgets_from_option is not None:
        if allocation is not None or scope != "global":
            raise ValueError(f"method {m.name!r} keeps the per-layer counts of its "
                             f"{m.budgets_from_option!r} option; do not pass allocation or scope")
        spec = None
    else:
        spec = allocation if allocation is not None else (
            "uniform" if scope == "layer" else m.default_allocation)
    _check_allocation_spec(spec)
    ratio = _ratio_method(spec)
    needs_data = m.needs_data or (ratio is not None and ratio.needs_data)
    return m, spec, ratio, needs_data, _split_options(m, options, spec, needs_data)


def check_options(method: str, *, scope: str = "global", allocation=None, exclude=(),
                  **options) -> None:
    """Check what :func:`prune` can check before it sees a model: the method name, ``scope``,
    ``allocation``, the form of ``exclude``, the options' names, and their values: the
    method's, the allocation's and the data options' dataclasses are built, as
    :func:`prune` builds them. Raises the errors :func:`prune` would raise, before any
    model is built (sweeps and the command line call it before they write anything).

    What needs the model is left to :func:`prune`: the layers ``exclude`` and a dict
    ``allocation`` name, the dict's densities, the layer names of NPB's ``K`` mapping,
    shuffle's ``masks``, whether ``input_shape`` fits the model, and the data.

    >>> check_options("random", allocation="erk", erk_power=0.5)
    >>> check_options("snip", max_batches=0)
    Traceback (most recent call last):
    ...
    ValueError: max_batches must be an int >= 1, got 0; None reads every batch of data
    >>> check_options("synflow", rounds=0)
    Traceback (most recent call last):
    ...
    ValueError: method 'synflow': rounds must be an int >= 1, got 0
    """
    exclude_patterns(exclude)
    _plan(method, scope, allocation, options)


def prune_with_scores(model, method: str, sparsity: float, *, input_shape, data=None,
                      seed: int = 0, scope: str = "global", allocation=None, exclude=(),
                      **options) -> PruneResult:
    """Like :func:`prune`, but return a :class:`PruneResult` with the scores too."""
    sparsity = _check_sparsity(sparsity)
    seed = _check_seed(seed)
    input_shape = validate_input_shape(input_shape)  # whatever the method: one check
    m, spec, ratio, needs_data, opts = _plan(method, scope, allocation, options)
    if data is None:
        if m.needs_data:
            raise ValueError(_needs_data_message(m))
        if ratio is not None and ratio.needs_data:
            raise ValueError(_needs_data_message(ratio, f" (ranking for allocation {spec!r})"))
    targets = prunable_targets(model)
    warn_uncovered(model)
    excluded = resolve_exclude(targets, exclude)
    active = [t for t in targets if t.param not in excluded]
    if not active:
        raise ValueError(f"exclude={exclude!r} leaves no prunable weight to prune")
    ctx = PruneContext(model, targets, active, seed, input_shape, data, _fields_of(opts.data))
    if needs_data:
        ctx.batches()  # read and check the data before any scoring work
    if m.budgets_from_option is not None:
        budgets = _budgets_from_masks(m, ctx, getattr(opts.method, m.budgets_from_option),
                                      sparsity)
    elif spec is None:
        budgets = None
    else:
        budgets = _resolve_allocation(spec, ctx, sparsity, opts.allocation, m, opts.method)
    return _run(m, ctx, sparsity, budgets, opts.method, opts.forwarded)


def _budgets_from_masks(m: Method, ctx: PruneContext, masks, sparsity: float) -> dict[str, int]:
    opt = m.budgets_from_option
    if masks is None:
        raise ValueError(f"method {m.name!r} needs the option {opt}= (the masks to shuffle, e.g. "
                         "the output of topo_pai.prune)")
    try:  # None, sparse, meta, 0/1, keys and shapes: the one mask validator
        masks = as_masks(masks, model=ctx.model)
    except MaskError as exc:
        raise MaskError(f"option {opt!r}: {exc}") from None
    budgets = {t.param: t.numel if t.param not in masks else int(masks[t.param].sum())
               for t in ctx.active}  # a layer left out is dense
    total = sum(ctx.sizes.values())
    want = A.n_keep(total, sparsity)
    got = sum(budgets.values())
    if got != want:
        # worded for both callers: prune(..., masks=...) and the command line's --masks
        raise ValueError(f"the masks given to {m.name!r} keep {got} of the {total} prunable "
                         f"weights (sparsity {1 - got / total:.6g}), but sparsity {sparsity:g} "
                         f"keeps {want}: prune at the masks' sparsity, "
                         f"{1 - got / total:.6g}, or give masks that keep {want}")
    return budgets


def prune(model, method: str, sparsity: float, *, input_shape, data=None, seed: int = 0,
          scope: str = "global", allocation=None, exclude=(), **options) -> Masks:
    """Prune ``model`` at initialisation; return its masks (the model is not modified).

    Parameters
    ----------
    model : torch.nn.Module
        Read, never modified (scores needing gradients use a private copy).
        Its current weights are scored: weights already masked read as zero.
    method : str
        One of :func:`available_methods`: ``random``, ``magnitude``, ``snip``,
        ``iter_snip``, ``grasp``, ``synflow``, ``phew``, ``shuffle``.
    sparsity : float
        Fraction of the prunable, non-excluded weights to remove, in ``[0, 1)``.
        Exactly ``floor((1 - sparsity) * N + 0.5)`` weights are kept.
    input_shape : tuple of int
        One sample's shape without the batch dimension, e.g. ``(3, 32, 32)``;
        used by the methods and allocations that read the network's topology.
        Its form (positive ints) is checked whatever the method; whether it fits
        the model, when the model is traced or the data is read.
    data : DataLoader or (x, y), optional
        Needed by ``snip``, ``iter_snip``, ``grasp`` (cross-entropy loss); read
        once into memory, so pass a small pruning set.
    seed : int
        Seeds every random draw and the tie-breaking between equal scores.
    scope : {"global", "layer"}
        Without ``allocation``: one threshold over all layers, or the same
        sparsity in every layer (``"layer"`` is ``allocation="uniform"``).
    allocation : str or dict, optional
        Fixes each layer's kept count; the method then selects within each
        layer: ``"uniform"``, ``"uniform+"``, ``"erk"``, ``"erk+"``,
        ``"ratios:<method>"`` (ranked with this call's options when ``<method>`` is
        ``method``, with its defaults otherwise) or ``{name: density}`` (each layer
        within one weight of its density). See :mod:`topo_pai.pruners.allocation`.
        ``random`` defaults to ``"uniform"`` and ``phew`` to ``"erk"``.
    exclude : iterable of str
        Module names, parameter names or fnmatch patterns kept dense (and left
        out of ``N``).
    **options
        Method options (``rounds``, ``resolution`` -- SynFlow scores the spatially
        unrolled network by default, ``"channel"`` selects the faster channel-graph
        variant --, ``temperature``, ``masks``;
        ``phew`` passes its options to ``topo_pai.pruners.phew.phew_masks``),
        allocation options (``erk_power``, ``erk_include_kernel``,
        ``last_layer_min_density``) and, for data-dependent methods,
        ``max_batches``, ``loss`` (callable ``(logits, y) -> loss``, default
        cross-entropy) and ``train_mode`` (default False: scores are taken in
        eval mode, as the Synaptic-Flow code does). See
        :func:`topo_pai.pruners.describe_methods`.

    Returns
    -------
    Masks
        ``{param name: bool tensor}`` (CPU, the weight's shape) for every
        prunable weight (Linear, Conv1d, Conv2d), excluded ones all ``True``
        (a :class:`~topo_pai.Masks`, a ``dict``).

    Raises
    ------
    ValueError
        Unknown method or option, sparsity outside ``[0, 1)``, missing data,
        bad ``exclude`` or ``allocation``.
    topo_pai.InputShapeError
        ``input_shape`` is not a tuple of positive ints (any method), or does not
        fit the model (methods that trace it) or the data.
    topo_pai.NoPrunableLayerError
        The model has no Linear or Conv layer.

    Examples
    --------
    >>> import torch, topo_pai
    >>> from topo_pai.models import resnet20
    >>> model = resnet20(width=4)
    >>> masks = topo_pai.prune(model, "magnitude", 0.9, input_shape=(3, 32, 32))
    >>> kept = sum(int(m.sum()) for m in masks.values())
    >>> total = sum(m.numel() for m in masks.values())
    >>> kept == round(0.1 * total)
    True
    """
    return prune_with_scores(model, method, sparsity, input_shape=input_shape, data=data,
                             seed=seed, scope=scope, allocation=allocation, exclude=exclude,
                             **options).masks
