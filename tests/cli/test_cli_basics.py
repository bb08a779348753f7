"""CLI basics (issue 15, item 5): --version, python -m topo_pai, progress and --quiet,
the methods/models tables, did-you-mean, plot of a topology-only sweep, shuffle from
the CLI, and the Python 3.10 TOML fallback."""

import logging
import os
import subprocess
import sys
import tomllib

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.cli import main  # noqa: E402


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_and_module_entry_point(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"topo-pai {topo_pai.__version__}"
    proc = subprocess.run([sys.executable, "-m", "topo_pai", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"topo-pai {topo_pai.__version__}"


def test_did_you_mean_everywhere(capsys):
    code, _, err = run(capsys, "analyse", "lenet5")
    assert code == 2 and "unknown command 'analyse'. Did you mean 'analyze'?" in err
    code, _, err = run(capsys, "prune", "lenet5", "synflw", "0.5", "--out", "x.pt")
    assert code == 2 and "Did you mean 'synflow'?" in err
    code, _, err = run(capsys, "prune", "lenet5", "synflow", "0.5", "--out", "x.pt", "--option",
                       "round=3")
    assert code == 2 and "Did you mean 'rounds'?" in err
    code, _, err = run(capsys, "analyze", "lenet-55")
    assert code == 2 and "Did you mean 'lenet5'?" in err
    from topo_pai.experiments.sweep import SweepConfig
    with pytest.raises(ValueError, match="Did you mean 'sparsities'"):
        SweepConfig.from_dict({"models": ["lenet5"], "sparsity": [0.5]})
    with pytest.raises(ValueError, match="Did you mean 'fashion-mnist'"):
        SweepConfig(models=("lenet5",), dataset="fashion-mnst").validate_names()


def test_methods_and_models_tables(capsys):
    code, out, _ = run(capsys, "methods")
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert code == 0 and set(lines) == set(topo_pai.available_methods())
    assert "--dataset" in lines["snip"] and "--masks" in lines["shuffle"]
    assert "rounds=100" in lines["synflow"] and "data" not in lines["magnitude"].split()[2]
    code, out, _ = run(capsys, "models")
    rows = {line.split()[0]: line for line in out.splitlines()[2:15]}
    assert "width" in rows["conv4"] and "batch_norm" in rows["vgg16"]
    assert "path/to/file.py:callable" in out


def test_prune_progress_and_quiet(tmp_path, capsys, caplog):
    argv = ["prune", "lenet_300_100", "synflow", "0.9", "--input-shape", "1,8,8", "--model-arg",
            "width=0.1", "--option", "rounds=4", "--option", "resolution=channel"]
    with caplog.at_level(logging.INFO, logger="topo_pai.prune"):
        code, _, err = run(capsys, *argv, "--out", tmp_path / "a.pt")
    assert code == 0 and "topo-pai: pruned in" in err
    rounds = [r for r in caplog.records if hasattr(r, "round")]
    assert [(r.round, r.rounds) for r in rounds] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "round 4/4" in rounds[-1].getMessage()
    code, out, err = run(capsys, *argv, "--out", tmp_path / "b.pt", "--quiet")
    assert code == 0 and err == "" and "totals" in out
    a, b = topo_pai.load_masks(tmp_path / "a.pt"), topo_pai.load_masks(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shuffle_from_the_cli(tmp_path, capsys):
    base = ["lenet5", "--input-shape", "1,12,12"]
    assert run(capsys, "prune", *base, "random", "0.8", "--out", tmp_path / "r.pt")[0] == 0
    code, _, err = run(capsys, "prune", *base, "shuffle", "0.8", "--masks", tmp_path / "r.pt",
                       "--out", tmp_path / "s.pt", "--seed", "3")
    assert code == 0, err
    r, s = topo_pai.load_masks(tmp_path / "r.pt"), topo_pai.load_masks(tmp_path / "s.pt")
    assert all(int(r[k].sum()) == int(s[k].sum()) for k in r)  # kept per layer
    assert any(not torch.equal(r[k], s[k]) for k in r)  # positions moved
    code, _, err = run(capsys, "prune", *base, "shuffle", "0.8", "--out", tmp_path / "t.pt")
    assert code == 2 and "pass them with --masks" in err
    code, _, err = run(capsys, "prune", *base, "magnitude", "0.8", "--masks", tmp_path / "r.pt",
                       "--out", tmp_path / "t.pt")
    assert code == 2 and "--masks is for methods that rework given masks" in err
    code, _, err = run(capsys, "prune", *base, "shuffle", "0.5", "--masks", tmp_path / "r.pt",
                       "--out", tmp_path / "t.pt")
    assert code == 2 and "the masks given to 'shuffle' keep" in err
    assert "prune at the masks' sparsity, 0.8" in err and "option" not in err


def test_plot_of_a_topology_only_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run(capsys, "sweep", "--models", "lenet_300_100", "--dataset", "synthetic",
                       "--methods", "random,magnitude", "--sparsities", "0.5,0.9", "--out", out,
                       "--quiet")
    assert code == 0, err
    code, text, err = run(capsys, "plot", out)
    assert code == 0, err
    written = sorted(p.name for p in (out / "figures").iterdir())
    assert written == ["node_path_plane.png"] and "node_path_plane.png" in text


def test_toml_without_tomllib(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: the configuration is read with tomli (the same parser,
    stood in here by tomllib under tomli's name); without either, the error says what to
    install."""
    from topo_pai.experiments.sweep import SweepConfig

    path = tmp_path / "s.toml"
    path.write_text('models = ["lenet5"]\nsparsities = [0.5]\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib now fails
    monkeypatch.setitem(sys.modules, "tomli", tomllib)
    assert SweepConfig.from_file(path).models == ("lenet5",)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ModuleNotFoundError, match="pip install tomli"):
        SweepConfig.from_file(path)


# ---------------------------------------------------------------------------
# Found by the review of the docs against the command line
# ---------------------------------------------------------------------------


def test_argparse_errors_are_one_line_and_a_mistyped_flag_gets_a_suggestion(capsys):
    code, _, err = run(capsys, "analyze", "lenet_300_100", "--maks", "m.pt")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("topo-pai analyze: error: unrecognized argument(s): --maks m.pt.")
    assert "Did you mean '--masks'?" in err
    code, _, err = run(capsys, "prune", "lenet_300_100", "synflow", "99", "--out", "x.pt")
    assert code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("topo-pai prune: error: argument sparsity:")


def test_option_and_model_arg_values_may_be_written_as_python_shows_them(tmp_path, capsys):
    """`topo-pai methods` shows repair=True and K=None: those spellings are accepted, and
    batch_norm=False builds a VGG without BatchNorm (the string 'False' was true)."""
    code, _, err = run(capsys, "prune", "lenet_300_100", "npb", "0.9", "--input-shape",
                       "1,28,28", "--option", "repair=False", "--option", "K=None",
                       "--option", "tau=None", "--out", tmp_path / "n.pt", "--quiet")
    assert code == 0, err
    code, _, err = run(capsys, "prune", "vgg11", "random", "0.5", "--model-arg",
                       "batch_norm=False", "--out", tmp_path / "v.pt", "--quiet")
    assert code == 0, err
    assert "features.3.weight" in topo_pai.load_masks(tmp_path / "v.pt")  # conv, no BN at 1
    with pytest.raises(ValueError, match="batch_norm must be True or False, got 'no'"):
        topo_pai.models.get_model("vgg11", batch_norm="no")


def test_masks_from_zeros_without_masks_is_refused_by_prune(tmp_path, capsys):
    code, _, err = run(capsys, "prune", "lenet_300_100", "random", "0.5", "--input-shape",
                       "1,28,28", "--masks-from-zeros", "--out", tmp_path / "r.pt")
    assert code == 2 and "--masks-from-zeros needs --masks FILE" in err


def test_synthetic_data_take_the_input_shape_and_classes(tmp_path, capsys):
    code, _, err = run(capsys, "prune", "resnet20", "snip", "0.9", "--dataset", "synthetic",
                       "--input-shape", "3,16,16", "--num-classes", "5", "--prune-samples",
                       "16", "--out", tmp_path / "s.pt", "--quiet")
    assert code == 0, err
    masks = topo_pai.load_masks(tmp_path / "s.pt")
    assert masks["conv1.weight"].shape[1] == 3 and masks["fc.weight"].shape[0] == 5


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    code, _, err = run(capsys, "plot", tmp_path)
    assert code == 2 and "pip install 'topo_pai[plot]'" in err


def test_a_dask_sweep_without_dask_writes_nothing(tmp_path, monkeypatch):
    from topo_pai.experiments.config import SweepConfig
    from topo_pai.experiments.sweep import run_sweep

    monkeypatch.setitem(sys.modules, "distributed", None)
    cfg = SweepConfig(models=["lenet_300_100"], dataset="synthetic", methods=["random"],
                      sparsities=[0.5])
    with pytest.raises(ImportError, match="pip install 'topo_pai\\[distributed\\]'"):
        run_sweep(cfg, tmp_path / "sweep", engine="dask")
    assert not (tmp_path / "sweep").exists()
