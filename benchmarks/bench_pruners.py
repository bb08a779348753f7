#!/usr/bin/env python
"""Timing of every pruning method in ``topo_pai.prune``, plus a layer-collapse table.

Run from the repository root::

    . .venv/bin/activate
    export OMP_WAIT_POLICY=PASSIVE
    python benchmarks/bench_pruners.py            # full run (~10-13 min on 2 shared cores)
    python benchmarks/bench_pruners.py --quick    # CI size: 90 % only (~2-3 min)
    python benchmarks/bench_pruners.py --models resnet20 --methods synflow,phew

Workload: ResNet-20 (CIFAR, input 3x32x32, 10 classes) and ResNet-18 with the
Tiny-ImageNet stem (3x3 stride-1 conv, no max-pool; input 3x64x64, 200 classes),
built after ``torch.manual_seed(0)``, at sparsities 68.38 / 90 / 96.84 / 99 %
(densities 10^-0.5 ... 10^-2). Data-dependent methods get one synthetic batch of
64 samples (``torch.randn``, seeded). Each cell is the wall-clock time of one
``topo_pai.prune(...)`` call with the method's defaults (tracing, scoring,
thresholding and mask construction included; numba compilation excluded by a
warm-up run on a small model). ``shuffle`` permutes magnitude masks computed
outside the timing.

Data-dependent methods are too slow on this CPU for a 15-minute budget (one
forward/backward pass of 64 samples takes ~0.7 s on ResNet-20 and ~30 s on
ResNet-18 at 64x64) and are shortened, as the table says: on ResNet-18, SNIP
and GraSP run at 90 % only (their cost is one scoring pass, independent of the
sparsity) and Iter-SNIP runs 2 rounds at 90 %; on ResNet-20, Iter-SNIP runs its
100 rounds at 90 % and 20 rounds at the other sparsities. A shortened cell also
shows the time scaled to the default number of rounds (every round costs the
same forward/backward pass). Iterative methods registered outside this suite
(e.g. ``synflow_widen``) run at 90 % only on ResNet-18. ``--quick`` runs 90 %
only, skips the data-dependent methods on ResNet-18 and gives Iter-SNIP 10
rounds.

SynFlow runs as published (neuron resolution, its default); the row
``synflow@channel`` times its faster channel-graph variant (``resolution="channel"``),
the default before issue 11, with the same 100 rounds.

Targets: PHEW <= 10 s and SynFlow (100 rounds, either resolution) <= 30 s in every cell.
The SynFlow target was set for the channel variant; the published (neuron) SynFlow
meets it on ResNet-18 at 64x64 at 90 % and sparser and misses it narrowly at 68.38 %
(2026-12-04: 26-31 s a cell).

The full run writes ``benchmarks/results_pruners.md``; ``--quick`` writes
``benchmarks/results_pruners_quick.md``.
"""

from __future__ import annotations  # noqa: I001 (the harness is imported before torch)

# The harness first: it sets OMP_WAIT_POLICY before torch (and its OpenMP runtime) loads.
from harness import RunClock, machine_info, results_path, stopwatch, write_results

import argparse
import math
import sys

import torch

import topo_pai
from topo_pai.models import resnet18, resnet20, vgg19
from topo_pai.pruners import available_methods, get_method

MODELS = {
    "resnet20": (resnet20, (3, 32, 32), 10),
    "resnet18": (resnet18, (3, 64, 64), 200),
}
PRETTY = {"resnet20": "ResNet-20", "resnet18": "ResNet-18 (64x64)", "vgg19": "VGG-19"}
SPARSITIES = (0.6838, 0.9, 0.9684, 0.99)
QUICK_SPARSITIES = (0.9,)
BATCH = 64
TARGETS = {"phew": 10.0, "synflow": 30.0, "synflow@channel": 30.0}  # seconds per cell
#: Timed variants of a registered method: row name -> (method, options).
VARIANTS = {"synflow@channel": ("synflow", {"resolution": "channel"})}


def resolve(name: str):
    """``(registered method, extra options)`` of a row name (a method or a variant)."""
    return VARIANTS.get(name, (name, {}))
COLLAPSE_SPARSITIES = (0.999,)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_model(name):
    torch.manual_seed(0)
    fn, shape, classes = MODELS[name]
    return fn(), shape, classes


def batch(shape, classes, n=BATCH, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + tuple(shape), generator=g), torch.randint(0, classes, (n,),
                                                                         generator=g)


