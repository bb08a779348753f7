"""Resumable sweeps: models x methods x sparsities x seeds (x shuffled), one row per trial.

:func:`run_sweep` runs every trial of a :class:`SweepConfig` that its results
directory does not hold yet, and returns all rows. The parts live in their own
modules:

* :mod:`~topo_pai.experiments.config`: :class:`SweepConfig` and :class:`Trial`;
* :mod:`~topo_pai.experiments.trial`: one trial (build, prune, measure, train);
* :mod:`~topo_pai.experiments.store`: the results directory (``config.json``,
  ``results.jsonl`` and its csv/json exports, ``epochs.jsonl``,
  ``failures.jsonl``, the lock) and how it survives kills;
* :mod:`~topo_pai.experiments.schema`: the columns of a row;
* :mod:`~topo_pai.experiments.executors`: where trials run.

Trials run in this process (``workers=1``), in parallel local worker processes
(``workers>1``), or on a Dask cluster (``engine="dask"``, see
:mod:`topo_pai.experiments.executors.dask`). A trial's result does not depend on
which: each trial runs with ``SweepConfig.threads`` intra-op threads (torch and
numba) and torch's deterministic algorithms, and its row records ``threads``.

The names users import from here (``SweepConfig``, ``run_sweep``,
``read_results``, ``ResultsStore``, ``COLUMNS``, ...) stay importable from this
module.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from topo_pai.checks import check_int
from topo_pai.errors import TopoPaiError
# Besides what run_sweep uses, the config, store, trial and schema names users have always
# imported from this module are re-exported here (listed in __all__).
from topo_pai.experiments.config import DENSE, SameModelTwice, SweepConfig, Trial
from topo_pai.experiments.executors.local import run_local
from topo_pai.experiments.schema import COLUMNS
from topo_pai.experiments.store import (CRASH_ENV, ResultsStore, SweepConfigMismatch,
                                        SweepLocked, check_same_config, read_results,
                                        rows_to_records)
from topo_pai.experiments.trial import (build_and_prune, check_models, run_trial,
                                        run_trial_dict, trial_datasets, trial_threads)

__all__ = ["COLUMNS", "CRASH_ENV", "DENSE", "ENGINES", "ORDERS", "ResultsStore", "SameModelTwice",
           "SweepConfig", "SweepConfigMismatch", "SweepError", "SweepLocked", "Trial",
           "build_and_prune", "check_models", "pending_trials", "read_results",
           "rows_to_records", "run_sweep", "run_trial", "run_trial_dict", "trial_threads"]

ENGINES = ("local", "dask")
ORDERS = ("grid", "reverse", "random")


class SweepError(TopoPaiError, RuntimeError):
    """Some trials failed; the finished ones are saved and the failed ones are retried next run."""


def run_sweep(cfg: SweepConfig, out_dir, *, workers: int = 1, engine: str = "local",
              data_root=None, device="auto", retries: int = 1, progress: bool = True,
              scheduler_address: str | None = None, limit: int | None = None,
              order: str = "grid", on_start=None) -> list[dict]:
    """Run every trial of ``cfg`` not yet in ``out_dir``'s table; return all rows.

    Parameters
    ----------
    cfg : SweepConfig
    out_dir : path
        The sweep directory (created; refused if it holds another config's results).
    workers : int
        Local worker processes (``engine="local"``), or local Dask workers when
        ``engine="dask"`` and no ``scheduler_address`` is given.
    engine : {"local", "dask"}
    data_root : path, optional
        Where the dataset files are (see :func:`topo_pai.experiments.data.load_dataset`).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    retries : int
        How often a failed trial is retried within this run.
    scheduler_address : str, optional
        Address of a running Dask scheduler (``engine="dask"``).
    limit : int, optional
        Run at most this many pending trials (the rest wait for a later run).
    order : {"grid", "reverse", "random"}
        The order pending trials are started in: the grid's (models, then
        sparsities, methods, seeds), reversed (e.g. the most extreme
        sparsities first), or a fixed random permutation, so that an
        interrupted sweep has covered the grid evenly. Results do not depend on it.
    on_start : callable, optional
        Called as ``on_start(trials, already_done, to_run)`` once the configuration has
        passed every up-front check and the directory is locked, before the first trial
        (also when none is left to run): the command line prints its summary line here,
        so that a refused configuration prints only its error.

    Raises
    ------
    SweepConfigMismatch
        ``out_dir`` holds results of a different configuration.
    SweepLocked
        Another sweep is running on ``out_dir``.
    SweepError
        Some trials failed after their retries; all others are saved.

    Notes
    -----
    The run holds ``out_dir``'s lock throughout and exports ``results.csv`` and
    ``results.json`` from ``results.jsonl`` when it ends, whether trials ran,
    failed or none was pending.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_int("workers", workers, minimum=1)
    check_int("retries", retries, minimum=0)
    if limit is not None:
        check_int("limit", limit, minimum=0, hint="or None for every pending trial")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if scheduler_address is not None and engine != "dask":
        raise ValueError(f"scheduler_address={scheduler_address!r} is for engine='dask' (a Dask "
                         f"scheduler), but engine is {engine!r}; drop it or use engine='dask'")
    if engine == "local":  # checked here, before any trial; a cluster's workers check their own
        from topo_pai.experiments.training import resolve_device
        resolve_device(device)
    else:  # before the directory is written
        from topo_pai.experiments.executors.dask import require_distributed
        require_distributed()
    try:
        cfg.validate_names()
    except SameModelTwice as exc:
        if not _holds(out_dir, cfg):
            raise
        warnings.warn(f"{exc}; resuming {str(out_dir)!r}, which already holds results of this "
                      "configuration", stacklevel=2)
    check_models(cfg, data_root)
    with ResultsStore(out_dir, cfg) as store:
        try:
            failed, n_run = _run_pending(cfg, store, workers=workers, engine=engine,
                                         data_root=data_root, device=device, retries=retries,
                                         progress=progress, scheduler_address=scheduler_address,
                                         limit=limit, order=order, on_start=on_start)
        finally:
            store.export()
        if failed:
            tid, error = next(iter(failed.items()))
            lines = error.strip().splitlines() or ["(no message)"]
            raise SweepError(f"{len(failed)} of {n_run} trials failed; the finished ones are "
                             f"saved; rerun to retry the others (after fixing the cause: a "
                             f"rerun alone repeats an error in the configuration). "
                             f"First: {tid}: {lines[-1]} "
                             f"(full errors in {str(store.dir / 'failures.jsonl')!r})")
        return store.rows


