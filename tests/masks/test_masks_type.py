"""topo_pai.Masks: validated once when built, the same checks and messages everywhere,
round trips through every file format, inputs never mutated, the public functions
accept a plain dict or a Masks and return a Masks."""

from __future__ import annotations

import copy
import os
import pickle

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai import MaskError, Masks  # noqa: E402
from topo_pai.masks.validate import abs_weights_array  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


SHAPES = {"0.weight": (3, 4), "2.weight": (2, 3)}


def random_bool(shape, seed=0):
    return np.random.default_rng(seed).random(shape) < 0.5


# ---------------------------------------------------------------------------
# building and the one validator
# ---------------------------------------------------------------------------

KINDS = {
    "bool numpy": lambda a: a,
    "uint8 numpy": lambda a: a.astype(np.uint8),
    "float numpy": lambda a: a.astype(np.float64),
    "bool torch": lambda a: torch.from_numpy(a),
    "int torch": lambda a: torch.from_numpy(a.astype(np.int64)),
    "half torch": lambda a: torch.from_numpy(a).half(),
    "bfloat16 torch": lambda a: torch.from_numpy(a).to(torch.bfloat16),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_input_kind_becomes_a_bool_cpu_tensor(kind):
    want = {n: random_bool(s, i) for i, (n, s) in enumerate(SHAPES.items())}
    m = Masks({n: KINDS[kind](a) for n, a in want.items()}, model=mlp())
    assert isinstance(m, dict) and list(m) == list(SHAPES)
    for n, a in want.items():
        assert m[n].dtype == torch.bool and m[n].device.type == "cpu"
        assert np.array_equal(m[n].numpy(), a)  # old call sites: .numpy() and np.asarray
        assert np.array_equal(np.asarray(m[n]), a)
    assert m.n_total == 18 and m.n_kept == sum(int(a.sum()) for a in want.values())
    assert m.density == pytest.approx(m.n_kept / 18)
    assert {k: v.tolist() for k, v in m.numpy().items()} == {k: v.tolist() for k, v in want.items()}


BAD_VALUES = {
    "two": (lambda s: np.full(s, 2.0), "2.0"),
    "half": (lambda s: np.full(s, 0.5), "0.5"),
    "minus one": (lambda s: -np.ones(s, dtype=np.int64), "-1"),
    "nan": (lambda s: np.full(s, np.nan), "nan"),
    "inf": (lambda s: torch.full(s, float("inf")), "inf"),
    "255 uint8": (lambda s: torch.full(s, 255, dtype=torch.uint8), "255"),
}


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
@pytest.mark.parametrize("where", [(0, 0), (1, 2)])
def test_bad_values_name_the_parameter_and_index(bad, where):
    make, shown = BAD_VALUES[bad]
    m = torch.ones(2, 3, dtype=torch.float64)
    value = torch.as_tensor(np.asarray(make((1,)))).reshape(-1)[0]
    arr = m.numpy().copy()
    arr[where] = float(value)
    for given_ in (arr, torch.from_numpy(arr)):
        with pytest.raises(MaskError, match=r"'2\.weight'") as exc:
            Masks({"0.weight": np.ones((3, 4)), "2.weight": given_})
        assert str(where) in str(exc.value) and shown in str(exc.value).lower()
        assert "0 and 1" in str(exc.value)
    with pytest.raises(MaskError, match=r"'2\.weight'"):  # the whole-array form too
        Masks({"2.weight": make((2, 3))})


@pytest.mark.parametrize("value,what", [
    (None, "None"),
    ([[1, 0]], "tensor or array"),
    (np.array([["a", "b"]]), "dtype"),
    (np.ones((1, 2), dtype=np.complex64), "complex"),
    (torch.ones(1, 2, dtype=torch.cfloat), "complex"),
    (torch.ones(1, 2).to_sparse(), "sparse"),
    (torch.ones(1, 2, device="meta"), "meta"),
])
def test_values_that_are_not_masks_are_refused_by_name(value, what):
    with pytest.raises(MaskError, match=r"'fc\.weight'") as exc:
        Masks({"fc.weight": value})
    assert what in str(exc.value)


def test_keys_and_shapes_are_checked_against_the_model():
    net = mlp()
    with pytest.raises(MaskError, match=r"'0\.bias'.*not a prunable weight"):
        Masks({"0.bias": np.ones(3)}, model=net)
    with pytest.raises(MaskError, match=r"'nope'.*0\.weight"):
        Masks({"nope": np.ones((3, 4))}, model=net)
    with pytest.raises(MaskError, match=r"'0\.weight'.*\(4, 3\).*\(3, 4\)"):
        Masks({"0.weight": np.ones((4, 3))}, model=net)
    with pytest.raises(MaskError, match="non-empty strings"):
        Masks({3: np.ones(2)})
    with pytest.raises(MaskError, match="mapping"):
        Masks([np.ones(2)])
    m = Masks({}, model=net)  # entries set later are checked too
    with pytest.raises(MaskError, match=r"'2\.weight'.*shape"):
        m["2.weight"] = torch.ones(3, 3)
    with pytest.raises(MaskError, match=r"'2\.bias'"):
        m.update({"2.bias": torch.ones(2)})
    with pytest.raises(MaskError, match=r"'2\.weight'"):
        m.setdefault("2.weight", np.full((2, 3), 7))
    assert m == {}
    m["2.weight"] = np.eye(2, 3)
    assert m["2.weight"].dtype == torch.bool


def test_inputs_are_never_mutated_nor_shared():
    src_np = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    src_t = torch.tensor([[True, False, True], [False, True, False]])
    before_np, before_t = src_np.copy(), src_t.clone()
    m = Masks({"a": src_np, "b": src_t})
    assert np.array_equal(src_np, before_np) and torch.equal(src_t, before_t)
    m["a"][0, 0] = False
    m["b"][0, 0] = False
    assert np.array_equal(src_np, before_np) and torch.equal(src_t, before_t)
    src_t[1, 1] = False
    assert bool(m["b"][1, 1])  # a copy, not a view of the caller's tensor
    twin = m.copy()
    twin["a"][1, 1] = False
    assert bool(m["a"][1, 1]) and isinstance(twin, Masks)
    deep = copy.deepcopy(m)
    assert isinstance(deep, Masks) and all(torch.equal(deep[k], m[k]) for k in m)


# ---------------------------------------------------------------------------
# files: round trips through every format
# ---------------------------------------------------------------------------

# (names ending in _orig/_mask would read as a pruned state_dict, which is another format)
names = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,4}){0,2}", fullmatch=True).filter(
    lambda n: not n.endswith(("_orig", "_mask")))
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def mask_dicts(draw):
    keys = draw(st.lists(names, min_size=0, max_size=4, unique=True))
    out = {}
    for k in keys:
        shape = draw(shapes)
        bits = draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                             max_size=int(np.prod(shape))))
        out[k] = np.array(bits, dtype=bool).reshape(shape)
    return out


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=mask_dicts(), suffix=st.sampled_from([".pt", ".pth", ".npz"]),
       as_torch=st.booleans())
