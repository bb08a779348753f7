"""Core API of ``topo_pai`` against an independent float64 oracle (``probe`` in
api_helpers.py, which states the semantics it re-implements), on chains, output maps and
functional forms (split from test_api.py)."""

from __future__ import annotations

import math
import os
import zlib

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from api_helpers import (RES, random_masks, dense_masks, _adaptive_sum, seq_with_head,
                         assert_matches_probe, all_queries, assert_same_answers)  # noqa: E402

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---------------------------------------------------------------------------
# independent oracle on random masks
# ---------------------------------------------------------------------------

def _chain_cnn_pool():
    return seq_with_head(
        [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
         nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(4),
         nn.MaxPool2d(2, ceil_mode=True)], (3, 9, 9), 3), (3, 9, 9)


def _chain_conv1d():
    return seq_with_head(
        [nn.Conv1d(2, 3, 3, padding="same", dilation=2), nn.ReLU(),
         nn.Conv1d(3, 4, 4, padding="same"), nn.AvgPool1d(2)], (2, 11), 3), (2, 11)


def _chain_dilated_gap():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, dilation=2, padding=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=4, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3)), (2, 8, 7)


def _chain_avgpool_pad():
    return seq_with_head(
        [nn.Conv2d(2, 3, 2), nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(3, 2, 1)],
        (2, 7, 6), 2), (2, 7, 6)


def _chain_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.Linear(5, 3)), (6,)


def _chain_adaptive():
    return seq_with_head(
        [nn.Conv2d(2, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 2)), nn.Conv2d(3, 3, 1),
         nn.AdaptiveMaxPool2d((2, 2))], (2, 8, 6), 2), (2, 8, 6)


def _chain_adaptive1d():
    return seq_with_head(
        [nn.Conv1d(2, 3, 2), nn.AdaptiveAvgPool1d(4), nn.Conv1d(3, 2, 3, padding=1),
         nn.AdaptiveMaxPool1d(3)], (2, 9), 2), (2, 9)


def _chain_ceil_edge():
    # ceil_mode where torch drops the last window because it would start in the
    # right padding: k=3, s=3, p=1 on 5 gives 2 windows, not ceil(4/3)+1 = 3
    return seq_with_head(
        [nn.Conv2d(2, 3, 1), nn.MaxPool2d(3, 3, padding=1, ceil_mode=True), nn.Conv2d(3, 2, 1),
         nn.AvgPool2d(2, ceil_mode=True)], (2, 5, 8), 2), (2, 5, 8)


def _chain_ceil_edge1d():
    return seq_with_head(
        [nn.Conv1d(2, 3, 1), nn.MaxPool1d(3, 3, padding=1, ceil_mode=True)], (2, 5), 2), (2, 5)


def _chain_aniso():
    return seq_with_head(
        [nn.Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
         nn.Conv2d(3, 3, (1, 3), dilation=(1, 2), padding=(0, 2)),
         nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1), dilation=(1, 2)),
         nn.Conv2d(3, 2, (2, 2), stride=(1, 3))], (2, 7, 9), 2), (2, 7, 9)


def _chain_same2d():
    return seq_with_head(
        [nn.Conv2d(2, 3, (2, 4), padding="same"), nn.ReLU(),
         nn.Conv2d(3, 3, 3, padding="same", dilation=2), nn.Conv2d(3, 2, 3, padding="valid"),
         nn.MaxPool2d(2, dilation=2)], (2, 7, 8), 2), (2, 7, 8)


CHAINS = {"aniso": _chain_aniso, "same2d": _chain_same2d, "ceil_edge": _chain_ceil_edge, "ceil_edge1d": _chain_ceil_edge1d,
          "adaptive": _chain_adaptive, "adaptive1d": _chain_adaptive1d,
          "cnn_pool": _chain_cnn_pool, "conv1d": _chain_conv1d,
          "dilated_gap": _chain_dilated_gap, "avgpool_pad": _chain_avgpool_pad,
          "mlp": _chain_mlp}


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
def test_against_float64_probe(name, density):
    torch.manual_seed(0)
    model, shape = CHAINS[name]()
    masks = random_masks(model, density=density, seed=zlib.crc32(f"{name}{density}".encode()))
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    assert_matches_probe(topo, model, masks, shape)


