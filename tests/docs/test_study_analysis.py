"""The pre-registered verdict rules of docs/study/analyze_plan.py, on synthetic results."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("analyze_plan",
                                                  ROOT / "docs/study/analyze_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("RESNET", "LENET_FIRST", "LENET_EXTRA", "RESCALE", "FIGURES"):
        monkeypatch.setattr(mod, name, tmp_path / name.lower())
    monkeypatch.setattr(mod, "OUT", tmp_path / "tables.md")
    return mod


def _row(arm, sparsity, seed, acc):
    method, _, shuffled = arm.partition("+")
    return dict(trial_id=f"resnet20/{arm}/s{sparsity}/seed{seed}", model="resnet20",
                method=method, shuffled=bool(shuffled), sparsity=sparsity, seed=seed,
                accuracy=acc, val_accuracy=acc, effective_nodes=100, n_nodes=120,
                log10_paths=10.0, effective_params=900, unpruned_params=1000, total_params=10000)


def _write(directory, rows):
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(rows))


def _grid(acc):
    """acc(arm, sparsity, seed) for the whole Part A grid."""
    rows = [_row("dense", 0.0, s, 0.9) for s in range(5)]
    five = ("random_erk", "synflow", "phew", "npb")
    three = ("random", "snip", "npb_official", "synflow+shuffle", "npb+shuffle")
    for sp in (0.9, 0.9684, 0.99, 0.9968):
        for arm in five + three:
            for seed in range(5 if arm in five else 3):
                rows.append(_row(arm, sp, seed, acc(arm, sp, seed)))
    return rows


def test_claims_supported_when_the_data_say_so(plan, tmp_path):
    def acc(arm, sp, seed):
        wobble = 0.001 * seed
        if arm.endswith("+shuffle"):
            return 0.80 + 0.002 + wobble  # shuffled as good as (slightly better than) original
        if arm == "npb" and sp >= 0.99:
            return 0.80 + 0.05 + wobble + 0.0003 * seed ** 2
        return 0.80 + wobble

    _write(tmp_path / "resnet", _grid(acc))
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "Claim 1 in this setting: **supported**" in text
    assert "Claim 2 in this setting: **supported**" in text
    assert (tmp_path / "figures" / "node_path_plane.png").is_file()


def test_claims_not_supported_when_the_data_say_so(plan, tmp_path):
    def acc(arm, sp, seed):
        wobble = 0.001 * seed
        if arm == "synflow+shuffle" and sp == 0.9:
            return 0.75 + wobble + 0.0007 * seed ** 2  # 5 pp worse than the original
        if arm == "npb" and sp == 0.9968:
            return 0.70 + wobble + 0.0005 * seed ** 2  # NPB worse than everything
        return 0.80 + wobble

    _write(tmp_path / "resnet", _grid(acc))
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "Claim 1 in this setting: **not supported**" in text
    assert "synflow − synflow+shuffle at 90%" in text
    assert "Claim 2 in this setting: **not supported**" in text


def test_partial_results_are_pending_not_verdicts(plan, tmp_path):
    rows = [r for r in _grid(lambda a, s, seed: 0.8 + 0.001 * seed) if r["sparsity"] < 0.99]
    _write(tmp_path / "resnet", rows)
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "Claim 2 in this setting: *pending*" in text
    assert "| 99 | npb | pending |" in text
    # the interim Holm column says it adjusts over fewer tests than the family
    assert "*Interim:* p (Holm) adjusts over the 0 test(s) run so far; 6 wait" in text


def test_collapsed_runs_are_reported_as_rates(plan, tmp_path):
    def acc(arm, sp, seed):
        if arm == "synflow" and sp == 0.9968 and seed < 2:
            return 0.10
        return 0.80 + 0.001 * seed

    _write(tmp_path / "resnet", _grid(acc))
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "| npb − synflow at 99.68% | collapsed 0/5 vs 2/5 |" in text


def test_a_majority_of_collapses_is_a_difference_in_trainability(plan, tmp_path):
    def acc(arm, sp, seed):  # random-ERK collapses in 3 of 5 runs, PHEW in 2 of 5
        if sp == 0.9968 and ((arm == "random_erk" and seed < 3) or (arm == "phew" and seed < 2)):
            return 0.10
        return 0.80 + 0.001 * seed

    _write(tmp_path / "resnet", _grid(acc))
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "| npb − random_erk at 99.68% | collapsed 0/5 vs 3/5 (a difference in trainability) |" \
        in text
    assert "| npb − phew at 99.68% | collapsed 0/5 vs 2/5 |" in text


def test_disconnected_masks_are_counted_not_averaged(plan, tmp_path):
    rows = _grid(lambda a, s, seed: 0.8 + 0.001 * seed)
    for r in rows:
        if r["method"] == "random" and r["sparsity"] >= 0.99 and \
                (r["sparsity"] == 0.9968 or r["seed"] == 0):
            r["log10_paths"] = float("-inf")
            r["effective_params"] = 0
    _write(tmp_path / "resnet", rows)
    plan.main([])
    text = (tmp_path / "tables.md").read_text()
    assert "| 99 | random | 3 | 80.10 ± 0.10 | 80.10 ± 0.10 | 0/3 | 100 / 10.00 (1/3 no path) /" \
        in text
    assert "| 99.68 | random | 3 | 80.10 ± 0.10 | 80.10 ± 0.10 | 0/3 | 100 / no path /" in text
    assert "cannot appear on the second figure's log axis: random at 99 %, random at 99.68 %." \
        in text