def test_round_trip_through_files(tmp_path, arrays, suffix, as_torch):
    given_ = {k: torch.from_numpy(v.copy()) if as_torch else v.copy() for k, v in arrays.items()}
    m = Masks(given_)
    path = m.save(tmp_path / f"m{suffix}")
    back = Masks.load(path)
    assert isinstance(back, Masks) and list(back) == list(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == torch.bool and np.array_equal(back[k].numpy(), a)
    via_functions = topo_pai.load_masks(topo_pai.save_masks(given_, tmp_path / f"f{suffix}"))
    assert isinstance(via_functions, Masks)
    assert all(np.array_equal(via_functions[k].numpy(), a) for k, a in arrays.items())
    for k, v in given_.items():  # the inputs are untouched
        assert np.array_equal(np.asarray(v), arrays[k])
    # torch.save of a Masks writes a plain mapping that loads without unpickling code
    torch.save(m, tmp_path / "raw.pt")
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)
    assert type(raw) is not Masks and all(torch.equal(raw[k], m[k]) for k in m)
    assert all(torch.equal(Masks.load(tmp_path / "raw.pt")[k], m[k]) for k in m)
    assert all(torch.equal(pickle.loads(pickle.dumps(m))[k], m[k]) for k in m)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 16), how=st.sampled_from(["prune", "parametrize"]),
       suffix=st.sampled_from([".pt", ".npz"]))
def test_round_trip_through_state_dicts(tmp_path, seed, how, suffix):
    net = mlp()
    m = Masks({n: random_bool(s, seed + i) for i, (n, s) in enumerate(SHAPES.items())},
              model=net)
    topo_pai.apply_masks(net, m, method=how)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    path = tmp_path / f"sd{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), path)
    else:
        np.savez(path, **sd)
    back = Masks.load(path, model=mlp())
    assert all(torch.equal(back[k], m[k]) for k in m)
    read = topo_pai.read_masks(net)
    assert isinstance(read, Masks) and all(torch.equal(read[k], m[k]) for k in m)
    # the zeros of the masked weights are the masks (weights drawn non-zero)
    topo_pai.bake_masks(net)
    torch.save({k: v for k, v in net.state_dict().items()}, tmp_path / "baked.pt")
    zeros = Masks.load(tmp_path / "baked.pt", from_zeros=True, model=mlp())
    assert all(torch.equal(zeros[k], m[k]) for k in m)


