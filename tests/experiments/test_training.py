"""Masked training: pruned weights stay exactly zero, runs are reproducible, bad input is refused."""

import json
import math

import pytest
import torch

import topo_pai
from topo_pai.experiments.data import load_dataset
from topo_pai.experiments.training import TrainConfig, evaluate, resolve_device, train
from topo_pai.models import get_model


@pytest.fixture(scope="module")
def data():
    tr = load_dataset("synthetic", "train", input_shape=(1, 12, 12), n=512)
    te = load_dataset("synthetic", "test", input_shape=(1, 12, 12), n=256)
    return tr, te


def _model(seed=0):
    torch.manual_seed(seed)
    return get_model("lenet_300_100", in_channels=1, input_size=12, num_classes=10)


def test_pruned_weights_stay_exactly_zero_and_accuracy_rises(data):
    tr, te = data
    model = _model()
    masks = topo_pai.prune(model, "random", 0.8, input_shape=(1, 12, 12), seed=0)
    before = evaluate(model, te)[1]
    res = train(model, tr, te, masks=masks, epochs=6, lr=0.1, batch_size=32, weight_decay=5e-4,
                progress=False, device="cpu")
    for name, m in masks.items():
        mod, attr = name.rsplit(".", 1)
        w = getattr(model.get_submodule(mod), attr)
        assert torch.count_nonzero(w.detach()[~m]) == 0, name
        # momentum and weight decay did move the unpruned weights
        assert torch.count_nonzero(w.detach()[m]) == int(m.sum())
    assert res.final_accuracy > max(0.5, before + 0.2)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5, 6]
    assert res.history[-1]["test_acc"] == pytest.approx(evaluate(model, te)[1])


def test_same_seed_same_history(data):
    tr, te = data
    runs = []
    for _ in range(2):
        model = _model(1)
        masks = topo_pai.prune(model, "magnitude", 0.8, input_shape=(1, 12, 12))
        runs.append(train(model, tr, te, masks=masks, epochs=2, seed=7, progress=False,
                          device="cpu").history)
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r] for r in runs]
    assert strip[0] == strip[1]


def test_masks_already_attached_are_kept(data):
    tr, _ = data
    model = _model()
    masks = topo_pai.prune(model, "random", 0.95, input_shape=(1, 12, 12))
    topo_pai.apply_masks(model, masks)
    train(model, tr, epochs=1, progress=False, device="cpu")
    assert all(torch.equal(topo_pai.read_masks(model)[k], v) for k, v in masks.items())
    assert topo_pai.from_torch(model, input_shape=(1, 12, 12)).n_unpruned == \
        sum(int(m.sum()) for m in masks.values())


