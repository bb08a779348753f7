"""The model zoo: shapes, registry, argument checks and exact path counts.

Closed-form channel path counts: at channel resolution a dense conv with a
k x k kernel joins every (input, output) channel pair with k*k parallel edges,
and a Linear after a flatten joins channel c to each output with H*W edges (one
per feature of c), so the count of a dense chain is the product over layers of
``fan_in_channels_per_edge * out_channels`` times the input channels.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import topo_pai
from topo_pai.models import available_models, get_model, model_options
from topo_pai.models.resnet import CifarResNet

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: oracles
import oracles as O

REQUIRED = {"lenet_300_100", "lenet5", "conv4", "conv6", "resnet20", "resnet32", "resnet56",
            "resnet18", "resnet50", "vgg11", "vgg16", "vgg19"}
SMALL_WIDTH = {"lenet_300_100": 0.25, "lenet5": 0.5, "conv2": 0.125, "conv4": 0.125,
               "conv6": 0.125, "resnet20": 4, "resnet32": 4, "resnet56": 4}
# (in_channels, input_size, num_classes); the big nets get their smallest valid sizes
COMBOS = {name: [(1, 16, 3), (3, (16, 24), 10)] for name in available_models()}
COMBOS["lenet5"] = [(1, 8, 3), (3, 28, 10)]
COMBOS["resnet18"] = [(1, 8, 3), (3, 16, 10)]
COMBOS["resnet50"] = [(3, 32, 10)]  # ResNet-50 once: its minimum input size is 32


def _hw(size):
    return (size, size) if isinstance(size, int) else size


def _build(name, c, size, k):
    kw = {"width": SMALL_WIDTH[name]} if name in SMALL_WIDTH else {}
    return get_model(name, in_channels=c, num_classes=k, input_size=size, **kw).eval()


def test_registry_has_the_required_names():
    assert REQUIRED <= set(available_models())
    assert len(set(available_models())) == len(available_models())


@pytest.mark.parametrize("name,c,size,k", [(n, *combo) for n in available_models()
                                           for combo in COMBOS[n]])
def test_forward_shape_and_dense_topology(name, c, size, k):
    torch.manual_seed(0)
    model = _build(name, c, size, k)
    h, w = _hw(size)
    with torch.no_grad():
        y = model(torch.randn(2, c, h, w))
    assert y.shape == (2, k)
    assert torch.isfinite(y).all()
    topo = topo_pai.from_torch(model, input_shape=(c, h, w))
    pc = topo.count_paths("channel")
    assert math.isfinite(pc.log10) and pc.log10 > 0
    # dense: every channel lies on a path, every weight is effective
    assert topo.effective_nodes() == topo.n_nodes()
    assert topo.effective_params() == topo.n_params
    assert topo.n_nodes() >= c + k


# ---------------------------------------------------------------------------
# exact counts: closed forms (channel) and the float64 probe (neuron)
# ---------------------------------------------------------------------------

def test_lenet_300_100_paths_closed_form():
    topo = topo_pai.from_torch(get_model("lenet_300_100", in_channels=1, input_size=28),
                               input_shape=(1, 28, 28))
    assert topo.count_paths("channel").exact == 784 * 300 * 100 * 10
    assert topo.count_paths("neuron").exact == 784 * 300 * 100 * 10
    assert topo.n_params == 784 * 300 + 300 * 100 + 100 * 10  # 266,200 as in the literature


def test_lenet_300_100_width_and_non_square_input():
    model = get_model("lenet_300_100", in_channels=2, num_classes=4, input_size=(6, 5),
                      width=0.5)
    assert model(torch.zeros(3, 2, 6, 5)).shape == (3, 4)
    topo = topo_pai.from_torch(model, input_shape=(2, 6, 5))
    # two input channel nodes, each owning 30 features wired to all 150 hidden units
    assert topo.count_paths("channel").exact == 2 * 30 * 150 * 50 * 4


def _lenet5_channel_paths(c, oh, ow, widths, k):
    c1, c2, f1, f2 = widths
    return c * 25 * c1 * 25 * c2 * (oh * ow) * f1 * f2 * k


@pytest.mark.parametrize("c,size,width,final,widths", [
    (1, 28, 1.0, (5, 5), (6, 16, 120, 84)),     # the classic 16x5x5 feature map
    (3, 32, 1.0, (6, 6), (6, 16, 120, 84)),
    (1, 8, 0.5, (2, 2), (3, 8, 60, 42)),        # small inputs pad conv2
    (1, (12, 10), 0.5, (1, 2), (3, 8, 60, 42)),  # per-axis padding choice
])
def test_lenet5_paths_closed_form(c, size, width, final, widths):
    model = get_model("lenet5", in_channels=c, num_classes=10, input_size=size, width=width)
    h, w = _hw(size)
    assert model.fc1.in_features == widths[1] * final[0] * final[1]
    assert model(torch.zeros(1, c, h, w)).shape == (1, 10)
    topo = topo_pai.from_torch(model, input_shape=(c, h, w))
    assert topo.count_paths("channel").exact == _lenet5_channel_paths(c, *final, widths, 10)


def _convnet_channel_paths(c, channels, final_hw, hidden, k):
    paths, prev = c, c
    for ch in channels:
        paths *= 9 * ch
        prev = ch
    assert prev == channels[-1]
    return paths * final_hw * hidden * hidden * k


@pytest.mark.parametrize("name,c,size,channels,final_hw,hidden", [
    ("conv2", 1, 8, (8, 8), 16, 32),
    ("conv4", 3, 8, (8, 8, 16, 16), 4, 32),
    ("conv4", 1, (12, 9), (8, 8, 16, 16), 6, 32),  # 12x9 -> 6x4 -> 3x2
    ("conv6", 3, 8, (8, 8, 16, 16, 32, 32), 1, 32),
])
def test_convnet_paths_closed_form(name, c, size, channels, final_hw, hidden):
    model = get_model(name, in_channels=c, num_classes=10, input_size=size, width=0.125)
    topo = topo_pai.from_torch(model, input_shape=(c, *_hw(size)))
    assert topo.count_paths("channel").exact == _convnet_channel_paths(c, channels, final_hw,
                                                                       hidden, 10)


@pytest.mark.parametrize("name,c,size,width", [("lenet5", 1, 8, 0.5), ("lenet5", 1, 12, 0.25),
                                               ("conv4", 1, 8, 0.125), ("conv2", 2, 6, 0.125)])
def test_small_models_match_float64_probe(name, c, size, width):
    """Both resolutions against an independent count (a float64 forward pass)."""
    model = get_model(name, in_channels=c, num_classes=3, input_size=size, width=width)
    topo = topo_pai.from_torch(model, input_shape=(c, size, size))
    for res in ("channel", "neuron"):
        probe = O.float64_probe(model, {}, (c, size, size), resolution=res)
        pc = topo.count_paths(res)
        assert pc.log10 == pytest.approx(math.log10(probe.total), rel=1e-12)
        if probe.total < 2**52:
            assert pc.exact == int(probe.total)


def test_lottery_ticket_weight_counts():
    """Weight counts of Frankle & Carbin (2019), Table 1, at CIFAR-10 size."""
    def n_weights(model):
        return sum(m.weight.numel() for m in model.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))

    assert round(n_weights(get_model("conv2")) / 1e6, 1) == 4.3
    assert round(n_weights(get_model("conv4")) / 1e6, 1) == 2.4
    # LeNet-5 on 28x28 (padded conv1): ~61.5k weights, the classic ~60k-parameter net
    assert n_weights(get_model("lenet5", in_channels=1, input_size=28)) == \
        6 * 25 + 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10


def test_width_scales_every_hidden_layer():
    net = get_model("conv6", width=0.25)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [16, 16, 32, 32, 64, 64]
    assert fcs == [64, 64, 10]
    assert get_model("lenet5", width=0.01).conv1.out_channels == 1  # never below one unit


# ---------------------------------------------------------------------------
# argument checks and registry errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("vgg11", 8), ("vgg19", (32, 15)), ("resnet50", 16),
                                       ("resnet18", 4), ("resnet20", 2), ("conv6", 7),
                                       ("conv4", 3), ("lenet5", 3)])
def test_too_small_input_size_names_input_size(name, size):
    with pytest.raises(ValueError, match="input_size"):
        get_model(name, input_size=size)


@pytest.mark.parametrize("size", [0, -3, "28", (28,), (28, 28, 28), (28.0, 28), True, None])
def test_malformed_input_size(size):
    with pytest.raises(ValueError, match="input_size"):
        get_model("conv4", input_size=size)


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("arg,value", [("in_channels", 0), ("num_classes", -1),
                                       ("num_classes", True), ("in_channels", 2.0)])
def test_bad_channels_or_classes(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        get_model(name, **{arg: value})


@pytest.mark.parametrize("width", [0, -0.5, float("inf"), "1", None])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        get_model("lenet5", width=width)


def test_unknown_model_lists_names_and_suggests():
    with pytest.raises(ValueError) as info:
        get_model("conv5")
    msg = str(info.value)
    assert "'conv5'" in msg
    assert all(name in msg for name in available_models())
    with pytest.raises(ValueError, match="Did you mean 'resnet20'"):
        get_model("resnet200")
    with pytest.raises(TypeError, match="model name"):
        get_model(None)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="'depth'") as info:
        get_model("vgg11", depth=13)
    assert "batch_norm" in str(info.value)  # tells what is accepted
    with pytest.raises(TypeError, match="'width'"):
        get_model("resnet50", width=2)


def test_names_are_forgiving_and_models_fresh():
    a = get_model("LeNet-300-100", in_channels=1, input_size=28)
    b = get_model("lenet_300_100", in_channels=1, input_size=28)
    assert type(a) is type(b) and a is not b
    assert a.fc1.weight.data_ptr() != b.fc1.weight.data_ptr()
    assert type(get_model("LeNet-5")) is type(get_model("lenet5"))
    assert model_options("resnet20") == ["width"] and model_options("resnet50") == []


def test_existing_signatures_still_work():
    """Positional calls of the pre-registry constructors keep their meaning."""
    from topo_pai.models import resnet18, resnet20, resnet50, vgg11, vgg19

    assert resnet20(1, 7, 8).fc.out_features == 7
    assert resnet20(1, 7, 8).conv1.out_channels == 8
    assert resnet18(3, 200).fc.out_features == 200 and resnet18().fc.out_features == 200
    assert resnet50().fc.out_features == 1000
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in vgg11(3, 10, False).modules())
    assert vgg19().classifier.out_features == 100
    assert len(CifarResNet(110, width=4).blocks) == 54
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(21)
