"""Run the trials of a sweep on a Dask cluster (``run_sweep(..., engine="dask")``).

Install the optional extra first: ``pip install 'topo_pai[distributed]'``.

Without ``scheduler_address`` the sweep starts a :class:`distributed.LocalCluster`
of ``workers`` single-threaded worker processes on this machine and closes it
at the end. To use several machines, start a scheduler and one worker per GPU
(or per trial slot) yourself, then pass the scheduler's address::

    dask scheduler                                   # prints tcp://HOST:8786
    # on every machine, one worker per GPU; the resource names what a trial asks for:
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nthreads 1 --resources "GPU=1"
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nthreads 1 --resources "GPU=1"
    # on the machine that owns the results directory; study.toml has resources = {GPU = 1}:
    topo-pai sweep --config study.toml --engine dask --scheduler tcp://HOST:8786 \\
        --out runs/study

How it works
------------
* Every pending trial becomes one Dask task running
  :func:`topo_pai.experiments.trial.run_trial_dict`, which declares
  ``SweepConfig.resources`` (e.g. ``{"GPU": 1}``): the scheduler only gives it
  to a worker started with at least those resources (``dask worker --resources
  "GPU=1"``), one trial per unit. A sweep whose resources no connected worker
  has fails at once (:class:`ClusterResourceError`) instead of waiting forever.
  The workers of a local cluster are each given the declared resources once.
* Results stream back with :func:`distributed.as_completed`; this process is
  the only writer of the results table and appends each row (fsync'ed) the
  moment its trial finishes, under the same rules as the local engine
  (:mod:`topo_pai.experiments.store`): it holds the directory's lock,
  ``results.jsonl`` is the source of truth and the csv/json tables are
  exported from it. Killing a worker, or this process, loses only the trials
  still running. On Ctrl-C the trials not yet finished are cancelled on the
  cluster (running ones end on their workers, unsaved).
* A trial that raises is retried ``retries`` times by Dask, then recorded in
  ``failures.jsonl`` and returned as failed (``run_sweep`` raises
  :class:`~topo_pai.experiments.sweep.SweepError`; a later run retries it).
  A trial whose worker dies is rescheduled on another worker by the scheduler,
  up to ``distributed.scheduler.allowed-failures`` times (``retries + 3`` on a
  local cluster; set it in the scheduler's Dask configuration otherwise, the
  default is 3); a trial that keeps killing its workers (e.g. out of memory)
  fails with ``KilledWorker``.

Workers need the same ``topo_pai`` version installed and the dataset at the
same ``data_root`` path. Local workers run with ``OMP_WAIT_POLICY=PASSIVE``
and ``OMP_NUM_THREADS=1``. On any worker, each trial sets torch's and numba's
intra-op thread count to ``SweepConfig.threads`` (and torch's deterministic
algorithms) while it runs, so a trial gives the same result on the cluster as
in a local sweep; give a worker at least that many cores per trial slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
import uuid

from topo_pai.errors import TopoPaiError
from topo_pai.experiments.executors.progress import progress_bar
from topo_pai.experiments.trial import run_trial_dict

#: Environment of the local cluster's worker processes, set before they import torch.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

INSTALL_HINT = "pip install 'topo_pai[distributed]'"


class ClusterResourceError(TopoPaiError, RuntimeError):
    """No worker of the Dask cluster offers the resources a trial declares."""


def require_distributed():
    """The ``distributed`` module, or an ImportError that says how to install it."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise ImportError(f"engine='dask' needs Dask's distributed scheduler, which is not "
                          f"installed: {INSTALL_HINT}") from exc
    return distributed