def test_schedules():
    cos = TrainConfig(epochs=4, lr=0.1, schedule="cosine")
    assert [round(cos.lr_at(e), 6) for e in range(4)] == [
        round(0.05 * (1 + math.cos(math.pi * e / 4)), 6) for e in range(4)]
    step = TrainConfig(epochs=8, lr=0.1, schedule="step", milestones=(2, 5), gamma=0.5)
    assert [step.lr_at(e) for e in (0, 1, 2, 4, 5, 7)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    default_step = TrainConfig(epochs=8, lr=1.0, schedule="step")
    assert [default_step.lr_at(e) for e in (3, 4, 6)] == [1.0, pytest.approx(0.1),
                                                          pytest.approx(0.01)]
    assert TrainConfig(schedule="constant", lr=0.3).lr_at(5) == 0.3


def test_log_file_has_one_json_line_per_epoch(data, tmp_path):
    tr, te = data
    log = tmp_path / "log" / "train.jsonl"
    train(_model(), tr, te, epochs=2, progress=False, log=log, device="cpu")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert {"lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(lines[0])
    seen = []
    train(_model(), tr, epochs=1, progress=False, log=seen.append, device="cpu")
    assert len(seen) == 1


def test_device_auto_is_cuda_when_available_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("kw, match", [
    (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"), (dict(schedule="linear"), "schedule"),
    (dict(batch_size=2.5), "batch_size"), (dict(milestones=(3, 2)), "milestones"),
    # accepted before: a bool as a rate, rates that diverge or stop training, a bare milestone
    (dict(lr=True), "lr"), (dict(lr=float("inf")), "lr"), (dict(momentum=1.5), "momentum"),
    (dict(momentum=float("nan")), "momentum"), (dict(gamma=0.0), "gamma"),
    (dict(weight_decay=float("inf")), "weight_decay"), (dict(nesterov="yes"), "nesterov"),
    (dict(nesterov=True, momentum=0.0), "nesterov"), (dict(milestones=5), "milestones"),
    (dict(milestones=(2, True)), "milestones"), (dict(epochs=True), "epochs"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_bad_inputs(data):
    tr, _ = data
    with pytest.raises(TypeError, match="model"):
        train("net", tr, progress=False)
    with pytest.raises(TypeError, match="train_set"):
        train(_model(), (tr.x, tr.y), progress=False)
    with pytest.raises(TypeError, match="unknown training option\\(s\\) 'epochz'"):
        train(_model(), tr, epochz=1, progress=False)


def test_diverging_loss_is_reported(data):
    tr, _ = data
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(_model(), tr, epochs=3, lr=1e6, momentum=0.0, weight_decay=0.0, progress=False,
              device="cpu")


def test_a_model_with_fewer_logits_than_classes_is_refused_by_name():
    """torch's own IndexError ('Target 7 is out of bounds') reached the caller."""
    from topo_pai.experiments.data import load_dataset
    from topo_pai.experiments.training import train
    from topo_pai.models import get_model
    data = load_dataset("digits", limit=100)
    model = get_model("lenet_300_100", in_channels=1, num_classes=5, input_size=8)
    with pytest.raises(ValueError, match=r"outputs of shape \(100, 5\).*num_classes=10"):
        train(model, data, epochs=1, progress=False, device="cpu")


# ---------------------------------------------------------------------------
# Found by review: a last batch of one, stale prune weights, dtypes, configs
# ---------------------------------------------------------------------------


def test_a_last_batch_of_one_sample_joins_the_one_before():
    """ResNet-20 at its smallest input (4x4: BatchNorm sees 1x1 maps) with 33 samples and
    batch 32 crashed in torch ("Expected more than 1 value per channel")."""
    ds = load_dataset("synthetic", input_shape=(3, 4, 4), num_classes=4, n=33)
    torch.manual_seed(0)
    net = get_model("resnet20", num_classes=4, input_size=4, width=4)
    res = train(net, ds, epochs=1, batch_size=32, progress=False, device="cpu")
    assert len(res.history) == 1 and math.isfinite(res.history[0]["train_loss"])


def test_prune_masked_weights_are_current_after_training(data):
    """torch.nn.utils.prune recomputes .weight only in a forward pass: without a test set
    it was one step old, and deepcopy of the model failed (a non-leaf tensor)."""
    import copy

    tr, _ = data
    net = _model()
    mask = {"fc1.weight": torch.rand(net.fc1.weight.shape, generator=torch.Generator()
                                     .manual_seed(0)) > 0.5}
    train(net, tr, masks=mask, epochs=1, batch_size=64, progress=False, device="cpu")
    fc = net.fc1
    assert torch.equal(fc.weight, fc.weight_orig * fc.weight_mask)
    copy.deepcopy(net)


def test_inputs_of_the_wrong_kind_are_named(data):
    tr, _ = data
    from types import SimpleNamespace

    for x, y, match in [(tr.x, tr.y.int(), "must be a 1-D int64 tensor"),
                        ((tr.x * 255).to(torch.uint8), tr.y, "pass floats"),
                        (tr.x.double(), tr.y, "the model's weights are torch.float32"),
                        (tr.x, tr.y.reshape(-1, 1), "of shape"),
                        (tr.x, tr.y - 1, "negative label -1")]:
        with pytest.raises((TypeError, ValueError), match=match):
            train(_model(), SimpleNamespace(x=x, y=y), epochs=1, progress=False, device="cpu")
    with pytest.raises(ValueError, match="evaluate batch_size must be an int >= 1, got -32"):
        evaluate(_model(), tr, batch_size=-32, device="cpu")
    with pytest.raises(ValueError, match="training runs on 'cpu' or 'cuda'"):
        resolve_device("meta")


def test_config_as_a_dict_and_milestones_that_would_never_apply(data):
    tr, _ = data
    res = train(_model(), tr, config={"epochs": 1, "batch_size": 64}, lr=0.05,
                progress=False, device="cpu")
    assert res.config["lr"] == 0.05 and res.config["epochs"] == 1
    with pytest.raises(ValueError, match="milestone 120 is not before the last epoch"):
        TrainConfig(epochs=10, schedule="step", milestones=[80, 120])
    with pytest.raises(ValueError, match="apply to schedule='step'"):
        TrainConfig(epochs=10, schedule="cosine", milestones=[5])


def test_a_model_file_edited_in_the_same_session_is_built_anew(tmp_path):
    from topo_pai.models.spec import build_model

    net = tmp_path / "net.py"
    net.write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n")
    first, _ = build_model(f"{net}:make", input_shape=(4,))
    net.write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 3)\n")
    second, _ = build_model(f"{net}:make", input_shape=(4,))
    assert first.weight.shape == (2, 4) and second.weight.shape == (3, 4)


def test_a_type_error_inside_a_model_is_the_models_own(tmp_path):
    from topo_pai.errors import ModelBuildError
    from topo_pai.models.spec import build_model

    net = tmp_path / "bad.py"
    net.write_text("import torch\ndef make():\n    return torch.nn.Linear(4)\n")
    with pytest.raises(ModelBuildError, match="raised TypeError while being built") as exc:
        build_model(f"{net}:make", input_shape=(4,))
    assert isinstance(exc.value.__cause__, TypeError)


def test_resnet_width_error_says_it_is_a_channel_count():
    with pytest.raises(ValueError, match="first stage's channels, default 16"):
        get_model("resnet20", width=0.5)
