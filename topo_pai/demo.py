"""Demo: the topology of a randomly pruned ResNet-20.

Run with ``python -m topo_pai.demo [--sparsity 0.9] [--seed 0] [--resolution channel]``.
It prunes every Linear/Conv weight of a CIFAR ResNet-20 uniformly at random,
then prints the per-layer table and the totals.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime
    import torch

    import topo_pai
    from topo_pai.models import resnet20

    parser = argparse.ArgumentParser(prog="python -m topo_pai.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", choices=("channel", "neuron", "both"), default="both")
    args = parser.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must lie in [0, 1), got {args.sparsity}")

    torch.manual_seed(args.seed)
    model = resnet20()
    gen = torch.Generator().manual_seed(args.seed)
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() > 1:  # Linear and Conv weights; exact count kept per layer
            keep = round((1.0 - args.sparsity) * p.numel())
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[torch.randperm(p.numel(), generator=gen)[:keep]] = True
            masks[name] = flat.view_as(p)

    start = time.perf_counter()
    topo = topo_pai.from_torch(model, masks, input_shape=(3, 32, 32))
    resolutions = ("channel", "neuron") if args.resolution == "both" else (args.resolution,)
    print(f"ResNet-20 (3x32x32), {args.sparsity:.2%} random sparsity per layer, seed {args.seed}\n")
    for res in resolutions:
        summary = topo.summary(res)
        print(f"== {res} resolution ==")
        print(summary)
        pc = topo.count_paths(res)
        try:
            exact = pc.exact
            print(f"exact path count: {exact}")
        except topo_pai.PathCountTooLarge as exc:
            print(f"exact path count skipped: {exc}")
        print()
    print(f"done in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
