"""One registry shape for methods, allocations, models and datasets; method options as
dataclasses; the state a method hands back is explicit; importing topo_pai leaves the
environment alone."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.experiments.data import DATASETS, available_datasets  # noqa: E402
from topo_pai.models.registry import MODELS, available_models, get_model  # noqa: E402
from topo_pai.pruners import allocation as A  # noqa: E402
from topo_pai.pruners import get_method, prune_with_scores, register_method  # noqa: E402
from topo_pai.pruners.api import check_options  # noqa: E402
from topo_pai.pruners.registry import METHODS, Method, MethodOutput  # noqa: E402
from topo_pai.registry import Registry, squash  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


REGISTRIES = {"methods": METHODS, "allocations": A.ALLOCATIONS, "models": MODELS,
              "datasets": DATASETS}


@pytest.mark.parametrize("which", sorted(REGISTRIES))
def test_every_concern_has_the_same_registry_shape(which):
    reg = REGISTRIES[which]
    topo_pai.available_methods()  # registers the built-in methods
    assert isinstance(reg, Registry) and len(reg) == len(reg.names()) > 0
    for entry in reg.entries():
        assert reg.get(entry.name) is entry.value and entry.name in reg
        assert entry.params is None or dataclasses.is_dataclass(entry.params)
        if entry.params is not None:
            assert entry.params(**entry.defaults()) == entry.params()
    with pytest.raises(ValueError) as exc:
        reg.get("zz-not-a-name")
    assert all(n in str(exc.value) for n in reg.names())  # lists the valid names


def test_registry_lookup_aliases_and_errors():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        k: int = 2

    reg = Registry("widget", key=squash)
    reg.register("Big-One", max, params=Opts, summary="the larger")
    assert reg.get("bigone") is max and reg.canonical("BIG_ONE") == "Big-One"
    with pytest.raises(ValueError, match="already registered"):
        reg.register("big one", min)
    reg.register("big one", min, overwrite=True)
    assert reg.names() == ["big one"] and reg.get("Big-One") is min
    with pytest.raises(ValueError, match=r"unknown widget 'bog one'\. Did you mean 'big one'\?"):
        reg.get("bog one")
    with pytest.raises(TypeError, match="dataclass"):
        reg.register("x", abs, params=dict)
    entry = reg.entry("big one")
    assert entry.make_params({}) is None  # overwritten without params
    reg.register("y", abs, params=Opts)
    assert reg.entry("y").make_params({"k": 5}) == Opts(5)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'kk' for 'y'\. Did you mean 'k'\? "
                                         r"Valid options: k"):
        reg.entry("y").make_params({"kk": 5})
    del reg["y"]
    assert "y" not in reg


def test_models_and_datasets_keep_their_names_and_options():
    assert available_models()[:3] == ["lenet_300_100", "lenet5", "conv2"]
    assert MODELS.entry("LeNet-5").option_names() == ["width"]
    assert MODELS.entry("vgg16").option_names() == ["batch_norm"]
    net = get_model("conv2", in_channels=1, input_size=8, width=0.5)
    assert isinstance(net, nn.Module)
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_model("conv2", depth=3)
    assert available_datasets() == ["fashion-mnist", "digits", "synthetic"]
    assert DATASETS.entry("synthetic").option_names() == ["input_shape", "num_classes", "n",
                                                          "noise"]
    assert DATASETS.entry("digits").params is None
    with pytest.raises(ValueError, match="Did you mean 'synthetic'"):
        topo_pai.experiments.data.load_dataset("synthetc")
    with pytest.raises(TypeError, match="unexpected keyword.*takes no options"):
        topo_pai.experiments.data.load_dataset("digits", noise=2.0)


# ---------------------------------------------------------------------------
# method options are dataclasses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method,options,match", [
    ("synflow", {"rounds": 0}, "rounds must be an int >= 1"),
    ("synflow", {"resolution": "edge"}, "resolution must be 'channel' or 'neuron'"),
    ("iter_snip", {"rounds": 2.5}, "rounds"),
    ("grasp", {"temperature": -1.0}, "temperature"),
    ("synflow_widen", {"delta_t": 0}, "delta_t must be a positive int"),
    ("synflow_widen", {"max_t": True}, "max_t must be a positive int or None"),
    ("npb", {"alpha": 2.0}, "NPB option alpha"),
    ("npb", {"variant": "fast"}, "NPB option variant must be one of"),
    ("npb", {"K": 0}, r"NPB option K must be an int >= 1"),
    ("phew", {"element": "smallest"}, "element must be one of"),
    ("phew", {"stall_window": 0}, r"stall_window must be an int in \[1, "),
])
def test_bad_option_values_are_refused_by_the_methods_dataclass(method, options, match):
    """The one check of a method's option values is its dataclass; check_options (which
    sweeps and the command line call before writing anything) and prune both build it,
    and the error names the method. npb and phew checked their values only mid-run."""
    m = get_method(method)
    named = f"method '{method}': .*{match}"
    with pytest.raises(ValueError, match=named):
        m.make_params(options)
    with pytest.raises(ValueError, match=named):
        check_options(method, **options)
    calls = []
    real = m.fn
    register_method(dataclasses.replace(m, fn=lambda *a, **k: calls.append(1) or real(*a, **k)),
                    overwrite=True)
    try:
        with pytest.raises(ValueError, match=named):
            prune_with_scores(mlp(), method, 0.5, input_shape=(6,), data=(torch.randn(4, 6),
                              torch.tensor([0, 1, 2, 0])), **options)
    finally:
        register_method(m, overwrite=True)
    assert calls == []  # refused before the method ran


def test_values_that_need_the_model_are_left_to_prune():
    """What check_options cannot know without the model it lets through, and prune refuses."""
    check_options("npb", K={"no_such_layer": 2})
    with pytest.raises(ValueError, match="NPB option K names \\['no_such_layer'\\]"):
        topo_pai.prune(mlp(), "npb", 0.5, input_shape=(6,), K={"no_such_layer": 2})
    check_options("magnitude", allocation={"no_such_layer": 0.5})
    with pytest.raises(ValueError, match="allocation names 'no_such_layer'"):
        topo_pai.prune(mlp(), "magnitude", 0.5, input_shape=(6,),
                       allocation={"no_such_layer": 0.5})


@pytest.mark.parametrize("method,options,match", [
    ("random", {"allocation_power": 1}, r"unknown option\(s\) 'allocation_power' for method "
                                        r"'random'.*Valid options: allocation, erk_include_kernel"),
    ("snip", {"round": 3}, r"for method 'snip'.*Valid options: .*max_batches"),
    ("synflow", {"resolutoin": "channel"}, r"for method 'synflow'\. Did you mean 'resolution'"),
    ("random", {"allocaton": "erk"}, (r"'allocaton' for method 'random'\. Did you mean "
                                      r"'allocation'\?")),
])
def test_unknown_options_are_refused_before_a_model_is_seen(method, options, match):
    with pytest.raises(ValueError, match=match):
        check_options(method, **options)


def test_every_builtin_method_declares_its_options_as_a_dataclass():
    for name in topo_pai.available_methods():
        m = get_method(name)
        assert dataclasses.is_dataclass(m.params)
        assert m.options == m.entry.defaults()  # the old view is derived from the dataclass
        assert m.make_params({}) == m.params()
    assert get_method("synflow").make_params({"rounds": 3}).rounds == 3
    assert get_method("npb").params.__name__ == "NPBOptions"


def _fresh_name(base):
    topo_pai.available_methods()
    n = 0
    while f"{base}{n}" in METHODS:
        n += 1
    return f"{base}{n}"


def test_a_registered_method_gets_its_dataclass_fields_as_keywords():
    @dataclasses.dataclass(frozen=True)
    class TiltOptions:
        tilt: float = 0.0
        rounds: int = 3

        def __post_init__(self):
            if self.tilt < 0:
                raise ValueError("tilt must be >= 0")

    seen = []

    def tilt_scores(ctx, masks, tilt):
        seen.append((ctx.round, tilt, masks is None))
        return {t.param: ctx.abs_weights()[t.param] + tilt for t in ctx.active}

    name = _fresh_name("tilt")
    register_method(Method(name, "iterative", tilt_scores, params=TiltOptions))
    try:
        r = prune_with_scores(mlp(), name, 0.5, input_shape=(6,), tilt=0.25)
        # the shared loop consumes `rounds` and says which round it is, explicitly
        assert seen == [(1, 0.25, True), (2, 0.25, False), (3, 0.25, False)]
        assert isinstance(r.masks, topo_pai.Masks)
        with pytest.raises(ValueError, match="tilt must be >= 0"):
            prune_with_scores(mlp(), name, 0.5, input_shape=(6,), tilt=-1.0)
        with pytest.raises(ValueError, match=rf"for method '{name}'.*Valid options: .*tilt"):
            prune_with_scores(mlp(), name, 0.5, input_shape=(6,), tlt=1.0)
    finally:
        del METHODS[name]


def test_an_options_dict_still_registers_a_method():
    def scaled(ctx, masks, scale=1.0):
        return {t.param: ctx.abs_weights()[t.param] * scale for t in ctx.active}

    name = _fresh_name("scaled")
    m = register_method(Method(name, "score", scaled, options={"scale": 2.0}))
    try:
        assert dataclasses.is_dataclass(m.params) and m.options == {"scale": 2.0}
        got = prune_with_scores(mlp(), name, 0.5, input_shape=(6,), scale=3.0)
        want = prune_with_scores(mlp(), "magnitude", 0.5, input_shape=(6,))
        assert all(torch.equal(got.masks[k], want.masks[k]) for k in want.masks)
    finally:
        del METHODS[name]


def test_a_method_hands_back_its_report_explicitly():
    def kept(ctx, budgets):
        out = {}
        for t in ctx.active:
            keep = np.zeros(t.numel, dtype=bool)
            keep[:budgets[t.param]] = True
            out[t.param] = keep.reshape(t.shape)
        return MethodOutput(out, report={"layers": len(out)})

    name = _fresh_name("first")
    register_method(Method(name, "masks", kept, default_allocation="uniform"))
    try:
        r = prune_with_scores(mlp(), name, 0.5, input_shape=(6,))
        assert r.report == {"layers": 3}
        assert {k: int(v.sum()) for k, v in r.masks.items()} == r.budgets
    finally:
        del METHODS[name]
    npb = prune_with_scores(mlp(), "npb", 0.5, input_shape=(6,))
    assert type(npb.report).__name__ == "BalanceReport"
    assert prune_with_scores(mlp(), "magnitude", 0.5, input_shape=(6,)).report is None


def test_synflow_widen_rounds_come_from_the_loop():
    """Round t scores at random when t % delta_t == 0, t read from ctx.round: two runs
    give the same masks (no counter left behind), and with no random round the masks are
    SynFlow's."""
    a = prune_with_scores(mlp(), "synflow_widen", 0.6, input_shape=(6,), rounds=2, delta_t=1)
    b = prune_with_scores(mlp(), "synflow_widen", 0.6, input_shape=(6,), rounds=2, delta_t=1)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    c = prune_with_scores(mlp(), "synflow_widen", 0.6, input_shape=(6,), rounds=2, delta_t=5)
    s = prune_with_scores(mlp(), "synflow", 0.6, input_shape=(6,), rounds=2)
    assert all(torch.equal(c.masks[k], s.masks[k]) for k in s.masks)  # no random round


