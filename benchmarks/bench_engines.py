#!/usr/bin/env python
"""Where torch's dense ops overtake the Numba kernels: the crossover of ``engine="auto"``.

Run from the repository root::

    . .venv/bin/activate
    export OMP_WAIT_POLICY=PASSIVE
    python benchmarks/bench_engines.py            # full run (~3 min on 2 shared cores)
    python benchmarks/bench_engines.py --quick    # two layers, fewer densities (~1 min)

Workload: single conv layers with the geometries of ResNet-18 at 64x64 (3x3, stride
1, padding 1: 64 channels at 64x64, 128 at 32x32, 256 at 16x16, 512 at 8x8) and one
Linear layer (512 -> 200), each traced as a one-layer model, at densities 1 ... 0.01
(Bernoulli masks, seed 0), with ``|w|`` as edge weights. A cell is the best of 3
wall-clock times of one weighted-flow query at neuron resolution, as SynFlow asks
it every round: ``topo.flows(|w|, "neuron").log10_through_weights()`` (forward and
backward flows and the flow through every weight), on ``engine="numba"`` and
``engine="torch"``. The table gives both times and their ratio; the crossover of a
layer is the lowest density at which torch is at least as fast. ``engine="auto"``
uses one density for every layer (``TORCH_MIN_DENSITY`` in
``topo_pai/metrics/torch_neuron.py``): both costs scale with the output positions,
Numba's with the kept weights and torch's with all of them, so their ratio depends on
the density far more than on the geometry.

The full run writes ``benchmarks/results_engines.md``; ``--quick`` writes
``benchmarks/results_engines_quick.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import topo_pai  # noqa: E402
from topo_pai.metrics.torch_neuron import TORCH_MIN_DENSITY  # noqa: E402

LAYERS = {
    "conv 16ch 32x32": (lambda: nn.Conv2d(16, 16, 3, padding=1, bias=False), (16, 32, 32)),
    "conv 64ch 8x8": (lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False), (64, 8, 8)),
    "conv 64ch 64x64": (lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False), (64, 64, 64)),
    "conv 128ch 32x32": (lambda: nn.Conv2d(128, 128, 3, padding=1, bias=False), (128, 32, 32)),
    "conv 256ch 16x16": (lambda: nn.Conv2d(256, 256, 3, padding=1, bias=False), (256, 16, 16)),
    "conv 512ch 8x8": (lambda: nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 8, 8)),
    "linear 512->200": (lambda: nn.Linear(512, 200, bias=False), (512,)),
}
QUICK_LAYERS = ("conv 64ch 64x64", "conv 512ch 8x8")
DENSITIES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
QUICK_DENSITIES = (1.0, 0.3, 0.1, 0.03)
REPEAT = 3


def time_flows(model, masks, shape, engine: str) -> float:
    topo = topo_pai.from_torch(model, masks, shape, engine=engine)
    weights = topo.edge_weights({"weight": model.weight.detach().abs()})
    best = float("inf")
    for _ in range(REPEAT):
        t = time.perf_counter()
        topo.flows(weights, "neuron").log10_through_weights()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    layers = QUICK_LAYERS if args.quick else tuple(LAYERS)
    densities = QUICK_DENSITIES if args.quick else DENSITIES
    torch.manual_seed(0)
    # Compile the Numba kernels outside the timing.
    warm = nn.Conv2d(2, 2, 3, padding=1)
    time_flows(warm, {"weight": torch.ones_like(warm.weight)}, (2, 5, 5), "numba")
    start = time.time()
    load0 = os.getloadavg()
    rows, crossover = [], {}
    for name in layers:
        make, shape = LAYERS[name]
        model = make()
        rng = np.random.default_rng(0)
        for d in densities:
            mask = torch.from_numpy((rng.random(tuple(model.weight.shape)) < d).astype(np.float32))
            t_numba = time_flows(model, {"weight": mask}, shape, "numba")
            t_torch = time_flows(model, {"weight": mask}, shape, "torch")
            rows.append((name, d, t_numba, t_torch))
            if t_torch <= t_numba:
                crossover[name] = d
            print(f"{name:18s} density {d:5.2f}: numba {t_numba:.4f} s, torch {t_torch:.4f} s, "
                  f"numba/torch {t_numba / t_torch:.2f}", flush=True)
    lines = [
        "# Engine crossover: Numba kernels vs torch dense ops (weighted flows, neuron resolution)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: `{platform.platform()}` / {platform.processor() or platform.machine()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}",
        f"- CPUs: os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        f"- mode: {'quick' if args.quick else 'full'}; best of {REPEAT} per cell; "
        f"`flows(|w|, 'neuron').log10_through_weights()` on a one-layer model",
        "",
        "| layer | density | numba | torch | numba / torch |",
        "|---|---|---|---|---|",
    ]
    for name, d, tn, tt in rows:
        lines.append(f"| {name} | {d:g} | {tn:.4f} s | {tt:.4f} s | {tn / tt:.2f} |")
    lines += ["", "Lowest density at which torch is at least as fast (per layer): "
              + ", ".join(f"{n}: {crossover.get(n, 'never')}" for n in layers) + ".",
              f"`engine=\"auto\"` uses TORCH_MIN_DENSITY = {TORCH_MIN_DENSITY}.", "",
              f"Load average (1 / 5 / 15 min) at start: {tuple(round(x, 2) for x in load0)}; "
              f"at end: {tuple(round(x, 2) for x in os.getloadavg())}; total wall time "
              f"{time.time() - start:.0f} s. Other jobs share the cores."]
    out = HERE / ("results_engines_quick.md" if args.quick else "results_engines.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
