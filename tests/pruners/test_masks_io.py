"""Mask plumbing: apply/remove/bake with torch.nn.utils.prune and parametrize, reading
masks back, and the .pt / .npz file formats."""

from __future__ import annotations

import copy
import os
import pickle
import zipfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.models import resnet20  # noqa: E402

SHAPE = (3, 32, 32)
HOW = ("prune", "parametrize")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(width=4)


@pytest.fixture
def masks(model):
    return topo_pai.prune(model, "random", 0.8, input_shape=SHAPE, seed=1)


def weights(model):
    return {k: model.get_submodule(k[:-7]).weight.detach().clone()
            for k in topo_pai.prune(model, "random", 0.0, input_shape=SHAPE)}


# ---------------------------------------------------------------------------
# apply / remove / bake
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
def test_apply_masks_forward_and_state(model, masks, how):
    dense = weights(model)
    out = topo_pai.apply_masks(model, masks, method=how)
    assert out is model
    for k, m in masks.items():
        mod = model.get_submodule(k[:-7])
        assert torch.equal(mod.weight, dense[k] * m)
    names = {n for n, _ in model.named_parameters()}
    if how == "prune":
        assert "conv1.weight_orig" in names and "conv1.weight_mask" in dict(model.named_buffers())
    else:
        assert parametrize.is_parametrized(model.conv1, "weight")
        assert "conv1.parametrizations.weight.original" in names
    read = topo_pai.read_masks(model)
    assert list(read) == list(masks) and all(torch.equal(read[k], masks[k]) for k in masks)
    loss = model(torch.randn(2, *SHAPE)).sum()
    loss.backward()  # masked weights get no gradient through the mask
    for k, m in masks.items():
        mod = model.get_submodule(k[:-7])
        orig = mod.weight_orig if how == "prune" else mod.parametrizations.weight.original
        assert bool((orig.grad[~m] == 0).all())


def test_from_torch_reads_prune_masks(model, masks):
    topo_pai.apply_masks(model, masks, method="prune")
    topo = topo_pai.from_torch(model, None, SHAPE)
    assert topo.n_unpruned == sum(int(m.sum()) for m in masks.values())


def test_from_torch_with_parametrize_masks_via_read_masks(model, masks):
    topo_pai.apply_masks(model, masks, method="parametrize")
    topo = topo_pai.from_torch(model, topo_pai.read_masks(model), SHAPE)
    assert topo.n_unpruned == sum(int(m.sum()) for m in masks.values())


def test_from_torch_reads_parametrize_masks(model, masks):
    topo_pai.apply_masks(model, masks, method="parametrize")
    topo = topo_pai.from_torch(model, None, SHAPE)
    assert topo.n_unpruned == sum(int(m.sum()) for m in masks.values())


@pytest.mark.parametrize("how", HOW)
def test_remove_masks_restores_the_dense_weights(model, masks, how):
    dense = weights(model)
    params_before = [n for n, _ in model.named_parameters()]
    topo_pai.apply_masks(model, masks, method=how)
    assert topo_pai.remove_masks(model) is model
    assert [n for n, _ in model.named_parameters()] == params_before
    assert all(torch.equal(model.get_submodule(k[:-7]).weight, dense[k]) for k in dense)
    assert topo_pai.read_masks(model) == {}
    assert type(model.conv1) is nn.Conv2d and not model.conv1._forward_pre_hooks
    model(torch.randn(1, *SHAPE))


@pytest.mark.parametrize("how", HOW)
def test_bake_masks_makes_pruning_permanent(model, masks, how):
    dense = weights(model)
    topo_pai.apply_masks(model, masks, method=how)
    assert topo_pai.bake_masks(model) is model
    for k, m in masks.items():
        mod = model.get_submodule(k[:-7])
        assert isinstance(mod.weight, nn.Parameter) and type(mod) in (nn.Conv2d, nn.Linear)
        assert torch.equal(mod.weight.detach(), dense[k] * m)
    assert topo_pai.read_masks(model) == {}
    topo = topo_pai.from_torch(model, None, SHAPE)
    assert topo.n_unpruned == topo.n_params  # baked: no masks left, zeros are plain weights


@pytest.mark.parametrize("first,second", [("prune", "parametrize"), ("parametrize", "prune"),
                                          ("prune", "prune"), ("parametrize", "parametrize")])
