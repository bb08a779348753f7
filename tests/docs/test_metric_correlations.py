"""The statistics of docs/study/metric_correlations.py on synthetic trials, and the
committed report (METRICS.md) against the tables the script generates."""

import math
import re
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
        # skill near 1; rho over 6 close deviations is noisier (the random nodes column)
        assert n == 6 and rho > 0.8 and skill > 0.9, m


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


def test_a_trial_is_rebuilt_at_the_cpu_level_its_row_ran_at(tmp_path):
    """A SNIP trial swept with torch limited to its portable kernels records that level,
    and the retry rebuilds it in a process limited the same way (the cause of the 26 study
    trials that did not reproduce on an AVX-512 machine)."""
    import json
    import os
    import subprocess

    code = (
        "import sys\n"
        "from topo_pai.experiments.sweep import SweepConfig, run_sweep\n"
        "cfg = SweepConfig(models=('lenet_300_100',), dataset='synthetic', methods=('snip',),\n"
        "                  sparsities=(0.9,), seeds=(0,), prune_samples=64,\n"
        "                  model_kwargs={'lenet_300_100': {'width': 0.1}})\n"
        "run_sweep(cfg, sys.argv[1], workers=1, progress=False)\n")
    out = tmp_path / "s"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True,
                   env=dict(os.environ, **mc.CPU_LIMITS["DEFAULT"]))
    cfg = json.loads((out / "config.json").read_text())["config"]
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["cpu_capability"] == "DEFAULT"
    rec = mc._measure_at_cpu(cfg, row, row["cpu_capability"])
    assert rec["reproduced"], rec.get("error")
    assert rec["options"] == {"cpu": "DEFAULT"} and math.isfinite(rec["mean_in_degree"])


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
    assert "pooled (n=24, 4 arms)" in text


def test_count_weighted_ranks_equal_the_expanded_sample():
    """A resample that draws a trial k times is scored as the sample with k copies of it."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, 12).astype(float)  # ties
    y = x + rng.normal(size=12)
    cells = np.repeat([0, 1], 6)
    counts = rng.integers(0, 3, 12).astype(float)
    counts[[0, 6]] = 2  # both cells present at least twice
    groups = [np.flatnonzero(cells == c) for c in (0, 1)]
    got = mc._ranked_pearson(x, y, groups, counts[None, :])[0]
    rx, ry = [], []
    for g in groups:  # within-cell ranks of the expanded sample, scaled to [-0.5, 0.5]
        rep = np.repeat(g, counts[g].astype(int))
        rx.append((stats.rankdata(x[rep]) - 1) / (rep.size - 1) - 0.5)
        ry.append((stats.rankdata(y[rep]) - 1) / (rep.size - 1) - 0.5)
    rx, ry = np.concatenate(rx), np.concatenate(ry)
    assert got == pytest.approx(stats.pearsonr(rx, ry).statistic, abs=1e-12)


def test_cluster_bootstrap_is_wider_than_resampling_near_duplicate_seeds():
    """Nine arms of three near-identical seeds: resampling trials treats 27 trials as
    independent and gives a narrow interval; resampling arms gives the honest, wider one."""
    rng = np.random.default_rng(6)
    arm_x, arm_y = rng.normal(size=9), rng.normal(size=9)
    arms = np.repeat(np.arange(9), 3)
    x = arm_x[arms] + 1e-3 * rng.normal(size=27)
    y = 0.5 * arm_x[arms] + arm_y[arms] + 1e-3 * rng.normal(size=27)
    cells = np.zeros(27)
    rho, lo_t, hi_t = mc.stratified_spearman(x, y, cells)
    rho_c, lo_c, hi_c = mc.stratified_spearman(x, y, cells, clusters=arms)
    assert rho == rho_c  # the estimate does not depend on the clusters
    assert (hi_c - lo_c) > 1.3 * (hi_t - lo_t)
    assert lo_c <= rho <= hi_c


def test_few_clusters_give_no_interval_and_bad_shapes_are_named():
    x = np.arange(12.0)
    y = x.copy()
    arms = np.repeat(np.arange(mc.MIN_CLUSTERS - 1), 12 // (mc.MIN_CLUSTERS - 1))
    rho, lo, hi = mc.stratified_spearman(x, y, np.zeros(12), clusters=arms)
    assert rho == pytest.approx(1.0) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="clusters"):
        mc.stratified_spearman(x, y, np.zeros(12), clusters=arms[:5])


def _lomo_trials(seed=7):
    rng = np.random.default_rng(seed)
    trials = []
    for s in (0.9, 0.99):
        for m in ("a", "b", "c", "d"):
            for k in range(3):
                t = {c: rng.normal() for c, _ in mc.PREDICTORS}
                t.update(method=m, sparsity=s, seed=k,
                         accuracy=0.5 + 0.01 * t["log10_paths"] + 0.002 * rng.normal())
                trials.append(t)
    return trials


def test_held_out_method_shapes_neither_the_targets_nor_the_feature_scales():
    """Nothing of the held-out method reaches the model: shifting its accuracies shifts
    its targets by the same amount and leaves the predictions alone, and changing one of
    its trials' features changes that trial's prediction only."""
    import copy

    cols = mc.FEATURE_SETS["all measures"]
    trials = _lomo_trials()
    before = copy.deepcopy(trials)
    pred, y = mc.holdout_predictions(trials, cols, "b")
    shifted = [dict(t, accuracy=t["accuracy"] + 0.3) if t["method"] == "b" else t
               for t in trials]
    pred2, y2 = mc.holdout_predictions(shifted, cols, "b")
    np.testing.assert_allclose(pred2, pred, atol=1e-12)
    np.testing.assert_allclose(y2, y + 0.3, atol=1e-12)
    first_b = next(i for i, t in enumerate(trials) if t["method"] == "b")
    changed = list(trials)
    changed[first_b] = dict(trials[first_b], log10_paths=trials[first_b]["log10_paths"] + 5)
    pred3, _ = mc.holdout_predictions(changed, cols, "b")
    assert pred3[0] != pytest.approx(pred[0])
    np.testing.assert_allclose(pred3[1:], pred[1:], atol=1e-12)
    assert trials == before  # inputs are not mutated
    with pytest.raises(ValueError, match="method 'zz'"):
        mc.holdout_predictions(trials, cols, "zz")


# ------------------------------------------------ the committed report and its tables
STUDY = Path(mc.__file__).resolve().parent
_SIGNED = re.compile(r"(?<![\w.])[+\-−]\d+\.\d+")
_WITH_INTERVAL = re.compile(r"([+-]\d\.\d\d)\s+\[([+-]\d\.\d\d),\s+([+-]\d\.\d\d)\]")


def _table_sections(text: str) -> dict:
    """{results directory: text of its '## ' section} of metric_tables.md."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def test_committed_tables_are_what_the_committed_data_gives(tmp_path, monkeypatch):
    """metric_tables.md is regenerated from docs/study/metrics/*.jsonl and the studies'
    results tables: a change to the statistics or the data without a rerun fails here."""
    monkeypatch.setattr(mc, "TABLES", tmp_path / "tables.md")
    report = tmp_path / "METRICS.md"
    report.write_text((STUDY / "METRICS.md").read_text(encoding="utf-8"), encoding="utf-8")
    text = mc.write_tables(mc.STUDIES, report=report)
    stale = "is stale: run python docs/study/metric_correlations.py"
    assert text == (STUDY / "metric_tables.md").read_text(encoding="utf-8"), \
        f"docs/study/metric_tables.md {stale}"
    assert report.read_text(encoding="utf-8") == \
        (STUDY / "METRICS.md").read_text(encoding="utf-8"), \
        f"the generated summary in docs/study/METRICS.md {stale}"