def local_cluster(workers: int = 1, *, resources: dict | None = None, retries: int = 1,
                  **kwargs):
    """Start the :class:`distributed.LocalCluster` that ``run_sweep(engine="dask")`` uses.

    ``workers`` single-threaded worker processes (each under a nanny that
    restarts it if it dies) with :data:`WORKER_ENV` in their environment
    before anything imports torch, no dashboard, and a scheduler that
    reschedules the trial of a dead worker up to ``retries + 3`` times.

    Parameters
    ----------
    workers : int
        Number of worker processes.
    resources : dict, optional
        Resources each worker offers, e.g. ``{"GPU": 1}``.
    retries : int
        The sweep's retries; sets ``distributed.scheduler.allowed-failures``.
    **kwargs
        Passed to :class:`distributed.LocalCluster`.

    Returns
    -------
    distributed.LocalCluster
        Close it (or use it as a context manager) when done.

    Examples
    --------
    Starting worker processes takes seconds, hence no doctest run:

    >>> from distributed import Client                              # doctest: +SKIP
    >>> with local_cluster(2) as cluster, Client(cluster) as client:  # doctest: +SKIP
    ...     run_sweep(cfg, "runs/x", engine="dask", scheduler_address=cluster.scheduler_address)
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    distributed = require_distributed()
    import dask

    options = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
               "env": dict(WORKER_ENV), "resources": dict(resources) if resources else None,
               # no dashboard, and the scheduler's HTTP endpoints on a free port: a fixed
               # port (8787) collides with any other cluster on the machine
               "dashboard_address": None,
               "scheduler_kwargs": {"dashboard": False, "dashboard_address": ":0"}}
    options.update(kwargs)
    # the scheduler runs in this process and reads the option when it starts
    with dask.config.set({"distributed.scheduler.allowed-failures": retries + 3}):
        return distributed.LocalCluster(**options)


def _worker_resources(client) -> dict[str, dict]:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed < 2025 lists every worker and takes no n_workers
        info = client.scheduler_info()
    return {addr: dict(w.get("resources") or {}) for addr, w in info["workers"].items()}


def _check_spec(resources) -> dict:
    if not isinstance(resources, dict):
        raise TypeError(f"sweep resources must be a dict such as {{'GPU': 1}}, got "
                         f"{resources!r}")
    bad = {k: v for k, v in resources.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))
           or not v > 0}
    if bad:
        raise ValueError(f"sweep resources must map names to positive numbers, e.g. "
                         f"{{'GPU': 1}}; got {bad}")
    return dict(resources)


def check_resources(client, resources: dict, *, wait: float = 30.0) -> None:
    """Raise :class:`ClusterResourceError` unless some worker offers ``resources``.

    Waits up to ``wait`` seconds for a first worker to connect.
    """
    resources = _check_spec(resources)
    if not resources:
        return
    try:
        client.wait_for_workers(1, timeout=wait)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        pass  # reported below as "no workers connected"
    offered = _worker_resources(client)
    if any(all(have.get(k, 0) >= v for k, v in resources.items()) for have in offered.values()):
        return
    flag = ",".join(f"{k}={v:g}" for k, v in resources.items())
    seen = sorted({repr(have) for have in offered.values()}) or ["no workers connected"]
    raise ClusterResourceError(
        f"the sweep's trials each need resources {resources}, but no worker of the Dask cluster "
        f"at {client.scheduler.address} offers them (workers offer: {', '.join(seen)}). Start "
        f"workers with `dask worker {client.scheduler.address} --resources \"{flag}\"`, or "
        f"remove 'resources' from the sweep configuration")


def _error_text(future) -> str:
    exc = future.exception()
    tb = future.traceback()
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_dask(cfg, pending, store, *, workers: int = 1, data_root=None, device="auto",
             retries: int = 1, progress: bool = True, scheduler_address: str | None = None,
             connect_timeout: float = 30.0) -> dict[str, str]:
    """Run ``pending`` trials on a Dask cluster and append each row to ``store`` as it finishes.

    Called by :func:`topo_pai.experiments.sweep.run_sweep` (``engine="dask"``);
    see the module docs.

    Parameters
    ----------
    cfg : SweepConfig
    pending : list of Trial
        Trials to run; ``store`` skips any whose id it already holds.
    store : ResultsStore
        The results table; only this process writes it.
    workers : int
        Worker processes of the local cluster (ignored with ``scheduler_address``).
    data_root, device
        Passed to every trial (they are resolved on the worker).
    retries : int
        How often Dask reruns a trial that raised.
    progress : bool
        Show a progress bar (needs tqdm).
    scheduler_address : str, optional
        A running scheduler, e.g. ``"tcp://10.0.0.5:8786"``; a local cluster otherwise.
    connect_timeout : float
        Seconds to wait for the scheduler and for a first worker.

    Returns
    -------
    dict
        ``{trial_id: error text}`` of the trials that failed after their retries.

    Raises
    ------
    ImportError
        ``dask[distributed]`` is not installed.
    ClusterResourceError
        No worker offers ``cfg.resources``.
    """
    distributed = require_distributed()
    if not pending:
        return {}
    resources = _check_spec(cfg.resources) or None
    cluster = None
    if scheduler_address is None:
        cluster = local_cluster(workers, resources=resources, retries=retries)
        address = cluster.scheduler_address
    else:
        address = scheduler_address
    try:
        try:
            client = distributed.Client(address, timeout=connect_timeout,
                                        set_as_default=False)
        except OSError as exc:
            raise OSError(f"could not connect to the Dask scheduler at {address!r} within "
                          f"{connect_timeout:g} s; start one with `dask scheduler` and pass "
                          "the address it prints") from exc
        with client:
            check_resources(client, resources or {}, wait=connect_timeout)
            return _run(client, cfg, pending, store, data_root=data_root, device=device,
                        retries=retries, resources=resources, progress=progress)
    finally:
        if cluster is not None:
            cluster.close()


def _run(client, cfg, pending, store, *, data_root, device, retries, resources,
         progress) -> dict[str, str]:
    from distributed import as_completed

    cfg_dict = cfg.to_dict()
    # The run token keeps two sweeps on one shared scheduler from sharing the results of
    # equally named trials of different configurations.
    token = uuid.uuid4().hex[:8]
    bar = progress_bar(len(pending), progress)
    futures = {}
    failed: dict[str, str] = {}
    try:
        for trial in pending:
            fut = client.submit(run_trial_dict, cfg_dict, dataclasses.asdict(trial), data_root,
                                device, key=f"topo_pai-trial-{trial.trial_id}-{token}",
                                pure=False, retries=retries, resources=resources)
            futures[fut] = trial
        for fut in as_completed(list(futures), loop=client.loop):
            trial = futures.pop(fut)
            error = None
            if fut.status == "finished":
                try:
                    row = fut.result()
                except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001
                    # the result died with its worker before we fetched it, and the
                    # scheduler's recomputation failed too
                    error = "".join(traceback.format_exception(type(exc), exc,
                                                               exc.__traceback__))
                else:
                    store.add(row)
            elif fut.status == "cancelled":  # only when someone cancels it from outside
                error = "the trial's Dask task was cancelled"
            else:
                error = _error_text(fut)
            if error is not None:
                failed[trial.trial_id] = error
                store.record_failure(trial, error)
            fut.release()  # the worker drops the result now that it is saved
            bar.update(1)
    finally:
        # KeyboardInterrupt or a failing write: drop the trials nobody will collect (those
        # already running finish on their workers; their results are discarded)
        if futures:
            client.cancel(list(futures))
        bar.close()
    return failed
