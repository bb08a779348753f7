"""The one-pass kernels of a SynFlow round against the torch op sequences they replace.

The torch engine builds its masked weights and finishes its scores with numba passes
on the CPU (:func:`~topo_pai.kernels.vectors.masked_values`,
:func:`~topo_pai.kernels.vectors.finish_log10_scores`); on other devices it runs
torch's ops. Both must give the same bits, since SynFlow's masks are read off these
scores: a last-bit difference could move a weight across the threshold. The oracle
of the end-to-end test is the engine's previous code path, written out with torch
ops: the flow through every weight by ``conv2d_weight`` (not the fused backward),
then ``log10``, the exponent, ``log10 |w|`` and a masked fill.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.kernels.vectors import finish_log10_scores, masked_values  # noqa: E402
from topo_pai.metrics.scaled import LOG10_2  # noqa: E402
from topo_pai.metrics.torch_neuron import TorchNeuronEngine  # noqa: E402
from topo_pai.models import resnet20  # noqa: E402


def _torch_finish(score, shift, log_w, kept):
    """The previous code: three torch ops."""
    t = torch.from_numpy(score.copy())
    t.add_(shift)
    if log_w is not None:
        t.add_(torch.from_numpy(log_w))
    t.masked_fill_(torch.from_numpy(kept) == 0, -math.inf)
    return t.numpy()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 300), st.booleans(),
       st.floats(-400.0, 400.0))
def test_finish_log10_scores_is_the_torch_sequence(seed, n, weighted, shift):
    rng = np.random.default_rng(seed)
    score = np.log10(rng.random(n) * 10.0 ** rng.integers(-300, 300, n))
    score[rng.random(n) < 0.2] = -np.inf  # log10 of a zero flow
    log_w = np.log10(rng.random(n)) if weighted else None
    if weighted:
        log_w[rng.random(n) < 0.1] = -np.inf  # |w| = 0
    kept = (rng.random(n) < 0.7).astype(np.uint8)
    want = _torch_finish(score, shift, log_w, kept)
    got = score.copy()
    finish_log10_scores(got, shift, log_w if weighted else got[:0], weighted, kept)
    np.testing.assert_array_equal(got, want)
    # and the dispatcher, from torch tensors (the bool view the engine passes)
    t = torch.from_numpy(score.copy())
    log_w_t = None if log_w is None else torch.from_numpy(log_w)
    TorchNeuronEngine.finish_scores(t, shift, log_w_t, torch.from_numpy(kept).view(torch.bool))
    np.testing.assert_array_equal(t.numpy(), want)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 300))
def test_masked_values_is_mask_times_weights(seed, n):
    rng = np.random.default_rng(seed)
    w = np.abs(rng.standard_normal(n)) * 10.0 ** rng.integers(-300, 300, n)
    w[rng.random(n) < 0.1] = 0.0
    kept = rng.random(n) < 0.5
    out = np.empty(n)
    masked_values(kept, w, out)
    want = (torch.from_numpy(kept.astype(np.uint8)).to(torch.float64)
            * torch.from_numpy(w)).numpy()
    assert np.array_equal(out.view(np.int64), want.view(np.int64))  # bits, zeros' signs too


def _previous_scores(topo, absw):
    """Per conv layer, the torch engine's scores as its previous code path computed them
    (separate passes; ``log10`` is numpy's, which the engine takes on the CPU)."""
    flows = topo.flows(absw, "neuron")
    engine = flows._engine
    out = {}
    with torch.no_grad():
        for i, layer in enumerate(topo.program.layers):
            if layer.kind == "Linear":
                continue
            vin, vout = engine._io(i)
            fin, bout = engine.fwd[vin], engine.bwd[vout]
            t = engine._geometry(i).through(fin.m, bout.m).reshape(-1).clone()
            with np.errstate(divide="ignore"):
                t = torch.from_numpy(np.log10(t.numpy()))
                log_w = torch.from_numpy(np.log10(absw[layer.param].reshape(-1)))
            t.add_((fin.e + bout.e) * LOG10_2)
            t.add_(log_w)
            mask = torch.from_numpy(engine.layer_masks[i].mask).to(torch.float64)
            t.masked_fill_(mask.reshape(-1) == 0, -math.inf)
            out[layer.param] = t.numpy().reshape(layer.weight_shape)
    return out


@pytest.mark.parametrize("density", [1.0, 0.4, 0.02])
def test_torch_engine_scores_are_the_previous_path_bit_for_bit(density):
    torch.manual_seed(0)
    model = resnet20()
    rng = np.random.default_rng(1)
    absw = {n: p.detach().abs().double().numpy() for n, p in model.named_parameters()
            if p.dim() > 1}
    masks = None if density == 1.0 else {n: rng.random(w.shape) < density
                                         for n, w in absw.items()}
    topo = topo_pai.from_torch(model, masks, (3, 16, 16), engine="torch")
    got = topo.flows(absw, "neuron").log10_through_weights()
    want = _previous_scores(topo, absw)
    assert want
    for name, w in want.items():
        np.testing.assert_array_equal(got[name], w, err_msg=name)


def test_torch_engine_masked_weights_are_mask_times_weights():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    rng = np.random.default_rng(0)
    absw = {n: np.abs(rng.standard_normal(p.shape)) for n, p in model.named_parameters()
            if p.dim() > 1}
    absw["0.weight"].reshape(-1)[:5] = 0.0
    masks = {n: rng.random(w.shape) < 0.5 for n, w in absw.items()}
    engine = topo_pai.from_torch(model, masks, (2, 7, 7), engine="torch").flows(
        absw, "neuron")._engine
    for i, name in enumerate(("0.weight", "2.weight")):
        want = torch.from_numpy(masks[name].astype(np.float64)) * torch.from_numpy(absw[name])
        got = engine._weight(i, False)
        assert torch.equal(got.view(torch.int64), want.view(torch.int64))
        assert torch.equal(engine._weight(i, True), torch.from_numpy(masks[name] * 1.0))
    assert masks["0.weight"].dtype == bool  # the caller's masks are not touched
