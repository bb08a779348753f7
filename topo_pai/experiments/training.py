"""Masked training: SGD with momentum, step or cosine schedules, on CPU or CUDA.

The masks are attached with :func:`topo_pai.apply_masks` (``torch.nn.utils.prune``
reparametrisation: ``weight = weight_orig * weight_mask``), so a pruned weight
is exactly zero in every forward pass, whatever the optimizer does to
``weight_orig``. :func:`train` checks this after the last epoch.

Data are in-memory :class:`~topo_pai.experiments.data.Dataset` objects (or any
object with ``x`` and ``y`` tensors); batches are index slices drawn from a
seeded generator, so a run is reproducible on the same device and torch build.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from topo_pai.checks import check_bool, check_int, check_number, check_seed
from topo_pai.masks.validate import mask_array
from topo_pai.pruners.torch_masks import apply_masks, read_masks

logger = logging.getLogger("topo_pai.training")

SCHEDULES = ("cosine", "step", "constant")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) is CUDA when available, else CPU; anything else is passed to torch.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {device!r}") \
            from exc
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, meta...: not what training runs on
        raise ValueError(f"device={device!r}: training runs on 'cpu' or 'cuda' (or 'auto'), "
                         f"not {dev.type!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is "
                         "False here; pass device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device); make cuDNN deterministic."""
    seed = check_seed("seed", seed)
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def check_omp_policy() -> None:
    """Warn when torch runs with spinning OpenMP threads (see the module docs of topo_pai)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        logger.warning("OMP_WAIT_POLICY is not PASSIVE: on machines with few shared cores idle "
                       "OpenMP threads spin and torch can run 5-60x slower; set it before torch "
                       "is imported (importing topo_pai first does)")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train` (defaults: the paper's CIFAR recipe, shortened).

    ``milestones`` are epochs at which ``"step"`` multiplies the rate by
    ``gamma``; by default half and three quarters of ``epochs``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            check_int(f"training {name}", getattr(self, name), minimum=1)
        check_number("training lr", self.lr, minimum=0.0, min_open=True)
        check_number("training momentum", self.momentum, minimum=0.0, maximum=1.0,
                     max_open=True)
        check_number("training weight_decay", self.weight_decay, minimum=0.0)
        check_number("training gamma", self.gamma, minimum=0.0, min_open=True,
                     hint="the factor of the rate at each milestone")
        check_bool("training nesterov", self.nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("training nesterov=True needs a momentum > 0 (torch's SGD refuses "
                             "Nesterov without momentum)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"training schedule must be one of {SCHEDULES}, got "
                             f"{self.schedule!r}")
        if self.milestones is not None:
            ms = self.milestones
            ok = isinstance(ms, (list, tuple)) and all(
                isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 1
                for m in ms)
            if not ok or list(ms) != sorted(set(ms)):
                raise ValueError(f"training milestones must be increasing positive epoch "
                                 f"numbers (e.g. [5, 8]), got {ms!r}")
            if self.schedule != "step":
                raise ValueError(f"training milestones={list(ms)} apply to schedule='step', but "
                                 f"the schedule is {self.schedule!r}; drop them or use 'step'")
            if ms and ms[-1] >= self.epochs:
                raise ValueError(f"training milestone {ms[-1]} is not before the last epoch "
                                 f"(epochs={self.epochs}), so the rate would not drop there; "
                                 "give milestones below epochs (or none: epochs/2 and 3/4)")
            object.__setattr__(self, "milestones", tuple(int(m) for m in ms))

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based)."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))
        ms = self.milestones or tuple(sorted({max(1, self.epochs // 2),
                                              max(1, (3 * self.epochs) // 4)}))
        return self.lr * self.gamma ** sum(epoch >= m for m in ms)


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch metrics and the final test accuracy."""

    history: list[dict] = field(default_factory=list)
    final_accuracy: float | None = None
    final_loss: float | None = None
    final_val_accuracy: float | None = None
    final_val_loss: float | None = None
    device: str = "cpu"
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def _tensors(dataset, name: str):
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a topo_pai Dataset (or have tensors .x and .y), got "
                        f"{type(dataset).__name__}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{name} has {x.shape[0]} inputs and {y.shape[0]} labels; they must be "
                         "equal and non-zero")
    if not x.is_floating_point():
        raise TypeError(f"{name}.x holds {x.dtype} inputs; pass floats (e.g. x.float() / 255)")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise TypeError(f"{name}.y must be a 1-D int64 tensor of class labels, got {y.dtype} of "
                        f"shape {tuple(y.shape)}; convert it (e.g. y.long().reshape(-1))")
    if bool((y < 0).any()):
        raise ValueError(f"{name}.y holds the negative label {int(y.min())}; class labels are "
                         "0, 1, ..., C - 1")
    return x, y


