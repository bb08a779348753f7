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
    code, out, _ = run(capsys, "prune", "resnet20", "synflow", "99%", "--out", str(masks),
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
    code, _, err = run(capsys, "prune", "lenet_300_100", "random", "0.9", "--out", str(out),
                       "--input-shape", "1,28,28")
    assert code == 2 and "refusing to overwrite" in err
    assert out.read_bytes() == b"keep me"


def test_data_methods_need_a_dataset(tmp_path, capsys):
    code, _, err = run(capsys, "prune", "lenet5", "snip", "0.9", "--out", str(tmp_path / "m.pt"))
    assert code == 2 and "--dataset" in err


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
            "random,synflow", "--shuffled", "synflow", "--sparsities", "0.5,99%", "--seeds", "0",
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


# ------------------------------------------------------------------ issue 12: the CLI's edges
@pytest.mark.parametrize("text, value", [("0.9", 0.9), ("90%", 0.9), ("99.68%", 0.9968),
                                         ("0%", 0.0), ("0", 0.0), (" 0.5 ", 0.5)])
def test_sparsity_as_fraction_or_percentage(text, value):
    from topo_pai.cli_args import parse_sparsity
    assert parse_sparsity(text) == pytest.approx(value, abs=0, rel=1e-15)


@pytest.mark.parametrize("argv, match", [
    (["analyze", "lenet5", "--input-shape", "1,,28"], "got '1,,28'"),
    (["analyze", "lenet5", "--input-shape", "1x28x28x"], "got '1x28x28x'"),
    (["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.5,,0.9",
      "--out", "{tmp}/s"], "'0.5,,0.9' has an empty field"),
    (["sweep", "--models", "lenet5,", "--methods", "random", "--sparsities", "0.5",
      "--out", "{tmp}/s"], "'lenet5,' has an empty field"),
])
def test_empty_fields_of_lists_are_refused(argv, match, tmp_path, capsys):
    """They were dropped: 1,,28 read as the shape (1, 28), 0.5,,0.9 as two sparsities."""
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text, hint", [
    ("1", "1%"), ("1.0", "1%"), ("99", "99%"), ("100%", "100%)"), ("-0.1", "0.9 or 90%"),
    ("nan", "0.9 or 90%"), ("inf", "0.9 or 90%"), ("150%", "[0%, 100%)"), ("abc", "90%"),
])
def test_bare_sparsities_of_one_or_more_are_refused_with_a_hint(text, hint, tmp_path, capsys):
    """'1' and '1.0' used to be read as 1 %."""
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "lenet_300_100", "random", text, "--input-shape", "1,28,28", "--out",
              str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and hint in err and "Traceback" not in err
    assert not out.exists()


def _boom(*args, **kwargs):
    raise AssertionError("work started before the command line was checked")


