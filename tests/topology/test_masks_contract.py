"""Core API: the contracts of masks in :func:`topo_pai.from_torch` and
:class:`topo_pai.Topology`: ``with_masks``, masks from torch.nn.utils.prune, inputs never
mutated, effective masks, mask types and index dtypes (split from test_api.py)."""

from __future__ import annotations

import math
import os
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import topo_pai  # noqa: E402
from api_helpers import (RES, prunable_names, weight_shape, random_masks, dense_masks,
                         assert_matches_probe, all_queries, assert_same_answers, small_cnn,
                         SMALL_CNN_SHAPE)  # noqa: E402

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---------------------------------------------------------------------------
# with_masks, torch prune, immutability
# ---------------------------------------------------------------------------

def test_with_masks_equals_fresh_from_torch():
    model = small_cnn()
    base = topo_pai.from_torch(model, input_shape=SMALL_CNN_SHAPE)
    before = all_queries(base)
    for seed in range(3):
        masks = random_masks(model, density=0.4, seed=seed)
        fresh = all_queries(topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE))
        reused = all_queries(base.with_masks(masks))
        assert_same_answers(fresh, reused)
    # a missing key is dense; None is all dense
    partial = {"4.weight": random_masks(model, seed=9)["4.weight"]}
    assert_same_answers(all_queries(base.with_masks(partial)),
                        all_queries(topo_pai.from_torch(model, {**dense_masks(model), **partial},
                                                        input_shape=SMALL_CNN_SHAPE)))
    assert_same_answers(all_queries(base.with_masks(None)), before)
    # the original Topology is unaffected
    assert_same_answers(all_queries(base), before)


def _prune_model(model, how):
    if how == "random":
        torch.manual_seed(1)
        prune.random_unstructured(model[0], "weight", amount=0.5)
        prune.random_unstructured(model[7], "weight", amount=0.7)
        prune.l1_unstructured(model[4], "weight", amount=0.3)
    else:
        g = torch.Generator().manual_seed(2)
        for i in (0, 4, 7):
            w = model[i].weight
            prune.custom_from_mask(model[i], "weight", (torch.rand(w.shape, generator=g) < 0.5))
    return model


@pytest.mark.parametrize("how", ["random", "custom"])
def test_torch_prune_masks_are_picked_up(how):
    model = _prune_model(small_cnn(), how)
    explicit = {f"{i}.weight": model[i].weight_mask.clone() for i in (0, 4, 7)}
    auto = topo_pai.from_torch(model, input_shape=SMALL_CNN_SHAPE)
    given = topo_pai.from_torch(model, explicit, input_shape=SMALL_CNN_SHAPE)
    unpruned_copy = small_cnn()
    on_clean = topo_pai.from_torch(unpruned_copy, explicit, input_shape=SMALL_CNN_SHAPE)
    a = all_queries(auto)
    assert_same_answers(a, all_queries(given))
    assert_same_answers(a, all_queries(on_clean))
    assert auto.n_unpruned == sum(int(m.sum()) for m in explicit.values())
    dense = topo_pai.from_torch(small_cnn(), input_shape=SMALL_CNN_SHAPE)
    assert auto.count_paths("channel").exact < dense.count_paths("channel").exact
    assert_matches_probe(auto, unpruned_copy, explicit, SMALL_CNN_SHAPE)


