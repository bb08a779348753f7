"""The ``topo-pai`` command: analyze, prune, sweep and plot.

Examples (see the README)::

    topo-pai prune resnet20 synflow 0.99 --out masks.pt
    topo-pai analyze resnet20 --masks masks.pt
    topo-pai sweep --models lenet_300_100 --dataset fashion-mnist --methods random,snip,npb \\
        --sparsities 0.9,0.99 --seeds 0,1 --shuffled snip --epochs 2 --out runs/tiny
    topo-pai plot runs/tiny --out runs/tiny/figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number, got {text!r}") from None
    if v >= 1.0 and v < 100.0:
        v = v / 100.0  # "99" and "99.68" read as percentages
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be a fraction in [0, 1) or a "
                                         f"percentage in [1, 100), got {text!r}")
    return v


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs, flag: str) -> dict:
    out = {}
    for p in pairs or ():
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise SystemExit(f"topo-pai: error: {flag} expects KEY=VALUE, got {p!r}")
        out[key] = _value(val)
    return out


def _shape(text: str) -> tuple[int, ...]:
    dims = _ints(text.replace("x", ","))
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input shape must be C,H,W (e.g. 3,32,32), got {text!r}")
    return dims


def _model_and_shape(args):
    """Build the model for the dataset's shape (if --dataset) or --input-shape/--num-classes."""
    from topo_pai.models import get_model

    if args.dataset is not None:
        from topo_pai.experiments.data import load_dataset
        ds = load_dataset(args.dataset, "train", root=args.data_root)
        shape, classes = tuple(ds.input_shape), ds.num_classes
    else:
        ds, shape, classes = None, tuple(args.input_shape), args.num_classes
    import torch
    torch.manual_seed(args.seed)
    model = get_model(args.model, in_channels=shape[0], num_classes=classes,
                      input_size=shape[1:], **_key_values(args.model_arg, "--model-arg"))
    return model, shape, ds


def _print_topology(topo, resolutions, as_json):
    out = {}
    for res in resolutions:
        summ = topo.summary(res)
        totals = dict(summ.totals, effective_flops=topo.effective_flops(res))
        if as_json:
            out[res] = {"rows": summ.to_records(), "totals": totals}
        else:
            print(summ)
            print(f"effective FLOPs (MACs) = {totals['effective_flops']:,}\n")
    if as_json:
        json.dump(out, sys.stdout, indent=1, default=lambda v: list(v) if isinstance(v, tuple)
                  else str(v))
        print()


def cmd_analyze(args) -> int:
    import topo_pai

    model, shape, _ = _model_and_shape(args)
    masks = topo_pai.load_masks(args.masks) if args.masks else {}
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    res = ("channel", "neuron") if args.resolution == "both" else (args.resolution,)
    if not args.json:
        print(f"{args.model} {shape}, masks: {args.masks or 'none (dense)'}\n")
    _print_topology(topo, res, args.json)
    return 0


def cmd_prune(args) -> int:
    import torch

    import topo_pai
    from topo_pai.pruners import get_method

    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"topo-pai: error: {str(out)!r} exists; refusing to overwrite it "
                         "(pass --force, or choose another --out)")
    method = get_method(args.method)
    model, shape, ds = _model_and_shape(args)
    data = None
    if method.needs_data:
        if ds is None:
            raise SystemExit(f"topo-pai: error: method {args.method!r} scores weights on data; "
                             "pass --dataset (e.g. fashion-mnist, digits or synthetic)")
        gen = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(ds), generator=gen)[:args.prune_samples]
        data = (ds.x[idx], ds.y[idx])
    options = _key_values(args.option, "--option")
    masks = topo_pai.prune(model, args.method, args.sparsity, input_shape=shape, data=data,
                           seed=args.seed, **options)
    path = topo_pai.save_masks(masks, out)
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    print(f"{args.method} at sparsity {args.sparsity:g} on {args.model} {shape}: masks -> {path}\n")
    _print_topology(topo, ("channel",), False)
    return 0


def _sweep_config(args):
    from topo_pai.experiments.sweep import SweepConfig

    if args.config:
        given = [f for f in ("models", "methods", "sparsities") if getattr(args, f)]
        if given:
            raise SystemExit(f"topo-pai: error: --config already sets the grid; drop "
                             f"{', '.join('--' + g for g in given)}")
        return SweepConfig.from_file(args.config)
    if not (args.models and args.methods and args.sparsities):
        raise SystemExit("topo-pai: error: sweep needs --config FILE, or --models, --methods "
                         "and --sparsities")
    train = None
    if args.epochs > 0:
        train = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, weight_decay=args.weight_decay,
                     schedule=args.schedule)
    return SweepConfig(models=args.models, dataset=args.dataset, methods=args.methods,
                       sparsities=args.sparsities, seeds=args.seeds, shuffled=args.shuffled,
                       train=train, train_limit=args.train_limit, test_limit=args.test_limit,
                       prune_samples=args.prune_samples)


