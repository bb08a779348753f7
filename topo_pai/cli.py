"""The ``topo-pai`` command: analyze, prune, sweep and plot.

Examples (see the README)::

    topo-pai prune resnet20 synflow 99% --out masks.pt
    topo-pai analyze resnet20 --masks masks.pt
    topo-pai sweep --models lenet_300_100 --dataset fashion-mnist --methods random,snip,npb \\
        --sparsities 0.9,0.99 --seeds 0,1 --shuffled snip --epochs 2 --out runs/tiny
    topo-pai plot runs/tiny --out runs/tiny/figures

A user mistake (bad option, unknown name, unusable path, a directory in use)
prints one line ``topo-pai: error: ...`` and exits with status 2, before any
work where it can be checked up front; an internal error exits with status 1.
``TOPO_PAI_DEBUG=1`` shows the Python traceback of either.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

from topo_pai import cli_args
from topo_pai.cli_args import UsageError, check_output_dir, check_output_file, parse_sparsity

#: Exit statuses (141 = 128 + SIGPIPE, as a shell reports a command whose reader left).
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 0, 1, 2, 130, 141
DEBUG_ENV = "TOPO_PAI_DEBUG"

EPILOG = f"""\
exit status: 0 success; 2 a user error (bad argument, unknown name, unusable path, a sweep
directory in use or of another configuration), reported in one line before any work where it
can be checked up front; 1 an internal error, or trials of a sweep that failed (see its
failures.jsonl); 130 interrupted (Ctrl-C); 141, silently, when the reader of the output
went away (e.g. `| head`; files the command writes are complete by then).

environment: {DEBUG_ENV}=1 prints the Python traceback of an error instead of one line.
"""

SWEEP_EPILOG = """\
results: <out>/results.jsonl is the source of truth (one row per finished trial, appended as it
finishes); results.csv and results.json are exported from it during and at the end of every
run, also when nothing was left to run. Rerun the same command to continue an interrupted
sweep: finished trials are skipped. A directory holding another configuration is refused (the
order of the --models/--methods/--sparsities/--seeds lists does not matter).

one sweep per directory: a sweep locks <out>/sweep.lock; a second sweep on the same --out is
refused at once with a message naming the process that holds it (wait for it, or use another
--out). The operating system releases the lock when a sweep ends, even when it is killed.

reproducible: each trial runs with --threads intra-op threads and torch's deterministic
algorithms, so its result does not depend on --workers, --order or --engine; the results
record the thread count.
"""


# ------------------------------------------------------------------ commands
COMPACT_SUFFIXES = (".pt", ".pth")
def _model_args(args) -> dict:
    """--model-args JSON and the repeatable --model-arg KEY=VALUE, merged."""
    pairs = cli_args.key_values(args.model_arg, "--model-arg")
    given = dict(args.model_args or {})
    both = sorted(set(pairs) & set(given))
    if both:
        raise UsageError(f"{', '.join(both)} given in both --model-args and --model-arg; give "
                         "each argument once")
    return {**given, **pairs}


def _model_and_shape(args):
    """Build the model (a zoo name, package.module:callable or path/to/file.py:callable) for
    the dataset's shape (if --dataset) or --input-shape/--num-classes."""
    from topo_pai.models.spec import build_model, check_input_shape, check_model_spec

    spec = check_model_spec(args.model)
    if args.num_classes is not None and not spec.is_zoo:
        raise UsageError(f"--num-classes is for zoo models; {args.model!r} fixes its own classes "
                         "(pass its arguments with --model-args)")
    ds, classes = None, 10 if args.num_classes is None else args.num_classes
    if args.dataset is not None:
        from topo_pai.experiments.data import load_dataset, shaped_options
        ds = load_dataset(args.dataset, "train", root=args.data_root,  # synthetic: any shape
                          **shaped_options(args.dataset, args.input_shape, args.num_classes))
        if args.num_classes is not None and args.num_classes != ds.num_classes:
            raise UsageError(f"--num-classes {args.num_classes} contradicts --dataset "
                             f"{args.dataset}, which has {ds.num_classes} classes; drop "
                             "--num-classes")
        classes = ds.num_classes
    shape = check_input_shape(spec, args.input_shape, None if ds is None else ds.input_shape)
    if shape is None:  # a zoo model with neither: the CIFAR shape
        shape = (3, 32, 32)
    import torch
    torch.manual_seed(args.seed)
    model, _ = build_model(args.model, input_shape=shape, num_classes=classes,
                           model_args=_model_args(args))
    return model, tuple(shape), ds


