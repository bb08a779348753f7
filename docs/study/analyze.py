"""Figures and statistics of the Fashion-MNIST replication study, from its results table.

Run ``make study-figures`` (or ``python docs/study/analyze.py [RESULTS_DIR]``). It reads
``docs/study/results/results.json`` and writes ``docs/study/figures/*.png`` and
``docs/study/tables.md``: mean ± std over seeds, Welch's t-test and a 95% confidence
interval for every comparison that REPORT.md cites.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

HERE = Path(__file__).resolve().parent


def variant(r) -> str:
    return f"{r['method']}+shuffle" if r["shuffled"] else r["method"]


def group(records, *keys):
    out = defaultdict(list)
    for r in records:
        out[tuple(variant(r) if k == "variant" else r[k] for k in keys)].append(r)
    return out


def mean_std(values):
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    with np.errstate(invalid="ignore"):  # -inf log10 paths (no path left) give a nan spread
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def compare(a, b):
    """Mean difference a - b, its 95% CI (Welch) and Welch's two-sided p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a.mean() - b.mean()
    if a.size < 2 or b.size < 2:
        return diff, (math.nan, math.nan), math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se < 1e-12:  # every seed identical on both sides (e.g. all at chance): no test to run
        return diff, (diff, diff), math.nan
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = stats.t.ppf(0.975, dof) * se
    with warnings.catch_warnings():  # near-identical seeds (all near chance) warn of cancellation
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return diff, (diff - half, diff + half), float(p)


def pct(x):
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def method_grid(records, model, sparsities, variants, cell) -> list[str]:
    """A markdown table: a row per variant, a column per sparsity, each cell ``cell(rows)``
    of the model's records of that variant and sparsity (``–`` where there are none)."""
    g = group([r for r in records if r["model"] == model], "variant", "sparsity")
    lines = ["| method | " + " | ".join(f"{100 * s:.2f}%" for s in sparsities) + " |",
             "|---|" + "---|" * len(sparsities)]
    for v in variants:
        cells = [cell(rows) if (rows := g.get((v, s), [])) else "–" for s in sparsities]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def accuracy_table(records, model, sparsities, variants) -> list[str]:
    def cell(rows):
        m, sd, n = mean_std([r["accuracy"] for r in rows])
        return "–" if n == 0 else f"{100 * m:.2f} ± {100 * sd:.2f}"
    return method_grid(records, model, sparsities, variants, cell)


def npb_table(records, model, sparsities, baselines) -> list[str]:
    g = group([r for r in records if r["model"] == model], "variant", "sparsity")
    lines = ["| sparsity | vs | NPB − baseline (pp) | 95% CI (pp) | Welch p |", "|---|---|---|---|---|"]
    for s in sparsities:
        npb = [r["accuracy"] for r in g.get(("npb", s), [])]
        for b in baselines:
            other = [r["accuracy"] for r in g.get((b, s), [])]
            if len(npb) < 2 or len(other) < 2:
                continue
            d, (lo, hi), p = compare(npb, other)
            lines.append(f"| {100 * s:.2f}% | {b} | {100 * d:+.2f} | [{100 * lo:+.2f}, "
                         f"{100 * hi:+.2f}] | {_p(p)} |")
    return lines


def _p(p) -> str:
    return "– (no variance)" if math.isnan(p) else f"{p:.3g}"


def shuffle_table(records, model, sparsities, methods) -> list[str]:
    g = group([r for r in records if r["model"] == model], "variant", "sparsity")
    lines = ["| method | sparsity | shuffled − original (pp) | 95% CI (pp) | Welch p | "
             "eff. nodes orig → shuf | log10 paths orig → shuf |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        for s in sparsities:
            o, sh = g.get((m, s), []), g.get((f"{m}+shuffle", s), [])
            if len(o) < 2 or len(sh) < 2:
                continue
            d, (lo, hi), p = compare([r["accuracy"] for r in sh], [r["accuracy"] for r in o])
            no, ns = (mean_std([r["effective_nodes"] for r in x])[0] for x in (o, sh))
            po, ps = (mean_std([r["log10_paths"] for r in x])[0] for x in (o, sh))
            lines.append(f"| {m} | {100 * s:.2f}% | {100 * d:+.2f} | [{100 * lo:+.2f}, "
                         f"{100 * hi:+.2f}] | {_p(p)} | {no:.0f} → {ns:.0f} | {po:.1f} → {ps:.1f} |")
    return lines


def plane_table(records, model, sparsities, variants) -> list[str]:
    def cell(rows):
        ln_nodes = mean_std([math.log(max(r["effective_nodes"], 1)) for r in rows])[0]
        paths = mean_std([r["log10_paths"] for r in rows])[0]
        return f"({ln_nodes:.2f}, {paths:.1f})"
    return method_grid(records, model, sparsities, variants, cell)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0]) if argv else HERE / "results"
    import matplotlib
    matplotlib.use("Agg")
    from topo_pai.experiments import plotting

    records = plotting.load_results(results / "results.json")
    if not records:
        raise SystemExit(f"no results in {results}")
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    models = list(dict.fromkeys(r["model"] for r in records))
    sparsities = sorted({r["sparsity"] for r in records})
    order = ["random", "snip", "iter_snip", "synflow", "phew", "npb"]
    methods = [m for m in order if any(r["method"] == m for r in records)] + sorted(
        {r["method"] for r in records} - set(order))
    variants = methods + [f"{m}+shuffle" for m in methods
                          if any(r["shuffled"] and r["method"] == m for r in records)]
    shuffled_methods = [m for m in methods if any(r["shuffled"] and r["method"] == m
                                                  for r in records)]
    out = ["# Study tables (generated by docs/study/analyze.py; do not edit)", "",
           f"{len(records)} trials. Accuracy: test accuracy (%) after training, mean ± std over "
           "seeds. CIs and p-values: Welch's t-test on the per-seed accuracies.", ""]
    for model in models:
        recs = [r for r in records if r["model"] == model]
        for name, fig in (
            (f"{model}_node_path_plane.png", plotting.plot_node_path_plane(recs)),
            (f"{model}_accuracy_vs_sparsity.png", plotting.plot_accuracy_vs_sparsity(recs)),
            (f"{model}_shuffled_vs_original.png", plotting.plot_shuffle_comparison(recs)
             if shuffled_methods else None),
        ):
            if fig is not None:
                fig.savefig(figures / name, dpi=120, bbox_inches="tight")
                matplotlib.pyplot.close(fig)
        out += [f"## {model}", "", "### Test accuracy (%)", ""]
        out += accuracy_table(records, model, sparsities, variants) + [""]
        out += ["### NPB against each baseline", ""]
        out += npb_table(records, model, sparsities,
                         [m for m in methods if m != "npb"]) + [""]
        if shuffled_methods:
            out += ["### Shuffled within layers against the original masks", ""]
            out += shuffle_table(records, model, sparsities, shuffled_methods) + [""]
        out += ["### Position in the node-path plane: (ln effective nodes, log10 paths)", ""]
        out += plane_table(records, model, sparsities, variants) + [""]
    (HERE / "tables.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'tables.md'} and {len(list(figures.glob('*.png')))} figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