def test_probe_adaptive_windows_are_overlapping():
    """Guard on the oracle: adaptive pooling 5 -> 3 has overlapping windows
    [0, 2), [1, 4), [3, 5), so a sum over them counts positions 1 and 3 twice."""
    x = torch.arange(5, dtype=torch.float64).reshape(1, 1, 5)
    np.testing.assert_array_equal(_adaptive_sum(x, 3).reshape(-1).numpy(), [1, 6, 7])


# ---------------------------------------------------------------------------
# output maps: several outputs, cat and flatten at the output
# ---------------------------------------------------------------------------

def test_several_outputs_add_up():
    """A 4 -> 3 trunk with heads of 2 and 5 units returned as a tuple/dict, or
    concatenated: paths end at any output unit, 4*3*2 + 4*3*5 = 84."""

    class Heads(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how = how
            self.trunk, self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(3, 5)

        def forward(self, x):
            h = F.relu(self.trunk(x))
            if self.how == "tuple":
                return self.a(h), self.b(h)
            if self.how == "dict":
                return {"a": self.a(h), "b": [self.b(h)]}
            return torch.cat([self.a(h), self.b(h)], 1)

    for how in ("tuple", "dict", "cat"):
        topo = topo_pai.from_torch(Heads(how), input_shape=(4,))
        for res in RES:
            assert topo.count_paths(res).exact == 84, (how, res)
            assert topo.effective_nodes(res) == 4 + 3 + 2 + 5
        m = torch.ones(3, 4)
        m[:, 0] = 0
        assert topo.with_masks({"trunk.weight": m}).count_paths().exact == 63


def test_flattened_conv_output():
    """conv(C0 -> C1, k, valid) -> maxpool 2 -> flatten as the network output.
    The output units are the C1*h*w features; feature (c, p) is reached by the
    C0*k^2 paths into channel c (channel) or by the 4*C0*k^2 paths into its
    pooled unit (neuron)."""
    C0, C1, k, H = 2, 3, 3, 6
    h = (H - k + 1) // 2
    model = nn.Sequential(nn.Conv2d(C0, C1, k), nn.MaxPool2d(2), nn.Flatten())
    topo = topo_pai.from_torch(model, input_shape=(C0, H, H))
    assert topo.count_paths("channel").exact == C0 * k * k * C1 * h * h
    assert topo.count_paths("neuron").exact == 4 * C0 * k * k * C1 * h * h
    m = torch.ones(C1, C0, k, k)
    m[0, :, 0, 0] = 0
    t = topo.with_masks({"0.weight": m})
    assert t.count_paths("channel").exact == (C0 * k * k * C1 - C0) * h * h
    assert math.isclose(t.count_paths("channel").log10,
                        math.log10((C0 * k * k * C1 - C0) * h * h), rel_tol=1e-12)


# ---------------------------------------------------------------------------
# functional forms
# ---------------------------------------------------------------------------

class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(2, 3, 1)
        self.c3 = nn.Conv2d(3, 2, 3, padding=1)
        self.c4 = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(5 * 2 * 2, 4)

    def forward(self, x):
        s = F.relu(self.c1(x)) + self.c2(x)
        t = torch.cat([s, self.c3(s)], 1)
        p = F.avg_pool2d(t, 2)
        h = self.fc(torch.flatten(p, 1))
        g = self.c4(t).mean((2, 3))
        return h + g


class ModuleNet(FunctionalNet):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())

    def forward(self, x):
        s = self.relu(self.c1(x)).add(self.c2(x))
        t = torch.concat((s, self.c3(s)), dim=1)
        p = self.pool(t)
        h = self.fc(self.flat(p))
        g = self.gap(self.c4(t))
        return torch.add(h, g)


