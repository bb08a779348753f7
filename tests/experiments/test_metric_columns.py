"""Graph measures in sweeps (opt-in columns), trial rebuilds, `topo-pai plot --metric` and
`topo-pai analyze --metrics`."""

import csv
import json
import math

import pytest

from topo_pai.cli import main
from topo_pai.experiments.schema import SPECTRAL_COLUMNS
from topo_pai.experiments.sweep import (SweepConfig, SweepConfigMismatch, Trial, read_results,
                                        run_sweep)
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
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["metrics"] == "all"
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


def test_metrics_modes_and_the_spellings_from_before_them():
    assert SweepConfig(**TINY).metrics == "off"
    assert SweepConfig(**TINY, metrics=False).metrics == "off"
    assert SweepConfig(**TINY, metrics=True).metrics == "all"
    assert SweepConfig(**TINY, metrics="cheap").to_dict()["metrics"] == "cheap"
    # computed by the code from before the modes (metrics = true / the key absent): the
    # fingerprint of a stored sweep, and with it the order of --order random, is kept
    assert SweepConfig(**TINY, metrics="all").fingerprint() == "c067c45eb1a5a831"
    assert SweepConfig(**TINY, metrics="off").fingerprint() == "d7d18b1e23a9ea19"
    assert SweepConfig(**TINY, metrics="cheap").fingerprint() not in ("c067c45eb1a5a831",
                                                                      "d7d18b1e23a9ea19")
    assert not SweepConfig(**TINY, metrics="cheap").same_as(SweepConfig(**TINY, metrics="all"))
    for bad in ("yes", "ALL", 1, None, ["cheap"]):
        with pytest.raises(ValueError, match="sweep metrics must be one of 'off', 'cheap', "
                                             "'all'"):
            SweepConfig(**TINY, metrics=bad)