#: Methods timed at every sparsity; the others (registered elsewhere in topo_pai) only
#: where they are cheap, see ``plan``.
BRIEF_METHODS = ("random", "magnitude", "snip", "iter_snip", "grasp", "synflow", "phew",
                 "shuffle")


def plan(model: str, row: str, sparsity: float, quick: bool):
    """Options for one cell, or ``None`` to skip it (see the module docstring)."""
    method, extra = resolve(row)
    m = get_method(method)
    opts = _plan(model, method, m, sparsity, quick)
    return None if opts is None else {**extra, **opts}


def _plan(model, method, m, sparsity, quick):
    big = model == "resnet18"
    if big and m.needs_data:
        if quick or sparsity != 0.9:
            return None
        return {"rounds": 2} if "rounds" in m.options else {}
    if method == "iter_snip" and (quick or sparsity != 0.9):
        return {"rounds": 10 if quick else 20}
    if method not in BRIEF_METHODS and "rounds" in m.options and big and sparsity != 0.9:
        return None
    return {}


def warm_up() -> None:
    """Compile every numba kernel on a small model, outside the timings."""
    torch.manual_seed(0)
    model = resnet20(width=4)
    x, y = batch((3, 32, 32), 10, n=4)
    for method in available_methods():
        opts = {"rounds": 2} if method in ("synflow", "iter_snip") else {}
        if method == "shuffle":
            opts = {"masks": topo_pai.prune(model, "magnitude", 0.9, input_shape=(3, 32, 32))}
        topo_pai.prune(model, method, 0.9, input_shape=(3, 32, 32),
                       data=(x, y) if get_method(method).needs_data else None, **opts)
    for method, extra in VARIANTS.values():
        topo_pai.prune(model, method, 0.9, input_shape=(3, 32, 32), rounds=2, **extra)


def time_cell(model, shape, data, row, sparsity, opts) -> float:
    method, _ = resolve(row)
    if method == "shuffle":
        opts = dict(opts, masks=topo_pai.prune(model, "magnitude", sparsity, input_shape=shape))
    dt, masks = stopwatch(lambda: topo_pai.prune(
        model, method, sparsity, input_shape=shape,
        data=data if get_method(method).needs_data else None, **opts))
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == topo_pai.pruners.n_keep(total, sparsity), (method, sparsity, kept)
    return dt


def fmt_s(t: float) -> str:
    return f"{t:.2f}" if t < 10 else f"{t:.1f}"


