"""Compaction (issue 15, item 4): the compacted model computes what the masked model
computes (oracle: a float64 forward pass of the masked model), and each layer keeps
exactly the effective channels the package counts (oracle: Topology.summary)."""

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.cli import main  # noqa: E402
from topo_pai.compaction import _Adapter, _BiasMap  # noqa: E402
from topo_pai.models import get_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent))
import own_models  # noqa: E402

OWN = str(Path(__file__).parent.parent / "own_models.py")
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def randomise_norms(model, gen):
    """Non-trivial eval-mode BatchNorm statistics, so that constants pass through them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.5, 2, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
    return model.eval()


def masks_for(model, density, gen, dead_rows=0.0, dead_cols=0.0):
    """Random masks, with whole output units (no input: constant units) and whole input
    columns (units that feed nothing) pruned at the given rates."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LAYERS):
            mask = torch.rand(m.weight.shape, generator=gen) < density
            rows = torch.rand(mask.shape[0], generator=gen) < dead_rows
            cols = torch.rand(mask.shape[1], generator=gen) < dead_cols
            mask[rows] = False
            mask[:, cols] = False
            out[f"{name}.weight"] = mask
    return out


def masked_float64(model, masks):
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for k, m in masks.items():
            ref.get_submodule(k.rpartition(".")[0]).weight.mul_(m.double())
    return ref