def _functional_probe(masks):
    """Neuron path count of FunctionalNet with sum pooling, in float64."""
    d = torch.float64
    x = torch.ones(1, 2, 4, 4, dtype=d)
    m = {k: v.to(d) for k, v in masks.items()}
    s = F.conv2d(x, m["c1.weight"], padding=1) + F.conv2d(x, m["c2.weight"])
    t = torch.cat([s, F.conv2d(s, m["c3.weight"], padding=1)], 1)
    p = F.avg_pool2d(t, 2, divisor_override=1)
    h = F.linear(torch.flatten(p, 1), m["fc.weight"])
    g = F.conv2d(t, m["c4.weight"]).sum((2, 3))
    return float((h + g).sum())


def _functional_probe_channel(masks):
    """Channel path count of FunctionalNet: convs are tap-count matrices, pools
    and means identities, flatten repeats channel c over its 2*2 features."""
    d = torch.float64
    taps = {k: v.to(d).sum(dim=tuple(range(2, v.dim()))) if v.dim() > 2 else v.to(d)
            for k, v in masks.items()}
    x = torch.ones(2, dtype=d)
    s = taps["c1.weight"] @ x + taps["c2.weight"] @ x
    t = torch.cat([s, taps["c3.weight"] @ s])
    h = taps["fc.weight"] @ t.repeat_interleave(4)
    g = taps["c4.weight"] @ t
    return float((h + g).sum())


def test_functional_and_module_forms_agree():
    f_model, m_model = FunctionalNet(), ModuleNet()
    # dense channel count, by hand: input 2 ch (count 1); c1 -> 3 ch of 2*9 = 18;
    # c2 -> 3 ch of 2; s = 20 each; c3 -> 2 ch of 3*9*20 = 540; t = [20]*3 + [540]*2;
    # fc: each of 4 outputs gets 4 features of every channel: 4*(60 + 1080) = 4560;
    # c4 + mean: each of 4 gets 1140; h + g = 5700 each: 22800 in all.
    dense = topo_pai.from_torch(f_model, input_shape=(2, 4, 4))
    assert dense.count_paths("channel").exact == 22800
    assert dense.count_paths("neuron").exact == _functional_probe(dense_masks(f_model))
    assert _functional_probe_channel(dense_masks(f_model)) == 22800
    for seed in range(3):
        masks = random_masks(f_model, density=0.5, seed=seed)
        a = topo_pai.from_torch(f_model, masks, input_shape=(2, 4, 4))
        b = topo_pai.from_torch(m_model, masks, input_shape=(2, 4, 4))
        qa, qb = all_queries(a), all_queries(b)
        assert_same_answers(qa, qb)
        assert qa["neuron"]["exact"] == _functional_probe(masks)
        assert qa["channel"]["exact"] == _functional_probe_channel(masks)
        assert a.group_names == b.group_names


class Wrap(nn.Module):
    """conv -> op -> flatten -> fc, with ``op`` a function traced through by fx."""

    def __init__(self, op, n_feat):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.op = op
        self.fc = nn.Linear(n_feat, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.op(F.relu(self.conv(x))), 1))


POOL_VARIANTS = {  # name: (functional op, equivalent module)
    "max2": (lambda h: F.max_pool2d(h, 2), nn.MaxPool2d(2)),
    "max_kw": (lambda h: F.max_pool2d(h, kernel_size=3, stride=2, padding=1),
               nn.MaxPool2d(3, 2, 1)),
    "max_ceil_dil": (lambda h: F.max_pool2d(h, 2, 2, 0, 2, True),
                     nn.MaxPool2d(2, 2, 0, dilation=2, ceil_mode=True)),
    "torch_max": (lambda h: torch.max_pool2d(h, 2), nn.MaxPool2d(2)),
    "avg_ceil": (lambda h: F.avg_pool2d(h, 3, stride=2, padding=1, ceil_mode=True),
                 nn.AvgPool2d(3, 2, 1, ceil_mode=True)),
    "adaptive_avg": (lambda h: F.adaptive_avg_pool2d(h, (2, 3)), nn.AdaptiveAvgPool2d((2, 3))),
    "adaptive_max": (lambda h: F.adaptive_max_pool2d(h, 2), nn.AdaptiveMaxPool2d(2)),
    "mean": (lambda h: h.mean((2, 3)), nn.AdaptiveAvgPool2d(1)),
    "mean_keepdim": (lambda h: h.mean(dim=(-1, -2), keepdim=True), nn.AdaptiveAvgPool2d(1)),
    "torch_mean": (lambda h: torch.mean(h, (2, 3)), nn.AdaptiveAvgPool2d(1)),
    "sum": (lambda h: h.sum((2, 3)), nn.AdaptiveAvgPool2d(1)),
    "amax": (lambda h: h.amax((2, 3)), nn.AdaptiveMaxPool2d(1)),
    "mean_twice": (lambda h: h.mean(3).mean(2), nn.AdaptiveAvgPool2d(1)),
}