def _load_masks_arg(args, model):
    """The masks of --masks (any format load_masks reads), {} without it. Masks of the
    model's parameters that carry no edges (e.g. a norm weight pruned with
    torch.nn.utils.prune) are skipped with a warning naming them."""
    import topo_pai
    from topo_pai.masks.validate import without_unprunable

    if not args.masks:
        if getattr(args, "masks_from_zeros", False):
            raise UsageError("--masks-from-zeros needs --masks FILE")
        return {}
    masks = topo_pai.load_masks(args.masks, from_zeros=args.masks_from_zeros)
    masks = without_unprunable(masks, model, "--masks")
    try:  # checked against the model here, so that the error names the file
        return topo_pai.Masks(masks, model=model)
    except topo_pai.MaskError as exc:
        raise topo_pai.MaskError(f"--masks {args.masks!r}: {exc}") from None


def strict_json(value):
    """``value`` with tuples as lists, numpy scalars as Python numbers and non-finite floats
    as the strings ``"-inf"``, ``"inf"`` and ``"nan"`` (as in a sweep's results.json), so
    that ``json.dumps(..., allow_nan=False)`` writes strict JSON.

    >>> strict_json({"log10_paths": float("-inf"), "shape": (3, 4)})
    {'log10_paths': '-inf', 'shape': [3, 4]}
    """
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a numpy or torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _print_topology(topo, resolutions, as_json, metrics=None):
    """Print the summary of each resolution and, when ``metrics`` is a callable, the
    ``MetricsTable`` it returns for that resolution after it (in JSON, under the
    resolution's ``"metrics"``)."""
    out = {}
    for res in resolutions:
        summ = topo.summary(res)
        totals = dict(summ.totals, effective_flops=topo.effective_flops(res))
        table = None if metrics is None else metrics(res)
        if as_json:
            out[res] = {"rows": summ.to_records(), "totals": totals}
            if table is not None:
                out[res]["metrics"] = {"rows": table.to_records(), "totals": table.totals,
                                       "weighted": table.weighted}
        else:
            print(summ)
            print(f"effective FLOPs (MACs) = {totals['effective_flops']:,}\n")
            if table is not None:
                print(table)
                print()
    if as_json:
        json.dump(strict_json(out), sys.stdout, indent=1, allow_nan=False)
        print()


def cmd_analyze(args) -> int:
    import topo_pai

    if args.masks:
        cli_args.check_input_file(args.masks, "--masks")
    if args.weighted_spectra and not args.metrics:
        raise UsageError("--weighted-spectra adds the weighted spectral gap to the graph "
                         "measures; pass --metrics too")
    model, shape, _ = _model_and_shape(args)
    masks = _load_masks_arg(args, model)
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    res = ("channel", "neuron") if args.resolution == "both" else (args.resolution,)
    if not args.json:
        print(f"{args.model} {shape}, masks: {args.masks or 'none (dense)'}\n")
    _print_topology(topo, res, args.json, _metrics_tables(topo, model, args))
    return EXIT_OK