@pytest.mark.parametrize("argv, match", [
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}/missing/m.pt"], "does not exist"),
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}"], "is a directory"),
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}/m.txt"], ".pt"),
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}/file/m.pt"], "not a directory"),
    (["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.9", "--out",
      "{tmp}/file"], "is a file"),
    (["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.9", "--out",
      "{tmp}/file/sub"], "is a file"),
    (["plot", "{tmp}/nothing"], "does not exist"),
    (["plot", "{tmp}/results.json", "--out", "{tmp}/file"], "is a file"),
    (["analyze", "lenet5", "--masks", "{tmp}/missing.pt"], "does not exist"),
])
def test_output_and_input_paths_are_checked_before_any_work(argv, match, tmp_path, capsys,
                                                            monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "results.json").write_text("[]")
    import topo_pai.cli as cli
    from topo_pai.experiments import sweep
    from topo_pai.experiments import plotting
    monkeypatch.setattr(cli, "_model_and_shape", _boom)
    monkeypatch.setattr(sweep, "run_sweep", _boom)
    monkeypatch.setattr(sweep, "pending_trials", _boom)
    monkeypatch.setattr(plotting, "load_results", _boom)
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and match in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["synflow", "--option", "rounds=0"], "method 'synflow': rounds must be an int >= 1, got 0"),
    (["npb", "--option", "alpha=2"], "method 'npb': NPB option alpha"),
    (["phew", "--option", "element=smallest"], "method 'phew': element must be one of"),
    (["snip", "--dataset", "synthetic", "--option", "max_batches=0"], "max_batches must be"),
])
def test_prune_option_values_are_refused_before_the_model_and_data(argv, match, tmp_path,
                                                                   capsys, monkeypatch):
    """They were refused only once the model was built and the data loaded (npb and phew
    only mid-run); now first, by the method's options dataclass (check_options)."""
    import topo_pai.cli as cli
    monkeypatch.setattr(cli, "_model_and_shape", _boom)
    code, _, err = run(capsys, "prune", "lenet5", argv[0], "0.9", "--out",
                       str(tmp_path / "m.pt"), *argv[1:])
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_prune_refuses_a_shape_that_does_not_fit_before_writing_the_masks(method, tmp_path,
                                                                          capsys):
    """Methods that never trace the model wrote the masks file, then failed on the table."""
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Sequential("
                                     "torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, "prune", f"{tmp_path}/net.py:build", method, "0.5",
                       "--input-shape", "3,32,32", "--out", str(out), "--quiet")
    assert code == 2 and "does not fit the model" in err and "Traceback" not in err, err
    assert not out.exists()


def test_prune_option_exclude_still_reaches_prune(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, "prune", "lenet5", "magnitude", "0.5", "--out", str(out),
                       "--option", 'exclude=["conv1"]', "--quiet")
    assert code == 0, err
    assert bool(topo_pai.load_masks(out)["conv1.weight"].all())


