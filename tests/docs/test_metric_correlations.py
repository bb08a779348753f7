"""The statistics of docs/study/metric_correlations.py on synthetic trials."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "study"))
import metric_correlations as mc  # noqa: E402


def test_one_cell_is_plain_spearman_and_interval_covers_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + 0.5 * rng.normal(size=30)
    x[::5] = x[1]  # ties
    rho, lo, hi = mc.stratified_spearman(x, y, np.zeros(30))
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert lo <= rho <= hi and lo > 0


def test_pooled_ranks_within_cells_ignore_cell_offsets():
    """A predictor that only tracks the cell (sparsity) carries no within-cell signal; one
    that orders trials within every cell is +1 whatever the cells' offsets."""
    cells = np.repeat([0.9, 0.99, 0.999], 10)
    rng = np.random.default_rng(2)
    acc = rng.normal(size=30) + 5 * np.arange(30) // 10
    order = acc + 100 * cells  # same order as acc within each cell
    assert mc.stratified_spearman(order, acc, cells)[0] == pytest.approx(1.0)
    only_cell = 1000 * cells
    assert math.isnan(mc.stratified_spearman(only_cell, acc, cells)[0])


def test_leave_one_method_out_recovers_an_exact_predictor():
    trials = []
    rng = np.random.default_rng(3)
    for s in (0.9, 0.99):
        for m in ("a", "b", "c", "d"):
            for seed in range(3):
                f = rng.normal()
                t = {c: rng.normal() for c, _ in mc.PREDICTORS}
                t.update(method=m, sparsity=s, accuracy=0.5 + 0.01 * f, log10_paths=f)
                trials.append(t)
    res = mc.leave_one_method_out(trials)
    for m, (skill, rho, n) in res["nodes + paths"].items():
        assert n == 6 and rho > 0.9 and skill > 0.5, m


def test_recorded_columns_are_used_and_failures_are_reported():
    from topo_pai.experiments.trial_metrics import METRIC_COLUMNS
    row = dict(trial_id="m/x/s0.9/seed0", **{c: 1.5 for c in METRIC_COLUMNS})
    rec = mc._measure({}, row)
    assert rec["reproduced"] and rec["options"] == {"recorded": True}
    assert rec["mean_ramanujan_gap"] == 1.5
    bad = mc._measure({"models": ["nonexistent"]}, dict(trial_id="t", model="nonexistent",
                                                        method="random", shuffled=False,
                                                        sparsity=0.9, seed=0))
    assert not bad["reproduced"] and bad["error"]


def test_code_of_record_is_imported_from_its_export(tmp_path, monkeypatch):
    """The re-pruning subprocess imports topo_pai from the exported commit even when the
    study script runs from the repository root (where `python -c` would find today's)."""
    code = tmp_path / "export"
    (code / "topo_pai").mkdir(parents=True)
    (code / "topo_pai" / "__init__.py").write_text("")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # the repository root
    proc = mc.run_with_code(code, ["-c", "import topo_pai; print(topo_pai.__file__)"])
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (code / "topo_pai" / "__init__.py").resolve()


def test_dense_reference_trials_are_counted_but_not_ranked(tmp_path, monkeypatch):
    """An unpruned reference (sparsity 0) has no mask to rank: it is named in the count
    and left out of every correlation and of the leave-one-method-out model."""
    import json

    here = tmp_path / "docs" / "study"
    results = here / "toy" / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(mc, "HERE", here)
    monkeypatch.setattr(mc, "METRICS_DIR", tmp_path / "metrics")
    monkeypatch.setattr(mc, "TABLES", tmp_path / "tables.md")
    (tmp_path / "metrics").mkdir()
    rng = np.random.default_rng(4)
    rows, measured = [], []
    cells = [(0.0, "dense")] * 3 + [(s, m) for s in (0.9, 0.99) for m in "abcd" for _ in range(3)]
    for i, (s, m) in enumerate(cells):
        tid = f"toy/{m}/s{s}/seed{i}"
        rows.append(dict(trial_id=tid, model="toy", method=m, shuffled=False, sparsity=s,
                         seed=i, accuracy=float(rng.uniform(0.5, 0.9)),
                         effective_nodes=int(rng.integers(10, 99)),
                         log10_paths=float(rng.normal()), effective_params=int(rng.integers(9, 99))))
        measured.append(dict(trial_id=tid, reproduced=True, options={},
                             **{c: float(rng.normal()) for c, _ in mc.PREDICTORS
                                if c not in ("effective_nodes", "log10_paths",
                                             "effective_params")}))
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "metrics" / "toy_results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in measured))
    mc.write_tables([results])
    text = (tmp_path / "tables.md").read_text()
    assert "27 of 27 trials measured from reproduced masks; the 3 dense reference trials are " \
           "left out" in text
    assert "s=0 " not in text and "dense (n=" not in text
    assert "pooled (n=24)" in text
