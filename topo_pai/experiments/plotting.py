"""Figures of the node-path plane and of sweep results (needs ``pip install topo_pai[plot]``).

Every function takes *records*: one dict per trial with the columns of a
sweep's results table (``topo-pai sweep``) or of
:func:`topo_pai.experiments.curves.node_path_curves` -- ``method``,
``shuffled``, ``sparsity`` (a fraction), ``seed``, ``effective_nodes``,
``n_nodes``, ``log10_paths`` (``-inf`` when no path survives), ``accuracy`` (a
fraction, or ``None``/NaN when nothing was trained), ... -- or a path to a
``results.csv`` / ``results.json`` (see :func:`load_results`). Each function
returns the matplotlib :class:`~matplotlib.figure.Figure`. Records missing a
needed column, or no records at all, raise :class:`ValueError` naming what is
missing; records that are not dicts raise :class:`TypeError`.

Seeds are aggregated: a point is the mean over seeds of ``ln(effective nodes)``
and of ``log10(effective paths)`` (the plotted coordinates), and the accuracy is
the mean with its sample standard deviation as error bar. Seeds whose mask has
no input-output path have no position in the plane: they are left out of the
mean and counted; a point whose every seed has no path is drawn as a ``v``
marker on the bottom edge of its panel, never silently dropped.

The axes follow the paper (Pham et al., NeurIPS 2023): x is the natural log of
the effective nodes (channels), y is log10 of the effective paths. matplotlib
is imported only when a figure is drawn, so ``import topo_pai.experiments.plotting`` works
without it. Reading results tables is :mod:`topo_pai.experiments.results_table`, the
means over seeds :mod:`topo_pai.experiments.aggregation`; ``load_results``,
``aggregate`` and ``method_label`` are importable from here too.

>>> from topo_pai.experiments.plotting import aggregate
>>> rows = [dict(method="snip", sparsity=0.9, seed=s, effective_nodes=100,
...              log10_paths=p, accuracy=a) for s, p, a in [(0, 10.0, 0.8), (1, 12.0, 0.9)]]
>>> g = aggregate(rows)[0]
>>> g["label"], g["log10_paths"], round(g["accuracy"], 2), g["n_seeds"]
('snip', 11.0, 0.85, 2)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

from topo_pai.experiments.aggregation import (
    METHOD_ORDER,
    aggregate,
    as_records,
    float_or_nan,
    method_label,
    method_rank,
    one_model,
    require_columns,
    sparsity_key,
)
from topo_pai.experiments.results_table import load_results, parse_float

__all__ = [
    "aggregate",
    "load_results",
    "method_label",
    "method_style",
    "plot_accuracy_vs_sparsity",
    "plot_node_path_curves",
    "plot_node_path_plane",
    "plot_shuffle_comparison",
]


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "p", "<", ">")
_NO_PATH_MARKER = "v"
NODE_AXIS = "ln(effective nodes)"
PATH_AXIS = "log10(effective paths)"


def _plt():
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("topo_pai.experiments.plotting needs matplotlib: pip install topo_pai[plot] "
                          "(or pip install matplotlib)") from exc
    del matplotlib
    return plt


def _sparsity_label(s: float) -> str:
    return f"{100 * s:.4g}%"


def method_style(method: str, methods: Iterable[str] = ()) -> tuple:
    """``(colour, marker)`` of a method: the built-in ones keep theirs across figures.

    ``methods`` are all methods of the figure; methods outside
    :data:`METHOD_ORDER` take the next slots in sorted order.

    >>> method_style("random")
    ('C0', 'o')
    >>> method_style("mine", ["mine", "npb"])
    ('C9', 'p')
    """
    others = sorted({m for m in methods if m not in METHOD_ORDER} | (
        set() if method in METHOD_ORDER else {method}))
    i = method_rank(method, others)
    return f"C{i % 10}", _MARKERS[i % len(_MARKERS)]


# ---------------------------------------------------------------------- helpers
def _density_axis(ax, sparsities: list[float]) -> None:
    """x = density 1 - s on a log scale, reversed so sparsity grows to the right,
    with ticks labelled by the sparsities (68.38, 90, 96.84, 99, 99.68 % are
    evenly spaced: the density shrinks by sqrt(10) per step)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    dens = sorted({1.0 - s for s in sparsities}, reverse=True)
    lo, hi = min(dens), max(dens)
    pad = (hi / lo) ** 0.06 if hi > lo else 1.5
    ax.set_xlim(hi * pad, lo / pad)  # reversed: dense on the left; set before the log scale
    ax.set_xscale("log")             # so a single point never gives singular limits
    ax.xaxis.set_major_locator(FixedLocator(dens))
    ax.xaxis.set_major_formatter(FixedFormatter([_sparsity_label(1.0 - d) for d in dens]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("sparsity (log scale of density)")
    if len(dens) > 4:
        for t in ax.get_xticklabels():
            t.set_rotation(30)


def _mark_no_path_bottom(ax, x, color, marker_edge=None, label=None):
    """A marker on the bottom edge at data-x ``x`` (blended transform: y in axes units);
    several at one x are stacked upwards so none hides another."""
    stack = ax.__dict__.setdefault("_topo_pai_no_path_stack", {})
    k = stack[x] = stack.get(x, -1) + 1
    (line,) = ax.plot([x], [0.02 + 0.045 * k], linestyle="", marker=_NO_PATH_MARKER,
                      markersize=8,
                      color=color, markeredgecolor=marker_edge or color,
                      transform=ax.get_xaxis_transform(), clip_on=False, label=label)
    line.set_gid("no-path")
    return line


def _reserve_bottom_band(ax) -> None:
    """Lower the y limit so the stacked no-path markers sit below every data point."""
    stack = ax.__dict__.get("_topo_pai_no_path_stack")
    if not stack:
        return
    frac = 0.05 + 0.045 * max(stack.values())  # axes height the markers take
    lo, hi = ax.get_ylim()
    ax.set_ylim(hi - (hi - lo) / (1.0 - frac), hi)


def _mark_no_path_row(ax, entries, ys=()) -> list:
    """Groups without any path have no x either (no effective node): list them as
    markers along the bottom-left edge, in axes units, with a 'no path' caption.
    ``ys`` are the plotted y values: the y range is widened below them so the
    markers sit in an empty band."""
    lines = []
    if not entries:
        return lines
    ys = [y for y in ys if np.isfinite(y)]
    if ys:
        lo, hi = min(ys), max(ys)
        span = (hi - lo) or max(1.0, abs(hi))
        ax.set_ylim(lo - 0.22 * span, hi + 0.1 * span)
    ax.text(0.02, 0.06, "no path:", transform=ax.transAxes, fontsize=7, va="bottom",
            color="0.3")
    for k, (label, color, hollow) in enumerate(entries):
        (line,) = ax.plot([0.04 + 0.045 * k], [0.025], linestyle="", marker=_NO_PATH_MARKER,
                          markersize=8, color=color,
                          markerfacecolor="none" if hollow else color,
                          transform=ax.transAxes, clip_on=False, label=f"no path: {label}")
        line.set_gid("no-path")
        lines.append(line)
    return lines


def _legend_handles(groups: list[dict], methods: list[str], *, lines: bool = False) -> list:
    from matplotlib.lines import Line2D

    seen, handles = set(), []
    for g in groups:
        if g["label"] in seen:
            continue
        seen.add(g["label"])
        color, marker = method_style(g["method"], methods)
        handles.append(Line2D([], [], color=color, marker=marker,
                              linestyle=("--" if g["shuffled"] else "-") if lines else "",
                              markerfacecolor="none" if g["shuffled"] else color,
                              label=g["label"]))
    return handles


def _panel_grid(plt, n: int, width: float = 4.6, height: float = 4.0):
    """``n`` panels in rows of up to three; the first unused grid cell (if any) is
    returned blank, as a place for the legend."""
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1.2, height * nrows),
                             squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    spare = flat[n] if len(flat) > n else None
    for extra in flat[n + 1:]:
        fig.delaxes(extra)
    if spare is not None:
        spare.axis("off")
        spare.set_label("<legend>")
    return fig, flat[:n], spare


def _annotate_points(ax, points, fontsize=7, color="0.15") -> None:
    """Write ``(x, y, text)`` labels; points closer than 1.5 % of the axis spans share
    one label ("phew, npb") instead of printing on top of each other."""
    if not points:
        return
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    dx = (max(xs) - min(xs)) or 1.0
    dy = (max(ys) - min(ys)) or 1.0
    merged: list[list] = []
    for x, y, text in points:
        for m in merged:
            if abs(m[0] - x) < 0.015 * dx and abs(m[1] - y) < 0.015 * dy:
                m[2].append(text)
                break
        else:
            merged.append([x, y, [text]])
    for x, y, texts in merged:
        ax.annotate(", ".join(texts), (x, y), xytext=(6, 5), textcoords="offset points",
                    fontsize=fontsize, color=color)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ----------------------------------------------------------------------- figures
def plot_node_path_plane(records, *, ax=None, sparsity=None, color="accuracy", annotate=True,
                         model=None, cmap="viridis"):
    """The paper's node-path plane: ln(effective nodes) vs log10(effective paths).

    One point per method (and shuffled variant) and sparsity, at the mean over
    seeds. With accuracies (and ``color="accuracy"``) the bubbles are filled by
    accuracy (shared colour bar), sized by it and annotated with it, and edged in
    the method's colour; otherwise they are filled with the method's colour.
    Shuffled variants are hollow in the method colour when not coloured by
    accuracy, and labelled ``"<method> (shuffled)"``. In the paper, path-heavy
    methods (SynFlow, Iter-SNIP) sit top-left, node-heavy ones (random, PHEW)
    bottom-right, and NPB in between.

    Parameters
    ----------
    records : list of dict or path
        Needs ``method``, ``sparsity``, ``effective_nodes``, ``log10_paths``;
        optional ``shuffled``, ``seed``, ``accuracy``, ``model``.
    ax : matplotlib Axes, optional
        Draw into it (then a single sparsity is required).
    sparsity : float, optional
        Plot only this sparsity (a fraction). If None and the records hold
        several, one panel per sparsity is drawn.
    color : {"accuracy", "method"}
        Fill by accuracy (when any is present) or by method.
    annotate : bool
        Write the accuracy (in %) next to each bubble, or, without accuracies,
        the method label.
    model : str, optional
        Select the records of one model (required when several are present).
    cmap : str
        Colour map of the accuracy.

    Returns
    -------
    matplotlib.figure.Figure
        Panels are the axes labelled ``"node-path plane"`` (a spare grid cell,
        labelled ``"<legend>"``, holds the legend; the colour bar is labelled
        ``"<colorbar>"``); the bubbles of a group are a scatter collection
        labelled like the group, and groups with no path at all are ``v``
        markers with gid ``"no-path"``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [dict(method=m, sparsity=0.9, seed=0, effective_nodes=n, log10_paths=p,
    ...              accuracy=a) for m, n, p, a in [("synflow", 100, 30.0, 0.85),
    ...                                             ("random", 700, 20.0, 0.80)]]
    >>> fig = plot_node_path_plane(rows)
    >>> [c.get_label() for c in fig.axes[0].collections]
    ['random', 'synflow']
    """
    plt = _plt()
    from matplotlib.colors import Normalize
    from matplotlib.ticker import PercentFormatter

    _check_choice("color", color, ("accuracy", "method"))
    rows = one_model(as_records(records), model)
    require_columns(rows, ("method", "sparsity", "effective_nodes", "log10_paths"),
                    "plot_node_path_plane")
    present = sorted({sparsity_key(r["sparsity"]) for r in rows})
    if sparsity is not None:
        if not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be a fraction in [0, 1) (e.g. 0.99), got "
                             f"{sparsity!r}")
        if sparsity_key(sparsity) not in present:
            raise ValueError(f"no record has sparsity {sparsity!r}; present: {present}")
        present = [sparsity_key(sparsity)]
    elif ax is not None and len(present) > 1:
        raise ValueError(f"the records hold {len(present)} sparsities {present}; with ax= pick "
                         "one with sparsity=..., or leave ax=None for one panel per sparsity")
    groups = aggregate([r for r in rows if sparsity_key(r["sparsity"]) in present])
    methods = sorted({g["method"] for g in groups})
    # the colour scale spans the drawn bubbles: a collapsed mask's chance-level
    # accuracy would otherwise squeeze every bubble into one end of it
    accs = [g["accuracy"] for g in groups
            if np.isfinite(g["accuracy"]) and g["n_no_path"] < g["n_seeds"]]
    by_acc = color == "accuracy" and bool(accs)
    norm = None
    if by_acc:
        lo, hi = min(accs), max(accs)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.01, hi + 0.01
        norm = Normalize(lo, hi)

    spare = None
    if ax is None:
        fig, axes, spare = _panel_grid(plt, len(present))
    else:
        fig, axes = ax.figure, [ax]
    title_model = next((str(r["model"]) for r in rows if "model" in r), None)
    for pax, s in zip(axes, present):
        pax.set_label("node-path plane")
        no_path, notes = [], []
        for g in (g for g in groups if g["sparsity"] == s):
            c, marker = method_style(g["method"], methods)
            if g["n_no_path"] == g["n_seeds"]:
                no_path.append((g["label"], c, g["shuffled"] and not by_acc))
                continue
            acc = g["accuracy"]
            if by_acc and np.isfinite(acc):
                size = 80 + 320 * float(norm(acc))
                pax.scatter([g["ln_nodes"]], [g["log10_paths"]], c=[acc], cmap=cmap, norm=norm,
                            s=size, marker=marker, edgecolors=c,
                            linewidths=2.2 if not g["shuffled"] else 1.2,
                            linestyle="--" if g["shuffled"] else "-", label=g["label"],
                            zorder=3)
            else:
                pax.scatter([g["ln_nodes"]], [g["log10_paths"]], s=70, marker=marker,
                            facecolors="none" if g["shuffled"] else c, edgecolors=c,
                            linewidths=1.5, label=g["label"], zorder=3)
            if annotate:
                if by_acc and np.isfinite(acc):
                    # the fill is the accuracy, so the text tells the shuffled variant apart
                    text = f"{100 * acc:.1f}" + (" (shuffled)" if g["shuffled"] else "")
                else:
                    text = g["label"]
                if g["n_no_path"]:
                    text += f" ({g['n_no_path']}/{g['n_seeds']} no path)"
                notes.append((g["ln_nodes"], g["log10_paths"], text))
        _annotate_points(pax, notes)
        pax.margins(0.12)
        _mark_no_path_row(pax, no_path, [g["log10_paths"] for g in groups if g["sparsity"] == s])
        pax.set_xlabel(NODE_AXIS)
        pax.set_ylabel(PATH_AXIS)
        where = f"{title_model}, " if title_model else ""
        pax.set_title(f"{where}sparsity {_sparsity_label(s)}", fontsize=10)
        pax.grid(True, alpha=0.3)
    handles = _legend_handles(groups, methods)
    if spare is not None:
        spare.legend(handles=handles, loc="center", fontsize=8, title="method")
    else:
        axes[0].legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    if by_acc:
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, ax=axes, shrink=0.9)
        cb.set_label("accuracy")
        cb.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    return fig