@pytest.mark.parametrize("argv, match", [
    (["analyze", "lenet5", "--model-arg", "depth=3"], "depth"),
    (["analyze", "lenet5", "--model-arg", "width"], "KEY=VALUE"),
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}/m.pt", "--option", "allocation=erk",
      "--option", "erk_power=-1"], "erk_power"),
    (["prune", "lenet5", "synflow", "0.9", "--out", "{tmp}/m.pt", "--option", "rounds=0"],
     "rounds"),
    (["prune", "lenet5", "grasp", "0.9", "--dataset", "synthetic", "--out", "{tmp}/m.pt",
      "--option", "temperature=0"], "temperature"),
    (["sweep", "--config", "{tmp}/bad.toml", "--out", "{tmp}/s"], "bad.toml"),
    (["sweep", "--config", "{tmp}/ok.toml", "--epochs", "3", "--out", "{tmp}/s"],
     "drop --epochs"),
    (["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.9",
      "--epochs", "1", "--lr", "-1", "--out", "{tmp}/s"], "lr"),
    (["sweep", "--models", "lenet5", "--out", "{tmp}/s"], "--sparsities"),
    (["plot", "{tmp}/results.json"], "results"),
])
def test_user_mistakes_print_one_line_and_exit_2(argv, match, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.toml").write_text("models = [\n")
    (tmp_path / "ok.toml").write_text('models = ["lenet5"]\nsparsities = [0.9]\n')
    (tmp_path / "results.json").write_text('{"no": "rows"}')
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and match in err and "Traceback" not in err, err
    assert err.startswith("topo-pai: error: ")
    monkeypatch.setenv("TOPO_PAI_DEBUG", "1")  # the traceback, for a bug report
    with pytest.raises(Exception):  # noqa: B017
        main([a.format(tmp=tmp_path) for a in argv])


def test_internal_errors_exit_1_without_a_traceback(capsys, monkeypatch):
    import topo_pai.cli as cli

    def broken(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "cmd_models", broken)
    code, _, err = run(capsys, "models")
    assert code == 1 and "internal error: RuntimeError: a bug" in err
    assert "Traceback" not in err and "TOPO_PAI_DEBUG=1" in err
    monkeypatch.setenv("TOPO_PAI_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["models"])


def test_help_documents_debugging_exit_codes_and_the_lock(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "TOPO_PAI_DEBUG=1" in text and "exit status" in text
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sweep.lock" in text and "second sweep on the same --out is refused" in text
    assert "TOPO_PAI_DEBUG=1" in text


def test_analyze_json_is_strict_and_writes_no_path_as_in_results_json(tmp_path, capsys):
    from topo_pai.experiments.store import _json_safe

    torch.manual_seed(0)
    model = topo_pai.models.get_model("lenet_300_100", in_channels=1, input_size=28)
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in model.state_dict().items()
             if k.endswith("weight")}
    masks["fc2.weight"][:] = False  # no path survives
    topo_pai.save_masks(masks, tmp_path / "m.npz")
    code, out, _ = run(capsys, "analyze", "lenet_300_100", "--input-shape", "1,28,28",
                       "--masks", str(tmp_path / "m.npz"), "--json", "--resolution", "both")

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    report = json.loads(out, parse_constant=refuse)  # -Infinity / NaN would raise
    for res in ("channel", "neuron"):
        assert report[res]["totals"]["log10_paths"] == _json_safe(float("-inf")) == "-inf"
        assert float(report[res]["totals"]["log10_paths"]) == float("-inf")
        assert report[res]["totals"]["effective_params"] == 0


def test_sweep_cli_refuses_a_directory_in_use_and_accepts_a_reordered_grid(tmp_path, capsys):
    from topo_pai.cli import _sweep_config, build_parser
    from topo_pai.experiments.sweep import ResultsStore

    out = tmp_path / "s"
    argv = ["sweep", "--models", "lenet_300_100", "--dataset", "synthetic", "--methods",
            "random", "--sparsities", "0.5,90%", "--seeds", "0,1", "--out", str(out), "--quiet"]
    with ResultsStore(out, _sweep_config(build_parser().parse_args(argv))):
        code, _, err = run(capsys, *argv)
    assert code == 2 and "another sweep is running" in err and "Traceback" not in err
    code, text, _ = run(capsys, *argv)
    assert code == 0 and "4 to run" in text
    reordered = [a if a != "0.5,90%" else "0.9,0.5" for a in argv]
    reordered = [a if a != "0,1" else "1,0" for a in reordered]
    code, text, err = run(capsys, *reordered)
    assert code == 0 and "4 already in" in text and "0 to run" in text, err
    (out / "config.json").write_text("{")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "config.json" in err and "corrupt" in err


@pytest.mark.parametrize("argv, match", [
    (["analyze", "lenet5", "--model-args", '{"in_channels": 3}'],
     "in_channels is set by the input shape"),
    (["analyze", "lenet5", "--model-arg", "num_classes=5"], "--num-classes"),
    (["sweep", "--config", "{tmp}/empty.toml", "--out", "{tmp}/s"], "no 'models'"),
    (["plot", "{tmp}/garbage.json"], "'{tmp}/garbage.json' is not valid JSON"),
    (["plot", "{tmp}/other.csv"], "no 'model' column"),
    (["plot", "{tmp}/empty.csv"], "no result rows"),
    (["analyze", "lenet5", "--dataset", "digits", "--num-classes", "5"],
     "--num-classes 5 contradicts --dataset digits, which has 10 classes"),
    (["analyze", "{tmp}/net.py:build", "--input-shape", "4", "--num-classes", "5"],
     "--num-classes is for zoo models"),
    (["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.9", "--lr",
      "0.5", "--out", "{tmp}/s"], "--lr set training, but --epochs is 0"),
    (["prune", "lenet5", "random", "0.9", "--out", "{tmp}/m.pt", "--option", "seed=3"],
     "seed is set by --seed"),
    (["prune", "lenet5", "snip", "0.9", "--dataset", "synthetic", "--out", "{tmp}/m.pt",
      "--option", "data=3"], "data is set by --dataset"),
])
def test_more_user_mistakes_name_what_to_fix(argv, match, tmp_path, capsys):
    (tmp_path / "empty.toml").write_text("")
    (tmp_path / "garbage.json").write_text("garbage")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "net.py").write_text("import torch\ndef build():\n"
                                     "    return torch.nn.Linear(4, 2)\n")
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and match.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err, err
    assert err.startswith("topo-pai: error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--seed", "18446744073709551616"),
                                         ("--seed", "-1"), ("--seeds", "0,18446744073709551616")])
