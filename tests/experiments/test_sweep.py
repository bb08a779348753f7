"""Sweeps: the grid, the resumable results table, refusal to mix configurations."""

import csv
import json
import math
import os
import sys

import pytest

import topo_pai
from topo_pai.experiments import sweep as S
from topo_pai.experiments.config import LATER_FIELDS
from topo_pai.experiments.results_table import load_results
from topo_pai.experiments.executors import local as local_executor
from topo_pai.experiments.sweep import (COLUMNS, ResultsStore, SweepConfig, SweepConfigMismatch,
                                        SweepError, SweepLocked, read_results, run_sweep)

TINY = dict(models=("lenet_300_100",), dataset="synthetic", methods=("random", "synflow"),
            sparsities=(0.5, 0.99), seeds=(0, 1), shuffled=("synflow",),
            model_kwargs={"lenet_300_100": {"width": 0.1}})


def test_grid_has_every_cell_once():
    cfg = SweepConfig(**TINY)
    trials = cfg.trials()
    # 2 sparsities x (random + synflow + synflow shuffled) x 2 seeds
    assert len(trials) == 12 == len({t.trial_id for t in trials})
    assert sum(t.shuffled for t in trials) == 4
    assert "lenet_300_100/synflow+shuffle/s0.99/seed1" in {t.trial_id for t in trials}


def test_topology_rows_match_an_independent_recount(tmp_path):
    rows = run_sweep(SweepConfig(**TINY), tmp_path / "s", progress=False)
    assert len(rows) == 12
    from topo_pai.experiments.data import load_dataset
    from topo_pai.models import get_model
    import torch
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["accuracy"] is None and r["epochs"] == 0
        torch.manual_seed(r["seed"])
        model = get_model("lenet_300_100", in_channels=1, num_classes=10, input_size=28, width=0.1)
        masks = topo_pai.prune(model, r["method"], r["sparsity"], input_shape=(1, 28, 28),
                               seed=r["seed"])
        if r["shuffled"]:
            masks = topo_pai.prune(model, "shuffle", r["sparsity"], input_shape=(1, 28, 28),
                                   seed=r["seed"], masks=masks)
        # exact Python-int path count of the MLP from the masks alone (no topo_pai code)
        mats = [m.long() for m in masks.values()]
        v = torch.ones(784, dtype=torch.long)
        for m in mats:
            v = m @ v
        paths = int(v.sum())
        assert r["log10_paths"] == (pytest.approx(math.log10(paths)) if paths else -math.inf)
        assert r["unpruned_params"] == sum(int(m.sum()) for m in mats)
        assert r["effective_params"] <= r["unpruned_params"]
        h1, h2 = mats[0].shape[0], mats[1].shape[0]
        assert r["dense_flops"] == 784 * h1 + h1 * h2 + h2 * 10
        assert r["flops"] == r["effective_params"]  # an MLP applies each weight once
    assert load_dataset("synthetic").input_shape == (1, 28, 28)


def test_resume_skips_finished_trials(tmp_path, monkeypatch):
    cfg = SweepConfig(**TINY)
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False, limit=5)
    assert len(read_results(out / "results.jsonl")) == 5
    calls = []
    real = S.run_trial
    monkeypatch.setattr(local_executor, "run_trial", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    rows = run_sweep(cfg, out, progress=False)
    assert len(calls) == 7 and len(rows) == 12
    calls.clear()
    assert run_sweep(cfg, out, progress=False) == rows and calls == []
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 == len({json.loads(x)["trial_id"] for x in lines})
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == sorted(r["trial_id"] for r in rows)
    assert set(table[0]) == set(COLUMNS)


def test_a_line_cut_short_by_a_kill_reruns_that_trial(tmp_path):
    cfg = SweepConfig(**TINY)
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False, limit=3)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[: len(text) - 40])  # last row torn mid-write
    assert len(read_results(out / "results.jsonl")) == 2
    rows = run_sweep(cfg, out, progress=False)
    assert len(rows) == 12
    assert len({r["trial_id"] for r in rows}) == 12
    # the resumed run removed the torn line: every line is a row, for any reader (plot
    # refused the file when the torn line stayed between rows)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line)["trial_id"] for line in lines)
    assert len(load_results(out / "results.jsonl")) == 12
    assert lines[:2] == text.splitlines()[:2]  # the rows before it, byte for byte


