"""topo_pai.experiments.plotting: the drawn data equal the aggregated records; bad input fails clearly."""

import csv
import json
import math

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from topo_pai.experiments import plotting as P  # noqa: E402

INF = float("-inf")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def row(method, sparsity, seed, nodes, paths, acc=None, shuffled=False, n_nodes=100,
        model="net"):
    return dict(trial_id=f"{model}/{method}{'+shuffle' if shuffled else ''}/s{sparsity}/seed{seed}",
                model=model, dataset="synthetic", method=method, shuffled=shuffled,
                sparsity=sparsity, seed=seed, effective_nodes=nodes, n_nodes=n_nodes,
                log10_paths=paths, effective_params=10, unpruned_params=12, total_params=100,
                flops=1000, accuracy=acc)


def panels(fig):
    return [a for a in fig.axes if a.get_label() == "node-path plane"]


def scatter(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def no_path_lines(ax):
    return [ln for ln in ax.lines if ln.get_gid() == "no-path"]


@pytest.fixture
def records():
    # two seeds per point so that means and standard deviations are exercised
    return [
        row("synflow", 0.9, 0, 50, 30.0, 0.80), row("synflow", 0.9, 1, 70, 34.0, 0.84),
        row("random", 0.9, 0, 90, 20.0, 0.70), row("random", 0.9, 1, 80, 22.0, 0.74),
        row("random", 0.9, 0, 95, 18.0, 0.72, shuffled=True),
        row("random", 0.9, 1, 97, 19.0, 0.78, shuffled=True),
        row("synflow", 0.99, 0, 20, 12.0, 0.60), row("synflow", 0.99, 1, 30, 14.0, 0.64),
        row("random", 0.99, 0, 0, INF, 0.10), row("random", 0.99, 1, 0, INF, 0.10),
        row("random", 0.99, 0, 40, 5.0, 0.50, shuffled=True),
        row("random", 0.99, 1, 0, INF, 0.10, shuffled=True),
    ]


# ------------------------------------------------------------------ node-path plane
def test_plane_single_sparsity_positions_are_seed_means(records):
    fig = P.plot_node_path_plane(records, sparsity=0.9)
    (ax,) = panels(fig)
    sf = scatter(ax, "synflow").get_offsets()
    np.testing.assert_allclose(sf, [[(math.log(50) + math.log(70)) / 2, 32.0]])
    rs = scatter(ax, "random (shuffled)").get_offsets()
    np.testing.assert_allclose(rs, [[(math.log(95) + math.log(97)) / 2, 18.5]])
    # filled by the mean accuracy, with a colour bar
    np.testing.assert_allclose(scatter(ax, "synflow").get_array(), [0.82])
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    texts = {t.get_text() for t in ax.texts}
    assert "82.0" in texts and "75.0 (shuffled)" in texts
    assert ax.get_xlabel() == "ln(effective nodes)"
    assert ax.get_ylabel() == "log10(effective paths)"


def test_plane_colour_scale_spans_drawn_bubbles(records):
    fig = P.plot_node_path_plane(records)
    (cbar,) = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    # random at 99 % has no path (accuracy 10 %): not part of the scale
    lo, hi = cbar.get_ylim()
    assert lo == pytest.approx(0.30) and hi == pytest.approx(0.82)


def test_plane_bubbles_sized_by_accuracy(records):
    ax = panels(P.plot_node_path_plane(records, sparsity=0.9))[0]
    sizes = {lab: scatter(ax, lab).get_sizes()[0] for lab in ("synflow", "random")}
    assert sizes["synflow"] > sizes["random"]  # 82 % > 72 %


def test_plane_one_panel_per_sparsity(records):
    fig = P.plot_node_path_plane(records)
    axes = panels(fig)
    assert len(axes) == 2
    assert ["90%" in axes[0].get_title(), "99%" in axes[1].get_title()] == [True, True]
    # five sparsities: a 2x3 grid whose spare cell holds the legend
    more = [dict(r, sparsity=s) for s in (0.5, 0.6, 0.7, 0.8, 0.9) for r in records
            if r["sparsity"] == 0.9]
    fig = P.plot_node_path_plane(more)
    assert len(panels(fig)) == 5
    (spare,) = [a for a in fig.axes if a.get_label() == "<legend>"]
    assert [t.get_text() for t in spare.get_legend().get_texts()] == [
        "random", "random (shuffled)", "synflow"]


def test_plane_coinciding_points_share_one_label():
    rows = [row("phew", 0.9, 0, 100, 20.0), row("npb", 0.9, 0, 100, 20.0),
            row("random", 0.9, 0, 50, 10.0)]
    ax = panels(P.plot_node_path_plane(rows))[0]
    assert sorted(t.get_text() for t in ax.texts) == ["phew, npb", "random"]  # plotting order


def test_plane_no_path_is_marked_not_dropped(records):
    fig = P.plot_node_path_plane(records, sparsity=0.99)
    ax = panels(fig)[0]
    labels = [c.get_label() for c in ax.collections]
    assert "random" not in labels  # no position: every seed lost its paths
    marks = no_path_lines(ax)
    assert [m.get_label() for m in marks] == ["no path: random"]
    assert marks[0].get_marker() == "v"
    # a partial collapse: the mean of the seed with a path, and the count in the text
    np.testing.assert_allclose(scatter(ax, "random (shuffled)").get_offsets(),
                               [[math.log(40), 5.0]])
    assert any("1/2 no path" in t.get_text() for t in ax.texts)
    # the band below the data is kept free for the markers
    assert ax.get_ylim()[0] < 5.0


def test_plane_without_accuracy_colours_by_method(records):
    rows = [dict(r, accuracy=None) for r in records]
    fig = P.plot_node_path_plane(rows, sparsity=0.9, annotate=True)
    assert not any(a.get_label() == "<colorbar>" for a in fig.axes)
    ax = panels(fig)[0]
    color, _ = P.method_style("synflow", ["synflow", "random"])
    np.testing.assert_allclose(scatter(ax, "synflow").get_facecolor()[0],
                               mpl.colors.to_rgba(color))
    assert scatter(ax, "random (shuffled)").get_facecolor().size == 0  # hollow
    assert {"synflow", "random", "random (shuffled)"} <= {t.get_text() for t in ax.texts}


def test_plane_into_given_axes(records):
    fig, ax = plt.subplots()
    assert P.plot_node_path_plane(records, ax=ax, sparsity=0.99, color="method") is fig
    with pytest.raises(ValueError, match="sparsity="):
        P.plot_node_path_plane(records, ax=ax)


def test_plane_bad_arguments(records):
    with pytest.raises(ValueError, match="no record has sparsity"):
        P.plot_node_path_plane(records, sparsity=0.5)
    with pytest.raises(ValueError, match="fraction"):
        P.plot_node_path_plane(records, sparsity=99)
    with pytest.raises(ValueError, match="color"):
        P.plot_node_path_plane(records, color="size")


# ------------------------------------------------------------ accuracy vs sparsity
def test_accuracy_vs_sparsity_error_bars(records):
    fig = P.plot_accuracy_vs_sparsity(records, dodge=False)
    (ax,) = fig.axes
    conts = {c.get_label(): c for c in ax.containers}
    assert set(conts) == {"synflow", "random", "random (shuffled)"}
    line, _, (bars,) = conts["synflow"]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [0.1, 0.01])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), [82.0, 62.0])
    half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
    sd = np.std([0.80, 0.84], ddof=1) * 100
    np.testing.assert_allclose(half, [sd, np.std([0.60, 0.64], ddof=1) * 100])
    assert conts["random (shuffled)"][0].get_linestyle() == "--"
    assert line.get_linestyle() == "-"
    # sparsity grows to the right on a log-density axis ticked at the sparsities
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert lo > hi
    assert [t.get_text() for t in ax.get_xticklabels()] == ["90%", "99%"]


