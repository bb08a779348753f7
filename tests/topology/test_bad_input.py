"""Bad input: every error has the right class and names what is at fault."""

from __future__ import annotations

import math
import os
import re
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import (
    fx,  # noqa: E402
    nn,  # noqa: E402
)
from torch.nn.utils import prune  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.errors import (  # noqa: E402
    InputShapeError,
    MaskError,
    NoPrunableLayerError,
    PathCountTooLarge,
    TopoPaiError,
    TraceError,
    UnsupportedOpError,
)


def mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def fx_node_name(model, pred) -> str:
    """The fx node name that fx gives the node matching ``pred`` (independently traced)."""
    graph = fx.Tracer().trace(model)
    names = [n.name for n in graph.nodes if pred(n)]
    assert len(names) == 1, names
    return names[0]


def test_error_hierarchy():
    for cls, base in [(MaskError, ValueError), (InputShapeError, ValueError),
                      (TraceError, RuntimeError), (UnsupportedOpError, NotImplementedError),
                      (NoPrunableLayerError, ValueError), (PathCountTooLarge, OverflowError)]:
        assert issubclass(cls, TopoPaiError) and issubclass(cls, base)
        assert getattr(topo_pai, cls.__name__) is cls


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,bad_shape", [("0.weight", (4, 3)), ("2.weight", (2, 3, 1)),
                                            ("0.weight", (12,)), ("2.weight", ())])
def test_mask_wrong_shape(name, bad_shape):
    with pytest.raises(MaskError, match=re.escape(f"'{name}'")) as exc:
        topo_pai.from_torch(mlp(), {name: torch.ones(bad_shape)}, input_shape=(4,))
    assert str(tuple(bad_shape)) in str(exc.value)


def test_conv_mask_wrong_shape_numpy():
    with pytest.raises(MaskError, match=re.escape("'0.weight'")):
        topo_pai.from_torch(cnn(), {"0.weight": np.ones((4, 3, 3))}, input_shape=(3, 8, 8))


@pytest.mark.parametrize("value", [2.0, 0.5, -1.0, float("nan"), float("inf"), 1.0000001])
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_mask_bad_values(value, kind):
    m = torch.ones(2, 3, dtype=torch.float64)
    m[1, 2] = value
    if kind == "numpy":
        m = m.numpy()
    with pytest.raises(MaskError) as exc:
        topo_pai.from_torch(mlp(), {"2.weight": m}, input_shape=(4,))
    msg = str(exc.value)
    assert "'2.weight'" in msg
    assert "(1, 2)" in msg  # the index of the offending element
    if math.isnan(value):
        assert "nan" in msg.lower()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("value", [0.5, 2.0, float("nan")])
def test_mask_bad_values_low_precision(dtype, value):
    m = torch.ones(3, 4, dtype=dtype)
    m[2, 1] = value
    with pytest.raises(MaskError, match=re.escape("'0.weight'")) as exc:
        topo_pai.from_torch(mlp(), {"0.weight": m}, input_shape=(4,))
    assert "(2, 1)" in str(exc.value)


@pytest.mark.parametrize("value", [2, -1, 255])
def test_mask_bad_integer_values(value):
    m = torch.ones(3, 4, dtype=torch.int64)
    m[0, 1] = value
    with pytest.raises(MaskError, match=re.escape("'0.weight'")):
        topo_pai.from_torch(mlp(), {"0.weight": m}, input_shape=(4,))
    with pytest.raises(MaskError, match=re.escape("'0.weight'")):
        topo_pai.from_torch(mlp(), {"0.weight": m.numpy().astype(np.int16)}, input_shape=(4,))


def test_mask_bad_values_on_with_masks():
    topo = topo_pai.from_torch(mlp(), input_shape=(4,))
    m = torch.ones(3, 4)
    m[2, 3] = 0.5
    with pytest.raises(MaskError, match=re.escape("'0.weight'")):
        topo.with_masks({"0.weight": m})
    # the failed call left the topology usable
    assert topo.count_paths().exact == 24


@pytest.mark.parametrize("bad", [np.array([["a"] * 4] * 3), torch.ones(3, 4, dtype=torch.cfloat)])
def test_mask_bad_dtype(bad):
    with pytest.raises(MaskError, match=re.escape("'0.weight'")):
        topo_pai.from_torch(mlp(), {"0.weight": bad}, input_shape=(4,))


