"""Deep networks whose path counts are far beyond float64.

The expected counts are exact Python ints from closed forms or from an
independent Python-int dynamic programme over the masks (written here, not
taken from ``topo_pai``); their log10 is computed from the decimal string,
never through ``float(int)``, which would overflow.
"""

from __future__ import annotations

import copy
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402

RES = ("channel", "neuron")
DEPTH = 1000
WIDTH = 4


def log10_int(n: int) -> float:
    """log10 of a positive Python int of any size, to ~1e-16 relative."""
    assert n > 0
    s = str(n)
    head = 17
    if len(s) <= head:
        return math.log10(n)
    return math.log10(int(s[:head])) + (len(s) - head)


def test_log10_int_helper():
    assert log10_int(10 ** 500) == pytest.approx(500, abs=1e-12)
    assert log10_int(4 ** 1001) == pytest.approx(1001 * math.log10(4), rel=1e-14)
    assert log10_int(7) == math.log10(7)


# ---------------------------------------------------------------------------
# 1000-layer MLP
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deep_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)])
    return model, topo_pai.from_torch(model, input_shape=(WIDTH,))


def mlp_dp(masks: list[np.ndarray], width: int) -> int:
    """Exact path count of an MLP chain: Python-int forward DP."""
    v = [1] * width
    for m in masks:
        v = [sum(v[i] for i in range(m.shape[1]) if m[o, i]) for o in range(m.shape[0])]
    return sum(v)


@pytest.mark.parametrize("res", RES)
def test_deep_dense_mlp(deep_mlp, res):
    _, topo = deep_mlp
    exact = WIDTH ** (DEPTH + 1)  # WIDTH input units, then WIDTH choices per layer
    assert exact > 10 ** 600
    pc = topo.count_paths(res)
    assert math.isfinite(pc.log10)
    assert math.isclose(pc.log10, log10_int(exact), rel_tol=1e-9)
    assert math.isclose(pc.log10, (DEPTH + 1) * math.log10(WIDTH), rel_tol=1e-9)
    assert pc.exact == exact
    assert float(pc) == math.inf
    assert topo.effective_nodes(res) == WIDTH * (DEPTH + 1)
    assert topo.effective_params(res) == WIDTH * WIDTH * DEPTH
    fc, bc = topo.forward_counts(res), topo.backward_counts(res)
    names = topo.group_names
    assert len(names) == DEPTH + 1
    # a unit of layer l (l = 0 is the input) has WIDTH**l paths in, WIDTH**(DEPTH-l) out
    for l in (0, 1, 500, DEPTH - 1, DEPTH):
        np.testing.assert_allclose(fc[names[l]].log10, l * math.log10(WIDTH), rtol=1e-9,
                                   atol=1e-9)
        np.testing.assert_allclose(bc[names[l]].log10, (DEPTH - l) * math.log10(WIDTH),
                                   rtol=1e-9, atol=1e-9)
        assert math.isclose(fc[names[l]].log10_total + bc[names[l]].log10_total,
                            pc.log10 + math.log10(WIDTH), rel_tol=1e-9)
    s = topo.summary(res)
    assert math.isclose(s.totals["log10_paths"], pc.log10)
    assert all(math.isfinite(r["log10_in_paths"]) for r in s.rows)


def test_deep_mlp_random_masks(deep_mlp):
    """Random masks (every row and column kept non-empty so the count survives):
    exact count against an independent Python-int DP, log10 against it."""
    _, topo = deep_mlp
    rng = np.random.default_rng(0)
    masks, arrays = {}, []
    for l in range(DEPTH):
        m = (rng.random((WIDTH, WIDTH)) < 0.6).astype(np.uint8)
        m[np.arange(WIDTH), rng.permutation(WIDTH)] = 1
        masks[f"{l}.weight"] = torch.from_numpy(m)
        arrays.append(m)
    want = mlp_dp(arrays, WIDTH)
    assert want > 10 ** 308
    t = topo.with_masks(masks)
    for res in RES:
        pc = t.count_paths(res)
        assert math.isclose(pc.log10, log10_int(want), rel_tol=1e-9)
        assert pc.exact == want
        assert t.effective_nodes(res) == WIDTH * (DEPTH + 1)
        assert t.effective_params(res) == sum(int(m.sum()) for m in arrays)