def test_accuracy_vs_sparsity_dodge_shifts_lines(records):
    ax = P.plot_accuracy_vs_sparsity(records).axes[0]
    xs = [c[0].get_xdata()[0] for c in ax.containers]
    assert len(set(np.round(xs, 9))) == 3
    np.testing.assert_allclose(xs, 0.1, rtol=0.05)


def test_accuracy_vs_sparsity_needs_accuracy(records):
    with pytest.raises(ValueError, match="did not train"):
        P.plot_accuracy_vs_sparsity([dict(r, accuracy=float("nan")) for r in records])


# ------------------------------------------------------------------ shuffle study
def test_shuffle_comparison_panels(records):
    fig = P.plot_shuffle_comparison(records)
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["accuracy (%)", "effective node ratio",
                                             "log10(effective paths)"]
    ratio = {ln.get_label(): ln for ln in axes[1].lines if not ln.get_gid()}
    assert set(ratio) == {"random", "random (shuffled)"}  # synflow has no shuffled variant
    np.testing.assert_allclose(ratio["random (shuffled)"].get_ydata(), [0.96, 0.2])
    paths = {ln.get_label(): ln for ln in axes[2].lines if not ln.get_gid()}
    ys = paths["random"].get_ydata()
    assert ys[0] == 21.0 and np.isnan(ys[1])  # the gap where no seed keeps a path
    assert len(no_path_lines(axes[2])) == 1


