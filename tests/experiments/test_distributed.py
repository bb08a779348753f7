"""The Dask engine of the sweep on a local cluster started by the tests.

Two workers; one is SIGKILLed mid-sweep, just after it started a trial; every trial
must still be in the results table exactly once, and the killed trial must have been
run again. Worker processes cost ~8 s of CPU each to start (torch, numba caches), so the
tests share one cluster; only one test starts the engine's own.
"""

import csv
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

distributed = pytest.importorskip(
    "distributed", reason="the Dask engine needs dask[distributed]: "
                          "pip install 'topo_pai[distributed]'")

from distributed.diagnostics.plugin import SchedulerPlugin

from topo_pai.experiments.executors import dask as dist_engine
from topo_pai.experiments.distributed import ClusterResourceError, local_cluster
from topo_pai.experiments.sweep import SweepConfig, SweepError, run_sweep

# trains: a few tenths of a second per trial
TRAINED = SweepConfig(models=("lenet_300_100",), dataset="synthetic",
                      methods=("random", "magnitude"), sparsities=(0.5, 0.9, 0.99),
                      seeds=(0, 1), train={"epochs": 1, "batch_size": 64}, train_limit=1024,
                      test_limit=256)
# topology only: well under a second per trial
FAST = {"models": ("lenet_300_100",), "dataset": "synthetic", "sparsities": (0.9,),
        "seeds": (0,), "train": None, "prune_samples": 64}


@pytest.fixture(scope="module")
def cluster():
    """The engine's own local cluster, two workers that each offer one (pretend) GPU."""
    with local_cluster(2, resources={"GPU": 1}, retries=1) as c, \
            distributed.Client(c, set_as_default=False) as client:
        # before any task ran: the environment torch will see when a trial imports it
        fresh = client.run(
            lambda: (os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS"),
                     "torch" in sys.modules))

        def on_scheduler_loop(fn, *args, **kwargs):
            # the scheduler runs in this process, on the cluster's event loop thread
            done = threading.Event()

            def call():
                try:
                    fn(*args, **kwargs)
                finally:
                    done.set()
            c.loop.add_callback(call)
            assert done.wait(30)

        yield SimpleNamespace(scheduler_address=c.scheduler_address, client=client,
                              scheduler=c.scheduler, on_scheduler_loop=on_scheduler_loop,
                              fresh_workers=fresh)


def _handed_out(client, trial_id, since):
    """How often, after time ``since``, the scheduler gave ``trial_id``'s task to a worker."""
    def count(dask_scheduler):
        # transition_log entries: (key, start, finish, recommendations, stimulus_id, time)
        return sum(1 for t in dask_scheduler.transition_log
                   if t[2] == "processing" and f"-{trial_id}-" in str(t[0]) and t[5] >= since)
    return client.run_on_scheduler(count)


class KillWorkerAfter(SchedulerPlugin):
    """SIGKILL the worker that finishes the ``completed``-th sweep trial, if it is then
    running another; record the keys it held (``killed``), and how many rows the results
    table had at each finished trial (``rows_at``)."""

    def __init__(self, scheduler, completed, table):
        self.scheduler, self.completed, self.table = scheduler, completed, table
        self.killed, self.rows_at = {}, []

    def transition(self, key, start, finish, *args, **kwargs):
        if not (start == "processing" and finish == "memory"
                and str(key).startswith("topo_pai-trial-")):
            return
        self.rows_at.append(len(self.table.read_text().splitlines())
                            if self.table.exists() else 0)
        self.completed -= 1
        ts = self.scheduler.tasks.get(key)
        for ws in (ts.who_has if ts is not None else ()):
            if not self.killed and self.completed <= 0 and ws.processing:
                self.killed = {"addr": ws.address, "at": time.time(),
                               "keys": sorted(str(t.key) for t in ws.processing)}
                os.kill(ws.pid, signal.SIGKILL)


def _table(out):
    lines = (out / "results.jsonl").read_text().splitlines()
    jsonl = Counter(json.loads(line)["trial_id"] for line in lines)
    with open(out / "results.csv", newline="") as f:
        csv_ids = Counter(r["trial_id"] for r in csv.DictReader(f))
    return jsonl, csv_ids