def test_report_block_needs_its_markers(tmp_path):
    bad = tmp_path / "r.md"
    bad.write_text("no block here\n")
    with pytest.raises(ValueError, match="r.md needs exactly one generated block"):
        mc.update_report(bad, "x")
    good = tmp_path / "g.md"
    good.write_text(f"head\n{mc.BEGIN}\nold\n{mc.END}\ntail\n")
    mc.update_report(good, f"{mc.BEGIN}\nnew\n{mc.END}")
    assert good.read_text() == f"head\n{mc.BEGIN}\nnew\n{mc.END}\ntail\n"


def test_every_number_in_the_report_is_in_the_generated_tables():
    """Each signed number METRICS.md quotes (a ρ, an interval end, a skill) appears in the
    generated tables, in the section of the study that the report's section names
    (`docs/study/<study>/results`), or anywhere in them if it names none."""
    report = (STUDY / "METRICS.md").read_text(encoding="utf-8")
    tables = (STUDY / "metric_tables.md").read_text(encoding="utf-8")
    sections = _table_sections(tables)
    table_numbers = {k: set(_SIGNED.findall(v)) for k, v in sections.items()}
    everywhere = set().union(*table_numbers.values())
    missing = []
    for part in re.split(r"^## ", report, flags=re.MULTILINE):  # the preamble too
        title = part.split("\n", 1)[0]
        named = [k for k in sections if f"`{k}`" in part]
        allowed = set().union(*(table_numbers[k] for k in named)) if named else everywhere
        for n in _SIGNED.findall(part):
            n = n.replace("−", "-")
            if n not in allowed:
                missing.append(f"{n} (section '{title}')")
    assert not missing, f"METRICS.md quotes numbers not in metric_tables.md: {missing}"
    # a ρ quoted with its interval must be one whole cell of the tables, not three numbers
    # found in three places
    cells = {" ".join(c) for c in _WITH_INTERVAL.findall(tables.replace("**", ""))}
    quoted = [" ".join(c) for c in _WITH_INTERVAL.findall(report.replace("−", "-")
                                                          .replace("**", ""))]
    assert quoted and not [q for q in quoted if q not in cells], \
        f"METRICS.md quotes intervals not in metric_tables.md: " \
        f"{[q for q in quoted if q not in cells]}"
    assert len(_SIGNED.findall(report)) > 50  # the check has something to check