@pytest.mark.parametrize("name", list(POOL_VARIANTS))
def test_pool_and_reduce_functional_forms(name):
    fn, module = POOL_VARIANTS[name]
    shape = (2, 8, 7)
    with torch.no_grad():
        feat = torch.flatten(module(torch.zeros(1, 3, 7, 6)), 1).shape[1]
    functional = Wrap(fn, feat)
    seq = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), module, nn.Flatten(), nn.Linear(feat, 2))
    seq_masks = random_masks(seq, density=0.6, seed=21)
    fn_masks = {"conv.weight": seq_masks["0.weight"], "fc.weight": seq_masks["4.weight"]}
    a = topo_pai.from_torch(functional, fn_masks, input_shape=shape)
    b = topo_pai.from_torch(seq, seq_masks, input_shape=shape)
    qa, qb = all_queries(a), all_queries(b)
    for q in (qa, qb):  # rename so the per-weight answers line up
        for res in RES:
            q[res]["masks"] = {k.replace("conv.", "0.").replace("fc.", "4."): v
                               for k, v in q[res]["masks"].items()}
            for key in ("fwd", "bwd"):
                q[res][key] = list(q[res][key].values())
    for res in RES:
        for key in ("fwd", "bwd"):
            qa[res][key] = dict(enumerate(qa[res][key]))
            qb[res][key] = dict(enumerate(qb[res][key]))
    assert_same_answers(qa, qb)
    assert_matches_probe(b, seq, seq_masks, shape)


FLATTEN_VARIANTS = {
    "torch.flatten": lambda h: torch.flatten(h, 1),
    "method": lambda h: h.flatten(1),
    "view_size": lambda h: h.view(h.size(0), -1),
    "reshape_shape": lambda h: h.reshape(h.shape[0], -1),
    "view_minus_one_first": lambda h: h.view(-1, 3 * 5 * 5),
    "flatten_module": nn.Flatten(),
}


@pytest.mark.parametrize("name", list(FLATTEN_VARIANTS))
def test_flatten_forms(name):
    class Net(nn.Module):
        def __init__(self, flat):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 2)
            self.flat = flat
            self.fc = nn.Linear(75, 2)

        def forward(self, x):
            return self.fc(self.flat(F.relu(self.conv(x))))

    ref_model = Net(nn.Flatten())
    masks = random_masks(ref_model, density=0.5, seed=22)
    ref = topo_pai.from_torch(ref_model, masks, input_shape=(2, 6, 6))
    got = topo_pai.from_torch(Net(FLATTEN_VARIANTS[name]), masks, input_shape=(2, 6, 6))
    assert_same_answers(all_queries(ref), all_queries(got))
    seq = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(75, 2))
    seq_masks = {"0.weight": masks["conv.weight"], "3.weight": masks["fc.weight"]}
    seq_topo = topo_pai.from_torch(seq, seq_masks, input_shape=(2, 6, 6))
    assert_matches_probe(seq_topo, seq, seq_masks, (2, 6, 6))
    for res in RES:
        assert seq_topo.count_paths(res).exact == got.count_paths(res).exact
        assert seq_topo.effective_nodes(res) == got.effective_nodes(res)


