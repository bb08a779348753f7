"""The topo-pai command end to end: prune, analyze, a tiny training sweep, plot; and its errors."""

import json

import pytest
import torch

import topo_pai
from topo_pai.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_then_analyze(tmp_path, capsys):
    masks = tmp_path / "m.pt"
    code, out, _ = run(capsys, "prune", "resnet20", "synflow", "99", "--out", str(masks),
                       "--model-arg", "width=4", "--option", "rounds=10")
    assert code == 0 and "totals (channel resolution)" in out
    loaded = topo_pai.load_masks(masks)
    kept = sum(int(m.sum()) for m in loaded.values())
    assert kept == round(0.01 * sum(m.numel() for m in loaded.values()))
    code, out, _ = run(capsys, "analyze", "resnet20", "--model-arg", "width=4", "--masks",
                       str(masks), "--json", "--resolution", "both")
    report = json.loads(out)
    torch.manual_seed(0)
    model = topo_pai.models.get_model("resnet20", width=4)
    topo = topo_pai.from_torch(model, loaded, input_shape=(3, 32, 32))
    for res in ("channel", "neuron"):
        t = report[res]["totals"]
        assert t["log10_paths"] == pytest.approx(topo.count_paths(res).log10)
        assert t["effective_params"] == topo.effective_params(res)
        assert t["effective_flops"] == topo.effective_flops(res)
        assert len(report[res]["rows"]) == len(topo.layers) + 1


def test_prune_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "m.npz"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        main(["prune", "lenet_300_100", "random", "0.9", "--out", str(out), "--input-shape",
              "1,28,28"])
    assert out.read_bytes() == b"keep me"


def test_data_methods_need_a_dataset(tmp_path):
    with pytest.raises(SystemExit, match="--dataset"):
        main(["prune", "lenet5", "snip", "0.9", "--out", str(tmp_path / "m.pt")])


def test_masks_that_do_not_fit_the_model(tmp_path, capsys):
    masks = tmp_path / "m.pt"
    assert main(["prune", "lenet5", "random", "0.5", "--out", str(masks), "--input-shape",
                 "1,28,28"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "analyze", "lenet_300_100", "--masks", str(masks),
                       "--input-shape", "1,28,28")
    assert code == 2 and "MaskError" in err and "conv1.weight" in err
    code, _, err = run(capsys, "analyze", "lenet5", "--masks", str(masks), "--input-shape",
                       "1,28,28", "--model-arg", "width=2")
    assert code == 2 and "shape" in err


@pytest.mark.parametrize("argv, match", [
    (["analyze", "lenet6"], "unknown model"),
    (["prune", "lenet5", "snipp", "0.5", "--out", "x.pt"], "snipp"),
    (["analyze", "lenet5", "--dataset", "cifar10"], "unknown dataset"),
])
def test_unknown_names(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and match in err


def test_tiny_sweep_with_training_then_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--models", "lenet_300_100", "--dataset", "synthetic", "--methods",
            "random,synflow", "--shuffled", "synflow", "--sparsities", "0.5,99", "--seeds", "0",
            "--epochs", "1", "--batch-size", "32", "--train-limit", "256", "--test-limit",
            "128", "--out", str(out), "--quiet"]
    code, text, _ = run(capsys, *argv)
    assert code == 0 and "6 to run" in text
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 6 and all(r["accuracy"] is not None for r in rows)
    assert {r["sparsity"] for r in rows} == {0.5, 0.99}
    epochs = [json.loads(x) for x in (out / "epochs.jsonl").read_text().splitlines()]
    assert sorted(e["trial_id"] for e in epochs) == sorted(r["trial_id"] for r in rows)
    for e in epochs:
        row = next(r for r in rows if r["trial_id"] == e["trial_id"])
        assert [h["epoch"] for h in e["history"]] == [1]
        assert e["history"][-1]["test_acc"] == row["accuracy"]
    code, text, _ = run(capsys, *argv)  # resumed: nothing left to do
    assert "6 already in" in text and "0 to run" in text
    bigger = [a if a != "0" else "0,1" for a in argv]
    code, _, err = run(capsys, *bigger)
    assert code == 2 and "different configuration" in err
    code, text, _ = run(capsys, "plot", str(out))
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert code == 0 and names == {"node_path_plane.png", "accuracy_vs_sparsity.png",
                                   "shuffled_vs_original.png"}
    assert all((out / "figures" / n).stat().st_size > 10_000 for n in names)


def test_console_script_is_installed():
    from importlib.metadata import entry_points
    eps = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert eps.get("topo-pai") == "topo_pai.cli:main"