def test_partial_prune_leaves_other_layers_dense():
    model = small_cnn()
    prune.random_unstructured(model[4], "weight", amount=0.5)
    auto = topo_pai.from_torch(model, input_shape=SMALL_CNN_SHAPE)
    masks = {"4.weight": model[4].weight_mask.clone()}
    assert_same_answers(all_queries(auto),
                        all_queries(topo_pai.from_torch(small_cnn(), masks,
                                                        input_shape=SMALL_CNN_SHAPE)))
    assert auto.n_unpruned == auto.n_params - int((model[4].weight_mask == 0).sum())


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("pruned", [False, True])
def test_model_and_masks_not_mutated(mode, pruned):
    model = small_cnn()
    model.append(nn.Dropout(0.5))
    if pruned:
        prune.random_unstructured(model[4], "weight", amount=0.5)
    # non-trivial BN running stats
    with torch.no_grad():
        model.train()
        model(torch.randn(8, *SMALL_CNN_SHAPE))
    model.train(mode == "train")
    flags = {n: m.training for n, m in model.named_modules()}
    state = _snapshot(model)
    hooks = {n: dict(m._forward_pre_hooks) for n, m in model.named_modules()}
    params = {n: p for n, p in model.named_parameters()}
    masks = random_masks(model, seed=4)
    masks["0.weight"] = masks["0.weight"].bool()
    masks["7.weight"] = masks["7.weight"].numpy()
    mask_ids = {k: id(v) for k, v in masks.items()}
    mask_vals = {k: (v.clone() if isinstance(v, torch.Tensor) else v.copy())
                 for k, v in masks.items()}
    mask_dtypes = {k: v.dtype for k, v in masks.items()}
    mask_dict_before = dict(masks)

    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    for res in RES:
        topo.count_paths(res).exact_value()
        topo.effective_masks(res)
        topo.summary(res)
        topo.forward_counts(res)
        topo.backward_counts(res)
    topo.to_networkx()
    topo.with_masks(masks).count_paths("neuron")

    assert {n: m.training for n, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    assert model[1].num_batches_tracked.item() == 1
    assert {n: dict(m._forward_pre_hooks) for n, m in model.named_modules()} == hooks
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert masks == mask_dict_before and list(masks) == list(mask_dict_before)
    for k, v in masks.items():
        assert id(v) == mask_ids[k]
        assert v.dtype == mask_dtypes[k]
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, mask_vals[k]), k
        else:
            assert np.array_equal(v, mask_vals[k]), k


def test_masks_are_copied_not_kept():
    model = small_cnn()
    masks = random_masks(model, seed=6)
    keep = {k: v.clone() for k, v in masks.items()}
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    for v in masks.values():  # the caller edits its tensors before the first query
        v.zero_()
    reference = topo_pai.from_torch(model, keep, input_shape=SMALL_CNN_SHAPE)
    assert_same_answers(all_queries(topo), all_queries(reference))
    assert topo.count_paths("channel").exact > 0


# ---------------------------------------------------------------------------
# effective masks and params
# ---------------------------------------------------------------------------

class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.spare = nn.Linear(5, 5)  # never called
        self.fc = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


@pytest.mark.parametrize("density", [1.0, 0.6, 0.3, 0.1])
def test_effective_masks_contract(density):
    model = small_cnn()
    masks = random_masks(model, density=density, seed=int(density * 10))
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    per_res = {}
    for res in RES:
        eff = topo.effective_masks(res)
        assert set(eff) == set(prunable_names(model))
        for k, v in eff.items():
            assert isinstance(v, torch.Tensor) and v.dtype == torch.bool
            assert tuple(v.shape) == weight_shape(model, k)
            assert not (v & ~masks[k].bool()).any(), f"{res}: effective weight outside mask {k}"
        assert topo.effective_params(res) == sum(int(v.sum()) for v in eff.values())
        per_res[res] = eff
    # a neuron-level path projects onto a channel-level path
    for k in per_res["neuron"]:
        assert not (per_res["neuron"][k] & ~per_res["channel"][k]).any()
    assert topo.effective_nodes("channel") <= topo.n_nodes("channel")
    assert topo.effective_nodes("neuron") <= topo.n_nodes("neuron")


def test_effective_masks_include_unused_layers():
    model = WithUnused()
    topo = topo_pai.from_torch(model, input_shape=(2, 4, 4))
    for res in RES:
        eff = topo.effective_masks(res)
        assert set(eff) == {"conv.weight", "spare.weight", "fc.weight"}
        assert eff["spare.weight"].shape == (5, 5) and not eff["spare.weight"].any()
        assert eff["conv.weight"].all() and eff["fc.weight"].all()
        assert topo.effective_params(res) == 3 * 2 * 9 + 2 * 12
    assert topo.count_paths("channel").exact == 2 * 3 * 9 * 4 * 2
    # a mask for the unused layer is accepted and validated
    topo2 = topo_pai.from_torch(model, {"spare.weight": torch.zeros(5, 5)}, input_shape=(2, 4, 4))
    assert topo2.count_paths("channel").exact == topo.count_paths("channel").exact
    with pytest.raises(topo_pai.MaskError, match="spare.weight"):
        topo_pai.from_torch(model, {"spare.weight": torch.full((5, 5), 3.0)}, input_shape=(2, 4, 4))


