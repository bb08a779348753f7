"""Data-free node-path curves: where each pruner puts its masks in the node-path plane.

:func:`node_path_curves` prunes one model with every requested method at every
sparsity (and seed) and records, for each mask, the number of effective nodes
and the log10 number of effective paths -- the two axes of the paper's
node-path plane -- plus the parameter and FLOP counts of the effective
subnetwork. Nothing is trained, so the ``accuracy`` column is ``None``; the
rows use the same columns as the results table of a sweep, so
:mod:`topo_pai.experiments.plotting` draws both.

A method name ending in ``"+shuffle"`` (e.g. ``"snip+shuffle"``) is the
layerwise-shuffled variant of Frankle et al. (2021): prune with the method, then
keep the same number of weights in each layer at uniformly random positions
(``topo_pai.prune(model, "shuffle", s, masks=...)``).

>>> import torch
>>> from topo_pai.experiments.curves import node_path_curves
>>> mlp = lambda: torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(),
...                                   torch.nn.Linear(6, 3))
>>> rows = node_path_curves(mlp, ["random", "magnitude+shuffle"], [0.5], input_shape=(8,))
>>> [(r["method"], r["shuffled"], r["unpruned_params"], r["total_params"]) for r in rows]
[('random', False, 33, 66), ('magnitude', True, 33, 66)]
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

# the row format is defined in schema; its names stay importable from here (public since v0.1)
from topo_pai.experiments.schema import (RESULT_COLUMNS, SHUFFLE_SUFFIX,  # noqa: F401
                                         format_sparsity, trial_id)

#: Size of the synthetic proxy batch given to data-dependent methods when no data is passed.
PROXY_BATCH = 64


def parse_method(name: str) -> tuple[str, bool]:
    """Split ``"snip+shuffle"`` into ``("snip", True)``; check the method exists.

    Parameters
    ----------
    name : str
        A name from :func:`topo_pai.available_methods`, optionally followed by
        ``"+shuffle"``.

    Returns
    -------
    (str, bool)
        The base method and whether its masks are layerwise shuffled.

    Raises
    ------
    ValueError
        Unknown method, or plain ``"shuffle"`` (which needs masks to shuffle).

    Examples
    --------
    >>> parse_method("synflow+shuffle")
    ('synflow', True)
    >>> parse_method("npb")
    ('npb', False)
    """
    import topo_pai

    if not isinstance(name, str):
        raise TypeError(f"method names must be strings, got {name!r}")
    shuffled = name.endswith(SHUFFLE_SUFFIX)
    base = name[: -len(SHUFFLE_SUFFIX)] if shuffled else name
    known = [m for m in topo_pai.available_methods() if m != "shuffle"]
    if base == "shuffle":
        raise ValueError("method 'shuffle' permutes the masks of another method; ask for "
                         "'<method>+shuffle' instead, e.g. 'snip+shuffle'")
    if base not in known:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(known)}, each optionally "
                         f"with the suffix '{SHUFFLE_SUFFIX}' (layerwise-shuffled variant)")
    return base, shuffled


def topology_record(model, masks, input_shape, *, resolution: str = "channel",
                    topology=None) -> dict:
    """The topology columns of one trial row for ``model`` under ``masks``.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified.
    masks : dict
        ``{param name: 0/1 tensor}``, e.g. from :func:`topo_pai.prune`.
    input_shape : tuple of int
        One sample's shape without the batch dimension.
    resolution : {"channel", "neuron"}
        Node resolution of ``effective_nodes``, ``n_nodes``, ``log10_paths``,
        ``effective_params`` and ``flops``.
    topology : topo_pai.Topology, optional
        A topology already traced from ``model`` (its masks are replaced), to
        avoid tracing again when many masks of one model are measured.

    Returns
    -------
    dict
        ``effective_nodes``, ``n_nodes``, ``log10_paths`` (``-inf`` when no
        input-output path survives), ``effective_params``, ``unpruned_params``,
        ``total_params`` and ``flops`` (multiply-accumulates of the effective
        subnetwork).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> mask = {"2.weight": torch.zeros(2, 3, dtype=torch.bool)}
    >>> rec = topology_record(net, mask, (4,))
    >>> rec["log10_paths"], rec["effective_nodes"], rec["n_nodes"], rec["unpruned_params"]
    (-inf, 0, 9, 12)
    """
    import topo_pai

    topo = (topology.with_masks(masks) if topology is not None
            else topo_pai.from_torch(model, masks, input_shape))
    return {
        "effective_nodes": int(topo.effective_nodes(resolution)),
        "n_nodes": int(topo.n_nodes(resolution)),
        "log10_paths": float(topo.count_paths(resolution).log10),
        "effective_params": int(topo.effective_params(resolution)),
        "unpruned_params": int(topo.n_unpruned),
        "total_params": int(topo.n_params),
        "flops": int(topo.effective_flops(resolution)),
    }


def proxy_batch(model, input_shape, n: int = PROXY_BATCH, seed: int = 0):
    """A synthetic ``(x, y)`` batch: standard-normal inputs and uniformly random labels.

    This is the *data-free proxy* that :func:`node_path_curves` gives to the
    data-dependent methods (SNIP, Iter-SNIP, GraSP) when no data is passed: their
    masks then show how the method's scoring interacts with the architecture,
    not how it reacts to a real data set. The number of classes is read off one
    forward pass of ``model`` (its last output dimension).

    Examples
    --------
    >>> import torch
    >>> x, y = proxy_batch(torch.nn.Linear(5, 4), (5,), n=8)
    >>> tuple(x.shape), int(y.max()) < 4
    ((8, 5), True)
    """
    import torch

    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(int(n), *input_shape, generator=g)
    was_training = model.training
    model.eval()  # one sample through BatchNorm in training mode would fail
    try:
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[-1])
    finally:
        model.train(was_training)
    y = torch.randint(0, n_classes, (int(n),), generator=g)
    return x, y


def _model_name(model_fn, model) -> str:
    fn = getattr(model_fn, "func", model_fn)  # functools.partial
    name = getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        name = type(model).__name__
    return name


def _check_sparsities(sparsities) -> list[float]:
    if isinstance(sparsities, numbers.Real):
        sparsities = [sparsities]
    out = []
    for s in sparsities:
        ok = isinstance(s, numbers.Real) and not isinstance(s, bool)
        if not ok or not 0.0 <= float(s) < 1.0:
            raise ValueError(f"sparsities must be fractions in [0, 1) (e.g. 0.9 for 90%), got "
                             f"{s!r}")
        out.append(float(s))
    if not out:
        raise ValueError("sparsities is empty; pass e.g. [0.9, 0.99]")
    return out


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        out.append(int(s))
    if not out:
        raise ValueError("seeds is empty; pass e.g. (0,) or (0, 1, 2)")
    return out


def node_path_curves(model_fn: Callable, methods: Sequence[str], sparsities: Iterable[float], *,
                     input_shape, seeds=(0,), data=None, resolution: str = "channel",
                     progress: bool = False, options: Mapping[str, Mapping] | None = None,
                     model_name: str | None = None, dataset: str | None = None) -> list[dict]:
    """Prune with every method at every sparsity and seed; record the node-path point.

    Parameters
    ----------
    model_fn : callable
        ``model_fn()`` returns a fresh, untrained ``torch.nn.Module``. It is
        called once per seed, after ``torch.manual_seed(seed)``, so every method
        prunes the same initial weights for a given seed (pruning never modifies
        the model).
    methods : sequence of str
        Names from :func:`topo_pai.available_methods` (except ``"shuffle"``),
        each optionally suffixed ``"+shuffle"`` for its layerwise-shuffled variant.
    sparsities : iterable of float
        Fractions of prunable weights removed, each in ``[0, 1)``.
    input_shape : tuple of int
        One sample's shape without the batch dimension, e.g. ``(3, 32, 32)``.
    seeds : iterable of int
        Seeds of the initialisation, the pruner's random draws and the shuffle.
    data : DataLoader or (x, y), optional
        Pruning data for the data-dependent methods (``snip``, ``iter_snip``,
        ``grasp``). If ``None``, each seed gets a synthetic proxy batch from
        :func:`proxy_batch` (standard-normal inputs, random labels): the curves
        stay data-free, at the price of showing those methods' mechanics rather
        than their behaviour on a real data set.
    resolution : {"channel", "neuron"}
        Node resolution of the recorded counts (the paper uses channels).
    progress : bool
        Print one line per trial to stderr (method, sparsity, seed, seconds).
    options : dict, optional
        Per-method keyword options for :func:`topo_pai.prune`, keyed by base
        method name, e.g. ``{"iter_snip": {"rounds": 20}}``.
    model_name, dataset : str, optional
        Recorded in the ``model`` and ``dataset`` columns. Defaults: the name of
        ``model_fn`` (or of the model's class), and ``"synthetic"`` when
        ``data`` is ``None`` else ``"custom"``.

    Returns
    -------
    list of dict
        One row per (method, sparsity, seed), in that nesting order, with the
        columns :data:`RESULT_COLUMNS`; ``method`` is the base method and
        ``shuffled`` tells the variant; ``accuracy`` is ``None``.

    Raises
    ------
    ValueError
        Unknown method or option, sparsity outside ``[0, 1)``, bad seeds or
        empty ``methods``.
    TypeError
        ``model_fn()`` does not return a ``torch.nn.Module``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                             nn.Linear(4 * 6 * 6, 3))
    >>> rows = node_path_curves(net, ["snip", "synflow"], [0.5, 0.9], input_shape=(1, 8, 8),
    ...                         options={"synflow": {"rounds": 5}})
    >>> [(r["method"], r["sparsity"]) for r in rows]
    [('snip', 0.5), ('snip', 0.9), ('synflow', 0.5), ('synflow', 0.9)]
    >>> rows[0]["model"], rows[0]["dataset"]
    ('Sequential', 'synthetic')
    >>> all(r["effective_nodes"] <= r["n_nodes"] for r in rows)
    True
    """
    import torch

    import topo_pai
    from topo_pai.pruners import get_method

    if isinstance(methods, str):
        methods = [methods]
    parsed = [(m, *parse_method(m)) for m in methods]
    if not parsed:
        raise ValueError("methods is empty; pass e.g. ['random', 'synflow', 'npb']")
    sparsities = _check_sparsities(sparsities)
    seeds = _check_seeds(seeds)
    options = dict(options or {})
    known = {base for _, base, _ in parsed}
    stray = [k for k in options if k not in known]
    if stray:
        raise ValueError(f"options given for {stray}, which are not among the methods "
                         f"{sorted(known)}; key options by base method name (e.g. 'snip')")
    bad = [k for k, v in options.items() if not isinstance(v, Mapping)]
    if bad:
        raise ValueError(f"options[{bad[0]!r}] must be a dict of keyword options for "
                         f"topo_pai.prune, e.g. {{'rounds': 20}}; got {options[bad[0]]!r}")
    needs_data = {m for m in known if get_method(m).needs_data}

    rows: list[dict] = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = model_fn()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model_fn() must return a torch.nn.Module, got "
                             f"{type(model).__name__}")
        name = model_name or _model_name(model_fn, model)
        batch = data
        if batch is None and needs_data:
            batch = proxy_batch(model, input_shape, seed=seed)
        ds = dataset or ("synthetic" if data is None else "custom")
        topo = topo_pai.from_torch(model, {}, input_shape)
        # The base masks are pruned once per (method, sparsity) and shared by the
        # method and its "+shuffle" variant: iterative pruners are the slow part.
        bases = list(dict.fromkeys(base for _, base, _ in parsed))
        for base in bases:
            opts = dict(options.get(base, {}))
            for s in sparsities:
                t0 = time.perf_counter()
                base_masks = topo_pai.prune(model, base, s, input_shape=input_shape,
                                            data=batch if base in needs_data else None,
                                            seed=seed, **opts)
                for label in dict.fromkeys(lab for lab, b, _ in parsed if b == base):
                    shuffled = label.endswith(SHUFFLE_SUFFIX)
                    masks = base_masks
                    if shuffled:
                        masks = topo_pai.prune(model, "shuffle", s, input_shape=input_shape,
                                               masks=base_masks, seed=seed)
                    rec = topology_record(model, masks, input_shape, resolution=resolution,
                                          topology=topo)
                    rows.append({
                        # the sweep's trial-id format, so curves and sweep rows never collide
                        "trial_id": trial_id(name, base, shuffled, s, seed),
                        "model": name, "dataset": ds, "method": base, "shuffled": shuffled,
                        "sparsity": s, "seed": seed, **rec, "accuracy": None,
                    })
                    if progress:
                        lp = rec["log10_paths"]
                        print(f"[curves] {name} {label:>20s} {100 * s:7.3f}% seed {seed}: "
                              f"nodes {rec['effective_nodes']:6d}  log10 paths "
                              f"{lp if math.isinf(lp) else round(lp, 2)!s:>7}  "
                              f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr,
                              flush=True)
    # reorder to method, sparsity, seed nesting
    order: dict[str, int] = {}
    for lab, _, _ in parsed:
        order.setdefault(lab, len(order))
    rows.sort(key=lambda r: (order[r["method"] + (SHUFFLE_SUFFIX if r["shuffled"] else "")],
                             r["sparsity"], r["seed"]))
    return rows