def test_shuffle_comparison_needs_shuffled(records):
    with pytest.raises(ValueError, match="shuffled=True"):
        P.plot_shuffle_comparison([r for r in records if not r["shuffled"]])


# ------------------------------------------------------------------ curves
def test_node_path_curves_plane_and_panels(records):
    fig = P.plot_node_path_curves(records, layout="both")
    plane, nodes_ax, paths_ax = fig.axes
    lines = {ln.get_label(): ln for ln in plane.lines if not ln.get_gid()}
    np.testing.assert_allclose(lines["synflow"].get_xdata(),
                               [np.mean(np.log([50, 70])), np.mean(np.log([20, 30]))])
    np.testing.assert_allclose(lines["synflow"].get_ydata(), [32.0, 13.0])
    assert len(lines["random"].get_xdata()) == 1  # 99 % has no path
    assert [m.get_label() for m in no_path_lines(plane)] == ["no path: random @ 99%"]
    # several sparsities without a path: one marker naming them all
    more = records + [row("random", 0.999, seed, 0, INF) for seed in (0, 1)]
    plane = P.plot_node_path_curves(more).axes[0]
    assert [m.get_label() for m in no_path_lines(plane)] == ["no path: random @ 99%, 99.9%"]
    nl = {ln.get_label(): ln for ln in nodes_ax.lines if not ln.get_gid()}
    np.testing.assert_allclose(nl["random (shuffled)"].get_ydata(),
                               [np.mean(np.log([95, 97])), math.log(40)])
    assert nl["random (shuffled)"].get_linestyle() == "--"
    assert paths_ax.get_ylabel() == "log10(effective paths)"
    assert len(P.plot_node_path_curves(records, layout="panels").axes) == 2
    assert len(P.plot_node_path_curves(records).axes) == 1


def test_node_path_curves_bad_layout(records):
    with pytest.raises(ValueError, match="layout"):
        P.plot_node_path_curves(records, layout="grid")
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax="):
        P.plot_node_path_curves(records, layout="both", ax=ax)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("fn", [P.plot_node_path_plane, P.plot_node_path_curves,
                                P.plot_accuracy_vs_sparsity, P.plot_shuffle_comparison])
def test_empty_records(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([])


def test_missing_columns_are_named(records):
    rows = [{k: v for k, v in r.items() if k not in ("log10_paths", "effective_nodes")}
            for r in records]
    with pytest.raises(ValueError, match="effective_nodes, log10_paths"):
        P.plot_node_path_plane(rows)
    with pytest.raises(ValueError, match="n_nodes"):
        P.plot_shuffle_comparison([{k: v for k, v in r.items() if k != "n_nodes"}
                                   for r in records])
    with pytest.raises(ValueError, match="accuracy"):
        P.plot_accuracy_vs_sparsity([{k: v for k, v in r.items() if k != "accuracy"}
                                     for r in records])


def test_not_records():
    with pytest.raises(TypeError, match="list of dicts"):
        P.plot_node_path_plane({"method": "x"})
    with pytest.raises(TypeError, match="dicts"):
        P.plot_node_path_plane([("x", 1)])
    with pytest.raises(ValueError, match="shuffled"):
        P.plot_node_path_plane([dict(row("a", 0.9, 0, 5, 2.0), shuffled="maybe")])


def test_several_models_need_a_choice(records):
    other = [dict(r, model="other", effective_nodes=3) for r in records]
    with pytest.raises(ValueError, match="several models"):
        P.plot_node_path_plane(records + other, sparsity=0.9)
    ax = panels(P.plot_node_path_plane(records + other, sparsity=0.9, model="other"))[0]
    np.testing.assert_allclose(scatter(ax, "synflow").get_offsets()[0][0], math.log(3))
    with pytest.raises(ValueError, match="no record has model"):
        P.plot_node_path_plane(records, model="nope")


# ------------------------------------------------------------------ files
def _write_csv(path, rows):
    cols = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:  # the sweep's convention: None as an empty cell
            w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})