def test_strided_conv_skips_input_positions():
    """1x1 conv with stride 2 on 5x5 reads only the 9 even positions: those are
    the only effective input nodes at neuron resolution."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1, stride=2))
    topo = topo_pai.from_torch(model, input_shape=(1, 5, 5))
    assert topo.count_paths("neuron").exact == 9 * 2
    assert topo.effective_nodes("neuron") == 9 + 2 * 9
    assert topo.n_nodes("neuron") == 25 + 2 * 9
    assert topo.count_paths("channel").exact == 2
    assert topo.effective_nodes("channel") == 3
    fc = topo.forward_counts("neuron")["input"].to_float()
    bc = topo.backward_counts("neuron")["input"].to_float()
    assert fc.shape == (1, 5, 5) and np.all(fc == 1)
    want = np.zeros((1, 5, 5))
    want[0, ::2, ::2] = 2
    np.testing.assert_array_equal(bc, want)


def test_spatial_cat():
    """Two 1x1 convs C0 -> C, concatenated along H, then a 1x1 conv C -> D.
    Channel: channel c of the cat merges channel c of both branches:
    2 * C0 * C * D. Neuron: 2 * H * W * C0 * C * D."""
    C0, C, D, H, W = 2, 3, 2, 3, 4

    class Net(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dim = dim
            self.a, self.b, self.c = nn.Conv2d(C0, C, 1), nn.Conv2d(C0, C, 1), nn.Conv2d(C, D, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], self.dim))

    for dim in (2, 3, -1):
        topo = topo_pai.from_torch(Net(dim), input_shape=(C0, H, W))
        assert topo.count_paths("channel").exact == 2 * C0 * C * D
        assert topo.count_paths("neuron").exact == 2 * H * W * C0 * C * D
        m = torch.ones(C, C0, 1, 1)
        m[0] = 0
        t = topo.with_masks({"a.weight": m})
        assert t.count_paths("channel").exact == (2 * C - 1) * C0 * D
        assert t.count_paths("neuron").exact == (2 * C - 1) * C0 * D * H * W
        assert t.effective_nodes("channel") == C0 + (C - 1) + C + D


class BranchyMLP(nn.Module):
    """Skip, cat and several outputs on feature vectors (no spatial dims)."""

    def __init__(self, conv=False):
        super().__init__()
        lin = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.conv = conv
        self.a, self.b, self.c = lin(5, 4), lin(4, 4), lin(9, 3)
        self.d, self.e = lin(3, 2), lin(4, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        k = F.relu(self.b(h)) + h
        z = self.c(torch.cat([k, x], 1))
        if self.conv:
            z = F.max_pool2d(z, 1)
        return self.d(z), self.e(k) * 0.5


@pytest.mark.parametrize("conv", [False, True])
def test_no_spatial_dims_channel_equals_neuron(conv):
    """With no spatial extent (features, or 1x1 convs on a 1x1 input), a channel
    is a neuron: both resolutions must give identical answers."""
    model = BranchyMLP(conv)
    shape = (5, 1, 1) if conv else (5,)
    dense = topo_pai.from_torch(model, input_shape=shape)
    # dense: a 5*... by hand: h: 5 each; k = 4*5 + 5 = 25 each; z: 4*25 + 5*1 = 105 each;
    # d: 2 * 3 * 105; e: 3 * 4 * 25
    assert dense.count_paths("channel").exact == 2 * 3 * 105 + 3 * 4 * 25
    for seed in range(4):
        topo = dense.with_masks(random_masks(model, density=0.5, seed=30 + seed))
        q = all_queries(topo)
        c, n = q["channel"], q["neuron"]
        assert c["exact"] == n["exact"] and c["log10"] == pytest.approx(n["log10"], abs=1e-12)
        assert c["nodes"] == n["nodes"] and c["params"] == n["params"]
        for k in c["masks"]:
            assert np.array_equal(c["masks"][k], n["masks"][k]), k
        for key in ("fwd", "bwd"):
            for g in c[key]:
                np.testing.assert_array_equal(c[key][g].reshape(-1), n[key][g].reshape(-1))


def test_output_includes_the_input_through_a_skip():
    """y = fc(x) + x: input unit j reaches output unit j directly (a path of no
    edges) and through fc's 4 edges: 16 + 4 paths, at both resolutions."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    topo = topo_pai.from_torch(Net(), input_shape=(4,))
    for res in RES:
        assert topo.count_paths(res).exact == 20
    t = topo.with_masks({"fc.weight": torch.zeros(4, 4)})
    for res in RES:
        assert t.count_paths(res).exact == 4
        assert t.effective_nodes(res) == 4
        assert t.effective_params(res) == 0