def collapse_table(sparsities, quick: bool) -> list[str]:
    """log10 paths / effective channels of every method's VGG-19 masks."""
    torch.manual_seed(0)
    model = vgg19()
    shape = (3, 32, 32)
    x, y = batch(shape, 100, n=16)
    rows = {}
    synflow_rounds = 20 if quick else 100
    iter_rounds = 5 if quick else 20
    for s in sparsities:
        synflow_masks = None
        for method in sorted(available_methods(), key=lambda n: n == "shuffle"):
            opts = {}
            if "rounds" in get_method(method).options:
                opts = {"rounds": iter_rounds if get_method(method).needs_data
                        else synflow_rounds}
            if method == "shuffle":
                opts = {"masks": synflow_masks}
            log(f"  collapse: {method} at {s:.2%}")
            masks = topo_pai.prune(model, method, s, input_shape=shape,
                                   data=(x, y) if get_method(method).needs_data else None, **opts)
            if method == "synflow":
                synflow_masks = masks
            topo = topo_pai.from_torch(model, masks, shape)
            rows.setdefault(method, {})[s] = (topo.count_paths().log10, topo.effective_nodes())
    head = "| method | " + " | ".join(f"{s:.1%}: log10 paths / eff. channels" for s in sparsities)
    lines = [head + " |", "|---|" + "---|" * len(sparsities)]
    for method, cells in rows.items():
        parts = []
        for s in sparsities:
            lp, nodes = cells[s]
            parts.append("**collapsed** (-inf / 0)" if lp == -math.inf else f"{lp:.1f} / {nodes}")
        label = method
        if "rounds" in get_method(method).options:
            label += (f" ({iter_rounds if get_method(method).needs_data else synflow_rounds} "
                      "rounds)")
        if method == "shuffle":
            label = "shuffle (of the synflow masks)"
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 90 %% only, fewer rounds")
    ap.add_argument("--models", default=",".join(MODELS), help="subset of resnet20,resnet18")
    ap.add_argument("--methods", default=",".join(available_methods() + list(VARIANTS)),
                    help="methods and variants (e.g. synflow@channel)")
    ap.add_argument("--sparsities", default=None, help="e.g. 0.9,0.99")
    ap.add_argument("--no-collapse", action="store_true", help="skip the VGG-19 collapse table")
    ap.add_argument("--out", default=None, help="markdown file to write")
    args = ap.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for m in methods:
        get_method(resolve(m)[0])
    sparsities = (tuple(float(s) for s in args.sparsities.split(",")) if args.sparsities
                  else (QUICK_SPARSITIES if args.quick else SPARSITIES))
    out = results_path("pruners", args.quick, args.out)

    clock = RunClock()
    log("warm-up (numba compilation) ...")
    warm_up()
    results = {}  # (model, method, sparsity) -> (seconds, options)
    for name in models:
        model, shape, classes = make_model(name)
        data = batch(shape, classes)
        for method in methods:
            for s in sparsities:
                opts = plan(name, method, s, args.quick)
                if opts is None:
                    continue
                log(f"{name} {method} {s:.2%} {opts or ''} ...")
                dt = time_cell(model, shape, data, method, s, opts)
                results[(name, method, s)] = (dt, opts)
                log(f"  {dt:.2f} s")

    lines = ["# topo_pai pruning benchmark", ""] + machine_info()
    lines.append(f"- mode: {'quick' if args.quick else 'full'}; one timed `topo_pai.prune` call "
                 f"per cell after a numba warm-up; data-dependent methods: one batch of {BATCH} "
                 "synthetic samples")
    lines.append("")
    cols = [(m, s) for m in models for s in sparsities]
    lines.append("| method | " + " | ".join(f"{PRETTY[m]} {s:.2%}" for m, s in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    checks = []
    footnotes = set()
    for method in methods:
        label = method
        base, extra = resolve(method)
        defaults = get_method(base).options
        if "rounds" in defaults:
            label += f" ({defaults['rounds']} rounds)"
        if "resolution" in defaults:
            label += f", {extra.get('resolution', defaults['resolution'])} resolution"
        cells = []
        for m, s in cols:
            if (m, method, s) not in results:
                cells.append("— ¹")
                footnotes.add(1)
                continue
            dt, opts = results[(m, method, s)]
            cell = f"{fmt_s(dt)} s"
            rounds = opts.get("rounds")
            if rounds is not None and rounds != defaults.get("rounds"):
                full = dt / rounds * defaults["rounds"]
                cell = (f"{fmt_s(dt)} s ({rounds} rounds; ≈{fmt_s(full)} s at "
                        f"{defaults['rounds']}) ²")
                footnotes.add(2)
            if method in TARGETS and rounds in (None, defaults.get("rounds")):
                ok = dt <= TARGETS[method]
                cell += f" **{'PASS' if ok else 'MISS'}**"
                checks.append((method, m, s, dt, ok))
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if 1 in footnotes:
        lines.append("¹ not run, to keep the benchmark under 15 minutes: on ResNet-18 one "
                     "SNIP/GraSP/Iter-SNIP scoring pass over 64 samples takes 0.5-2 min on this "
                     "CPU and does not depend on the sparsity, so the full run times it at 90 % "
                     "only (the quick run not at all); methods registered outside this suite "
                     "run at 90 % only on ResNet-18.")
    if 2 in footnotes:
        lines.append("² shortened run; the estimate scales the measured time by the number of "
                     "rounds (each round costs the same forward/backward pass).")
    n_pass = sum(ok for *_, ok in checks)
    lines.append("")
    lines.append(f"**Targets (PHEW <= {TARGETS['phew']:.0f} s, SynFlow with 100 rounds <= "
                 f"{TARGETS['synflow']:.0f} s per cell, at either resolution): "
                 f"{n_pass}/{len(checks)} PASS.**")
    misses = [f"{meth} on {PRETTY[m]} at {s:.2%} ({dt:.1f} s)" for meth, m, s, dt, ok in checks
              if not ok]
    if misses:
        lines.append("MISS: " + "; ".join(misses) + ".")

    if not args.no_collapse:
        log("layer collapse on VGG-19 ...")
        lines += ["", "## Layer collapse on VGG-19 (CIFAR-100 head, input 3x32x32)", "",
                  "Masks of every method; a method *collapses* when no input-output path "
                  "survives (`topo.count_paths().log10 == -inf`). Effective channels: "
                  "`topo.effective_nodes()` (channel resolution). Data: 16 synthetic samples.",
                  ""]
        lines += collapse_table(COLLAPSE_SPARSITIES, args.quick)

    lines += ["", clock.load_line("Other jobs share the 2 cores: a load above 2 slows every "
                                  "cell.")]
    write_results(out, lines, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