def test_allocation_options_are_dataclasses_of_their_allocations():
    assert A.ALLOCATIONS.entry("erk").params is A.ERKOptions
    assert A.ALLOCATIONS.entry("uniform+").params is A.UniformPlusOptions
    assert A.allocation_options() == {"last_layer_min_density": ["uniform+"],
                                      "erk_power": ["erk", "erk+"],
                                      "erk_include_kernel": ["erk", "erk+"]}
    with pytest.raises(ValueError, match="erk_power must be a finite number >= 0"):
        A.ERKOptions(erk_power=float("nan"))
    with pytest.raises(ValueError, match="applies to allocation 'erk'/'erk\\+'"):
        check_options("random", allocation="uniform", erk_power=2.0)
    net = mlp()
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if n.endswith("weight")}
    got = prune_with_scores(net, "random", 0.7, input_shape=(6,), allocation="erk",
                            erk_power=0.5).budgets
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    keep = A.n_keep(sum(sizes.values()), 0.7)
    want = A.counts_from_densities(
        sizes, A.erk_densities(shapes, keep / sum(sizes.values()), power=0.5), keep)
    assert got == want


# ---------------------------------------------------------------------------
# the environment
# ---------------------------------------------------------------------------

def test_importing_topo_pai_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, topo_pai; from topo_pai import Masks, from_torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "None"