def test_apply_replaces_earlier_masks(model, first, second):
    dense = weights(model)
    a = topo_pai.prune(model, "random", 0.5, input_shape=SHAPE, seed=0)
    b = topo_pai.prune(model, "random", 0.5, input_shape=SHAPE, seed=1)
    topo_pai.apply_masks(model, a, method=first)
    topo_pai.apply_masks(model, b, method=second)
    read = topo_pai.read_masks(model)
    assert all(torch.equal(read[k], b[k]) for k in b)
    assert all(torch.equal(model.get_submodule(k[:-7]).weight, dense[k] * b[k]) for k in b)


def test_partial_masks_and_numpy_masks(model, masks):
    one = {"fc.weight": masks["fc.weight"].numpy().astype(np.float32)}
    topo_pai.apply_masks(model, one)
    assert list(topo_pai.read_masks(model)) == ["fc.weight"]


def test_removing_from_a_deepcopy_leaves_the_original_working(model, masks):
    """parametrize shares a per-module class between deep copies; removing the mask from
    one copy must not strip the property from the other."""
    topo_pai.apply_masks(model, masks, method="parametrize")
    twin = copy.deepcopy(model)
    topo_pai.remove_masks(twin)
    assert torch.equal(topo_pai.read_masks(model)["conv1.weight"], masks["conv1.weight"])
    model(torch.randn(1, *SHAPE))
    twin(torch.randn(1, *SHAPE))


def test_bad_masks_leave_the_model_untouched(model, masks):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(masks)
    bad["fc.weight"] = torch.full_like(masks["fc.weight"], 2, dtype=torch.float32)
    with pytest.raises(topo_pai.MaskError, match="other than 0 and 1"):
        topo_pai.apply_masks(model, bad)
    with pytest.raises(topo_pai.MaskError, match="shape"):
        topo_pai.apply_masks(model, {"fc.weight": torch.ones(3, 3)})
    with pytest.raises(topo_pai.MaskError, match="not a prunable weight"):
        topo_pai.apply_masks(model, {"fc.bias": torch.ones(10)})
    with pytest.raises(topo_pai.MaskError, match="mapping"):
        topo_pai.apply_masks(model, [masks])
    with pytest.raises(ValueError, match="method"):
        topo_pai.apply_masks(model, masks, method="hooks")
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_foreign_parametrizations_are_refused(model):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    parametrize.register_parametrization(model.fc, "weight", Double())
    with pytest.raises(ValueError, match="parametrisation"):
        topo_pai.apply_masks(model, {"fc.weight": torch.ones(10, 16, dtype=torch.bool)},
                             method="parametrize")


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".pth", ".npz"])
def test_save_load_round_trip(tmp_path, masks, suffix):
    path = topo_pai.save_masks(masks, tmp_path / f"m{suffix}")
    back = topo_pai.load_masks(path)
    assert list(back) == list(masks)
    for k in masks:
        assert back[k].dtype == torch.bool and torch.equal(back[k], masks[k])
    back2 = topo_pai.load_masks(str(path))  # str paths too
    assert all(torch.equal(back2[k], masks[k]) for k in masks)


