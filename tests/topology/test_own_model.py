"""Inspecting one's own model: masks from other tools, models named by callable, and the
warning for weights no mask covers (issue 15, items 1, 2 and 6)."""

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize, prune  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.cli import main  # noqa: E402
from topo_pai.models.spec import build_model, check_input_shape, parse_model_spec  # noqa: E402

HERE = Path(__file__).parent.parent  # tests/: own_models.py
OWN = str(HERE / "own_models.py")
SHAPE = (3, 8, 8)


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def own(name, **kwargs):
    import importlib.util
    spec = importlib.util.spec_from_file_location("own_models_for_tests", OWN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return getattr(mod, name)(**kwargs)


def random_masks(model, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {f"{n}.weight": torch.rand(m.weight.shape, generator=g) < density
            for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


# --------------------------------------------------------------------------- mask formats
def test_prune_state_dict(tmp_path):
    model = own("ResDepthNet")
    masks = random_masks(model)
    for name, m in masks.items():
        prune.custom_from_mask(model.get_submodule(name[:-len(".weight")]), "weight", m)
    prune.l1_unstructured(model.bn0, "weight", amount=1)  # a pruned non-prunable: skipped
    path = tmp_path / "pruned.pth"
    torch.save(model.state_dict(), path)
    back = topo_pai.load_masks(path)
    assert set(back) == set(masks) | {"bn0.weight"}
    for k, m in masks.items():
        assert back[k].dtype == torch.bool and torch.equal(back[k], m)
    # same topology as the masks attached to the pruned model itself
    prune.remove(model.bn0, "weight")
    clean = own("ResDepthNet")
    topo = topo_pai.from_torch(clean, {k: v for k, v in back.items() if k in masks}, SHAPE)
    assert topo.count_paths().exact == topo_pai.from_torch(model, None, SHAPE).count_paths().exact


def test_prune_state_dict_errors_name_key_and_format(tmp_path):
    sd = {"fc.weight_orig": torch.ones(2, 2), "fc.weight_mask": torch.tensor([[1., 0.], [2., 1.]])}
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(topo_pai.MaskError, match=r"'fc\.weight_mask'.*0 and 1.*pruned with "
                                                 r"torch\.nn\.utils\.prune"):
        topo_pai.load_masks(tmp_path / "bad.pt")
    sd = {"a.weight_orig": torch.ones(1), "b.weight_orig": torch.ones(1),
          "b.weight_mask": torch.ones(1)}
    torch.save(sd, tmp_path / "half.pt")
    with pytest.raises(topo_pai.MaskError, match=r"'a\.weight_orig' has no matching "
                                                 r"'a\.weight_mask'.*format guessed"):
        topo_pai.load_masks(tmp_path / "half.pt")


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_parametrized_state_dict(tmp_path, suffix):
    model = own("CatNet")
    masks = random_masks(model, 0.4)
    topo_pai.apply_masks(model, masks, method="parametrize")
    sd = model.state_dict()
    assert any(".parametrizations." in k for k in sd)
    path = tmp_path / f"param{suffix}"
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    back = topo_pai.load_masks(path)
    assert set(back) == set(masks)
    assert all(torch.equal(back[k], masks[k]) for k in masks)


def test_parametrization_without_a_mask_is_refused(tmp_path):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    net = nn.Sequential(nn.Linear(3, 2))
    parametrize.register_parametrization(net[0], "weight", Double())
    torch.save(net.state_dict(), tmp_path / "p.pt")
    with pytest.raises(topo_pai.MaskError, match=r"'0\.parametrizations\.weight\.original'.*no "
                                                 r"mask.*parametrised"):
        topo_pai.load_masks(tmp_path / "p.pt")


def test_weights_whose_zeros_are_the_masks(tmp_path):
    model = own("ResDepthNet")
    masks = random_masks(model, 0.3)
    topo_pai.apply_masks(model, masks)
    topo_pai.bake_masks(model)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    # plain weights are not 0/1 masks: the error names a key, the format, and the flag
    with pytest.raises(topo_pai.MaskError, match=r"key '.*'.*format guessed: a \{name: 0/1 "
                                                 r"mask\}.*from_zeros=True"):
        topo_pai.load_masks(tmp_path / "w.pt")
    back = topo_pai.load_masks(tmp_path / "w.pt", from_zeros=True)
    assert set(back) == set(masks)  # biases, norm parameters, counters are skipped
    for k, m in masks.items():
        assert torch.equal(back[k], m & (sd[k] != 0)) and torch.equal(back[k], m)
    torch.save({"fc.weight": torch.tensor([[1.0, float("nan")]])}, tmp_path / "nan.pt")
    with pytest.raises(topo_pai.MaskError, match=r"'fc\.weight'.*NaN.*whose zeros"):
        topo_pai.load_masks(tmp_path / "nan.pt", from_zeros=True)
    torch.save({"fc.weight": torch.ones(2, 2), "step": 3}, tmp_path / "int.pt")
    with pytest.raises(topo_pai.MaskError, match=r"'step' holds int"):
        topo_pai.load_masks(tmp_path / "int.pt", from_zeros=True)


def test_cli_reads_other_formats(tmp_path, capsys):
    model = own("ResDepthNet")
    masks = random_masks(model, 0.4, seed=3)
    topo_pai.apply_masks(model, masks)
    prune.l1_unstructured(model.bn1, "weight", amount=2)  # not a topology mask: skipped
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    prune.remove(model.bn1, "weight")
    topo_pai.bake_masks(model)
    torch.save(model.state_dict(), tmp_path / "zeros.pt")
    expected = topo_pai.from_torch(own("ResDepthNet"), masks, SHAPE)
    for extra in (["--masks", tmp_path / "pruned.pt"],
                  ["--masks", tmp_path / "zeros.pt", "--masks-from-zeros"]):
        code, out, err = run(capsys, "analyze", f"{OWN}:ResDepthNet", "--input-shape", "3,8,8",
                             "--json", *extra)
        assert code == 0
        assert ("'bn1.weight'" in err) == (extra[1].name == "pruned.pt")
        totals = json.loads(out)["channel"]["totals"]
        assert totals["effective_params"] == expected.effective_params()
        assert totals["log10_paths"] == pytest.approx(expected.count_paths().log10)
    code, _, err = run(capsys, "analyze", f"{OWN}:ResDepthNet", "--input-shape", "3,8,8",
                       "--masks", tmp_path / "zeros.pt")
    assert code == 2 and "--masks-from-zeros" in err and "format guessed" in err
    code, _, err = run(capsys, "analyze", "lenet5", "--masks-from-zeros")
    assert code == 2 and "needs --masks" in err


# --------------------------------------------------------------------------- uncovered weights
@pytest.mark.parametrize("linear_first", [False, True])
def test_a_tied_weight_is_covered_whichever_module_comes_first(linear_first):
    """An Embedding tied to a Linear decoder: the tensor is the Linear's prunable weight,
    whether the Embedding or the Linear is declared first (was: uncovered when first)."""
    from torch import nn

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            if linear_first:
                self.dec = nn.Linear(4, 10, bias=False)
                self.emb = nn.Embedding(10, 4)
                self.emb.weight = self.dec.weight
            else:
                self.emb = nn.Embedding(10, 4)
                self.dec = nn.Linear(4, 10, bias=False)
                self.dec.weight = self.emb.weight

    u = topo_pai.uncovered_weights(Tied())
    assert u.tensors == {} and u.total_params == 40


def test_uncovered_weights_are_named_with_their_share(capsys, tmp_path):
    model = own("WithPosition")
    total = sum(p.numel() for p in model.parameters())
    attn = model.attn.in_proj_weight.numel() + model.attn.out_proj.weight.numel()
    u = topo_pai.uncovered_weights(model)
    # out_proj is a Linear subclass: the tracer sees it as a prunable layer (unused here)
    assert u.tensors == {"pos": 12, "attn.in_proj_weight": model.attn.in_proj_weight.numel()}
    assert u.share == pytest.approx((12 + model.attn.in_proj_weight.numel()) / total)
    assert attn > model.attn.in_proj_weight.numel()
    with pytest.warns(topo_pai.UncoveredWeightsWarning,
                      match=rf"2 weight tensor\(s\) hold {100 * u.share:.1f}%.*"
                            r"'attn\.in_proj_weight' \(48\), 'pos' \(12\)"):
        topo = topo_pai.from_torch(model, {}, (12,))
    assert topo.uncovered.tensors == u.tensors
    with pytest.warns(topo_pai.UncoveredWeightsWarning, match="in_proj_weight"):
        topo_pai.prune(model, "random", 0.5, input_shape=(12,))
    # a model without any: no warning, also through a pruned or parametrised model
    plain = own("CatNet")
    topo_pai.apply_masks(plain, random_masks(plain), method="parametrize")
    assert topo_pai.uncovered_weights(plain).tensors == {}
    code, _, err = run(capsys, "analyze", f"{OWN}:WithPosition", "--input-shape", "12")
    assert code == 0 and err.count("topo-pai: warning:") == 1 and "'pos' (12)" in err
    code, _, err = run(capsys, "prune", f"{OWN}:WithPosition", "random", "0.5", "--input-shape",
                       "12", "--out", tmp_path / "m.pt")
    assert code == 0 and err.count("topo-pai: warning:") == 1 and "in_proj_weight" in err


# --------------------------------------------------------------------------- model specs
def test_parse_model_spec_forms():
    assert parse_model_spec("LeNet-5").kind == "zoo"
    s = parse_model_spec("a.b.c:make.net")
    assert (s.kind, s.target, s.attr) == ("module", "a.b.c", "make.net")
    s = parse_model_spec("./nets/x.py:Net")
    assert (s.kind, s.target, s.attr) == ("file", "./nets/x.py", "Net")
    for bad, msg in (("a.b:", "both sides"), (":Net", "both sides"), ("a-b:Net", "module name"),
                     ("a.b:1x", "not a Python name"), ("nets/x", "no callable"), ("", "empty")):
        with pytest.raises(ValueError, match=msg):
            parse_model_spec(bad)


def test_build_model_from_file_and_module(monkeypatch):
    a, _ = build_model(f"{OWN}:small_mlp", model_args={"hidden": 7})
    assert [m.out_features for m in a if isinstance(m, nn.Linear)] == [7, 3]
    monkeypatch.syspath_prepend(str(HERE))
    b, spec = build_model("own_models:ResDepthNet", model_args={"width": 3})
    assert spec.kind == "module" and b.stem.out_channels == 3
    for text, err, msg in (
            (f"{OWN}:Nope", AttributeError, "no attribute 'Nope'"),
            (f"{OWN}:ResDepthNt", AttributeError, "Did you mean 'ResDepthNet'"),
            (f"{OWN}:NOT_A_MODEL", TypeError, "not a class or function"),
            (f"{OWN}:returns_a_number", TypeError, "returned an object of type int, not a torch.nn.Module"),
            (f"{HERE}/missing.py:Net", FileNotFoundError, "does not exist"),
            ("no_such_package_xyz.nets:Net", ModuleNotFoundError, "cannot import module")):
        with pytest.raises(err, match=msg):
            build_model(text)
    with pytest.raises(TypeError, match=r"could not be called with depth.*--model-args"):
        build_model(f"{OWN}:small_mlp", model_args={"depth": 2})


def test_input_shape_must_match_the_dataset():
    zoo = parse_model_spec("resnet20")
    with pytest.raises(ValueError, match=r"zoo model 'resnet20' is asked for input shape "
                                         r"3x32x32 but the dataset gives 1x28x28"):
        check_input_shape(zoo, (3, 32, 32), (1, 28, 28))
    assert check_input_shape(zoo, None, (1, 28, 28)) == (1, 28, 28)
    assert check_input_shape(zoo, (1, 28, 28), (1, 28, 28)) == (1, 28, 28)
    assert check_input_shape(zoo, None, None) is None
    with pytest.raises(ValueError, match="--input-shape"):
        check_input_shape(parse_model_spec(f"{OWN}:CatNet"), None, None)


def test_cli_model_forms(capsys, monkeypatch, tmp_path):
    expected = topo_pai.from_torch(own("CatNet", width=3), {}, (2, 8, 8)).count_paths().exact
    monkeypatch.syspath_prepend(str(HERE))
    for model in (f"{OWN}:CatNet", "own_models:CatNet"):
        code, out, _ = run(capsys, "analyze", model, "--input-shape", "2,8,8", "--model-args",
                           '{"width": 3}', "--json", "--resolution", "neuron")
        assert code == 0
        code, out, _ = run(capsys, "analyze", model, "--input-shape", "2,8,8", "--model-args",
                           '{"width": 3}', "--json")
        assert json.loads(out)["channel"]["totals"]["log10_paths"] == \
            pytest.approx(np.log10(expected))
    code, out, _ = run(capsys, "prune", f"{OWN}:CatNet", "magnitude", "0.8", "--input-shape",
                       "2,8,8", "--model-arg", "width=3", "--out", tmp_path / "m.npz")
    assert code == 0 and len(topo_pai.load_masks(tmp_path / "m.npz")) == 5
    for argv, msg in (
            ([f"{OWN}:CatNet"], "--input-shape"),
            (["resnet20", "--dataset", "digits", "--input-shape", "3,32,32"],
             "asked for input shape 3x32x32 but the dataset gives 1x8x8"),
            ([f"{OWN}:CatNet", "--input-shape", "2,8,8", "--model-args", "[1]"], "JSON object"),
            ([f"{OWN}:CatNet", "--input-shape", "2,8,8", "--model-args", '{"width": 3}',
              "--model-arg", "width=3"], "given in both"),
            (["resnt20"], "Did you mean 'resnet20'"),
            (["nets/missing.py:Net", "--input-shape", "3"], "does not exist")):
        code, _, err = run(capsys, "analyze", *argv)
        assert code == 2 and msg in err, err
        assert "Traceback" not in err


def test_sweep_with_own_model_and_input_shape(tmp_path, capsys):
    from topo_pai.experiments.sweep import SweepConfig, run_sweep

    with pytest.raises(ValueError, match="'lenet5' is asked for input shape 3x32x32 but the "
                                         "dataset gives 1x8x8"):
        run_sweep(SweepConfig(models=("lenet5",), dataset="digits", input_shape=[3, 32, 32]),
                  tmp_path / "refused")
    assert not (tmp_path / "refused" / "results.jsonl").exists()
    code, _, err = run(capsys, "sweep", "--models", "resnet20", "--dataset", "digits",
                       "--methods", "random", "--sparsities", "0.5", "--input-shape", "3,32,32",
                       "--out", tmp_path / "cli")
    assert code == 2 and "asked for input shape 3x32x32 but the dataset gives 1x8x8" in err
    # the synthetic data take any shape: the same sweep runs on them at 3x16x16
    code, _, err = run(capsys, "sweep", "--models", "resnet20", "--dataset", "synthetic",
                       "--methods", "random", "--sparsities", "0.5", "--input-shape", "3,16,16",
                       "--out", tmp_path / "synthetic", "--quiet")
    assert code == 0, err
    row = json.loads((tmp_path / "synthetic" / "results.json").read_text())
    row = (row if isinstance(row, list) else row["rows"])[0]
    assert row["dense_flops"] == topo_pai.from_torch(
        topo_pai.models.get_model("resnet20"), {}, (3, 16, 16)).effective_flops()
    cfg = SweepConfig(models=("lenet5",), input_shape=[1, 28, 28])
    assert cfg.to_dict()["input_shape"] == [1, 28, 28] and "input_shape" in cfg._recipe()
    # an older configuration (no input_shape key) keeps its fingerprint
    old = SweepConfig(models=("lenet5",))
    assert "input_shape" not in old._recipe()
    path = tmp_path / "sweep.toml"
    path.write_text(f'models = ["{OWN}:ResDepthNet"]\ndataset = "synthetic"\nmethods = ["random"]\n'
                    f'sparsities = [0.5]\ninput_shape = [1, 28, 28]\n'
                    f'[model_kwargs."{OWN}:ResDepthNet"]\nin_channels = 1\nnum_classes = 10\n')
    code, _, err = run(capsys, "sweep", "--config", path, "--out", tmp_path / "own")
    assert code == 0, err
    rows = json.loads((tmp_path / "own" / "results.json").read_text())
    rows = rows if isinstance(rows, list) else rows["rows"]
    assert len(rows) == 1 and rows[0]["model"] == f"{OWN}:ResDepthNet"
    net = own("ResDepthNet", in_channels=1, num_classes=10)
    dense = topo_pai.from_torch(net, {}, (1, 28, 28))
    assert rows[0]["dense_flops"] == dense.effective_flops()
