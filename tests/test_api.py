"""Core API of ``topo_pai``: closed forms, an independent float64 oracle, and
the contracts of :func:`topo_pai.from_torch` and :class:`topo_pai.Topology`.

Expected values come from closed forms derived from the written semantics
(see the module docstring of ``topo_pai.topology``) or from ``probe`` below,
a float64 torch re-implementation of those semantics for ``nn.Sequential``
chains that shares no code with ``topo_pai``:

* neuron resolution: weights are replaced by their 0/1 masks, biases dropped,
  activations/norms are identities and every pool is a *sum* over its window,
  so the network output summed over units is the number of paths from the
  all-ones input; autograd's gradients are the backward counts, and an
  unpruned weight is effective iff its gradient is positive;
* channel resolution: a conv is the (O, C) matrix of per-kernel tap counts,
  pools are identities and a flatten repeats channel ``c`` over its ``H*W``
  features.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import topo_pai  # noqa: E402

RES = ("channel", "neuron")

# torch warns about padding='same' with even kernels; irrelevant to structure.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def prunable_names(model) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def weight_shape(model, name):
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    w = getattr(mod, "weight_orig", None)
    return tuple((w if w is not None else mod.weight).shape)


def random_masks(model, density=0.5, seed=0, keep_nonempty=True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in prunable_names(model):
        m = (torch.rand(weight_shape(model, name), generator=g) < density).float()
        if keep_nonempty and m.sum() == 0:
            m.view(-1)[0] = 1.0
        out[name] = m
    return out


def dense_masks(model):
    return {n: torch.ones(weight_shape(model, n)) for n in prunable_names(model)}


def _window_sum(x, pool_fn):
    """Sum over the windows of any pool, read off torch: output unit q covers
    input position p iff ``pool_fn`` of the one-hot image e_p is positive at q
    (max pools pad with -inf, so padding never covers anything)."""
    spatial = tuple(x.shape[2:])
    n = int(np.prod(spatial))
    basis = torch.eye(n, dtype=torch.float64).reshape((n, 1) + spatial)
    cover = pool_fn(basis)  # (n_in, 1, *out)
    out_sp = tuple(cover.shape[2:])
    A = (cover.reshape(n, -1) > 0).to(torch.float64).T  # (n_out, n_in)
    y = x.reshape(x.shape[0], x.shape[1], n) @ A.T
    return y.reshape(x.shape[:2] + out_sp)


def _sum_pool(x, mod):
    """Sum pooling with the geometry of a Max/Avg pool module (zero padding adds nothing)."""
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
        return _window_sum(x, mod)
    one_d = isinstance(mod, (nn.MaxPool1d, nn.AvgPool1d))
    if one_d:
        x = x.unsqueeze(2)
    k = mod.kernel_size if not one_d else (1, _first(mod.kernel_size))
    s = mod.stride if not one_d else (1, _first(mod.stride))
    p = mod.padding if not one_d else (0, _first(mod.padding))
    y = F.avg_pool2d(x, k, s, p, ceil_mode=mod.ceil_mode, count_include_pad=True,
                     divisor_override=1)
    return y.squeeze(2) if one_d else y


def _adaptive_sum(x, output_size):
    """Sum over the windows of torch's adaptive pooling."""
    pool = F.adaptive_avg_pool1d if x.dim() == 3 else F.adaptive_avg_pool2d
    return _window_sum(x, lambda b: pool(b, output_size))


def _first(v):
    return v[0] if isinstance(v, (tuple, list)) else v