def test_mask_key_not_a_parameter():
    with pytest.raises(MaskError, match=re.escape("'nope.weight'")) as exc:
        topo_pai.from_torch(mlp(), {"nope.weight": torch.ones(3, 4)}, input_shape=(4,))
    assert "0.weight" in str(exc.value)  # suggests the real names


def test_mask_key_typo_among_valid_keys():
    masks = {"0.weight": torch.ones(3, 4), "2.weigth": torch.ones(2, 3)}
    with pytest.raises(MaskError, match=re.escape("'2.weigth'")):
        topo_pai.from_torch(mlp(), masks, input_shape=(4,))


@pytest.mark.parametrize("key,shape", [("0.bias", (3,)), ("2.bias", (2,))])
def test_mask_key_is_a_bias(key, shape):
    with pytest.raises(MaskError, match=re.escape(f"'{key}'")) as exc:
        topo_pai.from_torch(mlp(), {key: torch.ones(shape)}, input_shape=(4,))
    assert "bias" in str(exc.value)


def test_mask_key_is_a_norm_weight():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(MaskError, match=re.escape("'1.weight'")):
        topo_pai.from_torch(model, {"1.weight": torch.ones(2)}, input_shape=(1, 5, 5))


def test_mask_key_orig_on_pruned_model():
    model = mlp()
    prune.random_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(MaskError, match=re.escape("'0.weight_orig'")) as exc:
        topo_pai.from_torch(model, {"0.weight_orig": torch.ones(3, 4)}, input_shape=(4,))
    assert "'0.weight'" in str(exc.value)  # says which name to use


@pytest.mark.parametrize("root", [False, True])
def test_mask_key_of_a_parametrization_names_the_weight(root):
    """A parametrized layer's tensor named as a mask key: the message gives the weight's
    name, also for a bare (root) layer, whose key starts with 'parametrizations.'."""
    from torch.nn.utils import parametrize

    class Same(nn.Module):
        def forward(self, w):
            return w

    model = nn.Linear(4, 3) if root else mlp()
    layer = model if root else model[0]
    parametrize.register_parametrization(layer, "weight", Same())
    prefix = "" if root else "0."
    with pytest.raises(MaskError, match="re-parametrised") as exc:
        topo_pai.Masks({f"{prefix}parametrizations.weight.original": torch.ones(3, 4)},
                       model=model)
    assert f"use the weight's name '{prefix}weight'" in str(exc.value)


@pytest.mark.parametrize("masks", [[torch.ones(3, 4)], "0.weight", 3])
def test_masks_not_a_mapping(masks):
    with pytest.raises(MaskError):
        topo_pai.from_torch(mlp(), masks, input_shape=(4,))


# ---------------------------------------------------------------------------
# input_shape
# ---------------------------------------------------------------------------

def test_input_shape_wrong_channels_for_conv():
    model = cnn()
    node = fx_node_name(model, lambda n: n.op == "call_module" and n.target == "0")
    with pytest.raises(InputShapeError) as exc:
        topo_pai.from_torch(model, input_shape=(2, 8, 8))
    msg = str(exc.value)
    assert f"'{node}'" in msg and "'0'" in msg
    assert "3" in msg and "2" in msg


def test_input_shape_wrong_channels_deeper_in_the_net():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.body = nn.Conv2d(5, 2, 1)  # wrong in_channels: stem gives 4

        def forward(self, x):
            return self.body(F.relu(self.stem(x)))

    with pytest.raises(InputShapeError, match=re.escape("'body'")):
        topo_pai.from_torch(Net(), input_shape=(3, 8, 8))


def test_input_shape_wrong_features_for_linear():
    model = mlp()
    node = fx_node_name(model, lambda n: n.op == "call_module" and n.target == "0")
    with pytest.raises(InputShapeError) as exc:
        topo_pai.from_torch(model, input_shape=(5,))
    msg = str(exc.value)
    assert f"'{node}'" in msg and "4" in msg and "5" in msg


def test_input_shape_wrong_features_after_flatten():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    with pytest.raises(InputShapeError, match=re.escape("'2'")):
        topo_pai.from_torch(model, input_shape=(1, 6, 6))
    assert topo_pai.from_torch(model, input_shape=(1, 5, 5)).count_paths().exact > 0


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 8, 8), (3,)])
def test_input_shape_wrong_rank_for_conv2d(shape):
    with pytest.raises(InputShapeError):
        topo_pai.from_torch(cnn(), input_shape=shape)


