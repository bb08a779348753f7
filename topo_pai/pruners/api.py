"""``prune``: validation, layer budgets, thresholding and rounds shared by every method."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from topo_pai.checks import check_bool, check_int, did_you_mean
from topo_pai.coverage import warn_uncovered
from topo_pai.graph.masks import check_mask_value
from topo_pai.pruners import allocation as A
from topo_pai.pruners.context import PruneContext, prunable_targets, resolve_exclude
from topo_pai.pruners.registry import Method, get_method
from topo_pai.pruners.select import check_finite_or_inf, rng_for, select_top

SCOPES = ("global", "layer")
#: Options of every data-dependent method (read by the gradient scores).
DATA_OPTIONS = {"max_batches": None, "loss": None, "train_mode": False}


@dataclass
class PruneResult:
    """What :func:`prune_with_scores` returns.

    Attributes
    ----------
    masks : dict
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

    masks: dict
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


def _split_options(m: Method, options: dict, allocation_spec, needs_data: bool):
    """Method options (with defaults), allocation options and data options."""
    valid = dict(m.options)
    if needs_data:
        valid.update(DATA_OPTIONS)
    valid.update(A.ALLOCATION_OPTIONS)
    unknown = [k for k in options if k not in valid]
    if unknown and not m.forwards_options:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                         f"{m.name!r};{did_you_mean(unknown[0], valid)} valid options: "
                         f"{', '.join(sorted(valid)) or 'none'}")
    spec = allocation_spec if isinstance(allocation_spec, str) else None
    for key in options:
        if key.startswith("erk_") and spec not in ("erk", "erk+"):
            raise ValueError(f"option {key!r} applies to allocation 'erk'/'erk+', but the "
                             f"allocation is {allocation_spec!r}")
        if key == "last_layer_min_density" and spec != "uniform+":
            raise ValueError(f"option 'last_layer_min_density' applies to allocation 'uniform+', "
                             f"but the allocation is {allocation_spec!r}")
    method_opts = {k: options.get(k, v) for k, v in m.options.items()}
    method_opts.update({k: v for k, v in options.items() if k in unknown})
    alloc_opts = A.check_allocation_options(
        {k: options.get(k, v) for k, v in A.ALLOCATION_OPTIONS.items()})
    data_opts = _check_data_options({k: options.get(k, v) for k, v in DATA_OPTIONS.items()})
    return method_opts, alloc_opts, data_opts


def _check_data_options(opts: dict) -> dict:
    out = dict(opts)
    if out["max_batches"] is not None:
        out["max_batches"] = check_int("max_batches", out["max_batches"], minimum=1,
                                       hint="None reads every batch of data")
    out["train_mode"] = check_bool("train_mode", out["train_mode"])
    if out["loss"] is not None and not callable(out["loss"]):
        raise ValueError(f"loss must be a callable (logits, y) -> scalar loss, or None for "
                         f"cross-entropy; got {out['loss']!r}")
    return out


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


def _resolve_allocation(spec, ctx: PruneContext, sparsity: float, aopts: dict) -> dict[str, int]:
    sizes = ctx.sizes
    total = sum(sizes.values())
    keep = A.n_keep(total, sparsity)
    density = keep / total
    if isinstance(spec, Mapping):
        by_module = {t.module: t.param for t in ctx.targets}
        dens = {}
        for key, d in spec.items():
            name = by_module.get(key, key)
            if name not in sizes:
                where = "an excluded layer" if name in {t.param for t in ctx.targets} else \
                    "not a prunable weight"
                raise ValueError(f"allocation names {key!r}, which is {where}")
            if (not isinstance(d, numbers.Real) or isinstance(d, bool)
                    or not 0.0 <= float(d) <= 1.0):  # NaN fails the comparison
                raise ValueError(f"allocation density for {key!r} must lie in [0, 1], got {d!r}")
            dens[name] = float(d)
        missing = [n for n in sizes if n not in dens]
        if missing:
            raise ValueError(f"allocation dict gives no density for {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; name every pruned layer")
        implied = sum(sizes[n] * dens[n] for n in sizes)
        if abs(implied - keep) > len(sizes):
            raise ValueError(f"the allocation densities keep {implied:.0f} weights, but "
                             f"sparsity={sparsity:g} keeps {keep} of {total}")
        return A.counts_from_densities(sizes, dens, keep)
    ratio = _ratio_method(spec)
    if ratio is not None:
        result = _run(ratio, ctx, sparsity, None, {k: v for k, v in ratio.options.items()})
        return {n: int(np.count_nonzero(result.masks[n])) for n in sizes}
    if spec == "uniform":
        dens = {n: density for n in sizes}
    elif spec == "uniform+":
        first, last = _order_in_topology(ctx)
        dens = A.uniform_plus_densities(sizes, density, first=first, last=last,
                                        last_min_density=float(aopts["last_layer_min_density"]))
    elif spec in ("erk", "erk+"):
        shapes = {t.param: t.shape for t in ctx.active}
        dense = ()
        if spec == "erk+":
            _, last = _order_in_topology(ctx)
            dense = () if last is None else (last,)
        dens = A.erk_densities(shapes, density, power=float(aopts["erk_power"]),
                               include_kernel=bool(aopts["erk_include_kernel"]), dense=dense)
    else:  # _check_allocation_spec let only the names above through
        raise AssertionError(f"allocation {spec!r} passed the checks but is not handled")
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