def probe(model: nn.Sequential, masks: dict, input_shape: tuple) -> dict:
    """Independent float64 oracle for an ``nn.Sequential`` chain (see module doc).

    Returns ``{res: dict(count, eff_nodes, eff_masks, fwd, bwd)}`` where fwd/bwd
    are per node group (input, then each layer) float arrays.
    """
    dd = torch.float64
    xn = torch.ones((1,) + tuple(input_shape), dtype=dd, requires_grad=True)
    xc = torch.ones(input_shape[0], dtype=dd, requires_grad=True)
    groups_n, groups_c = [xn], [xc]
    wn_all, wc_all, mask_all = {}, {}, {}
    hn, hc = xn, xc
    for name, mod in model.named_children():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight"
            m = torch.as_tensor(masks.get(pname, torch.ones(weight_shape(model, pname)))).to(dd)
            mask_all[pname] = m
            wn = m.clone().requires_grad_(True)
            wc = m.clone().requires_grad_(True)
            wn_all[pname], wc_all[pname] = wn, wc
            if isinstance(mod, nn.Linear):
                hn = F.linear(hn, wn)
                hc = wc @ hc
            else:
                conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
                hn = conv(hn, wn, None, mod.stride, mod.padding, mod.dilation, mod.groups)
                O, I = m.shape[:2]
                G = mod.groups
                taps = wc.sum(dim=tuple(range(2, wc.dim())))  # (O, I) multiplicities
                rows = []
                for o in range(O):
                    g = o // (O // G)
                    rows.append(torch.cat([torch.zeros(g * I, dtype=dd), taps[o],
                                           torch.zeros((G - g - 1) * I, dtype=dd)]))
                hc = torch.stack(rows) @ hc
            hn.retain_grad()
            hc.retain_grad()
            groups_n.append(hn)
            groups_c.append(hc)
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            hn = _sum_pool(hn, mod)
        elif isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                              nn.AdaptiveMaxPool2d)):
            hn = _adaptive_sum(hn, mod.output_size)
        elif isinstance(mod, nn.Flatten):
            hw = int(np.prod(hn.shape[2:])) if hn.dim() > 2 else 1
            hc = hc.repeat_interleave(hw)
            hn = torch.flatten(hn, 1)
        elif isinstance(mod, (nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)):
            pass
        else:  # pragma: no cover - test bug
            raise TypeError(mod)
    out = {}
    for res, y, groups, ws in (("neuron", hn, groups_n, wn_all), ("channel", hc, groups_c, wc_all)):
        total = y.sum()
        total.backward()
        fwd = [g.detach().reshape(g.shape[1:] if res == "neuron" else g.shape).numpy().copy()
               for g in groups]
        bwd = [g.grad.reshape(g.shape[1:] if res == "neuron" else g.shape).numpy().copy()
               for g in groups]
        eff_nodes = sum(int(((f > 0) & (b > 0)).sum()) for f, b in zip(fwd, bwd))
        eff_masks = {k: ((w.grad > 0) & (mask_all[k] > 0)).numpy() for k, w in ws.items()}
        out[res] = dict(count=float(total.detach()), eff_nodes=eff_nodes, eff_masks=eff_masks,
                        fwd=fwd, bwd=bwd)
    return out


def seq_with_head(body: list[nn.Module], input_shape, n_out: int, flatten=True) -> nn.Sequential:
    """``nn.Sequential(*body, Flatten(), Linear(features, n_out))``, features from a forward."""
    mods = list(body) + ([nn.Flatten()] if flatten else [])
    with torch.no_grad():
        feat = nn.Sequential(*mods)(torch.zeros((1,) + tuple(input_shape))).shape[1]
    return nn.Sequential(*mods, nn.Linear(feat, n_out)).eval()


