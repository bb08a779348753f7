"""One trial of a sweep: build the model, prune it, measure the masks, train.

:func:`run_trial` returns the trial's row (the columns of
:data:`topo_pai.experiments.schema.COLUMNS`, plus
:data:`~topo_pai.experiments.schema.METRIC_COLUMNS` when the configuration sets
``metrics`` to ``"cheap"`` or ``"all"``). Every executor, local or distributed, runs trials through
:func:`run_trial_dict`. :func:`rebuild_trial` re-runs a trial's initialisation
and pruning, seeded the same way, so that the measures of trials whose masks were
not saved can be computed afterwards; callers check the rebuilt masks against
the row's recorded topology (:func:`matches_row`), since a method changed since
the sweep ran prunes differently.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

from topo_pai.checks import check_int
from topo_pai.experiments.config import DENSE, SweepConfig, Trial
from topo_pai.experiments.schema import COLUMNS, METRIC_COLUMNS


def trial_datasets(cfg: SweepConfig, data_root):
    """``(train, validation or None, test)`` datasets of a sweep, as its trials see them."""
    from topo_pai.experiments.data import load_dataset, shaped_options
    shaped = shaped_options(cfg.dataset, cfg.input_shape)  # synthetic data take the shape
    # limit= selects before converting to float (the same samples as Dataset.subset)
    train = load_dataset(cfg.dataset, "train", root=data_root, limit=cfg.train_limit, seed=0,
                         **shaped)
    test = load_dataset(cfg.dataset, "test", root=data_root, limit=cfg.test_limit, seed=0,
                        **shaped)
    val = None
    if cfg.val_size is not None:
        if cfg.val_size >= len(train):
            raise ValueError(f"sweep val_size={cfg.val_size} leaves no training images (the "
                             f"training split has {len(train)}); lower it or raise train_limit")
        train, val = train.split_off(cfg.val_size, seed=0)
    return train, val, test


@contextlib.contextmanager
def trial_threads(threads: int):
    """Run the body with ``threads`` intra-op threads in torch and numba and torch's
    deterministic algorithms (where an op has one; others warn); restore the settings after.

    Float reductions split over another number of threads add in another order, so
    without this a trial's metrics would depend on how many workers share the machine.
    """
    import numba
    import torch

    threads = check_int("threads", threads, minimum=1)
    # cuBLAS is deterministic only with a fixed workspace; read when CUDA starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.get_num_threads(), numba.get_num_threads(),
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def run_trial(cfg: SweepConfig, trial: Trial, *, data_root=None, device="auto") -> dict:
    """Build, prune, measure and (if ``cfg.train``) train one trial; return its row.

    The trial runs under :func:`trial_threads` with ``cfg.threads``."""
    with trial_threads(cfg.threads):
        return _run_trial(cfg, trial, data_root=data_root, device=device)


def build_and_prune(cfg: SweepConfig, trial: Trial, train_set):
    """Build ``trial``'s model and its masks exactly as a sweep does (seeded initial weights,
    the arm's method and options, the seeded data batch, the shuffle): ``(model, masks,
    input_shape, rescale)``, where ``rescale`` says whether the arm scales the kept weights
    before training. Shared by :func:`run_trial` and the rebuild of finished trials."""
    import torch

    import topo_pai
    from topo_pai.experiments.training import seed_everything
    from topo_pai.models.spec import build_model, check_input_shape, check_model_spec
    from topo_pai.pruners import get_method

    C, H, W = check_input_shape(check_model_spec(trial.model), cfg.input_shape,
                                train_set.input_shape)
    seed_everything(trial.seed)
    model, _ = build_model(trial.model, input_shape=(C, H, W), num_classes=train_set.num_classes,
                           model_args=cfg.model_kwargs.get(trial.model, {}))
    if trial.method == DENSE:
        return model, {}, (C, H, W), False
    method, options, rescale = cfg.arm(trial.method)
    data = None
    if get_method(method).needs_data:
        gen = torch.Generator().manual_seed(trial.seed)
        idx = torch.randperm(len(train_set), generator=gen)[:cfg.prune_samples]
        data = (train_set.x[idx], train_set.y[idx])
    masks = topo_pai.prune(model, method, trial.sparsity, input_shape=(C, H, W), data=data,
                           seed=trial.seed, **options)
    if trial.shuffled:
        masks = topo_pai.prune(model, "shuffle", trial.sparsity, input_shape=(C, H, W),
                               seed=trial.seed, masks=masks)
    return model, masks, (C, H, W), rescale


def _run_trial(cfg: SweepConfig, trial: Trial, *, data_root, device) -> dict:
    import numpy as np
    import torch

    import topo_pai
    from topo_pai.experiments.curves import topology_record
    from topo_pai.experiments.training import (TrainConfig, rescale_kept_weights, resolve_device,
                                               train)

    train_set, val_set, test_set = trial_datasets(cfg, data_root)
    t0 = time.perf_counter()
    model, masks, (C, H, W), rescale = build_and_prune(cfg, trial, train_set)
    prune_seconds = time.perf_counter() - t0
    # one trace serves both: the dense topology, and (via with_masks) the pruned one
    dense = topo_pai.from_torch(model, {}, input_shape=(C, H, W))
    row = dict(
        trial_id=trial.trial_id, model=trial.model, dataset=cfg.dataset, method=trial.method,
        shuffled=trial.shuffled, sparsity=trial.sparsity, seed=trial.seed,
        **topology_record(model, masks, (C, H, W), topology=dense),
        dense_flops=dense.effective_flops(),
        accuracy=None, test_loss=None, val_accuracy=None, val_loss=None, epochs=0,
        prune_seconds=round(prune_seconds, 3),
        train_seconds=0.0, device=str(resolve_device(device)), threads=cfg.threads,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    extra = _metric_columns(cfg, model, masks, (C, H, W), dense)
    if rescale:
        rescale_kept_weights(model, masks)
    if cfg.train is not None:
        res = train(model, train_set, test_set, val_set=val_set, masks=masks,
                    config=TrainConfig(**cfg.train), device=device, seed=trial.seed,
                    progress=False)
        row.update(accuracy=res.final_accuracy, test_loss=res.final_loss,
                   val_accuracy=res.final_val_accuracy, val_loss=res.final_val_loss,
                   epochs=len(res.history), train_seconds=round(res.seconds, 3))
    assert set(row) == set(COLUMNS), sorted(set(row) ^ set(COLUMNS))
    row.update(extra)
    if cfg.train is not None:
        row["history"] = res.history  # per-epoch metrics: the store writes them to epochs.jsonl
    for k, v in row.items():  # plain JSON types only
        if isinstance(v, np.generic):
            row[k] = v.item()
    return row


def check_models(cfg: SweepConfig, data_root=None) -> None:
    """Before any trial (and before the sweep directory is written): every model can be
    imported and takes its ``model_kwargs``, ``cfg.input_shape`` (if given) is the dataset's
    (a model is refused, not rebuilt silently for another input), every model builds and
    traces at the dataset's input shape (and, when the sweep trains, gives a logit for
    every class), and ``val_size`` leaves training images."""
    from topo_pai.experiments.data import load_dataset, shaped_options
    from topo_pai.models.spec import (check_input_shape, check_model_args, check_model_spec,
                                      resolve_callable)

    ds = load_dataset(cfg.dataset, "train", root=data_root, limit=1, seed=0,
                      **shaped_options(cfg.dataset, cfg.input_shape))
    for model in cfg.models:
        spec = check_model_spec(model)
        shape = check_input_shape(spec, cfg.input_shape, ds.input_shape)
        fn = None if spec.is_zoo else resolve_callable(spec)
        try:
            check_model_args(spec, cfg.model_kwargs.get(model, {}), fn)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sweep model_kwargs[{model!r}]: {exc}") from None
        _check_model_runs(cfg, model, shape, ds.num_classes)
    if cfg.val_size is not None:
        trial_datasets(cfg, data_root)  # refuses a val_size that leaves no training images


def _check_model_runs(cfg: SweepConfig, model_spec: str, shape, num_classes: int) -> None:
    """Build the model once and trace it at the dataset's input shape, as every trial
    does, and, when the sweep trains, check that one sample gives a logit for each of the
    ``num_classes`` classes: a model the dataset does not fit (a zoo model too large for
    its images, a user's model for another input) is refused here, not in every trial."""
    import warnings

    import torch

    import topo_pai
    from topo_pai.checks import prefixed
    from topo_pai.errors import ModelAttributeError, ModelBuildError, TopoPaiError
    from topo_pai.models.spec import build_model

    where = (f"sweep model {model_spec!r} on dataset {cfg.dataset!r} (inputs "
             f"{'x'.join(map(str, shape))}, {num_classes} classes)")
    try:
        model, _ = build_model(model_spec, input_shape=shape, num_classes=num_classes,
                               model_args=cfg.model_kwargs.get(model_spec, {}))
        with warnings.catch_warnings():  # each trial's prune warns about them
            warnings.simplefilter("ignore", topo_pai.UncoveredWeightsWarning)
            topo_pai.from_torch(model, {}, input_shape=shape)
        if cfg.train is not None:
            with torch.no_grad():
                out = model.eval()(torch.zeros((1, *shape)))
            if (not isinstance(out, torch.Tensor) or out.ndim != 2
                    or out.shape[1] < num_classes):  # more logits than classes still train
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the model gives outputs of shape {got} for one sample; "
                                 f"training needs (1, {num_classes}): one logit per class")
    except (ModelBuildError, ModelAttributeError):
        raise  # they name the model already
    except (ValueError, TypeError, TopoPaiError) as exc:
        raise prefixed(exc, where) from None