def test_local_workers_get_env_before_torch(cluster):
    for policy, threads, torch_loaded in cluster.fresh_workers.values():
        assert (policy, threads, torch_loaded) == ("PASSIVE", "1", False)
    allowed = cluster.client.run_on_scheduler(lambda dask_scheduler:
                                              dask_scheduler.allowed_failures)
    assert allowed == 1 + 3  # retries + 3
    threads = cluster.client.run(lambda: __import__("torch").get_num_threads())
    assert set(threads.values()) == {1}


def test_killed_worker_mid_sweep_loses_nothing_and_resume_reruns_nothing(cluster, tmp_path,
                                                                         monkeypatch):
    client, out = cluster.client, tmp_path / "sweep"

    # SIGKILL a worker the moment it has started a trial: when the scheduler hears that
    # the worker finished the sweep's second trial, it already runs its next one.
    killer = KillWorkerAfter(cluster.scheduler, completed=2, table=out / "results.jsonl")
    cluster.on_scheduler_loop(cluster.scheduler.add_plugin, killer, name="killer")
    try:
        rows = run_sweep(TRAINED, out, engine="dask", scheduler_address=cluster.scheduler_address,
                         retries=1, device="cpu", progress=False)
    finally:
        cluster.on_scheduler_loop(cluster.scheduler.remove_plugin, "killer")
    killed = killer.killed
    assert killed, "no worker was killed: the sweep ended first"

    # every trial exactly once, in the stream and in the exported table
    want = {t.trial_id for t in TRAINED.trials()}
    jsonl, csv_ids = _table(out)
    assert set(jsonl) == want and set(jsonl.values()) == {1}
    assert csv_ids == jsonl
    assert {r["trial_id"] for r in rows} == want
    assert all(r["accuracy"] is not None and r["epochs"] == 1 for r in rows)
    assert not (out / "failures.jsonl").exists()

    # rows stream in: the table grew while the cluster still ran trials
    assert any(rows_then >= 1 for rows_then in killer.rows_at[:len(want) - 3])

    # the trials of the killed worker were handed out again and finished
    lost_ids = [tid for tid in want if any(f"-{tid}-" in k for k in killed["keys"])]
    assert lost_ids and len(lost_ids) == len(killed["keys"])
    for tid in lost_ids:
        assert _handed_out(client, tid, killed["at"]) >= 1
    # the nanny restarted the dead worker
    client.wait_for_workers(2, timeout=60)

    # resume: nothing left to run, so no cluster work at all and the table is unchanged
    before = (out / "results.jsonl").read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError("run_dask called although every trial is done")

    with monkeypatch.context() as m:
        m.setattr(dist_engine, "run_dask", must_not_run)
        again = run_sweep(TRAINED, out, engine="dask", scheduler_address=cluster.scheduler_address,
                          progress=False)
    assert again == rows
    assert (out / "results.jsonl").read_bytes() == before

    # resume after losing one row: exactly that trial runs again, the others are kept
    lines = before.decode().splitlines(keepends=True)
    lost = json.loads(lines[3])["trial_id"]
    (out / "results.jsonl").write_text("".join(lines[:3] + lines[4:]))
    again = run_sweep(TRAINED, out, engine="dask", scheduler_address=cluster.scheduler_address,
                      device="cpu", progress=False)
    after = (out / "results.jsonl").read_text().splitlines(keepends=True)
    assert after[:-1] == lines[:3] + lines[4:]
    assert json.loads(after[-1])["trial_id"] == lost
    assert [r["trial_id"] for r in again] == [r["trial_id"] for r in rows]


def test_trial_resources_are_scheduling_tokens(cluster, tmp_path):
    cfg = SweepConfig(methods=("random", "magnitude"), resources={"GPU": 1}, **FAST)
    rows = run_sweep(cfg, tmp_path / "gpu", engine="dask",
                     scheduler_address=cluster.scheduler_address, device="cpu", progress=False)
    assert [r["method"] for r in rows] == ["magnitude", "random"]
    assert all(r["device"] == "cpu" for r in rows)


def test_missing_resource_fails_fast_with_the_worker_command(cluster, tmp_path):
    cfg = SweepConfig(methods=("random",), resources={"TPU": 2}, **FAST)
    outcome = []

    def sweep():  # in a thread: a sweep that waits for a worker that never comes must not hang
        try:
            run_sweep(cfg, tmp_path / "tpu", engine="dask",
                      scheduler_address=cluster.scheduler_address, progress=False)
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)
    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert outcome, "the sweep waits for a resource that no worker has instead of failing"
    with pytest.raises(ClusterResourceError, match=r'--resources "TPU=2"') as err:
        raise outcome[0]
    assert "{'GPU': 1}" in str(err.value)  # what the workers do offer
    assert not (tmp_path / "tpu" / "results.jsonl").exists()


