#!/usr/bin/env python
"""Graph-measure benchmark: ``Topology.metrics`` against ``count_paths`` in the same run.

Run from the repository root::

    . .venv/bin/activate
    export OMP_WAIT_POLICY=PASSIVE
    python benchmarks/bench_metrics.py            # VGG-19 and ResNet-50 at density 0.1
    python benchmarks/bench_metrics.py --densities 0.1,0.01 --repeats 3

The baseline is ``topo0.with_masks(masks).count_paths("channel").log10`` (a fresh
Topology from an already traced model, so its channel counts are computed inside the
timing). The measured operations are ``topo0.with_masks(masks).metrics()`` and
``.metrics(weights=|w|)``, which include that count and add the two largest singular
values of every layer's block (``top_singular_values``, certified to ``1e-8 * mu0``;
twice with weights), and ``metrics(spectral_tol=1e-4)`` shows what a looser certified
accuracy buys. ``metrics()`` takes the layers' spectra side by side on the numba
threads, as ``count_paths``' kernels use them; a column with one numba thread shows
``metrics()`` run serially throughout. The target (issue 17) is metrics / count_paths < 5 at density 0.1. Samples
of the operations are interleaved; medians are reported. Masks are the core
benchmark's seeded random masks. Writes ``benchmarks/results_metrics.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import MODELS, PRETTY, machine_info, make_masks, make_model, timed  # noqa: E402

import numba  # noqa: E402

import topo_pai  # noqa: E402

TARGET = 5.0
#: the looser spectral tolerance of column (e): what accuracy buys (default: 1e-8)
LOOSE = 1e-4


def svd_seconds(topo) -> float:
    """Time of the layer spectra alone, as ``metrics()`` takes them (all blocks in one
    ``many_top_singular_values`` call; the blocks are built before the clock starts)."""
    from topo_pai.metrics.spectra import many_top_singular_values

    mats = [topo.layer_matrix(i) for i in range(len(topo.layers))]
    t0 = time.perf_counter()
    many_top_singular_values(mats)
    return time.perf_counter() - t0


def one_thread(fn):
    """``fn`` with the numba threads set to one: its count kernels and its layer spectra
    (``many_top_singular_values`` takes as many workers) run on one thread."""
    def run():
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(saved)
    return run


def bench(name: str, density: float, repeats: int) -> dict:
    model = make_model(name)
    shape = MODELS[name][1]
    masks = make_masks(model, name, density)
    topo0 = topo_pai.from_torch(model, {}, input_shape=shape)
    weights = topo0.edge_weights({n: p.detach().abs() for n, p in model.named_parameters()
                                  if n in masks})
    ops = {
        "count_paths": lambda: topo0.with_masks(masks).count_paths("channel").log10,
        "metrics": lambda: topo0.with_masks(masks).metrics().totals,
        "metrics_w": lambda: topo0.with_masks(masks).metrics(weights=weights).totals,
        "metrics_cheap": lambda: topo0.with_masks(masks).metrics(spectra=False).totals,
        "metrics_loose": lambda: topo0.with_masks(masks).metrics(spectral_tol=LOOSE).totals,
        "metrics_1t": one_thread(lambda: topo0.with_masks(masks).metrics().totals),
    }
    for fn in ops.values():  # warm-up: numba compilation, scipy imports
        fn()
    samples = {k: [] for k in ops}
    results = {}
    for _ in range(repeats):
        for k, fn in ops.items():
            dt, out, _ = timed(fn)
            samples[k].append(dt)
            results[k] = out
    med = {k: statistics.median(v) for k, v in samples.items()}
    topo = topo0.with_masks(masks)
    svd = statistics.median(svd_seconds(topo) for _ in range(max(1, repeats // 2)))
    t = results["metrics_w"]
    return dict(model=PRETTY[name], density=density, layers=len(topo.layers),
                unpruned=topo.n_unpruned, n=repeats, **med, svd=svd,
                ratio=med["metrics"] / med["count_paths"],
                ratio_w=med["metrics_w"] / med["count_paths"],
                ratio_cheap=med["metrics_cheap"] / med["count_paths"],
                ratio_loose=med["metrics_loose"] / med["count_paths"],
                ratio_1t=med["metrics_1t"] / med["count_paths"],
                gap=t["mean_ramanujan_gap"], wgap=t["mean_weighted_spectral_gap"],
                eff_sparsity=t["effective_sparsity"])


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def verdict(r: float) -> str:
    return f"{r:.1f}× (<{TARGET:g}×) " + ("**PASS**" if r < TARGET else "**MISS**")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vgg19,resnet50")
    ap.add_argument("--densities", default="0.1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results_metrics.md"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows = [bench(m, float(d), args.repeats) for m in args.models.split(",")
            for d in args.densities.split(",")]
    head = ("| model | density | layers | unpruned | (a) count_paths ch | (b) metrics() | "
            "(c) metrics(abs w) | (d) metrics(spectra=False) | (e) metrics(spectral_tol="
            f"{LOOSE:g}) | (f) metrics(), 1 thread | SVDs in (b) | (b)/(a) | (c)/(a) | (d)/(a) | "
            "(e)/(a) | (f)/(a) | mean Ramanujan "
            "gap | mean weighted spectral gap | effective sparsity |")
    lines = ["# topo_pai graph-measure benchmark", "", *machine_info(),
             f"- {args.repeats} interleaved samples per cell, median reported; load average "
             f"(1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}; total wall time "
             f"{time.perf_counter() - t_start:.0f} s", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['density']:g} | {r['layers']} | {r['unpruned']:,} | "
            f"{fmt_ms(r['count_paths'])} | {fmt_ms(r['metrics'])} | {fmt_ms(r['metrics_w'])} | "
            f"{fmt_ms(r['metrics_cheap'])} | {fmt_ms(r['metrics_loose'])} | "
            f"{fmt_ms(r['metrics_1t'])} | {fmt_ms(r['svd'])} | "
            f"{verdict(r['ratio'])} | {r['ratio_w']:.1f}× | {r['ratio_cheap']:.1f}× | "
            f"{r['ratio_loose']:.1f}× | {r['ratio_1t']:.1f}× | "
            f"{r['gap']:.3f} | {r['wgap']:.4g} | {r['eff_sparsity']:.4f} |")
    lines += ["", "(a) = `topo0.with_masks(masks).count_paths('channel')` (fresh channel counts "
              "of a traced model); (b) = `topo0.with_masks(masks).metrics()`; (c) = the same "
              "with weights |w| (the singular values twice per layer); (d) = "
              "`metrics(spectra=False)` (every O(nnz) measure, no singular values); (e) = "
              f"`metrics(spectral_tol={LOOSE:g})` (the singular values certified to "
              f"{LOOSE:g}·mu0 instead of the default 1e-8·mu0); (f) = (b) under "
              "`numba.set_num_threads(1)`: all of metrics() on one thread, its count kernels "
              "and the layer spectra (taken one at a time) included, while (a) to (e) use "
              f"the {numba.get_num_threads()} numba threads; "
              "'SVDs in (b)': the layer spectra alone (`many_top_singular_values` of the "
              "blocks, built beforehand). Target (issue 17): (b)/(a) < 5 at density 0.1."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