def assert_matches_probe(topo, model, masks, input_shape):
    p = probe(model, masks, input_shape)
    for res in RES:
        want = p[res]
        assert want["count"] < 2 ** 52  # float64 counts are exact integers here
        pc = topo.count_paths(res)
        assert pc.exact == int(want["count"]), res
        if want["count"] > 0:
            assert math.isclose(pc.log10, math.log10(want["count"]), rel_tol=1e-12, abs_tol=1e-12)
        else:
            assert pc.log10 == -math.inf
        assert topo.effective_nodes(res) == want["eff_nodes"], res
        eff = topo.effective_masks(res)
        for k, m in want["eff_masks"].items():
            assert np.array_equal(eff[k].numpy(), m), (res, k)
        assert topo.effective_params(res) == sum(int(m.sum()) for m in want["eff_masks"].values())
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        for name, f, b in zip(topo.group_names, want["fwd"], want["bwd"]):
            np.testing.assert_array_equal(fc[name].to_float(), f, err_msg=f"{res} fwd {name}")
            np.testing.assert_array_equal(bc[name].to_float(), b, err_msg=f"{res} bwd {name}")


def log10_int(n: int) -> float:
    s = str(n)
    head = 17
    if len(s) <= head:
        return math.log10(n)
    return math.log10(int(s[:head])) + (len(s) - head)


def all_queries(topo) -> dict:
    """Every scalar and per-weight answer, both resolutions, for equality checks."""
    out = {}
    for res in RES:
        pc = topo.count_paths(res)
        out[res] = dict(
            exact=pc.exact, log10=pc.log10, nodes=topo.effective_nodes(res),
            params=topo.effective_params(res),
            masks={k: v.numpy().copy() for k, v in topo.effective_masks(res).items()},
            fwd={k: v.to_float().copy() for k, v in topo.forward_counts(res).items()},
            bwd={k: v.to_float().copy() for k, v in topo.backward_counts(res).items()},
        )
    out["n_params"] = topo.n_params
    out["n_unpruned"] = topo.n_unpruned
    return out


def assert_same_answers(a: dict, b: dict):
    assert a["n_params"] == b["n_params"]
    assert a["n_unpruned"] == b["n_unpruned"]
    for res in RES:
        x, y = a[res], b[res]
        assert x["exact"] == y["exact"], res
        assert x["log10"] == y["log10"] or (math.isnan(x["log10"]) and math.isnan(y["log10"]))
        assert x["nodes"] == y["nodes"] and x["params"] == y["params"], res
        assert x["masks"].keys() == y["masks"].keys()
        for k in x["masks"]:
            assert np.array_equal(x["masks"][k], y["masks"][k]), (res, k)
        for key in ("fwd", "bwd"):
            assert x[key].keys() == y[key].keys()
            for k in x[key]:
                np.testing.assert_array_equal(x[key][k], y[key][k])


# ---------------------------------------------------------------------------
# models used in several tests
# ---------------------------------------------------------------------------