def _check_dtype(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """Refuse inputs of another float dtype than the model's weights (torch: "mat1 and
    mat2 must have the same dtype")."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}.x holds {x.dtype} inputs but the model's weights are {dtype}; "
                        f"convert one of them (e.g. x.to({dtype}) or model.to({x.dtype}))")


def _refresh_pruned_weights(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` of modules masked with
    ``torch.nn.utils.prune``: its hook does so only in a forward pass, so after the last
    optimizer step the attribute is one step old (and a non-leaf: no deepcopy)."""
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                name = getattr(hook, "_tensor_name", None)  # a torch.nn.utils.prune method
                if name is not None and hasattr(module, name + "_orig"):
                    setattr(module, name, getattr(module, name + "_orig")
                            * getattr(module, name + "_mask"))


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 1000,
             device: str | torch.device | None = "auto") -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` on ``dataset``, in eval mode."""
    batch_size = check_int("evaluate batch_size", batch_size, minimum=1)
    dev = resolve_device(device)
    x, y = _tensors(dataset, "dataset")
    _check_dtype(model, x, "dataset")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    return loss_sum / x.shape[0], correct / x.shape[0]


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a nicety, never a hard dependency
        return iterable
    return tqdm(iterable, leave=False, **kw)


def _pruned_nonzero(model: nn.Module, masks: dict) -> list[str]:
    bad = []
    params = dict(model.named_modules())
    for name, m in masks.items():
        mod_name, _, attr = name.rpartition(".")
        w = getattr(params[mod_name], attr)
        if bool((w.detach()[~m.to(w.device)] != 0).any()):
            bad.append(name)
    return bad


@torch.no_grad()
def rescale_kept_weights(model: nn.Module, masks) -> dict[str, float]:
    """Scale each unit's kept weights so that it keeps its dense pre-activation variance.

    For a masked weight of shape ``(out, in, *kernel)`` with ``n = in * prod(kernel)``
    inputs per output unit, of which ``m_o`` are kept, unit ``o``'s kept weights are
    multiplied by ``sqrt(n / m_o)``: with i.i.d. zero-mean weights and inputs, its
    pre-activation variance ``m_o * Var(w) * E[x^2]`` returns to the dense
    ``n * Var(w) * E[x^2]``. Units with nothing kept stay zero. This is a control
    for signal collapse at initialisation: it changes no mask, only the scale.

    The model's weights are changed **in place** (as :func:`train` does); ``masks``
    is not modified.

    Parameters
    ----------
    model : torch.nn.Module
    masks : dict
        ``{weight name: 0/1 mask}`` as from :func:`topo_pai.prune`; every name must
        be a parameter of ``model`` with the mask's shape.

    Returns
    -------
    dict
        ``{weight name: mean scale factor over units that keep a weight}``.

    Examples
    --------
    >>> net = torch.nn.Linear(4, 2, bias=False)
    >>> _ = net.weight.data.fill_(1.0)
    >>> m = {"weight": torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])}
    >>> rescale_kept_weights(net, m)
    {'weight': 1.5}
    >>> (net.weight * m["weight"]).tolist()
    [[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    """
    params = dict(model.named_parameters())
    factors = {}
    for name, mask in masks.items():
        if name not in params:
            owner, _, attr = name.rpartition(".")
            original = f"{owner + '.' if owner else ''}parametrizations.{attr}.original"
            if name + "_orig" in params or original in params:
                raise KeyError(f"mask {name!r}: the model already has masks attached (its "
                               "weight is re-parametrised); rescale before apply_masks, or "
                               "remove the masks first (topo_pai.pruners.remove_masks)")
            raise KeyError(f"mask {name!r} names no parameter of the model")
        w = params[name]
        if w.dim() < 2:
            raise ValueError(f"mask {name!r}: the parameter has shape {tuple(w.shape)}; "
                             "rescaling needs a weight of at least 2 dimensions")
        # the one mask validator (shape, and only 0 and 1: a 0.5 is refused, not rounded)
        keep = torch.from_numpy(mask_array(name, mask, tuple(w.shape))).to(device=w.device)
        dense_fan_in = keep[0].numel()
        kept = keep.reshape(keep.shape[0], -1).sum(1)
        scale = torch.where(kept > 0, (dense_fan_in / kept.clamp(min=1).double()).sqrt(),
                            torch.zeros((), dtype=torch.float64, device=w.device))
        w.mul_(scale.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1))))
        used = scale[kept > 0]
        factors[name] = float(used.mean()) if used.numel() else 0.0
    return factors


def train(model: nn.Module, train_set, test_set=None, *, val_set=None, masks=None,
          config: TrainConfig | None = None, device: str | torch.device | None = "auto",
          seed: int = 0, progress: bool = True, log: str | os.PathLike | Callable | None = None,
          **hyper) -> TrainResult:
    """Train ``model`` **in place** with its pruned weights held at exactly zero.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (and moved to ``device``).
    train_set, test_set : Dataset
        In-memory datasets (``.x`` float tensor, ``.y`` int64 labels), e.g.
        from :func:`topo_pai.experiments.data.load_dataset`. ``test_set`` is
        evaluated after every epoch, or only once, after the last, when a
        ``val_set`` is given.
    val_set : Dataset, optional
        A validation split (e.g. from
        :meth:`~topo_pai.experiments.data.Dataset.split_off`), evaluated after
        every epoch in place of ``test_set``: choices are made on it, and the
        test set is touched once.
    masks : dict, optional
        ``{param name: 0/1 mask}`` as from :func:`topo_pai.prune`; attached with
        :func:`topo_pai.apply_masks`. None keeps the masks already attached
        (``torch.nn.utils.prune`` or parametrize); a model without any trains dense.
    config : TrainConfig, optional
        Hyperparameters; keyword arguments (``epochs=``, ``lr=``, ``schedule=``,
        ...) override its fields.
    device : "auto", "cpu", "cuda", torch.device
        ``"auto"``: CUDA when available, else CPU.
    seed : int
        Seeds initial state, batch order and dropout.
    progress : bool
        A progress bar over the batches of each epoch (tqdm, when installed).
    log : path or callable, optional
        Each epoch's metrics dict is appended as one JSON line to this file, or
        passed to this callable. They also go to the ``topo_pai.training`` logger.

    Returns
    -------
    TrainResult
        ``history`` (one dict per epoch: ``epoch, lr, train_loss, train_acc``,
        then ``val_loss, val_acc`` with a ``val_set``, else ``test_loss, test_acc``,
        and ``seconds``), ``final_accuracy`` and ``final_loss`` (test accuracy,
        a fraction, and loss after the last epoch; None without ``test_set``) and
        ``final_val_accuracy``, ``final_val_loss`` (None without ``val_set``).

    Raises
    ------
    RuntimeError
        If a pruned weight is non-zero after training (it never should be).

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(256, 4, generator=g); y = (x[:, 0] > 0).long()
    >>> data = SimpleNamespace(x=x, y=y)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> mask = {"0.weight": torch.rand(8, 4, generator=g) > 0.5}
    >>> res = train(net, data, data, masks=mask, epochs=20, batch_size=32,
    ...             progress=False, device="cpu")
    >>> res.final_accuracy > 0.8, bool((net[0].weight[~mask["0.weight"]] == 0).all())
    (True, True)
    """
    if isinstance(config, Mapping):  # a sweep's train section, as a dict
        config = {**config, **hyper}
        hyper = {}
    elif config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict of its fields, got "
                        f"{type(config).__name__}")
    base = asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
    fields_ = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted((set(base) | set(hyper)) - fields_)
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(map(repr, unknown))}; valid: "
                        f"{', '.join(sorted(fields_))}")
    cfg = TrainConfig(**{**base, **hyper})
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = _tensors(train_set, "train_set")
    _check_dtype(model, x, "train_set")
    if test_set is not None:
        _tensors(test_set, "test_set")
    if val_set is not None:
        _tensors(val_set, "val_set")
    check_omp_policy()
    dev = resolve_device(device)
    seed_everything(seed)
    if masks is not None:
        apply_masks(model, masks)
    attached = {k: v.bool() for k, v in read_masks(model).items()}
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    gen = torch.Generator().manual_seed(int(seed))
    sink = None
    if log is not None and not callable(log):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "a", encoding="utf-8")
    result = TrainResult(device=str(dev), config=asdict(cfg))
    n_classes = int(y.max()) + 1 if y.numel() else 0
    start = time.perf_counter()
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            lr = cfg.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            order = torch.randperm(x.shape[0], generator=gen)
            loss_sum, correct = 0.0, 0
            starts = list(range(0, x.shape[0], cfg.batch_size))
            if len(starts) > 1 and x.shape[0] - starts[-1] == 1:
                # a last batch of one sample joins the one before: BatchNorm in train mode
                # cannot normalise a single value per channel (a 1x1 map)
                starts.pop()
            ends = starts[1:] + [x.shape[0]]
            for i, end in _progress(list(zip(starts, ends)), progress,
                                    desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
                idx = order[i:end]
                xb, yb = x[idx].to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
                out = model(xb)
                if out.dim() != 2 or out.shape[1] < n_classes:  # torch: "Target 7 is out of bounds"
                    raise ValueError(f"the model gives outputs of shape {tuple(out.shape)}, but "
                                     f"the training labels go up to {n_classes - 1}: it needs "
                                     f"(batch, {n_classes}) logits (e.g. num_classes="
                                     f"{n_classes})")
                loss = nn.functional.cross_entropy(out, yb)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"training loss became {float(loss.detach())} in epoch "
                                             f"{epoch + 1}; lower lr (now {lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * idx.numel()
                correct += int((out.argmax(1) == yb).sum())
            row = dict(epoch=epoch + 1, lr=lr, train_loss=loss_sum / x.shape[0],
                       train_acc=correct / x.shape[0])
            if val_set is not None:
                row["val_loss"], row["val_acc"] = evaluate(model, val_set, device=dev)
            elif test_set is not None:
                row["test_loss"], row["test_acc"] = evaluate(model, test_set, device=dev)
            row["seconds"] = time.perf_counter() - t0
            result.history.append(row)
            logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                        " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            if sink is not None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            elif callable(log):
                log(row)
    finally:
        if sink is not None:
            sink.close()
    if result.history and val_set is not None:
        result.final_val_loss = result.history[-1]["val_loss"]
        result.final_val_accuracy = result.history[-1]["val_acc"]
        if test_set is not None:  # the one look at the test set
            result.final_loss, result.final_accuracy = evaluate(model, test_set, device=dev)
    elif result.history and test_set is not None:
        result.final_loss = result.history[-1]["test_loss"]
        result.final_accuracy = result.history[-1]["test_acc"]
    result.seconds = time.perf_counter() - start
    _refresh_pruned_weights(model)  # the last step's weights, also for the check below
    leaked = _pruned_nonzero(model, attached)
    if leaked:
        raise RuntimeError(f"pruned weights became non-zero during training in {leaked[:5]}")
    return result