def plot_accuracy_vs_sparsity(records, *, ax=None, model=None, dodge=True):
    """Accuracy against sparsity: mean ± standard deviation over seeds, one line per method.

    Shuffled variants are dashed in their method's colour. The x axis is the
    density ``1 - s`` on a log scale (reversed, so sparsity grows to the right),
    ticked at the sparsities present.

    Parameters
    ----------
    records : list of dict or path
        Needs ``method``, ``sparsity``, ``accuracy`` (at least one value);
        optional ``shuffled``, ``seed``, ``model``. Rows without accuracy are
        ignored.
    ax : matplotlib Axes, optional
    model : str, optional
        Select one model's records (required when several are present).
    dodge : bool
        Shift the lines slightly sideways (line ``i`` of ``n`` by a factor
        ``10 ** (0.012 * (i - (n - 1) / 2))`` of the density) so that error
        bars at one sparsity do not hide each other.

    Returns
    -------
    matplotlib.figure.Figure
        One error-bar container per line, labelled like the group; y in %.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [dict(method="npb", sparsity=s, seed=k, accuracy=a)
    ...         for s, k, a in [(0.9, 0, 0.9), (0.9, 1, 0.8), (0.99, 0, 0.7)]]
    >>> fig = plot_accuracy_vs_sparsity(rows)
    >>> [round(y, 1) for y in fig.axes[0].lines[0].get_ydata()]
    [85.0, 70.0]
    """
    plt = _plt()
    rows = one_model(as_records(records), model)
    require_columns(rows, ("method", "sparsity", "accuracy"), "plot_accuracy_vs_sparsity")
    rows = [r for r in rows if np.isfinite(float_or_nan(r["accuracy"]))]
    if not rows:
        raise ValueError("no record has an accuracy (all None/NaN): the sweep did not train; "
                         "run it with training to plot accuracy")
    groups = aggregate(rows)
    methods = sorted({g["method"] for g in groups})
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    fig = ax.figure
    labels = list(dict.fromkeys(g["label"] for g in groups))
    for i, label in enumerate(labels):
        gs = [g for g in groups if g["label"] == label]
        c, marker = method_style(gs[0]["method"], methods)
        shuffled = gs[0]["shuffled"]
        shift = 10 ** (0.012 * (i - (len(labels) - 1) / 2)) if dodge else 1.0
        ax.errorbar([(1.0 - g["sparsity"]) * shift for g in gs],
                    [100 * g["accuracy"] for g in gs],
                    yerr=[100 * g["accuracy_std"] for g in gs], color=c, marker=marker,
                    markerfacecolor="none" if shuffled else c,
                    linestyle="--" if shuffled else "-", capsize=3, label=label)
    _density_axis(ax, [g["sparsity"] for g in groups])
    ax.set_ylabel("accuracy (%)")
    model_name = next((str(r["model"]) for r in rows if "model" in r), None)
    n_seeds = max(g["n_accuracy"] for g in groups)
    ax.set_title((f"{model_name}: " if model_name else "") + "accuracy vs sparsity"
                 + (f" (mean ± std, {n_seeds} seeds)" if n_seeds > 1 else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.8)
    return fig


def _line_vs_sparsity(ax, gs, key, color, marker, shuffled, label, bottom_when_nan=False):
    xs = [1.0 - g["sparsity"] for g in gs]
    ys = [g[key] for g in gs]
    (line,) = ax.plot(xs, ys, color=color, marker=marker, linestyle="--" if shuffled else "-",
                      markerfacecolor="none" if shuffled else color, label=label)
    if bottom_when_nan:
        for x, g in zip(xs, gs):
            if g["n_no_path"] == g["n_seeds"]:
                _mark_no_path_bottom(ax, x, color)
    return line


def plot_shuffle_comparison(records, *, model=None):
    """Original vs layerwise-shuffled masks, per method: the paper's shuffling study.

    Panels against sparsity (log density axis): accuracy (when any is present),
    effective node ratio (``effective_nodes / n_nodes``) and log10 effective
    paths. Originals are solid, shuffled variants dashed in the same colour;
    only methods with a shuffled variant are drawn. A sparsity at which no seed
    keeps a path is a ``v`` marker on the bottom edge of the path panel.

    Parameters
    ----------
    records : list of dict or path
        Needs ``method``, ``shuffled`` (some True), ``sparsity``,
        ``effective_nodes``, ``n_nodes``, ``log10_paths``; optional
        ``accuracy``, ``seed``, ``model``.
    model : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [dict(method="snip", shuffled=sh, sparsity=0.9, seed=0, effective_nodes=n,
    ...              n_nodes=100, log10_paths=p) for sh, n, p in [(False, 40, 9.0),
    ...                                                         (True, 90, 7.0)]]
    >>> fig = plot_shuffle_comparison(rows)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['effective node ratio', 'log10(effective paths)']
    """
    plt = _plt()
    rows = one_model(as_records(records), model)
    require_columns(rows, ("method", "shuffled", "sparsity", "effective_nodes", "n_nodes",
                           "log10_paths"), "plot_shuffle_comparison")
    shuffled_methods = {r["method"] for r in rows if r["shuffled"]}
    if not shuffled_methods:
        raise ValueError("no record has shuffled=True: run the sweep with a shuffled variant "
                         "(e.g. methods 'snip' and 'snip+shuffle') to compare")
    rows = [r for r in rows if r["method"] in shuffled_methods]
    groups = aggregate(rows)
    methods = sorted(shuffled_methods)
    has_acc = any(np.isfinite(g["accuracy"]) for g in groups)
    panels = (["accuracy"] if has_acc else []) + ["node_ratio", "log10_paths"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 4.2),
                             squeeze=False, layout="constrained")
    axes = list(axes[0])
    ylabels = {"accuracy": "accuracy (%)", "node_ratio": "effective node ratio",
               "log10_paths": PATH_AXIS}
    for ax, key in zip(axes, panels):
        for label in dict.fromkeys(g["label"] for g in groups):
            gs = [g for g in groups if g["label"] == label]
            c, marker = method_style(gs[0]["method"], methods)
            if key == "accuracy":
                gs = [g for g in gs if np.isfinite(g["accuracy"])]
                if not gs:
                    continue
                sh = gs[0]["shuffled"]
                ax.errorbar([1.0 - g["sparsity"] for g in gs],
                            [100 * g["accuracy"] for g in gs],
                            yerr=[100 * g["accuracy_std"] for g in gs], color=c, marker=marker,
                            markerfacecolor="none" if sh else c, linestyle="--" if sh else "-",
                            capsize=3, label=label)
            else:
                _line_vs_sparsity(ax, gs, key, c, marker, gs[0]["shuffled"], label,
                                  bottom_when_nan=key == "log10_paths")
        _reserve_bottom_band(ax)
        _density_axis(ax, [g["sparsity"] for g in groups])
        ax.set_ylabel(ylabels[key])
        ax.grid(True, alpha=0.3)
    axes[0].legend(handles=_legend_handles(groups, methods, lines=True), fontsize=7,
                   framealpha=0.8)
    model_name = next((str(r["model"]) for r in rows if "model" in r), None)
    fig.suptitle((f"{model_name}: " if model_name else "") + "original vs layerwise-shuffled "
                 "masks", fontsize=11)
    return fig