@pytest.mark.parametrize("how", ["unflatten", "view"])
def test_unflatten_features_into_channels_neuron(how):
    """Linear(4, 18) -> view as (2, 3, 3) -> valid 3x3 conv to 1 channel: the
    single output position reads each of the 18 features through exactly one
    tap, so there are 4 * 18 = 72 neuron-level paths."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 18)
            self.un = nn.Unflatten(1, (2, 3, 3))
            self.conv = nn.Conv2d(2, 1, 3)

        def forward(self, x):
            h = self.fc(x)
            h = self.un(h) if how == "unflatten" else h.view(-1, 2, 3, 3)
            return self.conv(h)

    topo = topo_pai.from_torch(Net(), input_shape=(4,))
    assert topo.count_paths("neuron").exact == 72
    assert topo.n_nodes("neuron") == topo.n_nodes("channel") == 4 + 18 + 1
    assert topo.effective_params("neuron") == 4 * 18 + 18
    m = torch.ones(1, 2, 3, 3)
    m[0, 1] = 0  # channel 1 = features 9..17 no longer reach the output
    t = topo.with_masks({"conv.weight": m})
    assert t.count_paths("neuron").exact == 36
    assert t.effective_nodes("neuron") == 4 + 9 + 1
    assert t.effective_nodes("channel") == 4 + 9 + 1
    eff = t.effective_masks("channel")["fc.weight"]
    assert eff[:9].all() and not eff[9:].any()


@pytest.mark.parametrize("chain, shape", [
    (lambda h: h.flatten(1).view(-1, 2, 3, 3), (1, 5, 5)),   # split, then merge back
    (lambda h: h.view(h.size(0), -1).reshape(h.shape), (1, 5, 5)),
    (lambda h: h.flatten(1).view(-1, 2, 9).view(-1, 2, 3, 3), (1, 5, 5)),
    (lambda h: h.unsqueeze(1).squeeze(1), (6,)),              # merge, then split back
    (lambda h: h.view(-1, 2, 3).flatten(1), (6,)),
    (lambda h: h.view(-1, 1, 6).view(-1, 3, 2).flatten(1), (6,)),
])
def test_a_chain_of_reshapes_is_one_reshape(chain, shape):
    """A reshape chain that ends where it began is the identity at both resolutions: the
    counts, effective nodes and weights equal those of the same model without it (taken
    step by step, the split then the merge multiplied channel counts by H*W)."""
    conv = len(shape) == 3

    class Net(nn.Module):
        def __init__(self, reshape):
            super().__init__()
            self.reshape = reshape
            self.a = nn.Conv2d(1, 2, 3) if conv else nn.Linear(6, 6)
            self.b = nn.Conv2d(2, 1, 3) if conv else nn.Linear(6, 3)

        def forward(self, x):
            h = self.a(x)
            return self.b(chain(h) if self.reshape else h)

    torch.manual_seed(0)
    with_chain = topo_pai.from_torch(Net(True), input_shape=shape)
    without = topo_pai.from_torch(Net(False), input_shape=shape)
    for masks in (None, random_masks(Net(False), 0.6, seed=1), random_masks(Net(False), 0.3, 2)):
        a = with_chain if masks is None else with_chain.with_masks(masks)
        b = without if masks is None else without.with_masks(masks)
        for res in RES:
            assert a.count_paths(res).exact == b.count_paths(res).exact
            assert a.effective_nodes(res) == b.effective_nodes(res)
            assert a.effective_params(res) == b.effective_params(res)


def test_functional_relu_variants_and_inplace_ops():
    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.l1(x)
            h = torch.relu(h)
            h = h.relu()
            h = F.relu(h, inplace=True)
            h = torch.tanh(h) * 2.0 + 1.0
            h = F.dropout(h, 0.1, self.training)
            return self.l2(h.contiguous())

    topo = topo_pai.from_torch(A(), input_shape=(3,))
    for res in RES:
        assert topo.count_paths(res).exact == 3 * 4 * 2
