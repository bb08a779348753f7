"""Core API: exact path counts, effective nodes and params against closed forms derived
from the written semantics (split from test_api.py)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from api_helpers import (RES, random_masks, dense_masks, assert_matches_probe)  # noqa: E402

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("widths", [(4, 3, 2), (5, 1, 7), (3, 8, 8, 8, 2), (1, 1), (6, 2, 9, 3, 4, 5)])
def test_dense_mlp_closed_form(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    topo = topo_pai.from_torch(model, input_shape=(widths[0],))
    n_edges = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    for res in RES:
        pc = topo.count_paths(res)
        assert pc.exact == math.prod(widths)
        assert math.isclose(pc.log10, math.log10(math.prod(widths)), abs_tol=1e-12)
        assert topo.n_nodes(res) == sum(widths)
        assert topo.effective_nodes(res) == sum(widths)
        assert topo.effective_params(res) == n_edges
    assert topo.n_params == topo.n_unpruned == n_edges


@pytest.mark.parametrize("conv_cls,input_shape", [(nn.Conv2d, (3, 15, 14)), (nn.Conv1d, (3, 17))])
def test_dense_conv_chain_closed_form(conv_cls, input_shape):
    """Channel: C0 * prod(C_l * K_l) with K_l the kernel volume (K parallel edges
    per channel pair), whatever stride/padding/dilation.

    Neuron, valid convs only (no padding: every tap of every output position is
    inside the input): a path is a choice of output position, of a channel and
    a kernel tap at every layer, and of an input channel, so the count is
    C0 * prod(C_l * K_l) * (number of output positions)."""
    nd = len(input_shape) - 1
    specs = [  # (out_channels, k, stride, dilation)
        (4, 3, 1, 1), (2, 2, 2, 1), (5, 3, 1, 2),
    ]
    layers, C = [], input_shape[0]
    for out, k, s, d in specs:
        layers += [conv_cls(C, out, k, stride=s, dilation=d), nn.ReLU()]
        C = out
    model = nn.Sequential(*layers)
    topo = topo_pai.from_torch(model, input_shape=input_shape)
    with torch.no_grad():
        out_shape = model(torch.zeros((1,) + input_shape)).shape[1:]
    channel = input_shape[0] * math.prod(out * k ** nd for out, k, _, _ in specs)
    positions = math.prod(out_shape[1:])
    assert positions > 0
    assert topo.count_paths("channel").exact == channel
    assert topo.count_paths("neuron").exact == channel * positions
    # the same net with padding: channel count unchanged (pads add no edges)
    padded, C = [], input_shape[0]
    for out, k, s, d in specs:
        padded += [conv_cls(C, out, k, stride=s, dilation=d, padding=d * (k - 1) // 2 + 1)]
        C = out
    topo_p = topo_pai.from_torch(nn.Sequential(*padded), input_shape=input_shape)
    assert topo_p.count_paths("channel").exact == channel


def test_dense_conv_closed_form_small_numbers():
    """Spelled-out instance: 3 -> 4 (3x3) -> 2 (1x1) on 8x8, valid padding.
    Channel: 3 * (4*9) * (2*1) = 216. Neuron: 216 * 6*6 = 7776."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    topo = topo_pai.from_torch(model, input_shape=(3, 8, 8))
    assert topo.count_paths("channel").exact == 216
    assert topo.count_paths("neuron").exact == 7776
    assert topo.n_nodes("channel") == 3 + 4 + 2
    assert topo.n_nodes("neuron") == 3 * 64 + 4 * 36 + 2 * 36