def plot_node_path_curves(records, *, layout="plane", ax=None, model=None, annotate=True):
    """Data-free node-path curves: each method traced through its sparsities.

    Parameters
    ----------
    records : list of dict or path
        Needs ``method``, ``sparsity``, ``effective_nodes``, ``log10_paths``;
        optional ``shuffled``, ``seed``, ``model``. Seeds are averaged.
    layout : {"plane", "panels", "both"}
        ``"plane"``: one line per method in the (ln nodes, log10 paths) plane,
        running from the lowest to the highest sparsity (the ends labelled with
        their sparsity). ``"panels"``: ln(effective nodes) and log10 paths
        against sparsity, side by side. ``"both"``: the plane and the two panels.
    ax : matplotlib Axes, optional
        Only with ``layout="plane"``.
    model : str, optional
    annotate : bool
        Label the last (sparsest) point of each line in the plane with its sparsity.

    Returns
    -------
    matplotlib.figure.Figure
        One line per method and variant in every panel, labelled like the group;
        its data are the means over seeds of ln(nodes) / log10(paths) for the
        sparsities at which some seed keeps a path (the others are ``v``
        markers with gid ``"no-path"`` on the bottom edge).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [dict(method="synflow", sparsity=s, seed=0, effective_nodes=n, log10_paths=p)
    ...         for s, n, p in [(0.9, 400, 38.0), (0.99, 130, 27.5)]]
    >>> fig = plot_node_path_curves(rows)
    >>> fig.axes[0].lines[0].get_ydata().tolist()
    [38.0, 27.5]
    """
    plt = _plt()
    _check_choice("layout", layout, ("plane", "panels", "both"))
    if ax is not None and layout != "plane":
        raise ValueError(f"ax= needs layout='plane' (layout {layout!r} draws several panels)")
    rows = one_model(as_records(records), model)
    require_columns(rows, ("method", "sparsity", "effective_nodes", "log10_paths"),
                    "plot_node_path_curves")
    groups = aggregate(rows)
    methods = sorted({g["method"] for g in groups})
    labels = list(dict.fromkeys(g["label"] for g in groups))
    n_axes = {"plane": 1, "panels": 2, "both": 3}[layout]
    if ax is None:
        widths = {"plane": [1.0], "panels": [1.0, 1.0], "both": [1.35, 1.0, 1.0]}[layout]
        fig, axes = plt.subplots(1, n_axes, figsize=(4.8 * sum(widths) + 1.0, 4.6),
                                 squeeze=False, layout="constrained",
                                 gridspec_kw={"width_ratios": widths})
        axes = list(axes[0])
    else:
        fig, axes = ax.figure, [ax]
    model_name = next((str(r["model"]) for r in rows if "model" in r), None)
    if layout in ("plane", "both"):
        pax = axes[0]
        no_path = []
        for label in labels:
            gs = [g for g in groups if g["label"] == label]
            c, marker = method_style(gs[0]["method"], methods)
            sh = gs[0]["shuffled"]
            ok = [g for g in gs if g["n_no_path"] < g["n_seeds"]]
            if ok:
                pax.plot([g["ln_nodes"] for g in ok], [g["log10_paths"] for g in ok], color=c,
                         marker=marker, linestyle="--" if sh else "-",
                         markerfacecolor="none" if sh else c, label=label)
            if annotate and ok:
                # every line starts in the same dense corner: label only its sparse end
                for g in ok[-1:]:
                    pax.annotate(_sparsity_label(g["sparsity"]), (g["ln_nodes"], g["log10_paths"]),
                                 xytext=(4, 4), textcoords="offset points", fontsize=6, color=c)
            lost = [_sparsity_label(g["sparsity"]) for g in gs if g["n_no_path"] == g["n_seeds"]]
            if lost:  # one marker per method, naming every sparsity without a path
                no_path.append((f"{label} @ {', '.join(lost)}", c, sh))
        _mark_no_path_row(pax, no_path, [g["log10_paths"] for g in groups])
        pax.set_xlabel(NODE_AXIS)
        pax.set_ylabel(PATH_AXIS)
        pax.set_title((f"{model_name}: " if model_name else "") + "node-path plane, "
                      "sparsity increasing down-left", fontsize=10)
        pax.grid(True, alpha=0.3)
        # outside the plane: with many methods an inside legend hides the data
        pax.legend(fontsize=7, framealpha=0.8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                   borderaxespad=0.0)
    if layout in ("panels", "both"):
        nax, yax = axes[-2], axes[-1]
        for label in labels:
            gs = [g for g in groups if g["label"] == label]
            c, marker = method_style(gs[0]["method"], methods)
            sh = gs[0]["shuffled"]
            _line_vs_sparsity(nax, gs, "ln_nodes", c, marker, sh, label, bottom_when_nan=True)
            _line_vs_sparsity(yax, gs, "log10_paths", c, marker, sh, label, bottom_when_nan=True)
        for a, yl in ((nax, NODE_AXIS), (yax, PATH_AXIS)):
            _reserve_bottom_band(a)
            _density_axis(a, [g["sparsity"] for g in groups])
            a.set_ylabel(yl)
            a.grid(True, alpha=0.3)
        if layout == "panels":
            nax.legend(fontsize=7, framealpha=0.8)
            if model_name:
                fig.suptitle(f"{model_name}: effective nodes and paths vs sparsity", fontsize=11)
    return fig


