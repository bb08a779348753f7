"""The local executor: trials in this process (``workers=1``) or in spawned worker
processes, each retried up to ``retries`` times within the run."""

from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict

from topo_pai.experiments.executors.progress import progress_bar
from topo_pai.experiments.trial import run_trial, run_trial_dict


def _exit_with_parent(parent: int) -> None:
    # A worker outlives a killed sweep (SIGTERM/SIGKILL skip the pool's shutdown) and would
    # keep training a trial whose result nobody can save: leave as soon as the parent is gone.
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import threading

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import torch
    torch.set_num_threads(threads)  # each trial sets it again (trial_threads)


def run_local(cfg, pending, store, workers, data_root, device, retries, progress):
    """Run ``pending`` trials of ``cfg`` into ``store``; ``{trial id: error}`` of the failed."""
    failed: dict[str, str] = {}
    bar = progress_bar(len(pending), progress)
    if workers == 1:
        for trial in pending:
            for attempt in range(retries + 1):
                try:
                    store.add(run_trial(cfg, trial, data_root=data_root, device=device))
                    failed.pop(trial.trial_id, None)
                    break
                except Exception:  # noqa: BLE001 - a trial's error must not stop the sweep
                    failed[trial.trial_id] = traceback.format_exc()
                    store.record_failure(trial, failed[trial.trial_id])
            bar.update(1)
        bar.close()
        return failed
    import multiprocessing as mp

    threads = cfg.threads
    todo = list(pending)
    for attempt in range(retries + 1):
        if not todo:
            break
        again = []
        # spawn: a forked child would inherit torch's OpenMP and numba state mid-flight
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
            futures = {pool.submit(run_trial_dict, cfg.to_dict(), asdict(t), data_root,
                                   device): t for t in todo}
            for fut in as_completed(futures):
                trial = futures[fut]
                try:
                    store.add(fut.result())
                    failed.pop(trial.trial_id, None)
                    bar.update(1)
                except BrokenProcessPool:
                    # a worker died (killed, out of memory): its trial and the queued ones rerun
                    failed[trial.trial_id] = "worker process died"
                    again.append(trial)
                except Exception as exc:  # noqa: BLE001
                    failed[trial.trial_id] = "".join(traceback.format_exception(exc))
                    store.record_failure(trial, failed[trial.trial_id])
                    again.append(trial)
        todo = again
    bar.close()
    return failed