def test_load_checks_against_the_model_and_names_the_file(tmp_path):
    path = Masks({"0.weight": np.ones((4, 3))}).save(tmp_path / "m.npz")
    with pytest.raises(MaskError, match=r"m\.npz.*'0\.weight'.*shape"):
        Masks.load(path, model=mlp())


# ---------------------------------------------------------------------------
# the public functions take a dict or a Masks and return a Masks
# ---------------------------------------------------------------------------

def test_public_functions_accept_dicts_and_masks_and_return_masks():
    net = mlp()
    plain = {"0.weight": random_bool((3, 4), 1).astype(np.float32), "2.weight": np.ones((2, 3))}
    typed = Masks(plain, model=net)
    for given_ in (plain, typed):
        topo = topo_pai.from_torch(net, given_, input_shape=(4,))
        assert topo.n_unpruned == typed.n_kept
        eff = topo.effective_masks()
        assert isinstance(eff, Masks) and set(eff) == set(SHAPES)
        topo_pai.apply_masks(net, given_)
        back = topo_pai.read_masks(net)
        assert isinstance(back, Masks) and all(torch.equal(back[k], typed[k]) for k in typed)
        topo_pai.remove_masks(net)
    pruned = topo_pai.prune(net, "magnitude", 0.5, input_shape=(4,))
    assert isinstance(pruned, Masks)
    for given_ in (pruned, pruned.numpy()):
        shuffled = topo_pai.prune(net, "shuffle", 0.5, input_shape=(4,), masks=given_, seed=3)
        assert isinstance(shuffled, Masks)
        assert {k: int(v.sum()) for k, v in shuffled.items()} == \
            {k: int(v.sum()) for k, v in pruned.items()}
    assert isinstance(topo_pai.compact(net, pruned, (4,)), nn.Module)


def test_apply_masks_copies_a_masks_object():
    net = mlp()
    m = Masks({"0.weight": np.ones((3, 4))}, model=net)
    topo_pai.apply_masks(net, m)
    net[0].weight_mask[0, 0] = 0  # the model's buffer is its own
    assert bool(m["0.weight"][0, 0])


def test_shuffle_option_masks_are_validated_by_name():
    net = mlp()
    with pytest.raises(MaskError, match=r"option 'masks'.*'0\.weight'.*0 and 1"):
        topo_pai.prune(net, "shuffle", 0.5, input_shape=(4,),
                       masks={"0.weight": np.full((3, 4), 0.5)})
    with pytest.raises(MaskError, match=r"option 'masks'.*'0\.weight'.*shape"):
        topo_pai.prune(net, "shuffle", 0.5, input_shape=(4,), masks={"0.weight": np.ones(3)})


# ---------------------------------------------------------------------------
# one validator for |w|
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (-np.ones((3, 4)), "non-negative"),
    (np.full((3, 4), np.nan), "finite"),
    (np.ones((4, 3)), "shape"),
    (np.ones((3, 4), dtype=np.complex64), "complex"),
    ([[1.0] * 4] * 3, "tensor or array"),
])
def test_abs_weights_have_one_validator(bad, match):
    from topo_pai.pruners.phew import phew_masks

    net = mlp()
    topo = topo_pai.from_torch(net, input_shape=(4,))
    good = {n: np.ones(s) for n, s in SHAPES.items()}
    errors = []
    for call in (lambda w: abs_weights_array("0.weight", w["0.weight"], (3, 4)),
                 lambda w: topo.edge_weights(w),
                 lambda w: topo.flows(w),
                 lambda w: phew_masks(topo, w, {"0.weight": 6, "2.weight": 3}, 0)):
        with pytest.raises(MaskError, match=match) as exc:
            call({**good, "0.weight": bad})
        errors.append(str(exc.value))
    assert len(set(errors)) == 1 and "'0.weight'" in errors[0]


# ---------------------------------------------------------------------------
# Found by review: mixed formats, foreign parametrisations, atomic writes, names
# ---------------------------------------------------------------------------


def _two_linears():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_a_state_dict_with_prune_and_parametrize_masks_keeps_both(tmp_path):
    """Layer 0 masked with "prune", layer 2 with "parametrize": the parametrize mask was
    dropped on load (the file counted 6 paths, the model 0)."""
    net = _two_linears()
    topo_pai.apply_masks(net, {"0.weight": torch.eye(3, 4, dtype=torch.bool)}, method="prune")
    topo_pai.apply_masks(net, {"2.weight": torch.zeros(2, 3, dtype=torch.bool)},
                         method="parametrize")
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    loaded = topo_pai.load_masks(tmp_path / "sd.pt")
    assert {k: int(v.sum()) for k, v in loaded.items()} == {"0.weight": 3, "2.weight": 0}