def test_input_shape_too_small_for_kernel():
    with pytest.raises(InputShapeError, match=re.escape("'0'")):
        topo_pai.from_torch(cnn(), input_shape=(3, 2, 2))


@pytest.mark.parametrize("shape", [None, (), (3, -8, 8), (-4,), (3, 0, 8), 4])
def test_input_shape_invalid(shape):
    model = mlp() if shape in ((-4,), 4) else cnn()
    with pytest.raises(InputShapeError, match="input_shape"):
        topo_pai.from_torch(model, input_shape=shape)


@pytest.mark.parametrize("shape", [(4.5,), (4.9,), (3.5, 8, 8)])
def test_input_shape_non_integer_is_rejected(shape):
    """A fractional size is not a shape; silently truncating (4.5,) to (4,) hides a bug."""
    model = mlp() if len(shape) == 1 else cnn()
    with pytest.raises(InputShapeError, match="input_shape"):
        topo_pai.from_torch(model, input_shape=shape)


@pytest.mark.parametrize("shape", ["abc", ("x",), (3, "eight", 8)])
def test_input_shape_non_numeric_raises_input_shape_error(shape):
    model = mlp() if len(shape) == 1 else cnn()
    with pytest.raises(InputShapeError, match="input_shape"):
        topo_pai.from_torch(model, input_shape=shape)


@pytest.mark.parametrize("shape", [(np.int64(4),), torch.Size([4]), [4], np.array([4])])
def test_input_shape_integer_likes_are_accepted(shape):
    assert topo_pai.from_torch(mlp(), input_shape=shape).count_paths().exact == 24


def test_input_shape_missing():
    with pytest.raises(InputShapeError, match="input_shape"):
        topo_pai.from_torch(mlp())


# ---------------------------------------------------------------------------
# tracing and unsupported ops
# ---------------------------------------------------------------------------

class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


def test_fx_trace_failure():
    with pytest.raises(TraceError) as exc:
        topo_pai.from_torch(DataDependent(), input_shape=(4,))
    assert "DataDependent" in str(exc.value)
    assert exc.value.__cause__ is not None


def test_two_tensor_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, y):
            return self.fc(x + y)

    with pytest.raises(TraceError, match="'y'"):
        topo_pai.from_torch(Two(), input_shape=(4,))


def test_not_a_module():
    with pytest.raises(TypeError):
        topo_pai.from_torch(lambda x: x, input_shape=(4,))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x)
        return self.out(torch.sigmoid(h) * h)


class GateMethod(Gate):
    def forward(self, x):
        h = self.fc(x)
        return self.out(h.mul(h.sigmoid()))


class Slice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        return self.out(self.fc(x)[:, :2])


class Interp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)
        self.d = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.d(F.interpolate(self.c(x), scale_factor=2))


class WithSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.sm = nn.Softmax(dim=1)

    def forward(self, x):
        return self.sm(self.fc(x))


class Transpose(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 3, 1)
        self.d = nn.Conv1d(5, 2, 1)

    def forward(self, x):
        return self.d(self.c(x).transpose(1, 2))


class ReduceAll(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).sum()


class ReduceChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.c(x).mean(1)


class SharedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(F.relu(self.fc(x)))


class BroadcastAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.a(x) + self.b(x).mean((2, 3), keepdim=True)


class CircularPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        return self.c(x)