def test_files_are_readable_without_topo_pai(tmp_path, masks):
    topo_pai.save_masks(masks, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        assert z["fc.weight"].dtype == np.bool_
    topo_pai.save_masks(masks, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.equal(raw["fc.weight"], masks["fc.weight"])


def test_awkward_names_and_numeric_masks(tmp_path):
    m = {"file": np.array([[1, 0]], dtype=np.uint8), "allow_pickle": torch.tensor([1.0, 0.0])}
    for suffix in (".npz", ".pt"):
        back = topo_pai.load_masks(topo_pai.save_masks(m, tmp_path / f"x{suffix}"))
        assert back["file"].tolist() == [[True, False]] and back["allow_pickle"].tolist() == \
            [True, False]


def test_suffix_is_required(tmp_path, masks):
    with pytest.raises(ValueError, match=r"\.pt.*\.npz"):
        topo_pai.save_masks(masks, tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"\.pt.*\.npz"):
        topo_pai.load_masks(tmp_path / "m")


def test_load_validates_content(tmp_path):
    np.savez(tmp_path / "two.npz", w=np.array([0, 2]))
    with pytest.raises(topo_pai.MaskError, match="0 and 1"):
        topo_pai.load_masks(tmp_path / "two.npz")
    np.savez(tmp_path / "str.npz", w=np.array(["a", "b"]))
    with pytest.raises(topo_pai.MaskError, match="dtype"):
        topo_pai.load_masks(tmp_path / "str.npz")
    np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(topo_pai.MaskError):
        topo_pai.load_masks(tmp_path / "obj.npz")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(topo_pai.MaskError, match="mapping"):
        topo_pai.load_masks(tmp_path / "list.pt")
    torch.save({"w": torch.tensor([0.5])}, tmp_path / "half.pt")
    with pytest.raises(topo_pai.MaskError, match="0 and 1"):
        topo_pai.load_masks(tmp_path / "half.pt")
    torch.save({3: torch.ones(1)}, tmp_path / "key.pt")
    with pytest.raises(topo_pai.MaskError, match="names"):
        topo_pai.load_masks(tmp_path / "key.pt")
    torch.save({"w": torch.ones(1, dtype=torch.complex64)}, tmp_path / "cplx.pt")
    with pytest.raises(topo_pai.MaskError, match="complex"):
        topo_pai.load_masks(tmp_path / "cplx.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_refuses_pickles_and_garbage(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(topo_pai.MaskError):
        topo_pai.load_masks(tmp_path / "evil.pt")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(topo_pai.MaskError):
        topo_pai.load_masks(tmp_path / "junk.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    assert topo_pai.load_masks(tmp_path / "empty.npz") == {}
    with pytest.raises(FileNotFoundError):
        topo_pai.load_masks(tmp_path / "missing.pt")


def test_save_validates_content(tmp_path):
    with pytest.raises(topo_pai.MaskError, match="save_masks\\(None"):
        topo_pai.save_masks(None, tmp_path / "none.pt")
    assert not (tmp_path / "none.pt").exists()
    with pytest.raises(topo_pai.MaskError, match="0 and 1"):
        topo_pai.save_masks({"w": torch.tensor([3])}, tmp_path / "m.pt")
    with pytest.raises(topo_pai.MaskError, match="tensor or array"):
        topo_pai.save_masks({"w": [1, 0]}, tmp_path / "m.npz")


def test_files_of_the_wrong_kind_are_named_as_such(tmp_path, model):
    """A user's files that are not mask files: each message names the file and what it is,
    in one line (the CLI prints it as is)."""
    np.save(tmp_path / "a.npy", np.ones(3))
    (tmp_path / "a.npy").rename(tmp_path / "array.npz")  # one array, not an archive
    (tmp_path / "text.npz").write_text("hello")
    torch.save({"fc.weight": torch.ones(2)}, tmp_path / "torch.npz")  # a torch zip
    torch.save(model, tmp_path / "model.pt")  # a whole pickled model
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    cases = [("array.npz", "is not an .npz file"), ("text.npz", "is not an .npz file"),
             ("torch.npz", "zip archive but not an .npz file: it holds 'torch/data.pkl'"),
             ("model.pt", "a whole model saved with torch.save(model)?"),
             ("ckpt.pt", "key 'state_dict' holds a mapping, not a mask")]
    for name, match in cases:
        with pytest.raises(topo_pai.MaskError) as exc:
            topo_pai.load_masks(tmp_path / name)
        assert match in str(exc.value) and name in str(exc.value)
        assert "\n" not in str(exc.value)
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        topo_pai.save_masks({"w": torch.ones(2)}, tmp_path / "missing" / "m.pt")


def test_from_zeros_also_reads_the_plain_weights_of_a_pruned_state_dict(tmp_path):
    """--masks-from-zeros was ignored once a file had *_orig/*_mask keys: a layer pruned and
    then made permanent (prune.remove) was read as dense."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    torch.nn.utils.prune.l1_unstructured(net[0], "weight", 0.5)
    torch.nn.utils.prune.l1_unstructured(net[2], "weight", 0.5)
    torch.nn.utils.prune.remove(net[2], "weight")
    path = tmp_path / "mixed.pt"
    torch.save(net.state_dict(), path)
    masks = topo_pai.load_masks(path, from_zeros=True)
    assert torch.equal(masks["0.weight"], net[0].weight_mask.bool())
    assert torch.equal(masks["2.weight"], net[2].weight != 0)
    assert int(masks["2.weight"].sum()) == 12
    assert set(topo_pai.load_masks(path)) == {"0.weight"}  # without the flag: the masks only


def test_parametrized_masks_of_a_bare_layer_round_trip(tmp_path):
    """A model that is itself the Linear has keys 'parametrizations.weight...' (no leading
    dot), which were guessed to be a plain mask mapping and refused."""
    layer = nn.Linear(12, 3)
    masks = topo_pai.prune(layer, "random", 0.5, input_shape=(12,))
    path = tmp_path / "bare.pt"
    torch.save(topo_pai.apply_masks(copy.deepcopy(layer), masks, method="parametrize")
               .state_dict(), path)
    assert torch.equal(topo_pai.load_masks(path)["weight"], masks["weight"])