class _ProgressHandler(logging.Handler):
    """Draws the per-round records of ``topo_pai.prune`` as a tqdm bar on stderr, and
    other records as lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.bar = None

    def emit(self, record):
        rounds = getattr(record, "rounds", None)
        if rounds is None:
            print(f"topo-pai: {record.getMessage()}", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm
            desc = getattr(record, "desc", None) or record.getMessage().split(" round")[0]
            self.bar = tqdm(total=rounds, desc=desc, unit=getattr(record, "unit", "round"),
                            file=sys.stderr, leave=False)
        self.bar.update(record.round - self.bar.n)
        if record.round >= rounds:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _progress(quiet: bool):
    """Report the progress of long work on stderr, unless ``quiet``."""
    if quiet:
        yield
        return
    logger = logging.getLogger("topo_pai.prune")
    handler = _ProgressHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if handler.bar is not None:
            handler.bar.close()


def _metrics_tables(topo, model, args):
    """``resolution -> Topology.metrics(...)`` when ``--metrics`` asks for it, else None.
    With ``--weighted-spectra``, the weights are ``|w|`` of ``model``'s own weights: those
    it was built with (seeded by ``--seed``), never the values of a ``--masks`` file."""
    if not args.metrics:
        return None
    weights = None
    if args.weighted_spectra:
        if args.masks_from_zeros:
            warnings.warn("--weighted-spectra takes |w| of the model's initial weights "
                          "(built with --seed), not the weights in --masks, which give only "
                          "the masks", stacklevel=2)
        params = dict(model.named_parameters())
        # validated once, shared by every resolution's table
        weights = topo.edge_weights({layer.param: params[layer.param].detach().abs()
                                     for layer in topo.layers if layer.param in params})
    return lambda res: topo.metrics(weights, res)


def cmd_prune(args) -> int:
    from topo_pai.pruners.io import SUFFIXES

    out = check_output_file(args.out, "--out", force=args.force, suffixes=SUFFIXES)
    import torch

    import topo_pai
    from topo_pai.pruners import get_method
    from topo_pai.pruners.api import check_options

    method = get_method(args.method)
    if args.masks_from_zeros and not args.masks:
        raise UsageError("--masks-from-zeros needs --masks FILE (the weights whose zeros are "
                         "the pruned entries)")
    if method.needs_data and args.dataset is None:
        raise UsageError(f"method {args.method!r} scores weights on data; pass --dataset (e.g. "
                         "fashion-mnist, digits or synthetic)")
    options = cli_args.key_values(args.option, "--option")
    given_by_flags = {"seed": "--seed", "data": "--dataset and --prune-samples",
                      "input_shape": "--input-shape or --dataset"}
    clashing = sorted(set(options) & set(given_by_flags))
    if clashing:
        key = clashing[0]
        raise UsageError(f"--option {key}=...: {key} is set by {given_by_flags[key]}; use that "
                         "instead")
    if args.masks:
        cli_args.check_input_file(args.masks, "--masks")
        if method.budgets_from_option is None:
            raise UsageError(f"--masks is for methods that rework given masks (shuffle); "
                             f"{args.method!r} prunes the dense model")
        if method.budgets_from_option in options:
            raise UsageError(f"--masks and --option {method.budgets_from_option}= both give the "
                             "masks; give --masks only")
    elif method.budgets_from_option is not None:
        raise UsageError(f"method {args.method!r} reworks given masks: pass them with --masks "
                         "FILE (e.g. the output of an earlier topo-pai prune)")
    check_options(args.method, **options)  # names and values, before the model and data
    model, shape, ds = _model_and_shape(args)
    if args.masks:
        options[method.budgets_from_option] = _load_masks_arg(args, model)
    data = None
    if method.needs_data:
        gen = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(ds), generator=gen)[:args.prune_samples]
        data = (ds.x[idx], ds.y[idx])
    t0 = time.perf_counter()
    with _progress(args.quiet):
        masks = topo_pai.prune(model, args.method, args.sparsity, input_shape=shape, data=data,
                               seed=args.seed, **options)
    if not args.quiet:
        print(f"topo-pai: pruned in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)
    with warnings.catch_warnings():  # prune() has said so already
        warnings.simplefilter("ignore", topo_pai.UncoveredWeightsWarning)
        # before the file is written: a shape that does not fit the model is refused here
        # for the methods that never trace it (random, magnitude, ...)
        topo = topo_pai.from_torch(model, masks, input_shape=shape)
    path = topo_pai.save_masks(masks, out)
    print(f"{args.method} at sparsity {args.sparsity:g} on {args.model} {shape}: masks -> {path}\n")
    _print_topology(topo, ("channel",), False)
    return EXIT_OK


def cmd_compact(args) -> int:
    out = check_output_file(args.out, "--out", force=args.force, suffixes=COMPACT_SUFFIXES)
    cli_args.check_input_file(args.masks, "--masks")
    import torch

    from topo_pai.compaction import compact_with_report

    model, shape, _ = _model_and_shape(args)
    masks = _load_masks_arg(args, model)
    result = compact_with_report(model, masks, shape)
    torch.save(result.model, out)
    if args.json:
        json.dump(strict_json(dict(result.report.to_dict(), out=str(out))), sys.stdout, indent=1,
                  allow_nan=False)
        print()
    else:
        print(f"{args.model} {shape}, masks: {args.masks}: compacted model -> {out}")
        print(result.report)
        print(f"load it with torch.load({str(out)!r}, weights_only=False) (needs topo_pai "
              "installed); it runs in eval mode")
    return EXIT_OK


#: Sweep flags that set the configuration (what decides a trial's result), with their
#: defaults; --config sets all of them.
RECIPE_DEFAULTS = {
    "models": None, "methods": None, "sparsities": None, "dataset": "fashion-mnist",
    "seeds": (0,), "shuffled": (), "epochs": 0, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
    "weight_decay": 5e-4, "schedule": "cosine", "train_limit": None, "test_limit": None,
    "prune_samples": 1000, "threads": 1, "input_shape": None, "metrics": "off",
}


def _sweep_config(args):
    from topo_pai.experiments.config import SweepConfig

    given = [k for k in RECIPE_DEFAULTS if getattr(args, k) is not None]
    if args.config:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UsageError(f"--config already sets the configuration; drop {flags} (or edit "
                             f"{args.config})")
        return SweepConfig.from_file(args.config)
    a = {k: (getattr(args, k) if getattr(args, k) is not None else v)
         for k, v in RECIPE_DEFAULTS.items()}
    if not (a["models"] and a["methods"] and a["sparsities"]):
        raise UsageError("sweep needs --config FILE, or --models, --methods and --sparsities")
    train = None
    training_flags = [f"--{k.replace('_', '-')}" for k in
                      ("batch_size", "lr", "momentum", "weight_decay", "schedule")
                      if getattr(args, k) is not None]
    if a["epochs"] == 0 and training_flags:
        raise UsageError(f"{', '.join(training_flags)} set training, but --epochs is 0 (only "
                         "the topology is measured); give --epochs N, or drop them")
    if a["epochs"] > 0:
        train = dict(epochs=a["epochs"], batch_size=a["batch_size"], lr=a["lr"],
                     momentum=a["momentum"], weight_decay=a["weight_decay"],
                     schedule=a["schedule"])
    return SweepConfig(models=a["models"], dataset=a["dataset"], methods=a["methods"],
                       sparsities=a["sparsities"], seeds=a["seeds"], shuffled=a["shuffled"],
                       train=train, train_limit=a["train_limit"], test_limit=a["test_limit"],
                       prune_samples=a["prune_samples"], threads=a["threads"],
                       input_shape=a["input_shape"], metrics=a["metrics"])


def cmd_sweep(args) -> int:
    from topo_pai.experiments.sweep import run_sweep

    if args.config:
        cli_args.check_input_file(args.config, "--config")
    check_output_dir(args.out, "--out")
    cfg = _sweep_config(args)

    def announce(total: int, already: int, todo: int) -> None:  # after every up-front check
        print(f"sweep: {total} trials, {already} already in {args.out}, {todo} to run "
              f"({args.engine}, {args.workers} worker(s))", flush=True)

    rows = run_sweep(cfg, args.out, workers=args.workers, engine=args.engine,
                     data_root=args.data_root, device=args.device, retries=args.retries,
                     progress=not args.quiet, scheduler_address=args.scheduler, limit=args.limit,
                     order=args.order, on_start=announce)
    print(f"results: {len(rows)} rows in {Path(args.out) / 'results.csv'} and results.json")
    return EXIT_OK


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def cmd_plot(args) -> int:
    try:  # an optional extra: say how to install it, before reading anything
        import matplotlib
    except ImportError:
        raise UsageError("topo-pai plot needs matplotlib, which is not installed: pip install "
                         "'topo_pai[plot]' (or pip install matplotlib)") from None
    from topo_pai.experiments import plotting

    src = Path(args.results)
    if not src.exists():
        raise UsageError(f"results: {str(src)!r} does not exist; pass a sweep directory or its "
                         "results.json / results.csv")
    if src.is_dir():
        src = src / "results.json"
    out = check_output_dir(args.out if args.out else src.parent / "figures", "--out")
    records = plotting.load_results(src)
    if not records:
        raise UsageError(f"results: {str(src)!r} holds no result rows, so there is nothing to "
                         "plot (has the sweep finished a trial?)")
    if any("model" not in r for r in records):
        raise UsageError(f"results: {str(src)!r} has no 'model' column, so it is not a sweep's "
                         f"results table (columns: {', '.join(sorted(records[0]))})")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    models = list(dict.fromkeys(r["model"] for r in records))
    for model in models:
        prefix = f"{model}_" if len(models) > 1 else ""
        rows = [r for r in records if r["model"] == model]
        figures = [("node_path_plane", plotting.plot_node_path_plane)]
        if any(_finite(r.get("accuracy")) for r in rows):  # a topology-only sweep has none
            figures.append(("accuracy_vs_sparsity", plotting.plot_accuracy_vs_sparsity))
        if any(r.get("shuffled") for r in rows):
            figures.append(("shuffled_vs_original", plotting.plot_shuffle_comparison))
        figures += _metric_figures(plotting, rows, args.metric)
        for name, draw in figures:
            fig = draw(rows)
            written.append(out / f"{prefix}{name}.png")
            fig.savefig(written[-1], dpi=args.dpi, bbox_inches="tight")
            plt.close(fig)
    for p in written:
        print(p)
    return EXIT_OK


def _print_table(header, rows) -> None:
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    for k, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _metric_figures(plotting, rows, metrics) -> list:
    """``(name, draw)`` of one accuracy-vs-``metric`` figure per ``--metric``."""
    from topo_pai.experiments.schema import SPECTRAL_COLUMNS
    if metrics and not any(r.get("accuracy") is not None
                           and r.get("accuracy") == r.get("accuracy") for r in rows):
        raise UsageError("--metric plots accuracy, but no trial has one: run the sweep with "
                         "training (--epochs or a train table)")
    for m in metrics:
        if not any(m in r for r in rows):
            present = sorted({k for r in rows for k in r})
            raise UsageError(f"--metric {m!r}: the results have no such column; columns: "
                             f"{', '.join(present)} (graph measures need a sweep with "
                             "--metrics cheap or all)")
        if m in SPECTRAL_COLUMNS and all(r.get(m) in (None, "") or r.get(m) != r.get(m)
                                         for r in rows):  # None, empty or NaN: not recorded
            raise UsageError(f"--metric {m!r}: the results hold no value of it: the sweep "
                             "recorded the graph measures without the spectra (--metrics "
                             "cheap); rerun it with --metrics all in a new --out directory")
    return [(f"{m}_vs_accuracy", lambda rs, m=m: plotting.plot_metric_vs_accuracy(rs, m))
            for m in metrics]


def cmd_models(args) -> int:
    from topo_pai.models import available_models, model_options
    rows = [(name, ", ".join(model_options(name)) or "-") for name in available_models()]
    _print_table(("model", "options (--model-args / --model-arg)"), rows)
    print("\nEvery zoo model takes in_channels, num_classes and input_size from --dataset or "
          "--input-shape/--num-classes.\nYour own model: package.module:callable or "
          "path/to/file.py:callable, called with --model-args JSON.")
    return EXIT_OK


def cmd_methods(args) -> int:
    from topo_pai.pruners import available_methods, get_method
    rows = []
    for name in available_methods():
        m = get_method(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items()
                         if k != m.budgets_from_option) or "-"
        needs = ("--dataset" if m.needs_data else
                 "--masks" if m.budgets_from_option else "-")
        rows.append((name, m.kind, needs, opts, m.summary))
    _print_table(("method", "kind", "needs", "options (--option KEY=VALUE)", "summary"), rows)
    return EXIT_OK


MODEL_HELP = ("a zoo name (see `topo-pai models`), package.module:callable or "
              "path/to/file.py:callable (a model class or a function returning the model, "
              "called with --model-args)")


def _common_model_args(p):
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--dataset", default=None,
                   help="take the input shape and class count from this dataset")
    p.add_argument("--data-root", default=None, help="where the dataset's files are")
    p.add_argument("--input-shape", type=cli_args.shape, default=None, metavar="C,H,W",
                   help="one sample's shape without the batch dimension (default 3,32,32 for a "
                        "zoo model; required for a callable unless --dataset gives it; must "
                        "match --dataset)")
    p.add_argument("--num-classes", type=cli_args.positive, default=None,
                   help="classes of a zoo model (default 10, or the dataset's; a callable "
                        "fixes its own)")
    p.add_argument("--model-args", type=cli_args.json_object, default=None, metavar="JSON",
                   help="keyword arguments of the model as a JSON object, e.g. "
                        "'{\"width\": 8}' (a zoo model's options, or the callable's arguments)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="one model argument, e.g. width=8 or batch_norm=false (repeatable; "
                        "values are JSON, and True/False/None work too)")
    p.add_argument("--seed", type=cli_args.seed, default=0,
                   help="seed of the model's initial weights (torch.manual_seed before it "
                        "is built) and, for prune, of the method and its data sample "
                        "(default 0)")


def _masks_args(p, required: bool = False):
    p.add_argument("--masks", default=None, required=required,
                   help="masks file (.pt/.pth or .npz): our own masks, a state_dict of a model "
                        "pruned with torch.nn.utils.prune or parametrised, or a {name: 0/1} "
                        "dict" + ("" if required else "; default: dense"))
    p.add_argument("--masks-from-zeros", action="store_true",
                   help="--masks holds weights (e.g. a state_dict): their zeros are the pruned "
                        "entries")


class OneLineErrors(argparse.ArgumentParser):
    """argparse's own errors (a bad value, a missing argument) on one line, as every other
    user mistake: the usage block is one ``--help`` away."""

    def error(self, message):
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _unrecognized(parser, command: str, extra: list[str]) -> str:
    """One line for arguments the command does not take, with the closest option."""
    from topo_pai.checks import did_you_mean

    # argparse keeps its subparsers and their actions in private attributes
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = [f for action in sub._actions for f in action.option_strings]
    first = extra[0].split("=", 1)[0]
    hint = did_you_mean(first, flags) if first.startswith("-") else ""
    return (f"topo-pai {command}: error: unrecognized argument(s): {' '.join(extra)}.{hint} "
            f"See topo-pai {command} --help")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = OneLineErrors(
        prog="topo-pai", description="Topology of sparse networks: analyze, prune, sweep, plot.",
        epilog=EPILOG, formatter_class=fmt)
    from topo_pai import __version__
    from topo_pai.experiments.config import METRICS_MODES
    parser.add_argument("--version", action="version", version=f"topo-pai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)

    def add(name, help, epilog=EPILOG):
        return sub.add_parser(name, help=help, description=help, epilog=epilog,
                              formatter_class=fmt)

    p = add("analyze", "per-layer table and totals of a model and masks file")
    _common_model_args(p)
    _masks_args(p)
    p.add_argument("--metrics", action="store_true",
                   help="also print the graph measures (Topology.metrics: effective sparsity, "
                        "spectral and Ramanujan gaps, degrees, sink/source units, lost edges) "
                        "at each --resolution (it decides the effective counts; the layer "
                        "graphs and spectra are the channel graph's)")
    p.add_argument("--weighted-spectra", action="store_true",
                   help="with --metrics: also take the weighted spectral gap on |w| of the "
                        "model's weights, i.e. its initial weights as built here with --seed "
                        "(not trained weights, and not the values of a --masks file)")
    p.add_argument("--resolution", choices=("channel", "neuron", "both"), default="channel",
                   help="resolution of the tables (and of --metrics' effective counts); "
                        "default: channel")
    p.add_argument("--json", action="store_true",
                   help="print strict JSON instead of tables; non-finite numbers are the "
                        "strings \"-inf\", \"inf\", \"nan\" (as in a sweep's results.json): "
                        "log10 paths \"-inf\" means no path")
    p.set_defaults(func=cmd_analyze)

    p = add("prune", "prune a model at initialization; write a masks file")
    _common_model_args(p)
    p.add_argument("method", help="pruning method (see `topo-pai methods`)")
    p.add_argument("sparsity", type=parse_sparsity,
                   help="fraction (0.99) or percentage with %% (99%%); a bare 99 is refused")
    p.add_argument("--out", required=True,
                   help="masks file to write (.pt or .npz); its directory must exist")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. rounds=100, alpha=0.01, allocation=erk or "
                        "repair=false (repeatable; values are JSON, and True/False/None "
                        "as `topo-pai methods` shows them work too)")
    p.add_argument("--prune-samples", type=cli_args.positive, default=1000,
                   help="training samples that data-dependent methods score on (default "
                        "1000; data-free methods read none)")
    p.add_argument("--masks", default=None,
                   help="masks to rework, for shuffle (any format --masks of analyze reads)")
    p.add_argument("--masks-from-zeros", action="store_true",
                   help="--masks holds weights: their zeros are the pruned entries")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_prune)

    p = add("compact", "rebuild a masked model as a smaller dense one without its "
                       "ineffective channels; write it with torch.save")
    _common_model_args(p)
    _masks_args(p, required=True)
    p.add_argument("--out", required=True, help="file to write the compacted model to (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_compact)

    p = add("sweep", "methods x sparsities x seeds, resumable results table",
            epilog=SWEEP_EPILOG + "\n" + EPILOG)
    p.add_argument("--config", default=None,
                   help="a .json or .toml SweepConfig (then the grid and recipe flags below "
                        "must not be given)")
    p.add_argument("--models", type=cli_args.names,
                   help="comma-separated zoo names, package.module:callable or "
                        "path/to/file.py:callable")
    p.add_argument("--input-shape", type=cli_args.shape, default=None, metavar="C,H,W",
                   help="the shape the models are meant for; refused unless the dataset's")
    p.add_argument("--dataset", default=None, help="default: fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", type=cli_args.names,
                   help="comma-separated pruning methods (see `topo-pai methods`) or arms of "
                        "a config file")
    p.add_argument("--sparsities", type=cli_args.sparsities,
                   help="comma-separated fractions (0.9) or percentages (90%%)")
    p.add_argument("--seeds", type=cli_args.seeds, help="default: 0")
    p.add_argument("--shuffled", type=cli_args.names,
                   help="methods whose masks also run shuffled within layers")
    p.add_argument("--epochs", type=cli_args.non_negative, help="default 0: measure topology only")
    p.add_argument("--batch-size", type=cli_args.positive, help="default: 128")
    p.add_argument("--lr", type=cli_args.number, help="default: 0.1")
    p.add_argument("--momentum", type=cli_args.number, help="default: 0.9")
    p.add_argument("--weight-decay", type=cli_args.number, help="default: 5e-4")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"),
                   help="default: cosine")
    p.add_argument("--train-limit", type=cli_args.positive)
    p.add_argument("--test-limit", type=cli_args.positive)
    p.add_argument("--prune-samples", type=cli_args.positive, help="default: 1000")
    p.add_argument("--threads", type=cli_args.positive,
                   help="intra-op threads of every trial (default 1; part of the configuration)")
    p.add_argument("--metrics", choices=METRICS_MODES,
                   help="graph measures as result columns (Topology.metrics totals at "
                        "initialisation): off (default); cheap, the O(non-zeros) measures with "
                        "the spectral columns left empty; all, with the spectral gaps (an "
                        "eigenproblem per layer). Part of the configuration (a config file's "
                        "metrics = \"off\"/\"cheap\"/\"all\"; true means all)")
    p.add_argument("--out", required=True,
                   help="sweep directory (created if missing; resumed if it exists)")
    p.add_argument("--workers", type=cli_args.positive, default=1,
                   help="trials run side by side, one process each (default 1; results do not "
                        "depend on it)")
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (engine dask)")
    p.add_argument("--device", default="auto",
                   help="where trials train: auto (CUDA if available, else CPU), cpu, cuda or "
                        "cuda:N (default auto)")
    p.add_argument("--retries", type=cli_args.non_negative, default=1,
                   help="times a failed trial is retried before it counts as failed "
                        "(default 1)")
    p.add_argument("--limit", type=cli_args.non_negative, default=None,
                   help="run at most this many trials now (0: only re-export the tables)")
    p.add_argument("--order", choices=("grid", "reverse", "random"), default="grid",
                   help="order in which pending trials start (results do not depend on it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = add("plot", "node-path plane and accuracy-vs-sparsity figures")
    p.add_argument("results", help="a sweep directory or its results.json / results.csv")
    p.add_argument("--out", default=None, help="figure directory (default: <results>/figures)")
    p.add_argument("--dpi", type=cli_args.positive, default=130)
    p.add_argument("--metric", action="append", default=[], metavar="COLUMN",
                   help="also draw accuracy against this column, one panel per sparsity, e.g. "
                        "mean_ramanujan_gap (a sweep with --metrics all records the graph "
                        "measures, --metrics cheap all but the spectral ones); repeatable")
    p.set_defaults(func=cmd_plot)

    p = add("models", "list the built-in models")
    p.set_defaults(func=cmd_models)
    p = add("methods", "list the pruning methods")
    p.set_defaults(func=cmd_methods)
    return parser


def _exit_status(exc: BaseException) -> int:
    """2 for a user error, 1 for an internal one (or failed trials of a sweep)."""
    from topo_pai.errors import TopoPaiError
    from topo_pai.experiments.sweep import SweepError

    if isinstance(exc, SweepError):  # trials failed while running: not a mistake in the call
        return EXIT_INTERNAL
    user = (TopoPaiError, ValueError, TypeError, LookupError, OSError, ImportError)
    return EXIT_USER if isinstance(exc, user) else EXIT_INTERNAL


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one line (``topo-pai: warning: ...``), without its source location."""
    print(f"topo-pai: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    """Run the command; return its exit status (see the module docs)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse's own
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        from topo_pai.checks import did_you_mean
        print(f"topo-pai: error: unknown command {argv[0]!r}.{did_you_mean(argv[0], commands)} "
              f"Commands: {', '.join(commands)}", file=sys.stderr)
        return EXIT_USER
    args, extra = parser.parse_known_args(argv)  # argparse's own errors: one line, status 2
    if extra:
        print(_unrecognized(parser, args.command, extra), file=sys.stderr)
        return EXIT_USER
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            status = args.func(args)
            sys.stdout.flush()  # a reader that left shows here, inside the handler below
            return status
    except BrokenPipeError:
        # the reader of stdout left (`| head`): stop quietly, as other Unix tools do, and
        # point stdout at /dev/null so that the interpreter's final flush does not fail too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        if debug:
            raise
        print("topo-pai: interrupted (a sweep keeps every finished trial; rerun to continue)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and a status
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, UsageError):
            print(f"topo-pai: error: {msg}", file=sys.stderr)
            return EXIT_USER
        status = _exit_status(exc)
        if status == EXIT_USER or type(exc).__name__ == "SweepError":
            print(f"topo-pai: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        else:
            print(f"topo-pai: internal error: {type(exc).__name__}: {msg}\n(set {DEBUG_ENV}=1 "
                  "for the traceback; if this is a bug in topo_pai, please report it with it)",
                  file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