@pytest.mark.parametrize("gap", ["module", "mean", "adaptive_fn"])
def test_pointwise_conv_global_pool_linear(gap):
    """1x1 conv C0->C1 on HxW, global average pool, Linear(C1, n).

    Neuron: a path picks a position, an input channel, a conv channel (the pool
    connects (c, p) to c once) and an output unit: H*W*C0*C1*n.
    Channel: C0*C1*n."""
    C0, C1, n, H, W = 3, 5, 4, 6, 7

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(C0, C1, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(C1, n)

        def forward(self, x):
            h = F.relu(self.conv(x))
            if gap == "module":
                h = torch.flatten(self.pool(h), 1)
            elif gap == "mean":
                h = h.mean((2, 3))
            else:
                h = F.adaptive_avg_pool2d(h, 1).flatten(1)
            return self.fc(h)

    topo = topo_pai.from_torch(Net(), input_shape=(C0, H, W))
    assert topo.count_paths("neuron").exact == H * W * C0 * C1 * n
    assert topo.count_paths("channel").exact == C0 * C1 * n
    assert topo.n_nodes("neuron") == C0 * H * W + C1 * H * W + n
    assert topo.n_nodes("channel") == C0 + C1 + n


def test_conv_pool_flatten_linear_closed_form():
    """conv(C0->C1, k, valid) on HxH -> maxpool 2 -> flatten -> Linear(., n).

    Channel: flatten maps channel c to its h*w pooled features, so c has h*w
    parallel edges to every output: C0 * C1*k^2 * h*w * n.
    Neuron: the pool windows tile the conv output, so every conv position
    reaches exactly one pooled unit: C0 * C1*k^2 * Ho^2 * n."""
    C0, C1, k, H, n = 2, 3, 3, 10, 4
    Ho = H - k + 1  # 8
    h = Ho // 2
    model = nn.Sequential(nn.Conv2d(C0, C1, k), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(C1 * h * h, n))
    topo = topo_pai.from_torch(model, input_shape=(C0, H, H))
    assert topo.count_paths("channel").exact == C0 * C1 * k * k * h * h * n
    assert topo.count_paths("neuron").exact == C0 * C1 * k * k * Ho * Ho * n


def test_conv1d_same_padding_dilation_closed_form():
    """Conv1d(k=3, dilation=2, padding='same') on L=10: pads 2 on each side; the
    taps sit at offsets -2, 0, +2, hitting 8, 10, 8 positions: 26 per channel
    pair. Then Conv1d(k=4, padding='same') (pads 1 left, 2 right): offsets
    -1..2 hit 9+10+9+8 = 36 positions per pair, but composed with the first
    layer the count depends on positions; we check it against a torch probe."""
    C0, C1, L = 2, 3, 10
    one = nn.Sequential(nn.Conv1d(C0, C1, 3, padding="same", dilation=2))
    topo = topo_pai.from_torch(one, input_shape=(C0, L))
    assert topo.count_paths("neuron").exact == C0 * C1 * 26
    assert topo.count_paths("channel").exact == C0 * C1 * 3
    even = nn.Sequential(nn.Conv1d(C0, C1, 4, padding="same"))
    topo = topo_pai.from_torch(even, input_shape=(C0, L))
    assert topo.count_paths("neuron").exact == C0 * C1 * 36
    assert topo.count_paths("channel").exact == C0 * C1 * 4
    both = nn.Sequential(nn.Conv1d(C0, C1, 3, padding="same", dilation=2), nn.ReLU(),
                         nn.Conv1d(C1, 2, 4, padding="same", dilation=3))
    topo = topo_pai.from_torch(both, input_shape=(C0, L))
    assert_matches_probe(topo, both, dense_masks(both), (C0, L))
    assert_matches_probe(topo.with_masks(random_masks(both, seed=3)), both,
                         random_masks(both, seed=3), (C0, L))


def test_depthwise_conv_closed_form():
    """Depthwise 3x3 (groups=C) then pointwise 1x1 to D, valid, on CxHxW.
    Channel: depthwise gives channel c -> c with 9 parallel edges: C * 9 * D.
    Neuron: C * 9 * (H-2)(W-2) * D."""
    C, D, H, W = 3, 4, 6, 7
    model = nn.Sequential(nn.Conv2d(C, C, 3, groups=C), nn.ReLU(), nn.Conv2d(C, D, 1))
    topo = topo_pai.from_torch(model, input_shape=(C, H, W))
    assert topo.count_paths("channel").exact == C * 9 * D
    assert topo.count_paths("neuron").exact == C * 9 * (H - 2) * (W - 2) * D
    # channel c's depthwise kernel fully pruned: input c and depthwise c are dead
    m = torch.ones(C, 1, 3, 3)
    m[1] = 0
    t2 = topo.with_masks({"0.weight": m})
    assert t2.count_paths("channel").exact == (C - 1) * 9 * D
    assert t2.count_paths("neuron").exact == (C - 1) * 9 * (H - 2) * (W - 2) * D
    assert t2.effective_nodes("channel") == (C - 1) + (C - 1) + D
    assert t2.effective_nodes("neuron") == (C - 1) * H * W + (C - 1) * (H - 2) * (W - 2) \
        + D * (H - 2) * (W - 2)
    eff = t2.effective_masks("channel")
    assert not eff["2.weight"][:, 1].any() and eff["2.weight"][:, [0, 2]].all()
    # a dead channel *before* the depthwise conv: its depthwise kernel cannot be
    # effective, even though its group's index within the weight is 0
    pre = nn.Sequential(nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 3, groups=C), nn.Conv2d(C, D, 1))
    m0 = torch.ones(C, C, 1, 1)
    m0[2] = 0
    t3 = topo_pai.from_torch(pre, {"0.weight": m0}, input_shape=(C, H, W))
    for res in RES:
        eff = t3.effective_masks(res)["1.weight"]
        assert eff[:2].all() and not eff[2].any(), res
        assert t3.effective_params(res) == (C - 1) * C + (C - 1) * 9 + (C - 1) * D, res
    # a grouped conv (groups=2) against the probe, random masks
    g2 = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, padding=1), nn.ReLU(),
                       nn.Conv2d(6, 2, 3, groups=2, stride=2))
    masks = random_masks(g2, seed=5, density=0.4)
    assert_matches_probe(topo_pai.from_torch(g2, masks, input_shape=(4, 7, 7)), g2, masks,
                         (4, 7, 7))