def small_cnn(seed=0):
    """conv -> BN -> ReLU -> maxpool -> conv -> flatten -> linear, on (2, 6, 6)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    )


SMALL_CNN_SHAPE = (2, 6, 6)


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
# summary
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("res", RES)
def test_summary_consistent_with_queries(res):
    model = small_cnn()
    masks = random_masks(model, density=0.5, seed=11)
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    s = topo.summary(res)
    assert s.resolution == res
    assert len(s) == 4 and [r["name"] for r in s.rows] == ["input", "0", "4", "7"]
    assert [r["kind"] for r in s.rows] == ["input", "Conv2d", "Conv2d", "Linear"]
    eff = topo.effective_masks(res)
    fc, bc = topo.forward_counts(res), topo.backward_counts(res)
    shapes = {"input": SMALL_CNN_SHAPE, "0": (3, 6, 6), "4": (4, 2, 2), "7": (3,)}
    for row in s.rows:
        name = row["name"]
        if name == "input":
            assert row["params"] == row["unpruned"] == row["effective_params"] == 0
        else:
            pname = f"{name}.weight"
            assert row["shape"] == weight_shape(model, pname)
            assert row["params"] == masks[pname].numel()
            assert row["unpruned"] == int(masks[pname].sum())
            assert row["effective_params"] == int(eff[pname].sum())
        nodes = shapes[name][0] if res == "channel" else math.prod(shapes[name])
        assert row["nodes"] == nodes
        f, b = fc[name].to_float(), bc[name].to_float()
        assert row["effective_nodes"] == int(((f > 0) & (b > 0)).sum())
        assert math.isclose(row["log10_in_paths"], math.log10(f.sum()), rel_tol=1e-12)
        assert math.isclose(row["log10_out_paths"], math.log10(b.sum()), rel_tol=1e-12)
    t = s.totals
    pc = topo.count_paths(res)
    assert t["log10_paths"] == pc.log10
    assert t["params"] == topo.n_params == sum(r["params"] for r in s.rows)
    assert t["unpruned"] == topo.n_unpruned == sum(r["unpruned"] for r in s.rows)
    assert t["effective_params"] == topo.effective_params(res) == sum(
        r["effective_params"] for r in s.rows)
    assert t["effective_nodes"] == topo.effective_nodes(res) == sum(
        r["effective_nodes"] for r in s.rows)
    assert t["nodes"] == topo.n_nodes(res) == sum(r["nodes"] for r in s.rows)
    # every path leaves the input and ends at the last layer (a chain)
    assert math.isclose(s.rows[0]["log10_out_paths"], pc.log10, rel_tol=1e-12)
    assert math.isclose(s.rows[-1]["log10_in_paths"], pc.log10, rel_tol=1e-12)
    # records are copies
    rec = s.to_records()
    assert rec == s.rows
    rec[0]["name"] = "changed"
    assert s.rows[0]["name"] == "input"
    text = str(s)
    for row in s.rows:
        assert row["name"] in text
    assert res in text
    assert str(topo.n_params) in text


def test_summary_names_nested_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.ModuleDict({"classifier": nn.Linear(2 * 2 * 2, 3)})

        def forward(self, x):
            return self.head["classifier"](torch.flatten(self.features(x), 1))

    topo = topo_pai.from_torch(Net(), input_shape=(1, 4, 4))
    text = str(topo.summary())
    assert "features.0" in text and "head.classifier" in text
    assert topo.group_names == ["input", "features.0", "head.classifier"]


# ---------------------------------------------------------------------------
# networkx export
# ---------------------------------------------------------------------------

def test_to_networkx_tiny_net():
    C0, C1, n = 2, 3, 2
    model = nn.Sequential(nn.Conv2d(C0, C1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(C1 * 4, n))
    masks = random_masks(model, density=0.6, seed=2)
    topo = topo_pai.from_torch(model, masks, input_shape=(C0, 3, 3))
    G = topo.to_networkx()
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == topo.n_nodes("channel") == C0 + C1 + n
    total = sum(d["multiplicity"] for _, _, d in G.edges(data=True))
    assert total == topo.n_unpruned
    # multiplicities written out from the semantics
    m0, m1 = masks["0.weight"], masks["3.weight"]
    for o in range(C1):
        for i in range(C0):
            k = int(m0[o, i].sum())
            e = (("input", i), ("0", o))
            assert (G.edges[e]["multiplicity"] if G.has_edge(*e) else 0) == k
    for j in range(n):
        for c in range(C1):
            k = int(m1[j, 4 * c:4 * c + 4].sum())
            e = (("0", c), ("3", j))
            assert (G.edges[e]["multiplicity"] if G.has_edge(*e) else 0) == k
    # path DP over the DiGraph
    count = {}
    for v in nx.topological_sort(G):
        if G.nodes[v]["layer"] == 0:
            count[v] = 1
        else:
            count[v] = sum(count[u] * G.edges[u, v]["multiplicity"] for u in G.predecessors(v))
    n_paths = sum(c for v, c in count.items() if G.nodes[v]["layer"] == 2)
    assert n_paths == topo.count_paths("channel").exact
    assert {G.nodes[v]["layer"] for v in G} == {0, 1, 2}
    with pytest.raises(ValueError):
        topo.to_networkx(max_edges=1)


def test_to_networkx_dp_on_residual_net():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.c(self.b(h) + h)

    model = Res()
    masks = random_masks(model, density=0.3, seed=8)
    topo = topo_pai.from_torch(model, masks, input_shape=(2, 5, 5))
    G = topo.to_networkx()
    count = {}
    for v in nx.topological_sort(G):
        preds = list(G.predecessors(v))
        count[v] = 1 if G.nodes[v]["layer"] == 0 else sum(
            count[u] * G.edges[u, v]["multiplicity"] for u in preds)
    assert sum(count[("c", j)] for j in range(2)) == topo.count_paths("channel").exact
    # the skip (a -> c) shows up as direct edges
    assert any(G.has_edge(("a", i), ("c", j)) for i in range(3) for j in range(2))


# ---------------------------------------------------------------------------
# forward/backward counts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("density", [1.0, 0.5, 0.25])
def test_forward_times_backward_is_total_for_chain(density):
    model = small_cnn()
    masks = random_masks(model, density=density, seed=int(density * 100))
    topo = topo_pai.from_torch(model, masks, input_shape=SMALL_CNN_SHAPE)
    shapes = {"input": SMALL_CNN_SHAPE, "0": (3, 6, 6), "4": (4, 2, 2), "7": (3,)}
    for res in RES:
        total = topo.count_paths(res).exact
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        assert list(fc) == list(bc) == topo.group_names
        for name in topo.group_names:
            want = shapes[name][:1] if res == "channel" else shapes[name]
            assert fc[name].mantissa.shape == want and bc[name].mantissa.shape == want
            f, b = fc[name].to_float(), bc[name].to_float()
            assert (f * b).sum() == total, (res, name)
            with np.errstate(divide="ignore"):
                np.testing.assert_allclose(fc[name].log10, np.log10(f), rtol=1e-12)
            if total:
                assert math.isclose(fc[name].log10_total, math.log10(f.sum()), rel_tol=1e-12)
        assert np.all(fc["input"].to_float() == 1)
        assert np.all(bc["7"].to_float() == 1)


def test_forward_backward_residual_input_and_output_groups():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 4)
            self.c = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(F.relu(self.b(h)) + h)

    topo = topo_pai.from_torch(Res(), input_shape=(3,))
    # dense: paths = 3 * 4 * (4 + 1) * 2
    for res in RES:
        assert topo.count_paths(res).exact == 3 * 4 * 5 * 2
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        np.testing.assert_array_equal(fc["a"].to_float(), [3] * 4)
        np.testing.assert_array_equal(fc["b"].to_float(), [12] * 4)
        np.testing.assert_array_equal(fc["c"].to_float(), [60] * 2)
        np.testing.assert_array_equal(bc["b"].to_float(), [2] * 4)
        np.testing.assert_array_equal(bc["a"].to_float(), [10] * 4)
        np.testing.assert_array_equal(bc["input"].to_float(), [40] * 3)
        # "b" is skipped by some paths: fwd*bwd over it is less than the total
        assert (fc["b"].to_float() * bc["b"].to_float()).sum() == 3 * 4 * 4 * 2


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


# ---------------------------------------------------------------------------
# misc API
# ---------------------------------------------------------------------------

def test_pathcount_float_and_repr():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    topo = topo_pai.from_torch(model, input_shape=(4,))
    pc = topo.count_paths()
    assert float(pc) == pytest.approx(24.0, rel=1e-12)
    assert pc.resolution == "channel"
    assert "PathCount" in repr(pc)
    assert "Topology" in repr(topo)
    assert topo.n_nodes() == topo.n_nodes("channel") == 9
    assert topo.n_params == 18
    assert [lay.param for lay in topo.layers] == ["0.weight", "1.weight"]
    ms = topo.masks
    assert set(ms) == {"0.weight", "1.weight"}
    with pytest.raises(ValueError):
        ms["0.weight"][0, 0] = 0  # read-only