def test_cheap_metrics_leave_the_spectral_columns_empty(tmp_path):
    cfg = SweepConfig(**TINY, metrics="cheap")
    rows = run_sweep(cfg, tmp_path / "c", progress=False)
    assert len(rows) == 4
    for row in rows:
        trial = Trial(row["model"], row["method"], row["shuffled"], row["sparsity"], row["seed"])
        model, masks, shape = rebuild_trial(cfg, trial)
        full = metric_columns(model, masks, shape)
        assert all(row[k] is None for k in SPECTRAL_COLUMNS)
        assert all(full[k] is not None for k in SPECTRAL_COLUMNS)
        for k in set(METRIC_COLUMNS) - set(SPECTRAL_COLUMNS):  # the same as with the spectra
            assert row[k] is not None and row[k] == pytest.approx(full[k], rel=1e-12), k
    assert metric_columns(model, masks, shape, spectra=False) == {
        k: (None if k in SPECTRAL_COLUMNS else full[k]) for k in METRIC_COLUMNS}
    # empty in every file, and read back as None
    with open(tmp_path / "c" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert all(r[k] == "" for r in table for k in SPECTRAL_COLUMNS)
    assert all(r["effective_sparsity"] != "" for r in table)
    exported = json.loads((tmp_path / "c" / "results.json").read_text())
    assert all(r[k] is None for r in exported for k in SPECTRAL_COLUMNS)
    again = read_results(tmp_path / "c" / "results.jsonl")
    assert all(r[k] is None for r in again.values() for k in SPECTRAL_COLUMNS)
    stored = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert stored["metrics"] == "cheap"
    # another setting on the same directory is refused, never mixed in
    for other in ("all", "off"):
        with pytest.raises(SweepConfigMismatch, match=r"differs in \['metrics'\].*metrics = "
                                                      r"'cheap' \(--metrics cheap\)"):
            run_sweep(SweepConfig(**TINY, metrics=other), tmp_path / "c", progress=False)
    assert len(run_sweep(cfg, tmp_path / "c", progress=False)) == 4


def test_a_directory_stored_with_metrics_true_resumes_as_all(tmp_path):
    out = tmp_path / "old"
    one = {**TINY, "methods": ("random",)}
    run_sweep(SweepConfig(**one, metrics="all"), out, progress=False)
    path = out / "config.json"
    stored = json.loads(path.read_text())
    stored["config"]["metrics"] = True  # as written before the modes
    path.write_text(json.dumps(stored))
    rows = run_sweep(SweepConfig(**one, metrics="all"), out, progress=False)
    assert len(rows) == 2 and all(r["mean_ramanujan_gap"] is not None for r in rows)
    with pytest.raises(SweepConfigMismatch, match="metrics = 'all'"):
        run_sweep(SweepConfig(**one, metrics="cheap"), out, progress=False)


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


def test_plot_metric_of_a_sweep_without_spectra_says_so(tmp_path, capsys):
    src = _results_with_metric(tmp_path / "res")
    rows = json.loads((src / "results.json").read_text())
    for r in rows:
        r["mean_ramanujan_gap"] = None  # as a sweep with --metrics cheap records it
    (src / "results.json").write_text(json.dumps(rows))
    code = main(["plot", str(src), "--out", str(tmp_path / "fig"), "--metric",
                 "mean_ramanujan_gap"])
    err = capsys.readouterr().err
    assert code == 2 and "'mean_ramanujan_gap'" in err and "--metrics all" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fig" / "mean_ramanujan_gap_vs_accuracy.png").exists()


def test_analyze_metrics(capsys):
    code = main(["analyze", "lenet_300_100", "--metrics"])
    out = capsys.readouterr().out
    assert code == 0 and "Ramanujan gap" in out and "effective compression = 1" in out
    code = main(["analyze", "lenet_300_100", "--metrics", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["channel"]["metrics"]["totals"]["effective_sparsity"] == 0.0
    assert len(report["channel"]["metrics"]["rows"]) == 4
    assert report["channel"]["metrics"]["weighted"] is False
    assert "neuron" not in report


#: A 3x3 conv (padding 1) on a 1x1 input: at neuron resolution only the centre tap of each
#: kernel meets the input, so 4 of its 36 weights are effective; at channel resolution all 36.
NET = ("from torch import nn\n"
       "def build():\n"
       "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
       "                         nn.Linear(4, 2))\n")


def _net(tmp_path, seed=0):
    """``(spec for the command line, Topology, model)`` as `analyze --seed seed` builds it."""
    import torch

    import topo_pai
    from topo_pai.models.spec import build_model
    (tmp_path / "net.py").write_text(NET)
    spec = f"{tmp_path}/net.py:build"
    torch.manual_seed(seed)
    model, _ = build_model(spec, input_shape=(1, 1, 1), num_classes=10)
    return spec, topo_pai.from_torch(model, {}, input_shape=(1, 1, 1)), model


def _analyze_json(capsys, *argv):
    code = main(["analyze", *argv, "--input-shape", "1,1,1", "--metrics", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_analyze_metrics_at_the_chosen_resolution(tmp_path, capsys):
    spec, topo, _ = _net(tmp_path)
    expected = {res: topo.metrics(resolution=res).totals for res in ("channel", "neuron")}
    assert expected["channel"]["effective_params"] == 44  # 36 + 8
    assert expected["neuron"]["effective_params"] == 12   # 4 + 8
    for res in ("channel", "neuron"):
        report = _analyze_json(capsys, spec, "--resolution", res)
        assert set(report) == {res}
        totals = report[res]["metrics"]["totals"]
        assert totals["effective_params"] == expected[res]["effective_params"]
        assert totals["effective_sparsity"] == pytest.approx(expected[res]["effective_sparsity"])
    both = _analyze_json(capsys, spec, "--resolution", "both")
    got = {res: both[res]["metrics"]["totals"] for res in ("channel", "neuron")}
    assert (got["channel"]["effective_params"], got["neuron"]["effective_params"]) == (44, 12)
    assert got["neuron"]["effective_sparsity"] == pytest.approx(1 - 12 / 44)
    assert got["channel"]["effective_sparsity"] == 0.0
    # the spectra are the channel graph's at either resolution
    assert got["channel"]["mean_ramanujan_gap"] == got["neuron"]["mean_ramanujan_gap"]
    code = main(["analyze", spec, "--input-shape", "1,1,1", "--metrics", "--resolution", "both"])
    out = capsys.readouterr().out
    assert code == 0
    assert "totals (channel resolution): effective sparsity = 0 (" in out
    assert "totals (neuron resolution): effective sparsity = 0.7273" in out


def test_analyze_weighted_spectra_take_the_seeded_initial_weights(tmp_path, capsys):
    spec, topo, model = _net(tmp_path)
    plain = _analyze_json(capsys, spec)["channel"]["metrics"]
    assert plain["weighted"] is False
    assert plain["totals"]["mean_weighted_spectral_gap"] is None
    assert all(r["weighted_spectral_gap"] is None for r in plain["rows"])
    got = {}
    for seed in (0, 1):
        _, topo, model = _net(tmp_path, seed)
        absw = {n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("weight")}
        want = topo.metrics(absw)
        report = _analyze_json(capsys, spec, "--weighted-spectra", "--seed", str(seed))
        m = report["channel"]["metrics"]
        assert m["weighted"] is True
        got[seed] = m["totals"]["mean_weighted_spectral_gap"]
        assert got[seed] == pytest.approx(want.totals["mean_weighted_spectral_gap"], rel=1e-9)
        for row, w in zip(m["rows"][1:], want.rows[1:]):
            assert row["weighted_spectral_gap"] == pytest.approx(w["weighted_spectral_gap"],
                                                                 rel=1e-9)
        # the mask-only measures do not change with the weights
        assert m["totals"]["mean_ramanujan_gap"] == plain["totals"]["mean_ramanujan_gap"]
    assert got[0] != pytest.approx(got[1])  # other initial weights, other weighted gaps


def test_analyze_metric_options_that_cannot_work_are_refused(tmp_path, capsys):
    spec, _, model = _net(tmp_path)
    code = main(["analyze", spec, "--input-shape", "1,1,1", "--weighted-spectra"])
    err = capsys.readouterr().err
    assert code == 2 and "--weighted-spectra" in err and "pass --metrics too" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", spec, "--input-shape", "1,1,1", "--metrics", "--resolution", "pixel"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'pixel'" in err
    # weights in the masks file give only the masks: --weighted-spectra says whose |w| it takes
    import torch
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    code = main(["analyze", spec, "--input-shape", "1,1,1", "--masks", str(tmp_path / "trained.pt"),
                 "--masks-from-zeros", "--metrics", "--weighted-spectra"])
    captured = capsys.readouterr()
    assert code == 0
    assert ("topo-pai: warning: --weighted-spectra takes |w| of the model's initial weights"
            in captured.err)


def _sweep(capsys, out, *flags):
    code = main(["sweep", "--models", "lenet_300_100", "--dataset", "synthetic", "--methods",
                 "random", "--sparsities", "0.99", "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return code, captured.err


def test_sweep_metrics_flag(tmp_path, capsys):
    code, err = _sweep(capsys, tmp_path / "cheap", "--metrics", "cheap")
    assert code == 0, err
    (row,) = read_results(tmp_path / "cheap" / "results.jsonl").values()
    assert all(row[k] is None for k in SPECTRAL_COLUMNS)
    assert all(row[k] is not None for k in METRIC_COLUMNS if k not in SPECTRAL_COLUMNS)
    # the directory's setting is part of its configuration: another one is refused
    code, err = _sweep(capsys, tmp_path / "cheap", "--metrics", "all")
    assert code == 2 and "differs in ['metrics']" in err and "--metrics cheap" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, err = _sweep(capsys, tmp_path / "cheap")  # no flag: "off", also another setting
    assert code == 2 and "differs in ['metrics']" in err
    assert len(read_results(tmp_path / "cheap" / "results.jsonl")) == 1

    code, err = _sweep(capsys, tmp_path / "all", "--metrics", "all")
    assert code == 0, err
    (full,) = read_results(tmp_path / "all" / "results.jsonl").values()
    assert all(isinstance(full[k], float) for k in SPECTRAL_COLUMNS)
    for k in set(METRIC_COLUMNS) - set(SPECTRAL_COLUMNS):
        assert row[k] == full[k], k
    code, err = _sweep(capsys, tmp_path / "off")
    (plain,) = read_results(tmp_path / "off" / "results.jsonl").values()
    assert code == 0 and not set(METRIC_COLUMNS) & set(plain)


def test_sweep_metrics_in_a_config_file_and_its_mistakes(tmp_path, capsys):
    grid = 'models = ["lenet_300_100"]\ndataset = "synthetic"\nsparsities = [0.99]\n'
    (tmp_path / "cheap.toml").write_text(grid + 'metrics = "cheap"\n')
    code = main(["sweep", "--config", str(tmp_path / "cheap.toml"), "--out",
                 str(tmp_path / "s"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    (row,) = read_results(tmp_path / "s" / "results.jsonl").values()
    assert row["mean_ramanujan_gap"] is None and row["effective_sparsity"] is not None
    # the flag is the config's: with --config it is refused, as every recipe flag
    code = main(["sweep", "--config", str(tmp_path / "cheap.toml"), "--metrics", "all",
                 "--out", str(tmp_path / "s2")])
    err = capsys.readouterr().err
    assert code == 2 and "drop --metrics" in err and "Traceback" not in err
    (tmp_path / "bad.toml").write_text(grid + 'metrics = "sometimes"\n')
    code = main(["sweep", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "s3")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.toml" in err and "metrics must be one of 'off', 'cheap', 'all'" \
        in err and "Traceback" not in err, err
    assert not (tmp_path / "s3").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--models", "lenet_300_100", "--methods", "random", "--sparsities",
              "0.9", "--metrics", "true", "--out", str(tmp_path / "s4")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'true'" in err
    assert "choose from 'off', 'cheap', 'all'" in err


def test_load_results_types_metric_and_validation_columns_alike_from_csv_and_json(tmp_path):
    """From a .csv the metric columns were strings ('2.79') and an empty val_accuracy '',
    while the .json of the same sweep gave numbers and None."""
    from topo_pai.experiments.results_table import load_results
    row = {"model": "lenet5", "method": "snip", "shuffled": False, "sparsity": 0.9, "seed": 0,
           "accuracy": 0.5, "val_accuracy": None, "val_loss": None, "kernels": 12,
           "sink_units": 0, "effective_compression": math.inf, "mean_ramanujan_gap": 2.79}
    (tmp_path / "r.json").write_text(json.dumps([{k: ("inf" if v == math.inf else v)
                                                   for k, v in row.items()}]))
    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow({k: ("" if v is None else "inf" if v == math.inf else v)
                    for k, v in row.items()})
    from_json, from_csv = load_results(tmp_path / "r.json")[0], load_results(tmp_path / "r.csv")[0]
    for got in (from_json, from_csv):
        assert got["mean_ramanujan_gap"] == 2.79 and got["effective_compression"] == math.inf
        assert got["kernels"] == 12 and isinstance(got["kernels"], int) and got["sink_units"] == 0
        assert math.isnan(got["val_accuracy"]) and math.isnan(got["val_loss"])