def _holds(out_dir, cfg: SweepConfig) -> bool:
    """Whether ``out_dir`` already holds ``cfg``'s config.json (reads only)."""
    directory = Path(out_dir)
    try:
        return directory.is_dir() and check_same_config(directory, cfg)
    except SweepConfigMismatch:
        return False


def _run_pending(cfg, store, *, workers, engine, data_root, device, retries, progress,
                 scheduler_address, limit, order, on_start) -> tuple[dict[str, str], int]:
    done = store.done()
    trials = cfg.trials()
    pending = [t for t in trials if t.trial_id not in done]
    already = len(trials) - len(pending)
    if order == "reverse":
        pending.reverse()
    elif order == "random":
        import random
        random.Random(cfg.fingerprint()).shuffle(pending)
    if limit is not None:
        pending = pending[:limit]
    if pending:
        trial_datasets(cfg, data_root)  # fail fast (missing dataset) before starting workers
    if on_start is not None:
        on_start(len(trials), already, len(pending))
    if not pending:
        return {}, 0
    if engine == "local":
        if cfg.resources:
            warnings.warn(f"resources {cfg.resources} are declared for distributed engines; "
                          "local workers ignore them", stacklevel=3)
        failed = run_local(cfg, pending, store, workers, data_root, device, retries, progress)
    else:
        from topo_pai.experiments.executors.dask import run_dask
        failed = run_dask(cfg, pending, store, workers=workers, data_root=data_root,
                          device=device, retries=retries, progress=progress,
                          scheduler_address=scheduler_address)
    return failed, len(pending)


def pending_trials(cfg: SweepConfig, out_dir) -> list[Trial]:
    """The trials of ``cfg`` that ``out_dir`` does not hold yet (reads only: no lock, and
    nothing is created or written).

    Raises
    ------
    SweepConfigMismatch
        ``out_dir`` is a file, or holds results of a different configuration.
    """
    directory = Path(out_dir)
    done: set[str] = set()
    if directory.exists():
        if not directory.is_dir():
            raise SweepConfigMismatch(f"sweep directory {str(directory)!r} is a file; pass a "
                                      "directory (it is created if missing)")
        check_same_config(directory, cfg)
        done = set(read_results(directory / "results.jsonl", warn=False))
    return [t for t in cfg.trials() if t.trial_id not in done]