def test_neuron_effectiveness_differs_from_channel_at_padding():
    """Conv1d(1, 1, k=3, stride=2, padding=1) on L=2 has one output position y=0
    whose taps read positions -1, 0, 1: tap 0 only ever reads padding. So at
    neuron resolution it is not effective (2 paths), at channel resolution it is
    (3 parallel edges, 3 paths)."""
    model = nn.Sequential(nn.Conv1d(1, 1, 3, stride=2, padding=1, bias=False))
    topo = topo_pai.from_torch(model, input_shape=(1, 2))
    assert topo.count_paths("neuron").exact == 2
    assert topo.count_paths("channel").exact == 3
    assert topo.effective_masks("neuron")["0.weight"].reshape(-1).tolist() == [False, True, True]
    assert topo.effective_masks("channel")["0.weight"].reshape(-1).tolist() == [True, True, True]
    assert topo.effective_params("neuron") == 2
    assert topo.effective_params("channel") == 3


def test_cutoff_hidden_unit_mlp():
    """4-3-2 MLP; hidden unit 0 has no outgoing edge, so its 4 incoming weights
    are not effective and it is not an effective node."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    m2 = torch.ones(2, 3)
    m2[:, 0] = 0
    topo = topo_pai.from_torch(model, {"2.weight": m2}, input_shape=(4,))
    for res in RES:
        assert topo.count_paths(res).exact == 4 * 2 * 2
        assert topo.effective_nodes(res) == 4 + 2 + 2
        assert topo.effective_params(res) == 8 + 4
        eff = topo.effective_masks(res)
        assert eff["0.weight"][0].sum() == 0 and eff["0.weight"][1:].all()
        assert torch.equal(eff["2.weight"], m2.bool())
    # an input unit with no outgoing edge is not effective either
    m0 = torch.ones(3, 4)
    m0[:, 3] = 0
    t2 = topo.with_masks({"0.weight": m0})
    for res in RES:
        assert t2.count_paths(res).exact == 3 * 3 * 2
        assert t2.effective_nodes(res) == 3 + 3 + 2
