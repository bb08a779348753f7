#!/usr/bin/env python
"""Where counting conv layers by their complement starts to pay (docs/complement.md).

Times the neuron-resolution end-to-end query of ``bench_core.py`` (trace, path count,
effective nodes and parameters) with every conv layer forced onto the complement
kernels and with every conv layer forced onto the element lists, at a range of uniform
random densities, interleaved, median of ``--repeats``. The crossover is the density
above which the complement is faster; ``topo_pai.metrics.neuron.COMPLEMENT_MIN_DENSITY``
is set from it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/complement_crossover.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import MODELS, PRETTY, make_masks, make_model, ours_e2e

from topo_pai import topology
from topo_pai.metrics import neuron as N

PATHS = {"complement": 0.0, "sparse": 2.0}  # complement_min_density forcing each path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vgg19,resnet50")
    ap.add_argument("--densities", default="0.05,0.1,0.2,0.3,0.5,0.9,1")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    original = topology.ENGINES["neuron"]
    print("| model | density | complement | sparse | sparse / complement |")
    print("|---|---|---|---|---|")
    try:
        for name in args.models.split(","):
            model, shape = make_model(name), MODELS[name][1]
            for density in (float(d) for d in args.densities.split(",")):
                masks = make_masks(model, name, density)
                times = {p: [] for p in PATHS}
                logs = {}
                for rep in range(args.repeats + 1):  # the first round warms up (compiles)
                    for path, threshold in PATHS.items():
                        topology.ENGINES["neuron"] = functools.partial(
                            N.NeuronEngine, complement_min_density=threshold)
                        t = time.perf_counter()
                        logs[path] = ours_e2e(model, masks, shape, "neuron")
                        if rep:
                            times[path].append(time.perf_counter() - t)
                assert logs["complement"]["params"] == logs["sparse"]["params"]
                c, s = (statistics.median(times[p]) for p in PATHS)
                print(f"| {PRETTY[name]} | {density:g} | {c * 1e3:.0f} ms | {s * 1e3:.0f} ms "
                      f"| {s / c:.2f} |", flush=True)
    finally:
        topology.ENGINES["neuron"] = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