def test_a_directory_of_another_configuration_is_refused(tmp_path):
    out = tmp_path / "s"
    run_sweep(SweepConfig(**TINY), out, progress=False, limit=1)
    before = (out / "results.jsonl").read_text()
    other = SweepConfig(**{**TINY, "seeds": (0, 1, 2)})
    with pytest.raises(SweepConfigMismatch, match="seeds"):
        run_sweep(other, out, progress=False)
    assert (out / "results.jsonl").read_text() == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "results.csv").write_text("x\n")
    with pytest.raises(SweepConfigMismatch, match="no config.json"):
        ResultsStore(stray, SweepConfig(**TINY))


def test_failed_trials_are_reported_and_the_rest_saved(tmp_path):
    # a layer name is only checked against the model, in the trial (a bad option value such
    # as rounds=-3 is refused before the sweep starts)
    cfg = SweepConfig(**{**TINY, "method_options": {
        "synflow": {"allocation": {"no_such_layer": 0.5}}}})
    with pytest.raises(SweepError, match="allocation names 'no_such_layer'"):
        run_sweep(cfg, tmp_path / "s", progress=False, retries=0)
    rows = list(read_results(tmp_path / "s" / "results.jsonl").values())
    assert {r["method"] for r in rows} == {"random"} and len(rows) == 4
    assert (tmp_path / "s" / "failures.jsonl").exists()


def test_training_sweep_in_worker_processes(tmp_path):
    cfg = SweepConfig(models=("lenet_300_100",), dataset="synthetic", methods=("random", "npb"),
                      sparsities=(0.8,), seeds=(0,),
                      train=dict(epochs=3, batch_size=32, lr=0.1),
                      train_limit=512, test_limit=256)
    rows = run_sweep(cfg, tmp_path / "s", workers=2, progress=False)
    assert len(rows) == 2
    for r in rows:
        assert 0.3 < r["accuracy"] <= 1.0 and r["epochs"] == 3 and r["train_seconds"] > 0


@pytest.mark.parametrize("change, match", [
    (dict(sparsities=(1.0,)), "sparsities"), (dict(seeds=()), "seeds"),
    (dict(shuffled=("snip",)), "shuffled"), (dict(methods=("random", "random")), "duplicates"),
    (dict(train={"epochs": 1, "lr_max": 3}), "lr_max"), (dict(train={"epochs": 0}), "epochs"),
    (dict(model_kwargs={"vgg11": {}}), "model_kwargs"), (dict(train_limit=0), "train_limit"),
    (dict(resources={"GPU": 0}), "resources"), (dict(resources={"GPU": "one"}), "resources"),
])
def test_bad_configurations(change, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**{**TINY, **change})


@pytest.mark.parametrize("kind, change", [("model", dict(models=("lenet6",), model_kwargs={})),
                                          ("method", dict(methods=("snipp",), shuffled=())),
                                          ("dataset", dict(dataset="cifar10"))])