@pytest.mark.parametrize("which", ["all", "one_layer"])
def test_all_zero_masks(which):
    model = small_cnn()
    if which == "all":
        masks = {k: torch.zeros(weight_shape(model, k)) for k in prunable_names(model)}
    else:
        masks = {"4.weight": torch.zeros(weight_shape(model, "4.weight"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
        for res in RES:
            pc = topo.count_paths(res)
            assert pc.log10 == -math.inf
            assert pc.exact == 0
            assert float(pc) == 0.0
            assert topo.effective_nodes(res) == 0
            assert topo.effective_params(res) == 0
            assert not any(v.any() for v in topo.effective_masks(res).values())
            s = topo.summary(res)
            assert s.totals["log10_paths"] == -math.inf
            assert s.totals["effective_nodes"] == 0 and s.totals["effective_params"] == 0
            assert "-inf" in str(s)
            for name, nc in topo.forward_counts(res).items():
                nc.log10  # noqa: B018 - must not warn
            for name, nc in topo.backward_counts(res).items():
                nc.log10_total  # noqa: B018
            fc, bc = topo.forward_counts(res), topo.backward_counts(res)
            assert np.all(fc["7"].to_float() == 0)
            assert np.all(bc["input"].to_float() == 0)
    if which == "all":
        assert topo.n_unpruned == 0


# ---------------------------------------------------------------------------
# mask types and index dtype
# ---------------------------------------------------------------------------

def test_mask_types_give_same_answers():
    model = small_cnn()
    base = random_masks(model, seed=12)
    variants = {
        "float tensor": base,
        "bool tensor": {k: v.bool() for k, v in base.items()},
        "int tensor": {k: v.to(torch.int64) for k, v in base.items()},
        "uint8 tensor": {k: v.to(torch.uint8) for k, v in base.items()},
        "half tensor": {k: v.half() for k, v in base.items()},
        "numpy float": {k: v.numpy().astype(np.float64) for k, v in base.items()},
        "numpy bool": {k: v.numpy().astype(bool) for k, v in base.items()},
        "numpy int32": {k: v.numpy().astype(np.int32) for k, v in base.items()},
        "non-contiguous": {k: v.transpose(0, 1).contiguous().transpose(0, 1)
                           for k, v in base.items()},
    }
    ref = all_queries(topo_pai.from_torch(model, base, input_shape=SMALL_CNN_SHAPE))
    for label, masks in variants.items():
        got = all_queries(topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE))
        assert_same_answers(ref, got)


def test_index_dtype():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.Flatten(),
                          nn.Linear(4 * 16, 3))
    masks = random_masks(model, seed=13)
    topos = {dt: topo_pai.from_torch(model, masks, input_shape=(2, 6, 6), index_dtype=dt)
             for dt in (np.int32, np.int64)}
    assert_same_answers(all_queries(topos[np.int32]), all_queries(topos[np.int64]))
    assert_same_answers(all_queries(topos[np.int32]),
                        all_queries(topo_pai.from_torch(model, masks, input_shape=(2, 6, 6))))
    for dt, topo in topos.items():
        blocks = topo.blocks
        assert [(b.src, b.dst) for b in blocks] == [(0, 1), (1, 2), (2, 3)]
        # the conv blocks read their inputs directly (no structure map): built from masks
        for b in blocks[:2]:
            assert b.indptr.dtype == np.dtype(dt) and b.indices.dtype == np.dtype(dt)
        # same edges whatever the dtype
        for b, b32 in zip(blocks, topos[np.int32].blocks):
            assert (b.matrix != b32.matrix).nnz == 0
        # block matrices: channel multiplicities written out
        m0 = masks["0.weight"].sum((2, 3)).numpy()
        np.testing.assert_array_equal(blocks[0].matrix.toarray(), m0)
        np.testing.assert_array_equal(blocks[1].matrix.toarray(),
                                      masks["2.weight"][:, :, 0, 0].numpy())
        fc = masks["4.weight"].reshape(3, 4, 16).sum(2).numpy()
        np.testing.assert_array_equal(blocks[2].matrix.toarray(), fc)
    # the dtype propagates through with_masks
    t = topos[np.int64].with_masks(None)
    assert t.blocks[0].indptr.dtype == np.int64
    with pytest.raises(ValueError):
        topo_pai.from_torch(model, masks, input_shape=(2, 6, 6), index_dtype=np.int16)