def cmd_sweep(args) -> int:
    from topo_pai.experiments.sweep import pending_trials, run_sweep

    cfg = _sweep_config(args)
    total = len(cfg.trials())
    todo = len(pending_trials(cfg, args.out))
    print(f"sweep: {total} trials, {total - todo} already in {args.out}, {todo} to run "
          f"({args.engine}, {args.workers} worker(s))", flush=True)
    rows = run_sweep(cfg, args.out, workers=args.workers, engine=args.engine,
                     data_root=args.data_root, device=args.device, retries=args.retries,
                     progress=not args.quiet, scheduler_address=args.scheduler, limit=args.limit,
                     order=args.order)
    print(f"results: {len(rows)} rows in {Path(args.out) / 'results.csv'} and results.json")
    return 0


def cmd_plot(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topo_pai import plotting

    src = Path(args.results)
    if src.is_dir():
        src = src / "results.json"
    records = plotting.load_results(src)
    out = Path(args.out) if args.out else src.parent / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    models = list(dict.fromkeys(r["model"] for r in records))
    for model in models:
        prefix = f"{model}_" if len(models) > 1 else ""
        rows = [r for r in records if r["model"] == model]
        figures = [("node_path_plane", plotting.plot_node_path_plane)]
        if any(r.get("accuracy") is not None for r in rows):
            figures.append(("accuracy_vs_sparsity", plotting.plot_accuracy_vs_sparsity))
        if any(r.get("shuffled") for r in rows):
            figures.append(("shuffled_vs_original", plotting.plot_shuffle_comparison))
        for name, draw in figures:
            fig = draw(rows)
            written.append(out / f"{prefix}{name}.png")
            fig.savefig(written[-1], dpi=args.dpi, bbox_inches="tight")
            plt.close(fig)
    for p in written:
        print(p)
    return 0


def cmd_models(args) -> int:
    from topo_pai.models import available_models
    print("\n".join(available_models()))
    return 0


def cmd_methods(args) -> int:
    from topo_pai.pruners import available_methods
    print("\n".join(available_methods()))
    return 0


def _common_model_args(p):
    p.add_argument("model", help="model name (see `topo-pai models`)")
    p.add_argument("--dataset", default=None,
                   help="take the input shape and class count from this dataset")
    p.add_argument("--data-root", default=None, help="where the dataset's files are")
    p.add_argument("--input-shape", type=_shape, default=(3, 32, 32), metavar="C,H,W")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor argument, e.g. width=8 (repeatable)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topo-pai", description="Topology of sparse networks: analyze, prune, sweep, plot.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="per-layer table and totals of a model and masks file")
    _common_model_args(p)
    p.add_argument("--masks", default=None, help="masks file (.pt or .npz); default: dense")
    p.add_argument("--resolution", choices=("channel", "neuron", "both"), default="channel")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("prune", help="prune a model at initialization; write a masks file")
    _common_model_args(p)
    p.add_argument("method", help="pruning method (see `topo-pai methods`)")
    p.add_argument("sparsity", type=_sparsity, help="fraction (0.99) or percentage (99)")
    p.add_argument("--out", required=True, help="masks file to write (.pt or .npz)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. rounds=100 or alpha=0.01 (repeatable)")
    p.add_argument("--prune-samples", type=int, default=1000,
                   help="training samples for data-dependent methods")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("sweep", help="methods x sparsities x seeds, resumable results table")
    p.add_argument("--config", default=None, help="a .json or .toml SweepConfig")
    p.add_argument("--models", type=_names)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", type=_names)
    p.add_argument("--sparsities", type=lambda t: tuple(_sparsity(v) for v in t.split(",")))
    p.add_argument("--seeds", type=_ints, default=(0,))
    p.add_argument("--shuffled", type=_names, default=(),
                   help="methods whose masks also run shuffled within layers")
    p.add_argument("--epochs", type=int, default=0, help="0: measure topology only")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--prune-samples", type=int, default=1000)
    p.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (engine dask)")
    p.add_argument("--device", default="auto")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="run at most this many trials now")
    p.add_argument("--order", choices=("grid", "reverse", "random"), default="grid",
                   help="order in which pending trials start (results do not depend on it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="node-path plane and accuracy-vs-sparsity figures")
    p.add_argument("results", help="a sweep directory or its results.json / results.csv")
    p.add_argument("--out", default=None, help="figure directory (default: <results>/figures)")
    p.add_argument("--dpi", type=int, default=130)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("models", help="list the built-in models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("methods", help="list the pruning methods")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    args = build_parser().parse_args(argv)
    from topo_pai.errors import TopoPaiError
    try:
        return args.func(args)
    except (TopoPaiError, ValueError, FileNotFoundError, ImportError, KeyError, TypeError) as exc:
        # user errors: one clear line, not a traceback (set TOPO_PAI_DEBUG=1 for one)
        if os.environ.get("TOPO_PAI_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"topo-pai: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
