#!/usr/bin/env python
"""Where torch's dense ops overtake the Numba kernels: the crossover of ``engine="auto"``.

Run from the repository root::

    . .venv/bin/activate
    export OMP_WAIT_POLICY=PASSIVE
    python benchmarks/bench_engines.py            # full run (~5 min on 2 shared cores)
    python benchmarks/bench_engines.py --quick    # fewer densities (~2 min)

Workload: ResNet-20 (input 3x32x32) and ResNet-18 with the Tiny-ImageNet stem (input
3x64x64), built after ``torch.manual_seed(0)``, with Bernoulli masks (seed 0) at one
density for every layer, and ``|w|`` as edge weights. A cell is the best of 2
wall-clock times of one weighted-flow query at neuron resolution, as SynFlow asks it
every round, on masks it has not seen before:
``topo.with_masks(masks).flows(|w|, "neuron").log10_through_weights()`` (the masks'
intake, forward and backward flows and the flow through every weight; the Numba engine
also lists the kept elements of every conv), on ``engine="numba"`` and
``engine="torch"``. The crossover of a model is the lowest density at which torch is at
least as fast. ``engine="auto"`` compares the network's work-weighted density (kept
weights times their output positions, over all weights times them; here the density
itself) with ``TORCH_MIN_DENSITY`` in ``topo_pai/metrics/torch_neuron.py``.

The full run writes ``benchmarks/results_engines.md``; ``--quick`` writes
``benchmarks/results_engines_quick.md``.
"""

from __future__ import annotations  # noqa: I001 (the harness is imported before torch)

# The harness first: it sets OMP_WAIT_POLICY before torch (and its OpenMP runtime) loads.
from harness import RunClock, machine_info, results_path, stopwatch, write_results

import argparse
import sys

import numpy as np
import torch

import topo_pai
from topo_pai.metrics.torch_neuron import TORCH_MIN_DENSITY
from topo_pai.models import resnet18, resnet20

MODELS = {"ResNet-20": (resnet20, (3, 32, 32)), "ResNet-18 (64x64)": (resnet18, (3, 64, 64))}
DENSITIES = (1.0, 0.3, 0.1, 0.05, 0.02, 0.01)
QUICK_DENSITIES = (1.0, 0.1, 0.02)
REPEAT = 2


def time_flows(model, masks, shape, engine: str) -> float:
    topo = topo_pai.from_torch(model, masks, shape, engine=engine)
    absw = {n: model.get_parameter(n).detach().abs() for n in masks}
    weights = topo.edge_weights(absw)
    return min(stopwatch(lambda: topo.with_masks(masks).flows(weights, "neuron")
                         .log10_through_weights())[0] for _ in range(REPEAT))


def bernoulli(model, density: float) -> dict:
    rng = np.random.default_rng(0)
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    return {n: torch.from_numpy((rng.random(tuple(model.get_parameter(n).shape)) < density)
                                .astype(np.float32)) for n in names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    densities = QUICK_DENSITIES if args.quick else DENSITIES
    warm = resnet18(input_size=8)  # Numba compilation outside the timing
    time_flows(warm, bernoulli(warm, 0.5), (3, 8, 8), "numba")
    clock = RunClock()
    rows, crossover = [], {}
    for name, (make, shape) in MODELS.items():
        torch.manual_seed(0)
        model = make()
        for d in densities:
            masks = bernoulli(model, d)
            t_numba = time_flows(model, masks, shape, "numba")
            t_torch = time_flows(model, masks, shape, "torch")
            rows.append((name, d, t_numba, t_torch))
            if t_torch <= t_numba:
                crossover[name] = d
            print(f"{name} density {d:5.2f}: numba {t_numba:.3f} s, torch {t_torch:.3f} s, "
                  f"numba/torch {t_numba / t_torch:.2f}", flush=True)
    lines = [
        "# Engine crossover: Numba kernels vs torch dense ops (weighted flows, neuron resolution)",
        "",
        *machine_info(),
        f"- mode: {'quick' if args.quick else 'full'}; best of {REPEAT} per cell; "
        "`with_masks(masks).flows(|w|, 'neuron').log10_through_weights()`",
        "",
        "| model | density | numba | torch | numba / torch |",
        "|---|---|---|---|---|",
    ]
    for name, d, tn, tt in rows:
        lines.append(f"| {name} | {d:g} | {tn:.3f} s | {tt:.3f} s | {tn / tt:.2f} |")
    lines += ["", "Lowest density at which torch is at least as fast: "
              + ", ".join(f"{n}: {crossover.get(n, 'never')}" for n in MODELS) + ". "
              f"`engine=\"auto\"` uses TORCH_MIN_DENSITY = {TORCH_MIN_DENSITY}.", "",
              clock.load_line()]
    write_results(results_path("engines", args.quick), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