def test_a_parametrisation_that_is_not_a_mask_reads_as_dense(tmp_path):
    from torch.nn.utils.parametrizations import orthogonal, spectral_norm

    for wrap in (spectral_norm, orthogonal):
        net = _two_linears()
        wrap(net[2])
        topo_pai.apply_masks(net, {"0.weight": torch.eye(3, 4, dtype=torch.bool)},
                             method="parametrize")
        torch.save(net.state_dict(), tmp_path / "sd.pt")
        loaded = topo_pai.load_masks(tmp_path / "sd.pt")
        assert {k: int(v.sum()) for k, v in loaded.items()} == {"0.weight": 3}


def test_apply_masks_refuses_a_foreign_chain_before_changing_anything():
    """The other parametrisation was stripped silently (re-masking a chain), and a
    refusal for a later layer came after earlier layers had been re-masked."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    net = _two_linears()
    topo_pai.apply_masks(net, {"2.weight": torch.ones(2, 3, dtype=torch.bool)},
                         method="parametrize")
    parametrize.register_parametrization(net[2], "weight", Double())
    keys = list(net.state_dict())
    with pytest.raises(ValueError, match="'2.weight' already has a parametrisation"):
        topo_pai.apply_masks(net, {"0.weight": torch.eye(3, 4, dtype=torch.bool),
                                   "2.weight": torch.ones(2, 3, dtype=torch.bool)})
    assert list(net.state_dict()) == keys  # layer 0 untouched, the chain kept
    assert len(net[2].parametrizations["weight"]) == 2


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch, suffix):
    """Saves went straight to the final name: a kill mid-write left a truncated file
    there. They now go through a temporary file moved into place."""
    path = tmp_path / f"masks{suffix}"
    good = Masks({"w": torch.ones(2, 2, dtype=torch.bool)})
    good.save(path)
    import numpy.lib.format as npformat

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would, mid-write

    monkeypatch.setattr(torch, "save", boom)
    monkeypatch.setattr(npformat, "write_array", boom)
    with pytest.raises(KeyboardInterrupt):
        Masks({"w": torch.zeros(2, 2, dtype=torch.bool)}).save(path)
    monkeypatch.undo()
    assert torch.equal(topo_pai.load_masks(path)["w"], good["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_round_trips_keep_0d_shapes_and_npy_suffixed_names(tmp_path, suffix):
    masks = Masks({"a": torch.ones(1, 2, dtype=torch.bool),
                   "a.npy": torch.zeros(1, 2, dtype=torch.bool),
                   "scalar": torch.tensor(True)})
    back = topo_pai.load_masks(masks.save(tmp_path / f"m{suffix}"))
    assert all(torch.equal(back[k], masks[k]) for k in masks)
    assert back["scalar"].shape == ()


def test_masks_on_parameters_that_are_not_weights_are_skipped_with_a_warning(tmp_path):
    """A bias pruned with torch.nn.utils.prune made from_torch(model, None) refuse the
    model ("'0.bias' ... Drop it"), a key the user never gave."""
    from torch.nn.utils import prune as torch_prune

    net = _two_linears()
    torch_prune.random_unstructured(net[0], "weight", amount=0.5)
    torch_prune.random_unstructured(net[0], "bias", amount=0.5)
    with pytest.warns(UserWarning, match="skipped the masks of '0.bias'"):
        topo = topo_pai.from_torch(net, None, input_shape=(4,))
    assert topo.count_paths().exact > 0
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.warns(UserWarning, match="skipped the masks of '0.bias'"):
        loaded = topo_pai.load_masks(tmp_path / "sd.pt", model=_two_linears())
    assert set(loaded) == {"0.weight"}


def test_more_mistakes_are_named(tmp_path):
    q = torch.quantize_per_tensor(torch.ones(2, 2), 1.0, 0, torch.quint8)
    with pytest.raises(MaskError, match="dtype torch.quint8, which numpy cannot hold"):
        Masks({"w": q})
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(MaskError, match="is a directory, not a masks file"):
        topo_pai.load_masks(tmp_path / "d.npz")
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        Masks({"w": torch.ones(1, dtype=torch.bool)}).save(tmp_path / "d.npz")
    with torch.device("meta"):
        net = _two_linears()
    topo_pai.apply_masks(net, {"0.weight": torch.ones(3, 4, dtype=torch.bool)}, method="prune")
    with pytest.raises(MaskError, match="on the meta device"):
        topo_pai.read_masks(net)