def test_failing_trial_is_retried_then_reported_and_others_saved(cluster, tmp_path):
    cfg = SweepConfig(methods=("random", "magnitude"), **FAST,
                      method_options={"magnitude": {"allocation": {"no_such_layer": 0.5}}})
    out, since = tmp_path / "fail", time.time()
    with pytest.raises(SweepError, match="1 of 2 trials failed") as err:
        run_sweep(cfg, out, engine="dask", scheduler_address=cluster.scheduler_address,
                  retries=2, device="cpu", progress=False)
    bad = "lenet_300_100/magnitude/s0.9/seed0"
    assert bad in str(err.value) and "no_such_layer" in str(err.value)
    assert _handed_out(cluster.client, bad, since) == 1 + 2  # first try and two retries
    jsonl, _ = _table(out)
    assert jsonl == {"lenet_300_100/random/s0.9/seed0": 1}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["trial_id"] for f in failures] == [bad]
    assert "ValueError" in failures[0]["error"] and "no_such_layer" in failures[0]["error"]


def test_interrupt_cancels_the_remaining_trials(cluster, tmp_path):
    from topo_pai.experiments.sweep import ResultsStore

    cfg = SweepConfig(methods=("random",), **{**FAST, "seeds": (0, 1, 2, 3, 4, 5)})

    class Interrupted(ResultsStore):
        def add(self, row):
            raise KeyboardInterrupt

    store = Interrupted(tmp_path / "int", cfg)
    with pytest.raises(KeyboardInterrupt):
        dist_engine.run_dask(cfg, cfg.trials(), store, device="cpu", progress=False,
                             scheduler_address=cluster.scheduler_address)

    def ours(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks if "topo_pai-trial-" in str(k)]

    deadline = time.monotonic() + 10
    while cluster.client.run_on_scheduler(ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.client.run_on_scheduler(ours) == []


def test_own_local_cluster_gives_workers_the_declared_resources(tmp_path):
    cfg = SweepConfig(methods=("random",), resources={"GPU": 1}, **FAST)
    rows = run_sweep(cfg, tmp_path / "own", engine="dask", workers=1, device="cpu",
                     progress=False)
    assert [r["trial_id"] for r in rows] == ["lenet_300_100/random/s0.9/seed0"]


def test_missing_dask_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    cfg = SweepConfig(methods=("random",), **FAST)
    with pytest.raises(ImportError, match=r"pip install 'topo_pai\[distributed\]'"):
        run_sweep(cfg, tmp_path / "nodask", engine="dask", progress=False)


def test_dask_engine_follows_the_rules_of_the_results_table(cluster, tmp_path):
    """Issue 12: the lock, one source of truth, first row wins, and a trial's result is the
    same on the cluster as in this process with another thread count."""
    import torch

    from topo_pai.experiments.sweep import ResultsStore, SweepLocked, run_trial

    cfg = SweepConfig(methods=("random",), **{**FAST, "train": {"epochs": 1, "batch_size": 64},
                                              "train_limit": 512, "test_limit": 256})
    out = tmp_path / "rules"
    with ResultsStore(out, cfg):
        with pytest.raises(SweepLocked, match="another sweep is running"):
            run_sweep(cfg, out, engine="dask", scheduler_address=cluster.scheduler_address,
                      device="cpu", progress=False)
    (row,) = run_sweep(cfg, out, engine="dask", scheduler_address=cluster.scheduler_address,
                       device="cpu", progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = run_trial(cfg, cfg.trials()[0], device="cpu")
    finally:
        torch.set_num_threads(before)
    assert row["threads"] == local["threads"] == 1
    assert (row["accuracy"], row["test_loss"]) == (local["accuracy"], local["test_loss"])
    (record,) = [json.loads(x) for x in (out / "epochs.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in record["history"]] == \
        [h["train_loss"] for h in local["history"]]

    twin = dict(json.loads((out / "results.jsonl").read_text()), accuracy=-1.0)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(twin) + "\n")
    (out / "results.csv").unlink()
    with pytest.warns(UserWarning, match="first row of each is kept"):
        again = run_sweep(cfg, out, engine="dask", scheduler_address=cluster.scheduler_address,
                          device="cpu", progress=False)
    assert again == [row]
    jsonl, csv_ids = _table(out)
    assert csv_ids == {row["trial_id"]: 1}