def test_seeds_outside_torchs_range_are_refused_by_the_parser(flag, value, tmp_path, capsys):
    argv = (["analyze", "lenet5", flag, value] if flag == "--seed" else
            ["sweep", "--models", "lenet5", "--methods", "random", "--sparsities", "0.9",
             flag, value, "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: a seed must be an int in [0, 2**64 - 1]" \
        in err and "Traceback" not in err
    from topo_pai.experiments.training import seed_everything
    assert seed_everything(2**64 - 1) is None  # the top of the range is valid
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64 - 1\]"):
        seed_everything(2**64)


@pytest.mark.parametrize("extra, match", [
    ('model_kwargs = {lenet5 = {depth = 3}}', "model_kwargs['lenet5']"),
    ('model_kwargs = {lenet5 = {in_channels = 3}}', "in_channels is set by"),
    ('model_kwargs = {lenet5 = "x"}', "must be a dict"),
    ('val_size = 100000', "val_size=100000 leaves no training images"),
    ('seeds = [18446744073709551616]', "seeds must be an int in [0, 2**64 - 1]"),
    ('methods = ["shuffle"]', "method 'shuffle' reworks given masks"),
    ('methods = ["synflow"]\nmethod_options = {synflow = {rounds = 0}}',
     "sweep method_options for 'synflow': method 'synflow': rounds must be an int >= 1, got 0"),
    ('methods = ["npb"]\nmethod_options = {npb = {variant = "fast"}}',
     "method 'npb': NPB option variant must be one of"),
    ('models = ["lenet5", "LeNet-5"]', "'lenet5' and 'LeNet-5' name the same model"),
    ('model_kwargs = {lenet5 = {width = -1}}', "sweep model 'lenet5' on dataset 'synthetic' "
                                               "(inputs 1x28x28, 10 classes): width must be"),
    ('arms = {x = {method = "synflow", rounds = 0}}', "arms['x']: method 'synflow': rounds"),
    ('models = ["{tmp}/net.py:build"]', "'{tmp}/net.py:build' cannot be called with no "
                                        "arguments: missing a required argument: 'n'"),
])
def test_sweep_configurations_that_cannot_run_are_refused_before_the_directory(
        extra, match, tmp_path, capsys):
    """Each of these made every trial fail (exit 1) after config.json was written, so the
    corrected configuration was then refused as another one; now nothing is written, and
    nothing is printed but the error."""
    (tmp_path / "net.py").write_text("import torch\ndef build(n):\n"
                                     "    return torch.nn.Sequential(torch.nn.Flatten(), "
                                     "torch.nn.Linear(784, n))\n")
    cfg = tmp_path / "c.toml"
    models = "" if extra.startswith("models") else 'models = ["lenet5"]\n'
    cfg.write_text(models + 'sparsities = [0.9]\ndataset = "synthetic"\n'
                   + extra.replace("{tmp}", str(tmp_path)) + "\n")
    code, out, err = run(capsys, "sweep", "--config", str(cfg), "--out", str(tmp_path / "s"),
                         "--quiet")
    match = match.replace("{tmp}", str(tmp_path))
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()
    assert "sweep:" not in out, out  # the summary line comes after every up-front check


@pytest.mark.parametrize("source, match", [
    ("def build(:\n", "model file '{tmp}/net.py' raised SyntaxError while being imported"),
    ("raise RuntimeError('at import')\n", "raised RuntimeError while being imported: at import"),
    ("def build():\n    raise RuntimeError('in build')\n",
     "model '{tmp}/net.py:build' raised RuntimeError while being built: in build"),
    ("def other():\n    pass\n", "'{tmp}/net.py' has no attribute 'build'"),
])
def test_a_users_model_file_that_fails_is_a_user_error(source, match, tmp_path, capsys):
    """The user's own code failing (syntax, import, build, a missing callable) exits 2 with
    one line naming the model, not 1 with "if this is a bug in topo_pai, please report it"."""
    from topo_pai.errors import TopoPaiError
    from topo_pai.models.spec import build_model

    (tmp_path / "net.py").write_text(source)
    spec = f"{tmp_path}/net.py:build"
    code, _, err = run(capsys, "analyze", spec, "--input-shape", "4")
    assert code == 2 and match.replace("{tmp}", str(tmp_path)) in err, err
    assert err.startswith("topo-pai: error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(TopoPaiError):
        build_model(spec)


@pytest.mark.parametrize("flags, match", [
    (["--device", "nonsense"], "device must be 'auto', 'cpu', 'cuda'"),
    (["--scheduler", "tcp://127.0.0.1:1"], "is for engine='dask'"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "asks for CUDA")]))
def test_sweep_flags_that_cannot_work_are_refused_before_any_trial(flags, match, tmp_path,
                                                                   capsys):
    """A device the machine lacks or a scheduler without the dask engine made every trial
    fail (exit 1), or was silently ignored."""
    code, _, err = run(capsys, "sweep", "--models", "lenet_300_100", "--dataset", "synthetic",
                       "--methods", "random", "--sparsities", "0.5", "--out",
                       str(tmp_path / "s"), "--quiet", *flags)
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path):
    """`topo-pai prune ... | head`: the masks file is written, and the closed pipe ends the
    command with status 141 (128 + SIGPIPE, as other Unix tools) and no error on stderr
    (its progress line only), not "topo-pai: error: BrokenPipeError" and status 2."""
    import os
    import subprocess
    import sys

    out = tmp_path / "m.pt"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "topo_pai", "prune", "lenet_300_100",
                             "random", "0.9", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "error" not in err and "Traceback" not in err and "Exception" not in err, err
    assert out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--masks", "{tmp}/other.pt"], "--masks '{tmp}/other.pt': mask key 'a.weight'"),
    (["--masks", "{tmp}/wrapped.pt"], "prefix 'module.' of a wrapped model"),
    (["--masks", "{tmp}/empty.pt"], ("'{tmp}/empty.pt' is not a mask file torch can load "
                                     "safely (it is empty or cut short)")),
    (["--masks", "{tmp}"], "--masks: '{tmp}' is a directory; give a file"),
], ids=["other-model", "wrapped", "empty", "directory"])
def test_mask_file_mistakes_name_the_file_and_the_fix(argv, match, tmp_path, capsys):
    """Key errors named neither --masks nor the file; a DataParallel prefix got no hint; an
    empty file said 'EOFError: ' and a directory 'does not exist'."""
    (tmp_path / "net.py").write_text("import torch\ndef build():\n"
                                     "    return torch.nn.Linear(4, 2)\n")
    torch.save({"a.weight": torch.ones(2, 4, dtype=torch.bool)}, tmp_path / "other.pt")
    torch.save({"module.weight": torch.ones(2, 4, dtype=torch.bool)}, tmp_path / "wrapped.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    code, _, err = run(capsys, "analyze", f"{tmp_path}/net.py:build", "--input-shape", "4",
                       *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and match.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("source, match", [
    ("import nonexistent_pkg_xyz\n", "model file '{tmp}/m.py' could not import what it needs"),
    ("import sys\nsys.exit(3)\n", "model file '{tmp}/m.py' called sys.exit(3)"),
], ids=["missing-import", "sys.exit"])
def test_a_model_file_that_fails_on_import_is_named(source, match, tmp_path, capsys):
    """A failing import inside the file did not name it; sys.exit(3) ended the command with
    status 3 and no message."""
    (tmp_path / "m.py").write_text(source)
    code, _, err = run(capsys, "analyze", f"{tmp_path}/m.py:build", "--input-shape", "4")
    assert code == 2 and match.replace("{tmp}", str(tmp_path)) in err, err