def test_unknown_names(kind, change, tmp_path):
    with pytest.raises(ValueError, match=f"unknown {kind}"):
        run_sweep(SweepConfig(**{**TINY, **change}), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("options, match", [
    ({"synflow": {"round": 3}}, "method_options for 'synflow': unknown option"),
    ({"synflow": {"rounds": 0}}, "method_options for 'synflow': method 'synflow': rounds must "
                                 "be an int >= 1, got 0"),
    ({"synflow": {"resolution": "edge"}}, "method 'synflow': resolution must be"),
    ({"random": {"allocation": "erk", "erk_power": float("nan")}}, "erk_power"),
    ({"random": {"allocation": "erdos"}}, "unknown allocation"),
    ({"random": 3}, "must be a dict"),
])
def test_method_options_are_checked_before_any_trial(options, match, tmp_path, monkeypatch):
    """They failed every trial of the method, one at a time, after the sweep had started."""
    monkeypatch.setattr(local_executor, "run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    with pytest.raises(ValueError, match=match):
        run_sweep(SweepConfig(**{**TINY, "method_options": options}), tmp_path / "s",
                  progress=False)
    assert not (tmp_path / "s").exists()


def test_exclude_is_a_sweep_option_checked_up_front(tmp_path):
    """prune's exclude was refused in a sweep as an unknown option of the method."""
    cfg = SweepConfig(**{**TINY, "methods": ("random",), "shuffled": (), "seeds": (0,),
                         "sparsities": (0.9,), "method_options": {"random": {"exclude": ["fc1"]}}})
    (row,) = run_sweep(cfg, tmp_path / "s", progress=False)
    # fc1 (784 x 30 at width 0.1) stays dense: 90% of the other layers' weights go
    h1, h2 = 30, 10
    kept_other = row["unpruned_params"] - 784 * h1
    assert kept_other == round(0.1 * (h1 * h2 + h2 * 10))
    bad = SweepConfig(**{**TINY, "method_options": {"random": {"exclude": [3]}}})
    with pytest.raises(ValueError, match="sweep method_options for .random.: exclude entries "
                                        "must be strings"):
        run_sweep(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_config_files_round_trip(tmp_path):
    cfg = SweepConfig(**{**TINY, "train": {"epochs": 3}})
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert SweepConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.toml").write_text(
        'models = ["lenet_300_100"]\ndataset = "synthetic"\nmethods = ["random"]\n'
        "sparsities = [0.9]\n[train]\nepochs = 3\n")
    t = SweepConfig.from_file(tmp_path / "c.toml")
    assert t.train == {"epochs": 3} and t.sparsities == (0.9,)
    (tmp_path / "c.json").write_text(json.dumps({**cfg.to_dict(), "epochs": 3}))
    with pytest.raises(ValueError, match="unknown keys"):
        SweepConfig.from_file(tmp_path / "c.json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses pgrep")
def test_workers_exit_when_the_sweep_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys\n"
        "from topo_pai.experiments.sweep import SweepConfig, run_sweep\n"
        "cfg = SweepConfig(models=('lenet_300_100',), dataset='synthetic', methods=('random',),\n"
        "                  sparsities=(0.5, 0.6, 0.7, 0.8), seeds=(0,),\n"
        "                  train=dict(epochs=50, batch_size=8))\n"
        "run_sweep(cfg, sys.argv[1], workers=2, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")])
    try:
        children = []
        for _ in range(240):  # wait until both workers have started
            time.sleep(0.5)
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            children = [int(p) for p in out.stdout.split()]
            if len(children) >= 2:
                break
        assert len(children) >= 2, "worker processes did not start"
        time.sleep(3)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to shut the pool down
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in children):
            time.sleep(0.5)
        assert not any(_alive(p) for p in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    import os
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")


# ------------------------------------------------------------------ issue 12: ids and configs
def test_trial_ids_are_exact_so_close_sparsities_do_not_collide(tmp_path):
    """'%.6g' wrote both as s0.999999, and the second trial was skipped as done."""
    cfg = SweepConfig(**{**TINY, "methods": ("random",), "shuffled": (), "seeds": (0,),
                         "sparsities": (0.9999991, 0.9999992)})
    ids = [t.trial_id for t in cfg.trials()]
    assert ids == ["lenet_300_100/random/s0.9999991/seed0", "lenet_300_100/random/s0.9999992/seed0"]
    rows = run_sweep(cfg, tmp_path / "s", progress=False)
    assert sorted(r["sparsity"] for r in rows) == [0.9999991, 0.9999992]
    # the ids of the usual grids are unchanged, so existing result tables still resume
    assert S.Trial("m", "snip", True, 0.9968, 2).trial_id == "m/snip+shuffle/s0.9968/seed2"
    assert S.Trial("m", "snip", False, 0.0, 0).trial_id == "m/snip/s0/seed0"


def test_a_grid_with_colliding_ids_is_refused():
    with pytest.raises(ValueError, match="share the id 'lenet_300_100/random\\+shuffle/s0.5"):
        SweepConfig(**{**TINY, "methods": ("random", "random+shuffle"), "shuffled": ("random",)})


def test_reordering_the_grid_is_the_same_configuration(tmp_path, monkeypatch):
    out = tmp_path / "s"
    cfg = SweepConfig(**{**TINY, "shuffled": ()})
    rows = run_sweep(cfg, out, progress=False)
    calls = []
    monkeypatch.setattr(local_executor, "run_trial", lambda *a, **k: calls.append(a))
    again = SweepConfig(**{**TINY, "shuffled": (), "sparsities": (0.99, 0.5), "seeds": (1, 0),
                           "methods": ("synflow", "random")})
    assert again.same_as(cfg) and again.fingerprint() == cfg.fingerprint()
    assert S.pending_trials(again, out) == []
    assert run_sweep(again, out, progress=False) == rows and calls == []
    other = SweepConfig(**{**TINY, "shuffled": (), "sparsities": (0.99,)})
    with pytest.raises(SweepConfigMismatch, match="sparsities"):
        run_sweep(other, out, progress=False)


def test_a_corrupt_config_json_is_named(tmp_path):
    cfg = SweepConfig(**TINY)
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False, limit=1)
    (out / "config.json").write_text('{"fingerprint": "abc", "config": {"models": [')
    for call in (lambda: run_sweep(cfg, out, progress=False), lambda: S.pending_trials(cfg, out)):
        with pytest.raises(SweepConfigMismatch, match="config.json.*corrupt"):
            call()
    (tmp_path / "bad.toml").write_text("models = [\n")
    with pytest.raises(ValueError, match="bad.toml"):
        SweepConfig.from_file(tmp_path / "bad.toml")


