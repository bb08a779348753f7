"""NPB wall time, and per-layer parity of the exact solver with a HiGHS MILP.

For ResNet-20 (CIFAR-10 shape) and VGG-19 (CIFAR-100 shape) at 68.38/90/96.84/99%
sparsity: time NPB end to end with its defaults (trace, ERK budgets, every layer's
exact solve with the saturating-degree node term, placement and graph repair), then
re-solve every layer's instance (the same P_in, budget, K and fair shares) with
``scipy.optimize.milp`` under a time limit, and compare. Also reported: the weights
the repair relocated, and the least-spread layer (smallest median/mean fan-out of
the input units, from the balance report's degree statistics).

    python benchmarks/bench_npb.py                  # both models, MILP limit 60 s/layer
    python benchmarks/bench_npb.py --quick          # ResNet-20, MILP limit 5 s/layer
    python benchmarks/bench_npb.py --models vgg19 --milp-limit 10
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.metrics.degrees import fan_counts  # noqa: E402
from topo_pai.models import resnet20, vgg19  # noqa: E402
from topo_pai.npb.milp import solve_layer_milp  # noqa: E402
from topo_pai.npb.pruner import npb_masks  # noqa: E402
from topo_pai.npb.solver import solve_layer  # noqa: E402
from topo_pai.pruners.allocation import counts_from_densities, erk_densities, n_keep  # noqa: E402

MODELS = {"resnet20": (lambda: resnet20(), (3, 32, 32), "ResNet-20", 1.0),
          "vgg19": (lambda: vgg19(), (3, 32, 32), "VGG-19", 10.0)}
SPARSITIES = (0.6838, 0.9, 0.9684, 0.99)


def run_npb(model, shape, sparsity, alpha=0.01, beta=1.0):
    t0 = time.perf_counter()
    topo = topo_pai.from_torch(model, None, shape)
    shapes = {layer.param: layer.weight_shape for layer in topo.layers}
    sizes = {k: int(np.prod(v)) for k, v in shapes.items()}
    budgets = counts_from_densities(sizes, erk_densities(shapes, 1 - sparsity),
                                    n_keep(sum(sizes.values()), sparsity))
    weights = {n: p.detach().abs().double().numpy() for n, p in model.named_parameters()
               if n in shapes}
    masks, reports = npb_masks(topo, weights, budgets, alpha=alpha, beta=beta)
    elapsed = time.perf_counter() - t0
    return topo, masks, reports, elapsed


def _spread(mask, groups):
    """Median / mean fan-out of the layer's kept input units."""
    _, fan_out = fan_counts(mask, groups)
    kept = fan_out[fan_out > 0]
    return float(np.median(kept) / kept.mean()) if kept.size else 1.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet20,vgg19")
    ap.add_argument("--milp-limit", type=float, default=60.0, help="HiGHS seconds per layer")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.milp_limit = "resnet20", 5.0
    torch.set_num_threads(2)
    load_start = os.getloadavg()[0]
    rows = []
    for key in args.models.split(","):
        build, shape, label, target = MODELS[key]
        torch.manual_seed(0)
        model = build()
        for s in SPARSITIES:
            run_npb(model, shape, s)  # warm-up (numba compilation)
            topo, masks, reports, elapsed = run_npb(model, shape, s)
            tm = topo.with_masks(masks)
            milp_time, proven, equal, better, worst = 0.0, 0, 0, 0, 0.0
            for rep, layer in zip(reports, [lay for lay in topo.layers if lay.param in masks]):
                ours = solve_layer(rep.p_in, layer.weight_shape[0], rep.budget, rep.K, 0.01, 1.0)
                t0 = time.perf_counter()
                ref = solve_layer_milp(rep.p_in, layer.weight_shape[0], rep.budget, rep.K,
                                       0.01, 1.0, time_limit=args.milp_limit)
                milp_time += time.perf_counter() - t0
                scale = max(1.0, abs(ref.objective))
                if ref.objective > ours.objective + 1e-9 * scale:
                    better += 1
                if ref.optimal:
                    proven += 1
                    # HiGHS proves optimality up to its gap: the optimum lies in
                    # [its objective, its dual bound]; ours must lie there too.
                    tol = 1e-9 * scale
                    if ref.objective - tol <= ours.objective <= ref.upper_bound + tol:
                        equal += 1
                    worst = max(worst, abs(ref.objective - ours.objective) / scale)
            n = len(reports)
            spread = min((_spread(masks[r.name], r.groups), r.name) for r in reports)
            rows.append(dict(model=label, sparsity=s, npb_s=elapsed, target=target,
                             relocated=sum(r.relocated for r in reports), spread=spread,
                             layers=n, milp_s=milp_time, proven=proven, equal=equal,
                             better=better, worst=worst, paths=tm.count_paths().log10,
                             nodes=tm.effective_nodes(), eff=tm.effective_params(),
                             kept=sum(int(m.sum()) for m in masks.values())))
            r = rows[-1]
            print(f"{label} {s:.2%}: npb {elapsed:.2f}s, milp {milp_time:.1f}s, proven "
                  f"{proven}/{n}, equal {equal}/{proven}, milp better {better}", file=sys.stderr)
    lines = [
        "# NPB benchmark", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: `{platform.platform()}`, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f} at the end ({load_start:.2f} at the start); "
        f"torch {torch.__version__}",
        f"- MILP: scipy.optimize.milp (HiGHS), {args.milp_limit:g} s limit per layer",
        "- least-spread layer: the smallest median / mean fan-out of a layer's kept input "
        "units (kernel-count multiplicity, final mask); 1 = as even as the mean", "",
        "| model | sparsity | NPB wall time | target | layers | MILP total time | MILP proven "
        "optimal | ours within HiGHS's proven [primal, dual] bounds | MILP better than ours | "
        "max rel. diff | kept = effective | relocated by repair | least-spread layer | "
        "log10 paths | eff. nodes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "PASS" if r["npb_s"] <= r["target"] else "MISS"
        lines.append(
            f"| {r['model']} | {r['sparsity']:.2%} | {r['npb_s']:.2f} s | ≤ {r['target']:g} s "
            f"**{ok}** | {r['layers']} | {r['milp_s']:.1f} s | {r['proven']}/{r['layers']} | "
            f"{r['equal']}/{r['proven']} | {r['better']} | {r['worst']:.1e} | "
            f"{r['kept']} = {r['eff']} | {r['relocated']} | {r['spread'][0]:.2f} "
            f"(`{r['spread'][1].removesuffix('.weight')}`) | {r['paths']:.2f} | {r['nodes']} |")
    text = "\n".join(lines)
    print(text)
    out = args.out or os.path.join(os.path.dirname(__file__),
                                   "results_npb_quick.md" if args.quick else "results_npb.md")
    with open(out, "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