UNSUPPORTED = {
    "sigmoid_gating": (Gate, (4,), lambda n: n.op == "call_function" and "mul" in n.name),
    "mul_method_gating": (GateMethod, (4,), lambda n: n.op == "call_method" and n.target == "mul"),
    "slicing": (Slice, (4,), lambda n: n.op == "call_function" and "getitem" in n.name),
    "interpolate": (Interp, (1, 6, 6), lambda n: n.op == "call_function"
                    and "interpolate" in n.name),
    "softmax_module": (WithSoftmax, (4,), lambda n: n.op == "call_module" and n.target == "sm"),
    "transpose": (Transpose, (2, 5), lambda n: n.op == "call_method"
                  and n.target == "transpose"),
    "reduce_all": (ReduceAll, (4,), lambda n: n.op == "call_method" and n.target == "sum"),
    "reduce_channels": (ReduceChannels, (2, 3, 3), lambda n: n.op == "call_method"
                        and n.target == "mean"),
    "shared_weights": (SharedWeights, (4,), lambda n: n.op == "call_module"
                       and n.name != "fc"),
    "broadcast_add": (BroadcastAdd, (2, 3, 3), lambda n: n.op == "call_function"
                      and "add" in n.name),
    "circular_padding": (CircularPad, (2, 5, 5), lambda n: n.op == "call_module"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_op_names_fx_node(case):
    cls, shape, pred = UNSUPPORTED[case]
    model = cls()
    node = fx_node_name(model, pred)
    with pytest.raises(UnsupportedOpError) as exc:
        topo_pai.from_torch(model, input_shape=shape)
    assert f"'{node}'" in str(exc.value), (node, str(exc.value))


@pytest.mark.parametrize("model", [nn.Sequential(nn.ReLU()),
                                   nn.Sequential(nn.MaxPool2d(2), nn.Flatten()),
                                   nn.Sequential(nn.Identity())])
def test_no_prunable_layer(model):
    shape = (2, 4, 4)
    with pytest.raises(NoPrunableLayerError):
        topo_pai.from_torch(model, input_shape=shape)


def test_prunable_layer_not_on_the_graph():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(x)

    with pytest.raises(NoPrunableLayerError):
        topo_pai.from_torch(Detached(), input_shape=(4,))


# ---------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("res", ["pixel", "Channel", "NEURON", "", None, 0])
def test_invalid_resolution(res):
    topo = topo_pai.from_torch(mlp(), input_shape=(4,))
    calls = [topo.count_paths, topo.effective_nodes, topo.effective_params,
             topo.effective_masks, topo.forward_counts, topo.backward_counts, topo.summary,
             topo.n_nodes]
    for call in calls:
        with pytest.raises(ValueError, match="resolution"):
            call(res)


@pytest.mark.parametrize("res", ["channel", "neuron"])
def test_path_count_too_large(res):
    topo = topo_pai.from_torch(cnn(), input_shape=(3, 8, 8))
    pc = topo.count_paths(res)
    with pytest.raises(PathCountTooLarge, match="max_work"):
        pc.exact_value(max_work=1)
    # refusing does not poison the lazy value; log10 is always available
    assert math.isfinite(pc.log10)
    want = 3 * 4 * 9 * 2 * (36 if res == "neuron" else 1)
    assert pc.exact_value() == want == pc.exact


def test_default_exact_refuses_huge_work_but_log10_works():
    """Three dense 64->64 3x3 convs on 64x64: about 3 * 36864 * 4096 > 3e8
    edge-positions at neuron resolution, above the default limit."""
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1),
                          nn.Conv2d(64, 64, 3, padding=1))
    topo = topo_pai.from_torch(model, input_shape=(64, 64, 64))
    pc = topo.count_paths("neuron")
    assert math.isfinite(pc.log10) and pc.log10 > 0
    with pytest.raises(PathCountTooLarge):
        pc.exact  # noqa: B018
    # channel resolution is exact and cheap: 64 * (64 * 9)^3
    assert topo.count_paths("channel").exact == 64 * (64 * 9) ** 3


def test_to_networkx_refuses_large_graph():
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100))
    topo = topo_pai.from_torch(model, input_shape=(100,))
    with pytest.raises(ValueError, match="max_edges"):
        topo.to_networkx(max_edges=10_000)
    assert topo.to_networkx(max_edges=20_000).number_of_edges() == 20_000


