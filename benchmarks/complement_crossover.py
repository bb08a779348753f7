#!/usr/bin/env python
"""Where each way of counting conv layers pays (docs/complement.md).

Times the neuron-resolution end-to-end query of ``bench_core.py`` (trace, path count,
effective nodes and parameters) with every conv layer's counts forced onto one path, at
a range of uniform random densities, interleaved, median of ``--repeats``:

* ``complement``: the complement kernels (cost: min(kept, pruned) elements);
* ``sparse``: the element lists (cost: kept elements);
* ``torch conv``: torch's float64 convolutions (``TorchConvCounts``; cost: all elements),
  the effective elements still read off the mask as in ``complement``;
* ``auto``: ``engine="auto"``, which chooses per layer by the cost models of both
  constants below.

The crossovers set ``topo_pai.metrics.neuron.COMPLEMENT_MIN_DENSITY`` (complement against
sparse) and ``topo_pai.metrics.torch_neuron.TORCH_COUNT_MIN_SHARE`` (torch conv against
the complement, as a function of min(density, 1 - density)).

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
from topo_pai.metrics.torch_neuron import TorchConvCounts


def torch_conv_engine(program, structure, layer_masks, shared, **kwargs):
    """A Numba engine whose every conv layer's counts take torch's convolutions."""
    return N.NeuronEngine(program, structure, layer_masks, shared, complement_min_density=0.0,
                          dense_products=TorchConvCounts(program, layer_masks, shared,
                                                         min_share=0.0, element_work=0.0,
                                                         layer_work=0.0),
                          **kwargs)


PATHS = {  # the engine factory forcing each path
    "complement": functools.partial(N.NeuronEngine, complement_min_density=0.0),
    "sparse": functools.partial(N.NeuronEngine, complement_min_density=2.0),
    "torch conv": torch_conv_engine,
    "auto": topology.ENGINES["neuron"],  # engine="auto": the choice per layer
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vgg19,resnet50")
    ap.add_argument("--densities", default="0.05,0.1,0.2,0.3,0.5,0.7,0.8,0.9,1")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    original = topology.ENGINES["neuron"]
    print("| model | density | complement | sparse | torch conv | auto | sparse / complement "
          "| complement / torch conv | best / auto |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for name in args.models.split(","):
            model, shape = make_model(name), MODELS[name][1]
            for density in (float(d) for d in args.densities.split(",")):
                masks = make_masks(model, name, density)
                times = {p: [] for p in PATHS}
                logs = {}
                for rep in range(args.repeats + 1):  # the first round warms up (compiles)
                    for path, factory in PATHS.items():
                        topology.ENGINES["neuron"] = factory
                        t = time.perf_counter()
                        logs[path] = ours_e2e(model, masks, shape, "neuron")
                        if rep:
                            times[path].append(time.perf_counter() - t)
                for path in PATHS:  # the same numbers on every path
                    assert logs[path]["params"] == logs["sparse"]["params"], path
                    assert logs[path]["nodes"] == logs["sparse"]["nodes"], path
                c, s, t, a = (statistics.median(times[p]) for p in PATHS)
                print(f"| {PRETTY[name]} | {density:g} | {c * 1e3:.0f} ms | {s * 1e3:.0f} ms "
                      f"| {t * 1e3:.0f} ms | {a * 1e3:.0f} ms | {s / c:.2f} | {c / t:.2f} "
                      f"| {min(c, s, t) / a:.2f} |", flush=True)
    finally:
        topology.ENGINES["neuron"] = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
