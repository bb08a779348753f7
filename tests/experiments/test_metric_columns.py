"""Graph measures in sweeps (opt-in columns), trial rebuilds, `topo-pai plot --metric` and
`topo-pai analyze --metrics`."""

import csv
import json
import math

import pytest

from topo_pai.cli import main
from topo_pai.experiments.sweep import (SweepConfig, Trial, read_results, run_sweep)
from topo_pai.experiments.trial_metrics import (METRIC_COLUMNS, matches_row, metric_columns,
                                                rebuild_trial)

TINY = dict(models=("lenet_300_100",), dataset="synthetic", methods=("random", "synflow"),
            sparsities=(0.5, 0.99), seeds=(0,), model_kwargs={"lenet_300_100": {"width": 0.1}})


def test_sweep_metric_columns_are_opt_in_and_match_a_rebuild(tmp_path):
    cfg = SweepConfig(**TINY, metrics=True)
    rows = run_sweep(cfg, tmp_path / "m", progress=False)
    assert len(rows) == 4
    for row in rows:
        assert set(METRIC_COLUMNS) <= set(row)
        trial = Trial(row["model"], row["method"], row["shuffled"], row["sparsity"], row["seed"])
        model, masks, shape = rebuild_trial(cfg, trial)
        import topo_pai
        assert matches_row(topo_pai.from_torch(model, masks, input_shape=shape), row)
        expected = metric_columns(model, masks, shape)
        for k in METRIC_COLUMNS:
            assert row[k] == pytest.approx(expected[k], rel=1e-12), k
    with open(tmp_path / "m" / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[-len(METRIC_COLUMNS):] == list(METRIC_COLUMNS)
    again = read_results(tmp_path / "m" / "results.jsonl")
    r = again[rows[0]["trial_id"]]
    assert all(isinstance(r[k], (int, float)) for k in METRIC_COLUMNS)
    # resuming is a no-op; a config without the key is a metrics=False config
    assert len(run_sweep(cfg, tmp_path / "m", progress=False)) == 4
    plain = run_sweep(SweepConfig(**TINY), tmp_path / "p", progress=False)
    assert not any(k in plain[0] for k in METRIC_COLUMNS)
    with open(tmp_path / "p" / "config.json") as f:
        stored = json.load(f)["config"]
    stored.pop("metrics")
    assert SweepConfig.from_dict(stored).same_as(SweepConfig(**TINY))
    with pytest.raises(ValueError, match="metrics"):
        SweepConfig(**TINY, metrics="yes")


def _results_with_metric(path):
    rows = []
    for s in (0.9, 0.99):
        for k, m in enumerate(("random", "snip", "npb")):
            rows.append(dict(model="lenet5", method=m, shuffled=False, sparsity=s, seed=0,
                             accuracy=0.5 + 0.1 * k, log10_paths=3.0 + k, effective_nodes=100 + k,
                             mean_ramanujan_gap=float(k), effective_compression=math.inf))
    path.mkdir()
    (path / "results.json").write_text(json.dumps(
        [{k: ("inf" if v == math.inf else v) for k, v in r.items()} for r in rows]))
    return path


def test_plot_metric_vs_accuracy_cli(tmp_path, capsys):
    src = _results_with_metric(tmp_path / "res")
    code = main(["plot", str(src), "--out", str(tmp_path / "fig"), "--metric",
                 "mean_ramanujan_gap", "--metric", "log10_paths"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "fig" / "mean_ramanujan_gap_vs_accuracy.png").is_file()
    assert (tmp_path / "fig" / "log10_paths_vs_accuracy.png").is_file()
    assert "mean_ramanujan_gap_vs_accuracy.png" in out
    code = main(["plot", str(src), "--out", str(tmp_path / "fig2"), "--metric", "spectral"])
    err = capsys.readouterr().err
    assert code == 2 and "'spectral'" in err and "mean_ramanujan_gap" in err
    assert "Traceback" not in err


def test_plot_metric_vs_accuracy_values(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from topo_pai.experiments.plotting import plot_metric_vs_accuracy
    fig = plot_metric_vs_accuracy(_results_with_metric(tmp_path / "r"), "mean_ramanujan_gap")
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == ["90%: Spearman ρ = +1.00 (n=3)", "99%: Spearman ρ = +1.00 (n=3)"]
    with pytest.raises(ValueError, match="finite"):
        plot_metric_vs_accuracy(_results_with_metric(tmp_path / "r2"), "effective_compression")


def test_analyze_metrics(capsys):
    code = main(["analyze", "lenet_300_100", "--metrics"])
    out = capsys.readouterr().out
    assert code == 0 and "Ramanujan gap" in out and "effective compression = 1" in out
    code = main(["analyze", "lenet_300_100", "--metrics", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["totals"]["effective_sparsity"] == 0.0
    assert len(report["metrics"]["rows"]) == 4