@pytest.mark.parametrize("method", ["snip", "grasp", "iter_snip"])
@pytest.mark.parametrize("y, match", [
    (torch.zeros(6, 1, dtype=torch.long), r"shape \(6, 1\).*one class label per input.*squeeze"),
    (torch.zeros(6), r"float32 of shape \(6,\).*integer class labels"),
    (torch.full((6,), 3), r"labels in \[3, 3\].*3 classes"),
    (torch.full((6,), -1), r"labels in \[-1, -1\]"),
])
def test_wrong_targets_for_the_default_loss_are_named(method, y, match):
    """They raised torch's error from inside cross_entropy (a traceback for a user mistake)."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(6, 1, 4, 4)
    opts = {"rounds": 2} if method == "iter_snip" else {}
    with pytest.raises(ValueError, match=match):
        topo_pai.prune(net, method, 0.5, input_shape=(1, 4, 4), data=(x, y), **opts)


def test_class_probabilities_and_custom_losses_are_accepted():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(6, 1, 4, 4)
    probs = torch.softmax(torch.randn(6, 3), 1)
    a = topo_pai.prune(net, "snip", 0.5, input_shape=(1, 4, 4), data=(x, probs))
    # a regression target is fine with the caller's own loss
    b = topo_pai.prune(net, "snip", 0.5, input_shape=(1, 4, 4), data=(x, torch.zeros(6)),
                       loss=lambda out, y: ((out.sum(1) - y) ** 2).mean())
    assert set(a) == set(b) == {"1.weight"}


@pytest.mark.parametrize("value", ["abc", 1, True, [[1.0] * 3] * 2])
def test_a_mask_that_is_no_tensor_is_refused_as_such_not_by_its_shape(value):
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(MaskError, match=r"mask for '0.weight' must be a tensor or array.*got "
                                        + type(value).__name__):
        topo_pai.from_torch(net, {"0.weight": value}, input_shape=(3,))


def test_weights_that_are_no_mapping_or_hold_nan_say_where():
    net = nn.Sequential(nn.Linear(3, 2))
    topo = topo_pai.from_torch(net, None, input_shape=(3,))
    with pytest.raises(MaskError, match="weights must be a mapping"):
        topo.flows([torch.ones(2, 3)])
    w = torch.ones(2, 3)
    w[1, 2] = math.nan
    with pytest.raises(MaskError, match=r"'0.weight' hold nan at index \(1, 2\)"):
        topo.flows({"0.weight": w})
    with torch.no_grad():
        net[0].weight[1, 2] = math.nan  # SynFlow reads |w| off the model
    with pytest.raises(ValueError, match=r"model's weight '0.weight' holds 1 NaN .*nan, at "
                                         r"index \(1, 2\)"):
        topo_pai.prune(net, "synflow", 0.5, input_shape=(3,))


def test_prune_refuses_data_of_another_dtype_and_a_weightless_model_by_name():
    """Both used to end in torch's own RuntimeError / NotImplementedError."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"data holds torch.float64 inputs but the model's "
                                         r"weights are torch.float32; convert the inputs"):
        topo_pai.prune(net, "snip", 0.5, input_shape=(3,), data=(x, y))
    assert topo_pai.prune(net.double(), "snip", 0.5, input_shape=(3,), data=(x, y))
    meta = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to("meta")
    for method, kw in (("magnitude", {}), ("snip", {"data": (x.float(), y)})):
        with pytest.raises(ValueError, match="parameter '0.weight' is on the meta device"):
            topo_pai.prune(meta, method, 0.5, input_shape=(3,), **kw)


def test_metrics_spectra_is_a_bool():
    topo = topo_pai.from_torch(nn.Sequential(nn.Linear(3, 2)), None, input_shape=(3,))
    with pytest.raises(ValueError, match="spectra must be True or False, got 'no'"):
        topo.metrics(spectra="no")  # truthy: it used to compute the spectra


def test_edge_weights_of_another_network_and_bad_exact_limits_are_refused():
    """EdgeWeights made by another Topology used to fail with ``KeyError: 'conv1.weight'``,
    and a non-numeric limit with a comparison TypeError."""
    a = topo_pai.from_torch(nn.Sequential(nn.Linear(3, 2)), None, input_shape=(3,))
    b = topo_pai.from_torch(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), None,
                            input_shape=(3,))
    foreign = a.edge_weights({"0.weight": torch.ones(2, 3)})
    for call in (lambda: b.flows(foreign), lambda: b.metrics(foreign)):
        with pytest.raises(MaskError, match="EdgeWeights were made for other weights"):
            call()
    own = b.edge_weights(None)
    sibling = b.with_masks({"0.weight": torch.ones(4, 3)})
    assert sibling.flows(own).log10_total == b.flows(None).log10_total  # siblings share them
    for bad in ("big", math.nan, True):
        with pytest.raises(ValueError, match="max_work must be a number"):
            b.count_paths().exact_value(max_work=bad)
    assert b.count_paths().exact_value(max_work=math.inf) == 3 * 4 * 2


@pytest.mark.parametrize("resolution", ["channel", "neuron"])
def test_returned_counts_cannot_change_the_topologys_cache(resolution):
    """forward_counts() handed out the engine's cached arrays: zeroing one in place changed
    later effective_params() (20 -> 12 on this MLP) and Flows' later scores."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    topo = topo_pai.from_torch(net, None, input_shape=(3,))
    before = topo.effective_params(resolution)
    for counts in (topo.forward_counts(resolution), topo.backward_counts(resolution)):
        for c in counts.values():
            with pytest.raises(ValueError, match="read-only"):
                c.mantissa[...] = 0
    flows = topo.flows(None, resolution)
    with pytest.raises(ValueError, match="read-only"):
        next(iter(flows.forward.values())).mantissa[...] = 0
    assert topo.effective_params(resolution) == before == 20


def test_checked_edge_weights_do_not_follow_later_changes_of_the_callers_arrays():
    """edge_weights kept views of float64 inputs: filling them with -1 afterwards made
    log10_total -inf, and a NaN an internal FloatingPointError."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    topo = topo_pai.from_torch(net, None, input_shape=(3,))
    w = {n: p.detach().double().abs() + 0.5 for n, p in net.named_parameters() if p.dim() > 1}
    prepared = topo.edge_weights(w)
    total = topo.flows(prepared).log10_total
    for t in w.values():
        t.fill_(math.nan)
    assert topo.flows(prepared).log10_total == total