def _metric_columns(cfg: SweepConfig, model, masks, input_shape, topology) -> dict:
    """The opt-in graph-measure columns of a row (``cfg.metrics``), at initialisation."""
    if cfg.metrics == "off":
        return {}
    return metric_columns(model, masks, input_shape, topology=topology,
                          spectra=cfg.metrics == "all")


def run_trial_dict(cfg_dict: dict, trial_dict: dict, data_root=None, device="auto") -> dict:
    """:func:`run_trial` over plain dicts: what worker processes and clusters receive."""
    return run_trial(SweepConfig.from_dict(cfg_dict), Trial(**trial_dict), data_root=data_root,
                     device=device)


def metric_columns(model, masks, input_shape, *, topology=None, spectra: bool = True) -> dict:
    """:data:`METRIC_COLUMNS` of ``model`` pruned by ``masks`` (channel resolution, weights
    ``|w|`` of the model's current weights). ``topology``: a Topology of the same model
    (any masks) to reuse its trace. ``spectra=False`` skips the eigenproblems: the columns
    of :data:`~topo_pai.experiments.schema.SPECTRAL_COLUMNS` are then None."""
    import topo_pai

    topo = (topology.with_masks(masks) if topology is not None
            else topo_pai.from_torch(model, masks, input_shape=input_shape))
    weights = None
    if spectra:  # the weights enter only the weighted spectral gap
        params = dict(model.named_parameters())
        weights = {layer.param: params[layer.param].detach().abs() for layer in topo.layers
                   if layer.param in params}
    totals = topo.metrics(weights=weights, spectra=spectra).totals
    return {c: totals[c] for c in METRIC_COLUMNS}


def rebuild_trial(cfg, trial, *, data_root=None):
    """``(model, masks, input_shape)`` of ``trial`` as :func:`run_trial` builds and prunes
    them (same seeds, data subset and thread settings), without training."""
    with trial_threads(cfg.threads):
        train_set = trial_datasets(cfg, data_root)[0]
        model, masks, input_shape, _ = build_and_prune(cfg, trial, train_set)
    return model, masks, input_shape


def matches_row(topology, row: dict, *, rel: float = 1e-9) -> bool:
    """Whether ``topology`` (the rebuilt masks) has the effective nodes, effective params
    and log10 paths that ``row`` recorded."""
    log10 = topology.count_paths("channel").log10
    rec = float(row["log10_paths"])
    same_paths = (log10 == rec if math.isinf(rec) or math.isinf(log10)
                  else math.isclose(log10, rec, rel_tol=rel, abs_tol=1e-9))
    return (same_paths and topology.effective_nodes("channel") == int(row["effective_nodes"])
            and topology.effective_params("channel") == int(row["effective_params"]))