def _run(m: Method, ctx: PruneContext, sparsity: float, budgets: dict[str, int] | None,
         method_opts: dict) -> PruneResult:
    sizes = ctx.sizes
    total = sum(sizes.values())
    keep = A.n_keep(total, sparsity)
    if m.kind == "score":
        scores = _scores_checked(m, m.fn(ctx, None, **method_opts), ctx)
        masks = _select(scores, None, budgets, keep, ctx.seed, "once")
    elif m.kind == "iterative":
        opts = dict(method_opts)
        rounds = check_int("rounds", opts.pop("rounds"), minimum=1)
        masks = None  # everything alive before the first round
        workspace: dict = {}
        density = keep / total
        scores = {}
        for r in range(1, rounds + 1):
            alive = masks
            scores = _scores_checked(m, m.fn(ctx, alive, **opts), ctx)
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
        if alive is not None:  # report weights pruned in earlier rounds as -inf
            scores = {n: np.where(alive[n], s, -np.inf) for n, s in scores.items()}
    else:
        if budgets is None:
            raise RuntimeError(f"method {m.name!r} builds masks and needs layer budgets")
        raw = m.fn(ctx, budgets, **method_opts)
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
    return PruneResult(out, scores, budgets, m.name, sparsity, ctx.cache.get("report"))


def _check_allocation_spec(spec) -> None:
    if spec is None or isinstance(spec, Mapping) or _ratio_method(spec) is not None:
        return
    if not isinstance(spec, str):
        raise ValueError(f"allocation must be one of {', '.join(A.NAMED_ALLOCATIONS)}, "
                         f"'ratios:<method>' or a dict name -> density; got {spec!r}")
    if spec not in A.NAMED_ALLOCATIONS:
        raise ValueError(f"unknown allocation {spec!r}; valid: {', '.join(A.NAMED_ALLOCATIONS)}, "
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
    method_opts, alloc_opts, data_opts = _split_options(m, options, spec, needs_data)
    return m, spec, ratio, needs_data, method_opts, alloc_opts, data_opts


def check_options(method: str, *, scope: str = "global", allocation=None, **options) -> None:
    """Check what :func:`prune` can check before it sees a model: the method name, ``scope``,
    ``allocation`` and the options' names, and the values of the allocation and data
    options. Raises the errors :func:`prune` would raise.

    >>> check_options("random", allocation="erk", erk_power=0.5)
    >>> check_options("snip", max_batches=0)
    Traceback (most recent call last):
    ...
    ValueError: max_batches must be an int >= 1, got 0; None reads every batch of data
    """
    _plan(method, scope, allocation, options)


def prune_with_scores(model, method: str, sparsity: float, *, input_shape, data=None,
                      seed: int = 0, scope: str = "global", allocation=None, exclude=(),
                      **options) -> PruneResult:
    """Like :func:`prune`, but return a :class:`PruneResult` with the scores too."""
    sparsity = _check_sparsity(sparsity)
    seed = _check_seed(seed)
    m, spec, ratio, needs_data, method_opts, alloc_opts, data_opts = _plan(
        method, scope, allocation, options)
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
    ctx = PruneContext(model, targets, active, seed, input_shape, data,
                       {**data_opts, **alloc_opts})
    if needs_data:
        ctx.batches()  # read and check the data before any scoring work
    if m.budgets_from_option is not None:
        budgets = _budgets_from_masks(m, ctx, method_opts.get(m.budgets_from_option), sparsity)
    elif spec is None:
        budgets = None
    else:
        budgets = _resolve_allocation(spec, ctx, sparsity, alloc_opts)
    return _run(m, ctx, sparsity, budgets, method_opts)


def _budgets_from_masks(m: Method, ctx: PruneContext, masks, sparsity: float) -> dict[str, int]:
    opt = m.budgets_from_option
    if masks is None:
        raise ValueError(f"method {m.name!r} needs the option {opt}= (the masks to shuffle, e.g. "
                         "the output of topo_pai.prune)")
    if not isinstance(masks, Mapping):
        raise ValueError(f"option {opt!r} must be a dict param name -> mask, got "
                         f"{type(masks).__name__}")
    known = {t.param: t for t in ctx.targets}
    unknown = [k for k in masks if k not in known]
    if unknown:
        raise ValueError(f"option {opt!r} names {unknown[:5]}, which are not prunable weights")
    for name, arr in masks.items():
        check_mask_value(name, arr)  # None, sparse or meta: an error, never "dense"
    budgets = {}
    for t in ctx.active:
        arr = masks.get(t.param)
        if arr is None:  # left out: dense
            budgets[t.param] = t.numel
            continue
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if arr.shape != t.shape:
            raise ValueError(f"mask for '{t.param}' in option {opt!r} has shape {arr.shape}, "
                             f"expected {t.shape}")
        budgets[t.param] = int(np.count_nonzero(arr))
    total = sum(ctx.sizes.values())
    want = A.n_keep(total, sparsity)
    got = sum(budgets.values())
    if got != want:
        raise ValueError(f"the masks in option {opt!r} keep {got} of the {total} pruned weights "
                         f"(sparsity {1 - got / total:.6g}), but sparsity={sparsity:g} keeps "
                         f"{want}")
    return budgets


def prune(model, method: str, sparsity: float, *, input_shape, data=None, seed: int = 0,
          scope: str = "global", allocation=None, exclude=(), **options) -> dict:
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
        ``"ratios:<method>"`` or ``{name: density}``. See
        :mod:`topo_pai.pruners.allocation`. ``random`` defaults to
        ``"uniform"`` and ``phew`` to ``"erk"``.
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
    dict
        ``{param name: bool tensor}`` (CPU, the weight's shape) for every
        prunable weight (Linear, Conv1d, Conv2d), excluded ones all ``True``.

    Raises
    ------
    ValueError
        Unknown method or option, sparsity outside ``[0, 1)``, missing data,
        bad ``exclude`` or ``allocation``.
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