def test_load_results_csv_round_trip(tmp_path, records):
    rows = records + [row("npb", 0.9, 0, 60, 25.0, None)]
    _write_csv(tmp_path / "results.csv", rows)
    back = P.load_results(tmp_path / "results.csv")
    assert len(back) == len(rows)
    for a, b in zip(back, rows):
        assert a["shuffled"] is b["shuffled"]
        assert isinstance(a["seed"], int) and isinstance(a["effective_nodes"], int)
        assert a["log10_paths"] == b["log10_paths"]  # -inf included
        assert a["sparsity"] == b["sparsity"]
    assert math.isnan(back[-1]["accuracy"])
    # a directory resolves to its results file
    assert json.dumps(P.load_results(tmp_path)) == json.dumps(back)


def test_load_results_json_variants(tmp_path, records):
    as_strings = [{k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in r.items()} for r in records]
    (tmp_path / "a.json").write_text(json.dumps(as_strings))
    (tmp_path / "b.json").write_text(json.dumps({"results": records}))  # -Infinity literal
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for name in ("a.json", "b.json", "c.jsonl"):
        back = P.load_results(tmp_path / name)
        assert [r["log10_paths"] for r in back] == [r["log10_paths"] for r in records]
        assert [r["shuffled"] for r in back] == [r["shuffled"] for r in records]


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        P.load_results(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="results"):
        P.load_results(tmp_path)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=r"\.csv"):
        P.load_results(tmp_path / "x.txt")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="list"):
        P.load_results(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("method,seed\nx,abc\n")
    with pytest.raises(ValueError, match="seed"):
        P.load_results(tmp_path / "bad.csv")


def test_plot_from_path_and_save_png(tmp_path, records):
    _write_csv(tmp_path / "results.csv", records)
    for i, fig in enumerate([P.plot_node_path_plane(tmp_path / "results.csv"),
                             P.plot_accuracy_vs_sparsity(str(tmp_path)),
                             P.plot_shuffle_comparison(records),
                             P.plot_node_path_curves(records, layout="both")]):
        out = tmp_path / f"fig{i}.png"
        fig.savefig(out, dpi=60)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_records_not_mutated(records):
    before = json.dumps(records)
    P.plot_node_path_plane(records)
    P.plot_shuffle_comparison(records)
    assert json.dumps(records) == before


def test_load_results_skips_a_jsonl_line_cut_short_by_a_kill(tmp_path):
    """A sweep killed while appending leaves its last line cut short; the sweep itself
    skips it (the trial runs again), and so does load_results, with a warning. A bad line
    elsewhere is an error naming the file and the line."""
    rows = [row("random", 0.9, s, 10 + s, 2.0) for s in range(2)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    p = tmp_path / "results.jsonl"
    p.write_text(text + json.dumps(rows[0])[:25])
    with pytest.warns(UserWarning, match="line 3 is cut short"):
        got = P.load_results(p)
    assert [r["seed"] for r in got] == [0, 1] and got[1]["effective_nodes"] == 11
    p.write_text("not json\n" + text)
    with pytest.raises(ValueError, match="results.jsonl', line 1: not JSON"):
        P.load_results(p)
    p.write_text(text + "[1, 2]\n")
    with pytest.raises(ValueError, match="line 3: expected a row object"):
        P.load_results(p)


def test_aggregate_refuses_rows_of_two_models_or_a_seed_twice():
    """Both were pooled: a mean over two networks, a seed counted twice."""
    from topo_pai.experiments.aggregation import aggregate
    rows = [{"model": m, "method": "snip", "sparsity": 0.9, "seed": s, "accuracy": a,
             "effective_nodes": 5, "log10_paths": 1.0}
            for m, s, a in [("lenet5", 0, 0.6), ("lenet5", 1, 0.8), ("lenet_300_100", 0, 0.1)]]
    with pytest.raises(ValueError, match="several models .*add 'model' to by="):
        aggregate(rows)
    assert [g["n_seeds"] for g in aggregate(rows, by=("model", "method", "sparsity"))] == [2, 1]
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\] more than once"):
        aggregate(rows[:2] + [dict(rows[0])])