def test_weights_of_an_unused_layer_are_checked_and_compact_checks_its_seed():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    model = Unused()
    topo = topo_pai.from_torch(model, None, input_shape=(3,))
    with pytest.raises(MaskError, match="'unused.weight' have shape \\(7,\\)"):
        topo.flows({"unused.weight": -torch.ones(7)})
    with pytest.raises(MaskError, match="'unused.weight' hold -1.0"):
        topo.edge_weights({"unused.weight": -torch.ones(3, 3)})
    with pytest.raises(ValueError, match="compact's seed must be an int"):
        topo_pai.compact(model, None, (3,), seed="0")


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_counts_and_flows_past_a_groups_dynamic_range_warn(engine):
    """Two independent lanes, one with |w| = 1e-3 over 130 layers: the weak lane's flows
    (10^-390 against 1) read as 0, which was silent. It is a known limit (README, "How it
    works"); now it warns, while reachability stays exact."""
    layers = 130
    net = nn.Sequential(*[nn.Linear(2, 2, bias=False) for _ in range(layers)])
    masks = {f"{i}.weight": torch.eye(2, dtype=torch.bool) for i in range(layers)}
    w = {f"{i}.weight": torch.tensor([[1.0, 0.0], [0.0, 1e-3]]) for i in range(layers)}
    topo = topo_pai.from_torch(net, masks, input_shape=(2,), engine=engine)
    flows = topo.flows(w, "neuron")
    with pytest.warns(RuntimeWarning, match="flows through the weights: a node group spans"):
        flows.log10_through_weights()
    with pytest.warns(RuntimeWarning, match="forward counts: a node group spans"):
        flows.forward  # noqa: B018 - the property is what warns
    assert bool(topo.effective_masks("neuron")["0.weight"][1, 1])  # exact all the same
    plain = topo_pai.from_torch(net, masks, input_shape=(2,), engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within range: no warning
        plain.flows({n: t.abs() + 0.5 for n, t in w.items()}, "neuron").log10_through_weights()


@pytest.mark.parametrize("engine", ["numba", "torch"])
@pytest.mark.parametrize("resolution", ["channel", "neuron"])
def test_weights_and_constants_past_the_flows_range_are_refused(engine, resolution):
    """|w| = 1e308 (finite) made flows() raise "a count became infinite; please report
    this as a bug"; weights and constant factors above MAX_FLOW_WEIGHT are now refused by
    name, while 2**900 itself still flows exactly (a chain: log10 R = 900 log10 2 + ...)."""
    from topo_pai.graph.ir import MAX_FLOW_WEIGHT

    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    topo = topo_pai.from_torch(net, None, input_shape=(2,), engine=engine)
    with pytest.raises(MaskError, match=r"weights for '2\.weight' hold 1e\+308 at index "
                                        r"\(0, 1\), above the 8\.45e\+270"):
        topo.flows({"2.weight": torch.tensor([[1.0, 1e308, 1.0]], dtype=torch.float64)},
                   resolution)
    w = {"0.weight": torch.ones(3, 2), "2.weight": torch.full((1, 3), MAX_FLOW_WEIGHT,
                                                              dtype=torch.float64)}
    got = topo.flows(w, resolution).log10_total
    assert got == pytest.approx(900 * np.log10(2) + np.log10(6), abs=1e-12)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 1)

        def forward(self, x):
            return self.b(self.a(x) * 1e308)

    scaled = topo_pai.from_torch(Scaled(), None, input_shape=(2,), engine=engine)
    assert scaled.count_paths(resolution).exact == 4  # counts read only "non-zero"
    with pytest.raises(ValueError, match="fx node 'mul' multiplies by a constant of magnitude "
                                         "1e\\+308"):
        scaled.flows(None, resolution)