@pytest.mark.parametrize("weak", ["forward", "backward"])
def test_deep_mlp_huge_dynamic_range(deep_mlp, weak):
    """Units 0-2 form a dense chain (counts grow like 3**depth ~ 2**1585) while
    unit 3 carries a single path ("forward": its only input is unit 3 of the
    layer below; "backward": its only output is unit 3 of the layer above).
    Relative to its group's largest count, unit 3's count is below the float64
    range, but it is still on a path, so every node and every unpruned weight
    stays effective."""
    _, topo = deep_mlp
    m = np.zeros((WIDTH, WIDTH), dtype=np.uint8)
    m[:3, :3] = 1
    m[3, 3] = 1
    if weak == "forward":
        m[:3, 3] = 1  # unit 3 feeds the dense block, but is fed by unit 3 only
    else:
        m[3, :3] = 1  # unit 3 is fed by the dense block, but feeds unit 3 only
    masks = {f"{l}.weight": torch.from_numpy(m.copy()) for l in range(DEPTH)}
    t = topo.with_masks(masks)
    want = mlp_dp([m] * DEPTH, WIDTH)
    for res in RES:
        pc = t.count_paths(res)
        assert pc.exact == want
        assert math.isclose(pc.log10, log10_int(want), rel_tol=1e-9)
        assert t.effective_nodes(res) == WIDTH * (DEPTH + 1), res
        assert t.effective_params(res) == int(m.sum()) * DEPTH, res
        eff = t.effective_masks(res)
        for name in ("0.weight", "500.weight", f"{DEPTH - 1}.weight"):
            assert np.array_equal(eff[name].numpy(), m.astype(bool)), (res, name)


class DeepSkip(nn.Module):
    """h0 = a(x); out = deep(h0) + h0; y = fc(out), with a 700-layer deep branch."""

    def __init__(self, depth=700):
        super().__init__()
        self.a = nn.Linear(WIDTH, WIDTH)
        self.deep = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(depth)])
        self.fc = nn.Linear(WIDTH, 2)

    def forward(self, x):
        h0 = self.a(x)
        return self.fc(self.deep(h0) + h0)


def test_skip_branch_with_huge_gap():
    """The deep branch uses units 0-2 only (unit 3 neither feeds it nor is fed),
    so unit 3 of h0 reaches the output only through the identity shortcut. At
    the add, the deep branch's counts (~3**700 ~ 2**1109) dwarf the shortcut's
    (4) by more than float64's range, yet unit 3 of ``a`` and fc's weights from
    unit 3 are on paths and must stay effective."""
    depth = 700
    model = DeepSkip(depth)
    m = np.zeros((WIDTH, WIDTH), dtype=np.uint8)
    m[:3, :3] = 1
    masks = {f"deep.{l}.weight": torch.from_numpy(m.copy()) for l in range(depth)}
    topo = topo_pai.from_torch(model, masks, input_shape=(WIDTH,))
    # exact: a gives 4 per unit; the branch gives 4 * 3**depth to units 0-2;
    # out = [4 * 3**depth + 4] * 3 + [4]; fc is dense with 2 outputs
    want = 2 * (3 * (4 * 3 ** depth + 4) + 4)
    for res in RES:
        pc = topo.count_paths(res)
        assert pc.exact == want
        assert math.isclose(pc.log10, log10_int(want), rel_tol=1e-9)
        # input 4, a 4, deep units 0-2 of every layer, fc 2
        assert topo.effective_nodes(res) == 4 + 4 + 3 * depth + 2, res
        assert topo.effective_params(res) == 16 + 9 * depth + 8, res
        eff = topo.effective_masks(res)
        assert eff["a.weight"].all(), res
        assert eff["fc.weight"].all(), res
        for l in (0, depth - 1):
            assert np.array_equal(eff[f"deep.{l}.weight"].numpy(), m.astype(bool))


# ---------------------------------------------------------------------------
# 150-block ResNet with identity shortcuts
# ---------------------------------------------------------------------------

C, HW, BLOCKS = 2, 4, 150


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x)))) + x


class DeepResNet(nn.Module):
    def __init__(self, c=C, blocks=BLOCKS):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(blocks)])

    def forward(self, x):
        return self.blocks(self.stem(x))


def conv_names(blocks=BLOCKS):
    names = ["stem.weight"]
    for b in range(blocks):
        names += [f"blocks.{b}.conv1.weight", f"blocks.{b}.conv2.weight"]
    return names