CASES = [("ResDepthNet", (3, 8, 8), {}), ("CatNet", (2, 8, 8), {}),
         ("ResDepthNet", (1, 6, 6), {"in_channels": 1, "width": 5})]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_compacted_outputs_and_channels(case):
    name, shape, kwargs = CASES[case]
    seen = set()
    for seed in range(6):
        gen = torch.Generator().manual_seed(100 * case + seed)
        torch.manual_seed(seed)
        model = randomise_norms(getattr(own_models, name)(**kwargs), gen)
        before = copy.deepcopy(model.state_dict())
        density = (0.6, 0.3, 0.15)[seed % 3]
        masks = masks_for(model, density, gen, dead_rows=0.25 * (seed % 2),
                          dead_cols=0.2 * (seed // 3))
        result = topo_pai.compact_with_report(model, masks, shape)
        small = result.model
        seen |= {type(m) for m in small.modules()}
        # the input model and masks are not touched
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        x = torch.randn(5, *shape, generator=gen)
        with torch.no_grad():
            want = masked_float64(model, masks)(x.double())
            got = small(x)
        assert got.dtype == torch.float32 and got.shape == want.shape
        scale = want.abs().max().item() + 1.0
        assert (got.double() - want).abs().max().item() <= 1e-5 * scale, (name, seed)
        # each layer keeps exactly its effective channels / units
        topo = topo_pai.from_torch(model, masks, shape)
        effective = {r["name"]: r["effective_nodes"] for r in topo.summary().rows[1:]}
        assert {k: v[1] for k, v in result.report.channels.items()} == effective
        for layer, n_eff in effective.items():
            if n_eff:
                mod = small.get_submodule(layer)
                kept = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
                assert kept == n_eff
        # the report: dense MACs of both models, all parameters
        dense = topo_pai.from_torch(model, {}, shape).effective_flops()
        assert result.report.macs_before == dense
        assert result.report.macs_after == _macs(small, shape)
        assert result.report.effective_macs == topo.effective_flops()
        assert result.report.macs_after >= result.report.effective_macs
        assert result.report.params_after == sum(p.numel() for p in small.parameters())
        assert result.report.params_before == sum(p.numel() for p in model.parameters())
    if name == "ResDepthNet" and case == 0:
        # constants were put back for a residual branch, and folded per position
        assert _Adapter in seen and _BiasMap in seen


def _macs(model, shape):
    """MACs of a model's Linear and Conv layers, by forward hooks (independent of the
    compaction's own bookkeeping)."""
    total = []

    def hook(mod, inp, out):
        total.append(mod.weight.numel() * int(np.prod(out.shape[2:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYERS)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return sum(total)


def test_attached_masks_and_a_dead_network():
    gen = torch.Generator().manual_seed(7)
    model = randomise_norms(own_models.CatNet(), gen)
    masks = masks_for(model, 0.3, gen, dead_rows=0.3)
    want = topo_pai.compact(model, masks, (2, 8, 8))
    attached = topo_pai.apply_masks(copy.deepcopy(model), masks)
    got = topo_pai.compact(attached, None, (2, 8, 8))
    x = torch.randn(3, 2, 8, 8, generator=gen)
    with torch.no_grad():
        assert torch.allclose(want(x), got(x), atol=1e-6)
    dead = {k: torch.zeros_like(v) for k, v in masks.items()}
    small = topo_pai.compact(model, dead, (2, 8, 8))
    assert sum(p.numel() for p in small.parameters()) == 0
    with torch.no_grad():
        want = masked_float64(model, dead)(x.double())
        assert torch.allclose(small(x).double(), want, atol=1e-6)


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.gn = nn.GroupNorm(1, 4)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(self.gn(self.a(x)))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(self.a(x))


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), dim=1))


def test_refusals_name_the_op(monkeypatch):
    net = GroupNormNet()
    mask = torch.ones(4, 1, 3, 3)
    mask[0] = 0  # channel 0 of a is constant, but GroupNorm mixes it with the others
    with pytest.raises(topo_pai.UnsupportedOpError, match=r"fx node 'gn'.*GroupNorm"):
        topo_pai.compact(net, {"a.weight": mask}, (1, 5, 5))
    # Were GroupNorm taken for a channel-wise op, the probes would catch it.
    import topo_pai.compaction as C
    monkeypatch.setattr(C, "_CHANNELWISE_MODULES", C._CHANNELWISE_MODULES + (nn.GroupNorm,))
    with pytest.raises(topo_pai.UnsupportedOpError,
                       match=r"channel\(s\) \[0\] of fx node 'gn'.*change with it.*mixes"):
        topo_pai.compact(net, {"a.weight": mask}, (1, 5, 5))
    with pytest.raises(topo_pai.UnsupportedOpError,
                       match=r"fx node 'a' \(call_module a\): a grouped convolution \(groups=2\)"):
        topo_pai.compact(GroupedNet(), {}, (4, 5, 5))
    with pytest.raises(topo_pai.UnsupportedOpError, match=r"fx node 'softmax'.*softmax"):
        topo_pai.compact(SoftmaxNet(), {}, (3,))


def test_cli_compact(tmp_path, capsys):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)  # the CLI builds the model with --seed 0
    model = own_models.ResDepthNet().eval()
    masks = masks_for(model, 0.3, gen, dead_rows=0.3)
    topo_pai.save_masks(masks, tmp_path / "m.pt")
    out = tmp_path / "small.pt"
    code = main(["compact", f"{OWN}:ResDepthNet", "--input-shape", "3,8,8", "--masks",
                 str(tmp_path / "m.pt"), "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["params_after"] < report["params_before"]
    small = torch.load(out, weights_only=False)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        want = masked_float64(model, masks)(x.double())
        assert torch.allclose(small(x).double(), want, atol=1e-5)
    code = main(["compact", f"{OWN}:ResDepthNet", "--input-shape", "3,8,8", "--masks",
                 str(tmp_path / "m.pt"), "--out", str(out)])
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err
    code = main(["compact", f"{OWN}:ResDepthNet", "--input-shape", "3,8,8", "--masks",
                 str(tmp_path / "m.pt"), "--out", str(out), "--force"])
    text = capsys.readouterr().out
    assert code == 0 and "params" in text and "MACs" in text and "c2" in text


class Conv1dNet(nn.Module):
    """1-d convolutions with stride and dilation, a residual, then a Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(2, 6, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm1d(6)
        self.b = nn.Conv1d(6, 6, 3, padding=1)
        self.c = nn.Conv1d(6, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 5, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        h = torch.relu(self.b(h) + h)
        return self.fc(self.c(h).flatten(1))


@pytest.mark.parametrize("name, shape, kwargs", [
    ("resnet20", (3, 16, 16), {"width": 4}), ("lenet5", (1, 28, 28), {}),
    ("vgg11", (3, 32, 32), {"batch_norm": True}), ("conv1d", (2, 12), {})])
def test_zoo_and_conv1d_models(name, shape, kwargs):
    torch.manual_seed(0)
    model = (Conv1dNet() if name == "conv1d" else
             get_model(name, in_channels=shape[0], input_size=shape[1:],
                                       **kwargs))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
    model.eval()
    masks = topo_pai.prune(model, "random", 0.95, input_shape=shape, seed=1)
    result = topo_pai.compact_with_report(model, masks, shape)
    topo = topo_pai.from_torch(model, masks, shape)
    effective = {r["name"]: r["effective_nodes"] for r in topo.summary().rows[1:]}
    assert {k: v[1] for k, v in result.report.channels.items()} == effective
    assert result.report.params_after < result.report.params_before
    x = torch.randn(3, *shape, generator=gen)
    with torch.no_grad():
        want = masked_float64(model, masks)(x.double())
        got = result.model(x).double()
    assert (got - want).abs().max().item() <= 1e-5 * (want.abs().max().item() + 1)


# --------------------------------------------------------------------------- hypothesis
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class RandomNet(nn.Module):
    """A random stack of blocks: plain conv (+BatchNorm), residual, depthwise, a two-branch
    cat, pools; then a spatial mean or a flatten, and one or two Linear layers."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        c = spec["in_channels"]
        self.blocks = nn.ModuleList()
        for kind, width, k, bn in spec["blocks"]:
            if kind == "conv":
                mods = [nn.Conv2d(c, width, k, padding=k // 2)]
                c = width
            elif kind == "res":
                mods = [nn.Conv2d(c, c, k, padding=k // 2)]
            elif kind == "dw":
                mods = [nn.Conv2d(c, c, k, padding=k // 2, groups=c)]
            else:  # cat
                mods = [nn.Conv2d(c, width, k, padding=k // 2), nn.Conv2d(c, width + 1, 1)]
                c = 2 * width + 1
            mods.append(nn.BatchNorm2d(c) if bn else nn.Identity())
            self.blocks.append(nn.ModuleList(mods))
        side = spec["side"]
        self.pool = nn.MaxPool2d(2) if spec["pool"] else nn.Identity()
        side = side // 2 if spec["pool"] else side
        feats = c if spec["mean"] else c * side * side
        self.fc = nn.ModuleList([nn.Linear(feats, spec["hidden"]), nn.Linear(spec["hidden"], 3)]
                                if spec["hidden"] else [nn.Linear(feats, 3)])

    def forward(self, x):
        for (kind, _, _, _), mods in zip(self.spec["blocks"], self.blocks):
            if kind == "res":
                x = torch.relu(mods[1](mods[0](x)) + x)
            elif kind == "cat":
                x = torch.relu(mods[2](torch.cat([torch.tanh(mods[0](x)), mods[1](x)], 1)))
            else:
                x = torch.relu(mods[1](mods[0](x)))
        x = self.pool(x)
        x = x.mean((2, 3)) if self.spec["mean"] else torch.flatten(x, 1)
        for i, fc in enumerate(self.fc):
            x = fc(x) if i == len(self.fc) - 1 else torch.relu(fc(x))
        return x


block = st.tuples(st.sampled_from(["conv", "res", "dw", "cat"]), st.integers(1, 4),
                  st.sampled_from([1, 3]), st.booleans())
net_spec = st.fixed_dictionaries(dict(
    in_channels=st.integers(1, 3), side=st.sampled_from([4, 6]), pool=st.booleans(),
    mean=st.booleans(), hidden=st.sampled_from([0, 5]),
    blocks=st.lists(block, min_size=1, max_size=4)))


@settings(max_examples=25)
@given(spec=net_spec, density=st.sampled_from([0.7, 0.35, 0.15]), dead=st.booleans(),
       seed=st.integers(0, 2**16))
def test_compaction_on_random_architectures(spec, density, dead, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomise_norms(RandomNet(spec), gen)
    shape = (spec["in_channels"], spec["side"], spec["side"])
    masks = masks_for(model, density, gen, dead_rows=0.3 if dead else 0.0,
                      dead_cols=0.2 if dead else 0.0)
    result = topo_pai.compact_with_report(model, masks, shape)
    topo = topo_pai.from_torch(model, masks, shape)
    effective = {r["name"]: r["effective_nodes"] for r in topo.summary().rows[1:]}
    assert {k: v[1] for k, v in result.report.channels.items()} == effective
    x = torch.randn(3, *shape, generator=gen)
    with torch.no_grad():
        want = masked_float64(model, masks)(x.double())
        got = result.model(x).double()
    assert (got - want).abs().max().item() <= 1e-5 * (want.abs().max().item() + 1)


def test_a_model_that_is_one_layer_is_refused_by_name():
    """A bare nn.Linear (its weight is "weight") has no unit to remove; it used to fail with
    ``KeyError: ''``."""
    with pytest.raises(topo_pai.UnsupportedOpError, match="cannot compact Linear: the model "
                                                          "is itself one layer"):
        topo_pai.compact(nn.Linear(4, 2), {"weight": torch.ones(2, 4)}, (4,))


def test_a_compacted_model_with_helpers_traces_with_torch_fx():
    """The channel helpers used an indexed assignment and unpacked shapes, which torch.fx
    cannot trace; the traced compacted model gives the same outputs (float64)."""

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = torch.relu(self.c0(x))
            return self.fc(torch.relu(self.c1(h) + h).mean((2, 3)))

    torch.manual_seed(0)
    model = Res().double().eval()
    masks = {"c1.weight": torch.ones(3, 3, 3, 3)}
    masks["c1.weight"][1] = 0  # c1's channel 1: a constant, put back at the add
    small = topo_pai.compact(model, masks, (2, 4, 4)).double()
    assert any(isinstance(m, _Adapter) for m in small.modules())
    traced = torch.fx.symbolic_trace(small)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        model.c1.weight.mul_(masks["c1.weight"].double())
        assert torch.allclose(traced(x), model(x), rtol=0, atol=1e-12)
        assert torch.equal(traced(x), small(x))
    with pytest.raises(topo_pai.UnsupportedOpError, match="index_select"):
        topo_pai.from_torch(small, input_shape=(2, 4, 4))  # documented: count the original
