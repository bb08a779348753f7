"""Trial records and their means over seeds, in plotting order.

:func:`aggregate` groups trial records by ``(method, shuffled, sparsity)`` and
averages the plotted quantities over the seeds. :func:`as_records` accepts what
the figures of :mod:`topo_pai.experiments.plotting` take (a list of dicts, a
results file, a DataFrame); :func:`require_columns` and :func:`one_model` check
and select them; :data:`METHOD_ORDER` fixes the order (and colour slot) of the
built-in methods.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import numpy as np

from topo_pai.experiments.results_table import load_results, typed_record

#: Plotting order and colour slot of the built-in methods (others follow, sorted).
METHOD_ORDER = ("random", "magnitude", "snip", "iter_snip", "grasp", "synflow",
                "synflow_widen", "phew", "npb")


def as_records(records) -> list[dict]:
    if isinstance(records, (str, os.PathLike)):
        records = load_results(records)
    elif hasattr(records, "to_dict") and hasattr(records, "columns"):  # a pandas DataFrame
        records = records.to_dict("records")
    if isinstance(records, Mapping) or not isinstance(records, Iterable):
        raise TypeError("records must be a list of dicts (one per trial), a path to a results "
                         f"file, or a DataFrame; got {type(records).__name__}")
    rows = list(records)
    if not rows:
        raise ValueError("records is empty: nothing to plot")
    bad = [type(r).__name__ for r in rows if not isinstance(r, Mapping)]
    if bad:
        raise TypeError(f"records must be dicts (one per trial), got {bad[0]}")
    return [typed_record(r) for r in rows]


def require_columns(rows: list[dict], columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if any(c not in r for r in rows)]
    if missing:
        raise ValueError(f"{what} needs the column(s) {', '.join(missing)} in every record "
                         f"(see topo_pai.experiments.plotting); missing: {missing}")


def one_model(rows: list[dict], model) -> list[dict]:
    if model is not None:
        if any("model" not in r for r in rows):
            raise ValueError("model= was given, but the records have no 'model' column")
        sel = [r for r in rows if r["model"] == model]
        if not sel:
            raise ValueError(f"no record has model {model!r}; models present: "
                             f"{sorted({str(r['model']) for r in rows})}")
        return sel
    models = sorted({str(r["model"]) for r in rows if "model" in r})
    if len(models) > 1:
        raise ValueError(f"the records hold several models {models}; pick one with model=...")
    datasets = sorted({str(r["dataset"]) for r in rows if "dataset" in r})
    if len(datasets) > 1:
        raise ValueError(f"the records hold several datasets {datasets}; filter them first, "
                         "e.g. [r for r in records if r['dataset'] == ...]")
    return rows


def sparsity_key(s: float) -> float:
    return round(float(s), 9)


def method_label(method: str, shuffled: bool = False) -> str:
    """``"snip"`` or ``"snip (shuffled)"``.

    >>> method_label("snip", True)
    'snip (shuffled)'
    """
    return f"{method} (shuffled)" if shuffled else str(method)


def method_rank(method: str, others: list[str]) -> int:
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method)
    return len(METHOD_ORDER) + others.index(method)


def float_or_nan(v) -> float:
    return math.nan if v is None else float(v)


def _check_one_run_per_seed(group: list[dict], by: tuple, where: dict) -> None:
    """Refuse a group that pools models or datasets not in ``by`` (means over two networks)
    or holds one seed twice (a seed counted twice)."""
    for column in ("model", "dataset"):
        values = {str(r[column]) for r in group if column in r and column not in by}
        if len(values) > 1:
            raise ValueError(f"aggregate: the group {where} holds rows of several {column}s "
                             f"({', '.join(sorted(values))}); pass the rows of one {column}, "
                             f"or add {column!r} to by=")
    seeds = [r["seed"] for r in group if "seed" in r]
    twice = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if twice:
        raise ValueError(f"aggregate: the group {where} holds seed(s) {twice} more than "
                         "once; one row per seed (drop the repeated rows)")


def aggregate(records, by=("method", "shuffled", "sparsity")) -> list[dict]:
    """Mean over seeds of the plotted quantities, per ``(method, shuffled, sparsity)``.

    Parameters
    ----------
    records : list of dict or path
        Trial rows (see the module docs). ``shuffled`` defaults to False.
    by : tuple of str
        Grouping columns; ``("method", "shuffled", "sparsity")`` by default.

    Returns
    -------
    list of dict
        One per group, in plotting order (method order, then shuffled, then
        sparsity), holding the group keys and: ``label``; ``n_seeds``;
        ``n_no_path`` (seeds whose mask has no input-output path);
        ``ln_nodes`` and ``log10_paths`` (means over the seeds *with* a path,
        NaN when none has one); ``node_ratio`` (mean effective_nodes / n_nodes,
        NaN without ``n_nodes``); ``accuracy`` and ``accuracy_std`` (mean and
        sample standard deviation over seeds with an accuracy, NaN if none;
        std 0 for a single seed) and ``n_accuracy``.

    Examples
    --------
    >>> rows = [dict(method="npb", sparsity=0.99, seed=s, effective_nodes=n,
    ...              log10_paths=p) for s, n, p in [(0, 0, float("-inf")), (1, 20, 5.0)]]
    >>> g = aggregate(rows)[0]
    >>> g["n_no_path"], g["log10_paths"], round(g["ln_nodes"], 3), g["accuracy"]
    (1, 5.0, 2.996, nan)
    """
    rows = as_records(records)
    require_columns(rows, [c for c in by if c != "shuffled"], "aggregate")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(sparsity_key(r[c]) if c == "sparsity"
                    else bool(r.get(c, False)) if c == "shuffled" else r[c] for c in by)
        groups.setdefault(key, []).append(r)
    methods = sorted({str(r["method"]) for r in rows if "method" in r})
    others = [m for m in methods if m not in METHOD_ORDER]

    def order(key):
        d = dict(zip(by, key))
        m = d.get("method")
        return (method_rank(m, others) if m is not None else 0, d.get("shuffled", False),
                d.get("sparsity", 0.0), tuple(str(v) for v in key))

    out = []
    for key in sorted(groups, key=order):
        g = groups[key]
        d = dict(zip(by, key))
        _check_one_run_per_seed(g, by, d)
        nodes = np.array([float_or_nan(r.get("effective_nodes")) for r in g])
        paths = np.array([float_or_nan(r.get("log10_paths")) for r in g])
        has_path = np.isfinite(paths) & (paths > -np.inf) & (nodes > 0)
        ratio = np.array([float_or_nan(r.get("effective_nodes")) / float_or_nan(r["n_nodes"])
                          if r.get("n_nodes") else math.nan for r in g])
        acc = np.array([float_or_nan(r.get("accuracy")) for r in g])
        acc = acc[np.isfinite(acc)]
        d.update(
            label=method_label(d.get("method", ""), d.get("shuffled", False)),
            n_seeds=len(g),
            n_no_path=int(np.count_nonzero(~has_path)),
            ln_nodes=float(np.mean(np.log(nodes[has_path]))) if has_path.any() else math.nan,
            log10_paths=float(np.mean(paths[has_path])) if has_path.any() else math.nan,
            node_ratio=float(np.mean(ratio)) if np.isfinite(ratio).all() else math.nan,
            accuracy=float(np.mean(acc)) if acc.size else math.nan,
            accuracy_std=float(np.std(acc, ddof=1)) if acc.size > 1 else (0.0 if acc.size
                                                                          else math.nan),
            n_accuracy=int(acc.size),
        )
        out.append(d)
    return out