def _conv3x3_obj(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Exact 3x3, padding-1 conv of an object array (C_in, H, W) with 0/1 mask m."""
    cin, h, w = x.shape
    pad = np.zeros((cin, h + 2, w + 2), dtype=object)
    pad[:, 1:-1, 1:-1] = x
    out = np.zeros((m.shape[0], h, w), dtype=object)
    for o in range(m.shape[0]):
        for i in range(cin):
            for dy in range(3):
                for dx in range(3):
                    if m[o, i, dy, dx]:
                        out[o] = out[o] + pad[i, dy:dy + h, dx:dx + w]
    return out


def resnet_dp(masks: dict, res: str, blocks=BLOCKS) -> int:
    """Independent exact path count of DeepResNet (Python ints)."""
    if res == "neuron":
        x = np.ones((1, HW, HW), dtype=object)
        x = _conv3x3_obj(x, masks["stem.weight"])
        for b in range(blocks):
            h = _conv3x3_obj(x, masks[f"blocks.{b}.conv1.weight"])
            x = _conv3x3_obj(h, masks[f"blocks.{b}.conv2.weight"]) + x
        return int(x.sum())

    def cmat(m):  # channel multiplicities as Python ints
        return [[int(m[o, i].sum()) for i in range(m.shape[1])] for o in range(m.shape[0])]

    def apply(M, v):
        return [sum(M[o][i] * v[i] for i in range(len(v))) for o in range(len(M))]

    v = apply(cmat(masks["stem.weight"]), [1])
    for b in range(blocks):
        h = apply(cmat(masks[f"blocks.{b}.conv1.weight"]), v)
        v = [a + c for a, c in zip(apply(cmat(masks[f"blocks.{b}.conv2.weight"]), h), v)]
    return sum(v)


@pytest.fixture(scope="module")
def deep_resnet():
    torch.manual_seed(0)
    model = DeepResNet().eval()
    return model, topo_pai.from_torch(model, input_shape=(1, HW, HW))


def test_resnet_dp_oracle_matches_torch_on_a_shallow_net():
    """The oracle itself, checked against a float64 torch forward (weights = 1)
    where float64 is still exact."""
    model = DeepResNet(blocks=3).double().eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.fill_(1.0)
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_parameters()
                mod.reset_running_stats()
                mod.eps = 0.0
        y = model(torch.ones(1, 1, HW, HW, dtype=torch.float64))
    dense = {n: np.ones((C, 1 if n == "stem.weight" else C, 3, 3), dtype=np.uint8)
             for n in conv_names(3)}
    want = resnet_dp(dense, "neuron", blocks=3)
    assert want < 2 ** 53 and float(y.sum()) == want
    # channel resolution, closed form: 9*C paths into each stem channel, then each
    # block multiplies a uniform per-channel count by (9C)^2 + 1
    assert resnet_dp(dense, "channel", blocks=3) == C * 9 * (81 * C * C + 1) ** 3


@pytest.mark.parametrize("res", RES)
def test_deep_dense_resnet(deep_resnet, res):
    _, topo = deep_resnet
    dense = {n: np.ones((C, 1 if n == "stem.weight" else C, 3, 3), dtype=np.uint8)
             for n in conv_names()}
    want = resnet_dp(dense, res)
    if res == "channel":
        assert want == C * 9 * (81 * C * C + 1) ** BLOCKS
    assert want > 10 ** 308  # float64 would overflow
    pc = topo.count_paths(res)
    assert math.isfinite(pc.log10)
    assert math.isclose(pc.log10, log10_int(want), rel_tol=1e-9)
    assert pc.exact == want
    n_convs = 1 + 2 * BLOCKS
    if res == "channel":
        assert topo.effective_nodes(res) == 1 + C * n_convs
    else:
        assert topo.effective_nodes(res) == HW * HW + C * HW * HW * n_convs
    assert topo.effective_params(res) == topo.n_params == C * 9 + C * C * 9 * 2 * BLOCKS


def test_deep_resnet_float64_forward_overflows(deep_resnet):
    """What the count would be through a float64 torch forward (weights = 1,
    BN as identity): inf. The finite log10 above is therefore not float64 luck."""
    model, topo = deep_resnet
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.fill_(1.0)
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.reset_parameters()
                mod.eps = 0.0
        y = m(torch.ones(1, 1, HW, HW, dtype=torch.float64))
    assert torch.isinf(y.sum())
    assert topo.count_paths("neuron").log10 > 308


@pytest.mark.parametrize("res", RES)
def test_deep_resnet_random_masks(deep_resnet, res):
    _, topo = deep_resnet
    rng = np.random.default_rng(1)
    masks = {}
    for n in conv_names():
        shape = (C, 1 if n == "stem.weight" else C, 3, 3)
        masks[n] = (rng.random(shape) < 0.4).astype(np.uint8)
    t = topo.with_masks({k: torch.from_numpy(v) for k, v in masks.items()})
    want = resnet_dp(masks, res)
    assert want > 10 ** 200
    pc = t.count_paths(res)
    assert math.isclose(pc.log10, log10_int(want), rel_tol=1e-9)
    assert pc.exact == want
    eff = t.effective_masks(res)
    for k, v in eff.items():
        assert not (v.numpy() & ~masks[k].astype(bool)).any()
    assert t.effective_params(res) == sum(int(v.sum()) for v in eff.values())
