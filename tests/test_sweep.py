"""Sweeps: the grid, the resumable results table, refusal to mix configurations."""

import csv
import json
import math
import sys

import pytest

import topo_pai
from topo_pai.experiments import sweep as S
from topo_pai.experiments.sweep import (COLUMNS, ResultsStore, SweepConfig, SweepConfigMismatch,
                                        SweepError, run_sweep)

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
    assert len(ResultsStore(out, cfg).rows) == 5
    calls = []
    real = S.run_trial
    monkeypatch.setattr(S, "run_trial", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
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
    assert len(ResultsStore(out, cfg).rows) == 2
    rows = run_sweep(cfg, out, progress=False)
    assert len(rows) == 12
    assert len({r["trial_id"] for r in rows}) == 12


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
    cfg = SweepConfig(**{**TINY, "method_options": {"synflow": {"rounds": -3}}})
    with pytest.raises(SweepError, match="failed"):
        run_sweep(cfg, tmp_path / "s", progress=False, retries=0)
    rows = ResultsStore(tmp_path / "s", cfg).rows
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