# ------------------------------------------------------------------ issue 12: one source of truth
def _ids(out):
    jsonl = [json.loads(x)["trial_id"] for x in (out / "results.jsonl").read_text().splitlines()
             if x.strip()]
    with open(out / "results.csv") as f:
        csv_ids = [r["trial_id"] for r in csv.DictReader(f)]
    json_ids = [r["trial_id"] for r in json.loads((out / "results.json").read_text())]
    return jsonl, csv_ids, json_ids


def test_a_second_sweep_on_the_directory_is_refused(tmp_path):
    cfg = SweepConfig(**TINY)
    out = tmp_path / "s"
    with ResultsStore(out, cfg):
        with pytest.raises(SweepLocked, match=f"another sweep is running.*pid {os.getpid()}"):
            run_sweep(cfg, out, progress=False, limit=1)
    assert not (out / "results.jsonl").exists()
    assert len(run_sweep(cfg, out, progress=False, limit=1)) == 1  # the lock was released


def test_the_tables_are_exported_even_when_nothing_is_pending(tmp_path):
    cfg = SweepConfig(**{**TINY, "shuffled": ()})
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False)
    want = sorted(t.trial_id for t in cfg.trials())
    (out / "results.csv").unlink()  # e.g. a kill between the row's append and the export
    (out / "results.json").write_text("[]\n")
    run_sweep(cfg, out, progress=False)
    jsonl, csv_ids, json_ids = _ids(out)
    assert sorted(jsonl) == csv_ids == json_ids == want


def test_duplicate_rows_are_ignored_first_wins_with_a_warning(tmp_path):
    cfg = SweepConfig(**{**TINY, "shuffled": ()})
    out = tmp_path / "s"
    rows = run_sweep(cfg, out, progress=False)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    twin = json.loads(lines[0])
    twin["effective_nodes"] = -1  # a later row of the same trial, e.g. from a racing sweep
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(twin) + "\n")
    with pytest.warns(UserWarning, match=f"{twin['trial_id']}.*first row of each is kept"):
        again = run_sweep(cfg, out, progress=False)
    assert again == rows
    _, csv_ids, json_ids = _ids(out)
    assert csv_ids == json_ids == sorted(r["trial_id"] for r in rows)
    exported = json.loads((out / "results.json").read_text())
    assert all(r["effective_nodes"] >= 0 for r in exported)


TRAINED = dict(models=("lenet_300_100",), dataset="synthetic", methods=("random",),
               sparsities=(0.5, 0.8, 0.9), seeds=(0,), train=dict(epochs=1, batch_size=32),
               train_limit=64, test_limit=32, model_kwargs={"lenet_300_100": {"width": 0.1}})