def plot_metric_vs_accuracy(records, metric: str, *, model=None):
    """Accuracy against any numeric column (e.g. a graph measure of
    :data:`topo_pai.experiments.schema.METRIC_COLUMNS`, ``log10_paths`` or
    ``effective_nodes``): one panel per sparsity, one point per trial, coloured by
    method (shuffled variants hollow), with the panel's Spearman rank correlation.

    Parameters
    ----------
    records : list of dict or path
        Needs ``method``, ``sparsity``, ``accuracy`` and ``metric``; rows without
        accuracy or without a finite ``metric`` value are left out.
    metric : str
        The column on the x axis.
    model : str, optional
        Select one model's records (required when several are present).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [dict(method=m, sparsity=0.9, seed=0, accuracy=a, mean_ramanujan_gap=g)
    ...         for m, a, g in [("snip", 0.8, 1.0), ("npb", 0.9, 2.0), ("random", 0.7, 0.5)]]
    >>> fig = plot_metric_vs_accuracy(rows, "mean_ramanujan_gap")
    >>> fig.axes[0].get_title()
    '90%: Spearman ρ = +1.00 (n=3)'
    """
    plt = _plt()
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a column name, got {metric!r}")
    rows = one_model(as_records(records), model)
    if not any(metric in r for r in rows):
        columns = sorted({k for r in rows for k in r})
        raise ValueError(f"no record has the column {metric!r}; columns present: "
                         f"{', '.join(columns)} (graph measures need a sweep with metrics = "
                         "\"cheap\" or \"all\"; the spectral ones \"all\")")
    require_columns(rows, ("method", "sparsity", "accuracy"), "plot_metric_vs_accuracy")
    pts = []
    for r in rows:
        x = parse_float(r.get(metric), metric)
        y = float_or_nan(r["accuracy"])
        if math.isfinite(x) and math.isfinite(y):
            pts.append((r, x, y))
    if not pts:
        raise ValueError(f"no record has both an accuracy and a finite {metric!r}")
    methods = sorted({r["method"] for r, _, _ in pts})
    sparsities = sorted({sparsity_key(r["sparsity"]) for r, _, _ in pts})
    fig, axes, spare = _panel_grid(plt, len(sparsities))
    from scipy import stats
    handles = {}
    for ax, s in zip(axes, sparsities):
        sel = [(r, x, y) for r, x, y in pts if sparsity_key(r["sparsity"]) == s]
        for r, x, y in sel:
            c, marker = method_style(r["method"], methods)
            shuffled = bool(r.get("shuffled", False))
            label = method_label(r["method"], shuffled)
            h = ax.scatter([x], [100 * y], color=c, marker=marker, s=28,
                           facecolors="none" if shuffled else c, label=label)
            handles.setdefault(label, h)
        xs = np.array([x for _, x, _ in sel])
        ys = np.array([y for _, _, y in sel])
        rho = (stats.spearmanr(xs, ys).statistic
               if len(sel) > 2 and np.ptp(xs) > 0 and np.ptp(ys) > 0 else math.nan)
        ax.set_title(f"{_sparsity_label(s)}: Spearman ρ = "
                     + ("–" if math.isnan(rho) else f"{rho:+.2f}") + f" (n={len(sel)})",
                     fontsize=9)
        ax.set_xlabel(metric)
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    where = spare if spare is not None else axes[-1]
    where.legend(list(handles.values()), list(handles.keys()), fontsize=7, framealpha=0.8,
                 loc="center" if spare is not None else "best")
    return fig