def _epochs_match_rows(out):
    rows = {r["trial_id"]: r for r in json.loads((out / "results.json").read_text())}
    records = [json.loads(x) for x in (out / "epochs.jsonl").read_text().splitlines()]
    assert sorted(e["trial_id"] for e in records) == sorted(rows)  # one record per row
    for e in records:
        assert e["history"][-1]["test_acc"] == rows[e["trial_id"]]["accuracy"]


def test_a_torn_last_row_does_not_duplicate_epochs(tmp_path):
    cfg = SweepConfig(**TRAINED)
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[: len(text) - 40])  # last row torn mid-write
    rows = run_sweep(cfg, out, progress=False)
    assert len(rows) == 3
    _epochs_match_rows(out)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("point, rows_left, records_left", [
    ("after-row", 2, 2),  # the second row is in results.jsonl, not yet in results.csv
    ("before-row", 1, 2),  # the second trial's epochs are written, its row is not
])
def test_kill_9_between_the_writes_leaves_a_consistent_table(tmp_path, point, rows_left,
                                                              records_left):
    import signal
    import subprocess

    out = tmp_path / "s"
    argv = ["sweep", "--models", "lenet_300_100", "--dataset", "synthetic", "--methods",
            "random", "--sparsities", "0.5,0.8,0.9", "--epochs", "1", "--batch-size", "32",
            "--train-limit", "64", "--test-limit", "32", "--out", str(out), "--quiet"]
    cfg = SweepConfig(**{**TRAINED, "model_kwargs": {},
                         "train": dict(TRAINED["train"], lr=0.1, momentum=0.9,
                                       weight_decay=5e-4, schedule="cosine")})
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **{S.CRASH_ENV: f"{point}:2"})
    proc = subprocess.run([sys.executable, "-m", "topo_pai.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(read_results(out / "results.jsonl")) == rows_left
    assert len((out / "epochs.jsonl").read_text().splitlines()) == records_left
    jsonl, csv_ids, _ = _ids(out)
    assert len(csv_ids) == 1  # exported after the first trial only: stale until the next run
    # the next run, even one that runs nothing, makes every file agree with results.jsonl
    run_sweep(cfg, out, progress=False, limit=0)
    jsonl, csv_ids, json_ids = _ids(out)
    assert sorted(jsonl) == csv_ids == json_ids and len(jsonl) == rows_left
    _epochs_match_rows(out)
    rows = run_sweep(cfg, out, progress=False)
    assert [r["trial_id"] for r in rows] == sorted(t.trial_id for t in cfg.trials())
    jsonl, csv_ids, json_ids = _ids(out)
    assert sorted(jsonl) == csv_ids == json_ids and len(jsonl) == 3
    _epochs_match_rows(out)


# ------------------------------------------------------------------ issue 12: reproducible trials
def test_a_trial_gives_the_same_metrics_with_one_or_two_workers(tmp_path):
    """In-process (1 worker) trials used torch's default thread count, worker processes
    cpu_count // workers: float reductions then added in another order."""
    import torch

    cfg = SweepConfig(models=("lenet_300_100",), dataset="synthetic", methods=("random",),
                      sparsities=(0.5,), seeds=(0, 1), train=dict(epochs=1, batch_size=64),
                      train_limit=512, test_limit=256,
                      model_kwargs={"lenet_300_100": {"width": 0.25}})
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # this process's default on a machine with 2 or more cores
    try:
        one = run_sweep(cfg, tmp_path / "one", workers=1, device="cpu", progress=False)
        assert torch.get_num_threads() == 2  # the trial's setting was undone
    finally:
        torch.set_num_threads(before)
    two = run_sweep(cfg, tmp_path / "two", workers=2, device="cpu", progress=False)
    timing = {"prune_seconds", "train_seconds"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in one]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in two]
    assert {r["threads"] for r in one + two} == {1}
    assert {r["cpu_capability"] for r in one + two} == {torch.backends.cpu.get_cpu_capability()}

    def histories(out):
        return {e["trial_id"]: [{k: v for k, v in h.items() if k != "seconds"}
                                for h in e["history"]]
                for e in map(json.loads, (out / "epochs.jsonl").read_text().splitlines())}
    assert histories(tmp_path / "one") == histories(tmp_path / "two")


# ------------------------------------------------------------ one model, two spellings
ALIAS = dict(dataset="synthetic", methods=("random",), sparsities=(0.5,), seeds=(0, 1))


@pytest.mark.parametrize("models", [("lenet_300_100", "LeNet-300-100"),
                                    ("lenet5", "conv2", "LENET_5"),
                                    ("net.py:build", "./net.py:build")])
def test_two_spellings_of_one_model_are_refused_before_the_directory(models, tmp_path,
                                                                     monkeypatch):
    """They ran the same model twice under two trial ids."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Sequential("
                                     "torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    cfg = SweepConfig(models=models, **ALIAS)
    same = [m for m in models if m != "conv2"]
    with pytest.raises(S.SameModelTwice, match=f"{same[0]!r} and {same[1]!r} name the same "
                                               "model") as err:
        run_sweep(cfg, tmp_path / "s", progress=False)
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "s").exists()
    SweepConfig(models=(models[0],), **ALIAS).validate_names()  # one spelling is fine


def test_a_sweep_whose_model_file_changed_is_not_resumed(tmp_path, monkeypatch):
    """Rows of the file's old model (8 hidden units) and of its edited one (32) were
    mixed under one model name, with no warning."""
    monkeypatch.chdir(tmp_path)
    net = tmp_path / "net.py"
    source = ("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
              "torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))\n")
    net.write_text(source)
    cfg = SweepConfig(models=("net.py:build",), **ALIAS)
    run_sweep(cfg, tmp_path / "s", progress=False, limit=1)
    before = (tmp_path / "s" / "results.jsonl").read_text()
    net.write_text(source.replace("(784, 8)", "(784, 32)").replace("(8, 10)", "(32, 10)"))
    with pytest.raises(SweepConfigMismatch, match="model file of 'net.py:build' changed"):
        run_sweep(cfg, tmp_path / "s", progress=False)
    assert (tmp_path / "s" / "results.jsonl").read_text() == before
    net.write_text(source)  # restored: the sweep goes on
    assert len(run_sweep(cfg, tmp_path / "s", progress=False)) == 2


def test_an_old_directory_with_a_non_canonical_spelling_resumes_unchanged(tmp_path,
                                                                          monkeypatch):
    """Model names are not rewritten: an old-style config.json (no later fields) naming
    "LeNet-300-100" is the same configuration, keeps its bytes and its trial ids."""
    kwargs = {"LeNet-300-100": {"width": 0.1}}
    cfg = SweepConfig(models=("LeNet-300-100",), model_kwargs=kwargs, **ALIAS)
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False, limit=1)
    stored = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in stored["config"].items() if k not in LATER_FIELDS}
    assert "LeNet-300-100" in old["models"] and "arms" not in old
    text = json.dumps({"fingerprint": stored["fingerprint"], "config": old}, indent=2) + "\n"
    (out / "config.json").write_text(text)
    again = SweepConfig.from_dict(old)
    assert again.same_as(cfg) and again.fingerprint() == cfg.fingerprint()
    rows = run_sweep(cfg, out, progress=False)
    assert sorted(r["trial_id"] for r in rows) == ["LeNet-300-100/random/s0.5/seed0",
                                                   "LeNet-300-100/random/s0.5/seed1"]
    assert (out / "config.json").read_text() == text
    calls = []
    monkeypatch.setattr(local_executor, "run_trial", lambda *a, **k: calls.append(a))
    assert run_sweep(again, out, progress=False) == rows and calls == []


def test_a_directory_that_already_ran_both_spellings_still_resumes(tmp_path):
    """Its config.json was accepted before; refusing it now would strand its results."""
    cfg = SweepConfig(models=("lenet_300_100", "LeNet-300-100"), **ALIAS,
                      model_kwargs={"lenet_300_100": {"width": 0.1},
                                    "LeNet-300-100": {"width": 0.1}})
    out = tmp_path / "s"
    with ResultsStore(out, cfg):  # as the old code wrote it
        pass
    with pytest.warns(UserWarning, match="name the same model.*resuming"):
        rows = run_sweep(cfg, out, progress=False)
    assert len(rows) == 4
    with pytest.raises(S.SameModelTwice):  # but not in a new directory
        run_sweep(cfg, tmp_path / "new", progress=False)


NETS = {"flat784": "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))",
        "five_logits": "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))",
        "many_logits": "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 12))"}


@pytest.mark.parametrize("model, dataset, train, match", [
    ("vgg11", "digits", None, "sweep model 'vgg11' on dataset 'digits' (inputs 1x8x8, 10 "
                              "classes): input_size=(8, 8) is too small for vgg11"),
    ("{tmp}/nets.py:flat784", "digits", None, "does not fit the model at fx node"),
    ("{tmp}/nets.py:five_logits", "synthetic", {"epochs": 1},
     "outputs of shape (1, 5) for one sample; training needs (1, 10)"),
])
def test_a_model_the_dataset_does_not_fit_is_refused_before_the_directory(
        model, dataset, train, match, tmp_path, monkeypatch):
    """Every trial failed (exit 1) after config.json was written."""
    (tmp_path / "nets.py").write_text("import torch\n" + "".join(
        f"def {name}():\n    return {body}\n" for name, body in NETS.items()))
    monkeypatch.setattr(local_executor, "run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    cfg = SweepConfig(models=(model.format(tmp=tmp_path),), dataset=dataset, methods=("random",),
                      sparsities=(0.5,), train=train, train_limit=64, test_limit=32)
    with pytest.raises(ValueError) as err:
        run_sweep(cfg, tmp_path / "s", progress=False)
    assert match in str(err.value)
    assert not (tmp_path / "s").exists()


def test_a_model_with_more_logits_than_classes_still_trains(tmp_path):
    (tmp_path / "nets.py").write_text("import torch\ndef many_logits():\n"
                                      f"    return {NETS['many_logits']}\n")
    cfg = SweepConfig(models=(f"{tmp_path}/nets.py:many_logits",), dataset="synthetic",
                      methods=("random",), sparsities=(0.5,), train={"epochs": 1},
                      train_limit=64, test_limit=32)
    rows = run_sweep(cfg, tmp_path / "s", progress=False)
    assert len(rows) == 1 and 0.0 <= rows[0]["accuracy"] <= 1.0


def test_a_row_records_the_cpu_capability_its_process_ran_at(tmp_path):
    """Float32 kernels round differently at each SIMD level (the cause of SNIP masks that did
    not reproduce across machines), so each row says which level its process used: here one
    run limited to the portable kernels by ``ATEN_CPU_CAPABILITY=default``."""
    import subprocess

    code = (
        "import json, sys\n"
        "from topo_pai.experiments.sweep import SweepConfig, run_sweep\n"
        "cfg = SweepConfig(models=('lenet_300_100',), dataset='synthetic', methods=('random',),\n"
        "                  sparsities=(0.5,), seeds=(0,),\n"
        "                  model_kwargs={'lenet_300_100': {'width': 0.1}})\n"
        "rows = run_sweep(cfg, sys.argv[1], workers=1, progress=False)\n"
        "print(json.dumps([r['cpu_capability'] for r in rows]))\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == ["DEFAULT"]
    with open(tmp_path / "s" / "results.csv", newline="") as f:
        assert [r["cpu_capability"] for r in csv.DictReader(f)] == ["DEFAULT"]


def test_resuming_on_a_cpu_of_another_simd_level_warns(tmp_path):
    """A sweep resumed where torch's CPU kernels run at another SIMD level than its
    earlier rows did mixes two roundings in one table: the store says so, naming both
    levels and the way back."""
    import torch

    cfg = SweepConfig(**{**TINY, "methods": ("random",), "sparsities": (0.5,), "shuffled": ()})
    out = tmp_path / "s"
    run_sweep(cfg, out, progress=False, limit=1)
    other = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "DEFAULT"
    path = out / "results.jsonl"
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text(json.dumps({**row, "cpu_capability": other}) + "\n")  # "another machine"
    with pytest.warns(UserWarning, match=f"earlier rows at {other}.*ATEN_CPU_CAPABILITY="
                                         f"{other.lower()}"):
        rows = run_sweep(cfg, out, progress=False)
    assert len(rows) == 2 and {r["cpu_capability"] for r in rows} == {
        other, torch.backends.cpu.get_cpu_capability()}
