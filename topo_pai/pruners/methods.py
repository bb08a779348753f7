"""The built-in pruning methods: scores (higher = keep) or, for PHEW and shuffle, masks.

Every function here reads the model through a
:class:`~topo_pai.pruners.context.PruneContext` and returns float64 arrays for
``ctx.active`` only; thresholding, budgets and rounds live in
:mod:`topo_pai.pruners.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F

from topo_pai.checks import check_int, check_number
from topo_pai.errors import InputShapeError
from topo_pai.pruners.registry import Method, register_method
from topo_pai.pruners.select import rng_for, top_k
from topo_pai.topology import RESOLUTIONS

# -- options: one frozen dataclass per method, validated when built -------------------------

def check_rounds(rounds) -> int:
    return check_int("rounds", rounds, minimum=1)


def check_resolution(resolution) -> str:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be {' or '.join(map(repr, RESOLUTIONS))}, got "
                         f"{resolution!r}")
    return resolution


@dataclass(frozen=True)
class IterSnipOptions:
    """``iter_snip``: the number of scoring rounds."""

    rounds: int = 100

    def __post_init__(self):
        object.__setattr__(self, "rounds", check_rounds(self.rounds))


@dataclass(frozen=True)
class GraspOptions:
    """``grasp``: the logits are divided by ``temperature``."""

    temperature: float = 200.0

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_number(
            "temperature", self.temperature, minimum=0.0, min_open=True,
            hint="the logits are divided by it (default 200)"))


@dataclass(frozen=True)
class SynflowOptions:
    """``synflow``: rounds, and the graph the flow is taken on (``"neuron"``: the
    published method; ``"channel"``: the faster variant)."""

    rounds: int = 100
    resolution: str = "neuron"

    def __post_init__(self):
        object.__setattr__(self, "rounds", check_rounds(self.rounds))
        check_resolution(self.resolution)


@dataclass(frozen=True)
class ShuffleOptions:
    """``shuffle``: the masks whose per-layer counts are kept (checked against the model
    by ``prune``)."""

    masks: Any = None


@dataclass(frozen=True)
class PhewOptions:
    """Options of ``phew``, passed on to ``topo_pai.pruners.phew.phew_masks`` (its
    docstring defines them) and checked when built (``check_phew_options``):
    ``element`` ("sample" or "largest"), ``stall_window`` and ``min_yield`` (when to
    stop walking and fill by ``|w|``), ``max_walks`` (a hard cap on the walks; None:
    none)."""

    element: str = "sample"
    stall_window: int = 10_000
    min_yield: float = 0.01
    max_walks: int | None = None

    def __post_init__(self):
        from topo_pai.pruners.phew import check_phew_options  # numba kernels: load on use

        check_phew_options(element=self.element, stall_window=self.stall_window,
                           min_yield=self.min_yield, max_walks=self.max_walks)


def _random_scores(ctx, masks):
    """i.i.d. uniform scores, one seeded stream per layer: with exact per-layer
    budgets, the kept set is a uniformly random subset of each layer."""
    del masks
    return {t.param: rng_for(ctx.seed, "random", t.param).random(t.shape) for t in ctx.active}


def _magnitude_scores(ctx, masks):
    """``|w|``."""
    del masks
    w = ctx.abs_weights()
    return {n: w[n] for n in ctx.active_names}


# -- gradient-based scores ---------------------------------------------------------------

def _leaf_weights(ctx, masks):
    """Fresh leaf tensors holding every prunable weight (times its current mask), keyed
    by parameter name, and the private model copy they are substituted into."""
    net = ctx.plain_model()
    net.train(bool(ctx.options.get("train_mode", False)))
    ws = {}
    for t in ctx.targets:
        w = net.get_submodule(t.module).weight.detach()
        if masks is not None and t.param in masks:
            w = w * torch.from_numpy(masks[t.param]).to(device=w.device, dtype=w.dtype)
        ws[t.param] = w.clone().requires_grad_(True)
    return net, ws


def _cross_entropy(out, y):
    """Cross-entropy with the targets checked first: a user's wrong labels get an error
    that says what is wrong, not torch's message from inside the loss."""
    if out.ndim < 2:
        raise ValueError(f"the model's output has shape {tuple(out.shape)}; the default "
                         "cross-entropy loss needs logits (batch, classes, ...): pass loss=")
    classes = out.shape[1]
    # one label per input, or per output position for dense outputs (batch, classes, d1, ...)
    labels_shape = (out.shape[0],) + tuple(out.shape[2:])
    if not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
        if tuple(y.shape) != labels_shape:
            hint = " (e.g. y.squeeze(1))" if y.ndim == 2 and y.shape[1] == 1 else ""
            raise ValueError(f"data targets have shape {tuple(y.shape)}; the default "
                             f"cross-entropy loss needs one class label per input, shape "
                             f"{labels_shape}{hint}, or pass loss=")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(f"data targets hold labels in [{int(y.min())}, {int(y.max())}], "
                             f"but the model has {classes} classes: labels must lie in "
                             f"[0, {classes})")
        return F.cross_entropy(out, y.long())
    if y.is_floating_point() and tuple(y.shape) == tuple(out.shape):
        return F.cross_entropy(out, y)  # class probabilities
    raise ValueError(f"data targets are {y.dtype} of shape {tuple(y.shape)}; the default "
                     f"cross-entropy loss needs integer class labels of shape {labels_shape} "
                     f"or class probabilities of shape {tuple(out.shape)}: convert them (e.g. "
                     "y.long()) "
                     "or pass loss=")


def _loss_fn(ctx):
    loss = ctx.options.get("loss")
    return _cross_entropy if loss is None else loss


def _device(net):
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _call(net, ws, x):
    return torch.func.functional_call(net, ws, (x,), strict=False)


def _batch_losses(ctx, net, ws, temperature=None):
    """The loss of every batch, a function of the leaf weights ``ws`` (the logits
    divided by ``temperature`` first, if given)."""
    dev = _device(net)
    loss_fn = _loss_fn(ctx)
    for i, (x, y) in enumerate(ctx.batches()):
        try:
            out = _call(net, ws, x.to(dev))
        except RuntimeError as exc:  # e.g. a Linear that expects other features
            raise InputShapeError(
                f"the model cannot run on batch {i} of the data (inputs of shape "
                f"{tuple(x.shape)}, input_shape={tuple(ctx.input_shape)}): {exc}. Give data "
                "and an input_shape that fit the model.") from exc
        if temperature is not None:
            out = out / temperature
        yield _checked_loss(ctx, loss_fn, out, y.to(dev))


def _checked_loss(ctx, loss_fn, out, y):
    """``loss_fn(out, y)``, refused unless it is a scalar tensor that depends on the
    logits (a loss given as ``loss=`` may not be)."""
    given = ctx.options.get("loss") is not None
    try:
        loss = loss_fn(out, y)
    except Exception as exc:
        if not given:
            raise
        raise ValueError(f"loss= raised {type(exc).__name__}: {exc} (logits of shape "
                         f"{tuple(out.shape)}, labels of shape {tuple(y.shape)})") from exc
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
        what = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                and loss.numel() != 1 else "a tensor that does not depend on the logits"
                if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}")
        raise ValueError(f"loss= must return a scalar tensor computed from the logits (e.g. "
                         f"torch.nn.functional.cross_entropy(logits, y), reduction 'mean' or "
                         f"'sum'); it returned {what}")
    return loss


def _accumulate(total, grads):
    """``total[k] += grads[k]`` in place, skipping the weights a loss does not use."""
    for acc, g in zip(total, grads):
        if g is not None:
            acc += g


def _gradient_sum(ctx, net, ws, temperature=None):
    """Per leaf weight, the loss gradient summed over the batches (see
    :func:`_batch_losses`)."""
    leaves = list(ws.values())
    total = [torch.zeros_like(w) for w in leaves]
    for loss in _batch_losses(ctx, net, ws, temperature):
        _accumulate(total, torch.autograd.grad(loss, leaves, allow_unused=True))
    return total


def _snip_scores(ctx, masks):
    """SNIP (Lee et al. 2019): ``|g ⊙ w|`` with ``g`` the loss gradient summed over
    the batches (the gradient w.r.t. a multiplicative mask at 1, as in the
    Synaptic-Flow code). Pruned weights (``masks``) are zero, so score zero."""
    net, ws = _leaf_weights(ctx, masks)
    by_name = dict(zip(ws, _gradient_sum(ctx, net, ws)))
    return {n: (by_name[n] * ws[n].detach()).abs().double().cpu().numpy()
            for n in ctx.active_names}


def _grasp_scores(ctx, masks, temperature=200.0):
    """GraSP (Wang et al. 2020), sign convention of the paper and reference code.

    With ``g`` the loss gradient (logits divided by ``temperature``) and ``H`` the
    Hessian, removing weight ``q`` changes the gradient norm by about
    ``S(-θ_q) = -θ_q (Hg)_q``; GraSP removes the weights with the *largest*
    ``S(-θ)``, whose removal hurts gradient flow least (or even raises it). The
    keep-score returned here is therefore ``θ ⊙ Hg`` (higher = keep; not an
    absolute value: scores are signed), exactly what the Synaptic-Flow code keeps.
    """
    del masks
    net, ws = _leaf_weights(ctx, None)
    leaves = list(ws.values())
    stopped = _gradient_sum(ctx, net, ws, temperature)
    hg = [torch.zeros_like(w) for w in leaves]
    for loss in _batch_losses(ctx, net, ws, temperature):
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        z = sum((g * s).sum() for g, s in zip(grads, stopped) if g is not None)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            continue  # the loss does not depend on the weights twice (e.g. a linear model)
        _accumulate(hg, torch.autograd.grad(z, leaves, allow_unused=True))
    by_name = dict(zip(ws, hg))
    return {n: (ws[n].detach() * by_name[n]).double().cpu().numpy() for n in ctx.active_names}


# -- topology-based scores ---------------------------------------------------------------

def synflow_scores(ctx, masks, resolution="neuron"):
    """SynFlow (Tanaka et al. 2020): ``|w ⊙ ∂R/∂w|`` with ``R = 1ᵀ(∏|W|)1`` the
    path flow of the masked network under weights ``|w|``, as ``log10`` computed
    overflow-free by :meth:`topo_pai.Topology.flows` (``-inf`` where a weight is
    pruned or on no input-output path). Biases carry no flow and normalisation
    layers are identities.

    ``resolution="neuron"`` (the default) is the published method: the flow of
    the spatially unrolled network, every pool a sum over its window, so a
    single round equals a float64 torch SynFlow with biases zeroed and norms at
    identity (tested). ``"channel"`` is a faster *variant* on the channel
    multigraph (a conv kernel's edge weight is the sum of its kept ``|w|``, a
    pool links channel ``c`` to ``c``); its masks differ from the published
    method's."""
    check_resolution(resolution)
    topo = ctx.topology()
    if masks is not None:
        topo = topo.with_masks(masks)
    prepared = ctx.cache.get("edge_weights")
    if prepared is None:  # validate |w| once per pruning run, not once per round
        prepared = ctx.cache["edge_weights"] = topo.edge_weights(ctx.abs_weights())
    flows = topo.flows(prepared, resolution)
    if resolution == "channel":
        return _channel_log_scores(ctx, topo, flows)
    scores = flows.log10_through_weights()
    return {n: scores[n] for n in ctx.active_names}


# Explicit loops instead of numpy broadcasting: a 3x3 kernel would make numpy's inner
# loop 9 long. Same float additions in the same order, so bit-identical results.
@numba.njit(nogil=True, cache=True)
def _kernel_scores(lw, pair, kvol, out):
    for p in range(pair.shape[0]):
        v = pair[p]
        base = p * kvol
        for k in range(kvol):
            out[base + k] = lw[base + k] + v


@numba.njit(nogil=True, cache=True)
def _linear_scores(lw, lb, lf, out):
    for o in range(lw.shape[0]):
        for i in range(lw.shape[1]):
            out[o, i] = (lw[o, i] + lb[o]) + lf[i]


def _log10_abs_weights(ctx) -> dict[str, np.ndarray]:
    cache = ctx.cache.get("log10|w|")
    if cache is None:
        with np.errstate(divide="ignore"):
            cache = {n: np.log10(w) for n, w in ctx.abs_weights().items()}
        ctx.cache["log10|w|"] = cache
    return cache


def _channel_log_scores(ctx, topo, flows):
    """``Flows.log10_through_weights()`` at channel resolution for the active layers,
    with ``log10|w|`` computed once per pruning run instead of once per round.

    ``log10_through_weights`` spends most of a SynFlow round on ``log10`` of every
    weight; here the score is assembled from the same per-unit log flows
    (:meth:`~topo_pai.topology.Flows.layer_flows`) with the same float operations
    in the same order, so the two agree bit for bit (tested). Scores of pruned
    weights are left finite: the caller never reads them.
    """
    logw = _log10_abs_weights(ctx)
    buffers = ctx.cache.setdefault("synflow scores", {})
    active = set(ctx.active_names)
    out = {}
    for i, layer in enumerate(topo.layers):
        if layer.param not in active:
            continue
        fin, bout = flows.layer_flows(i)
        lf, lb = fin.log10, bout.log10
        lw = logw[layer.param]
        # One buffer per layer for the whole run: fresh 100 MB arrays every round
        # would cost page faults. Only the last round's scores outlive their round.
        score = buffers.get(layer.param)
        if score is None:
            score = buffers[layer.param] = np.empty(lw.shape)
        if layer.kind == "Linear":  # (lw + lb) + lf, the order of the public method
            _linear_scores(lw, lb, lf, score)
        else:
            pair = lb[:, None] + lf[layer.input_units()]
            _kernel_scores(lw.reshape(-1), pair.reshape(-1), layer.kernel_volume,
                           score.reshape(-1))
        out[layer.param] = score
    for n in active - set(out):  # prunable weights off the traced graph carry no flow
        out[n] = np.full(logw[n].shape, -np.inf)
    return out


# -- mask builders -------------------------------------------------------------------------

def _phew_masks(ctx, budgets, **options):
    """PHEW (Patil & Dovrolis 2021): biased random walks from ``|w|``; layer budgets
    default to ERK. Implemented by ``topo_pai.pruners.phew.phew_masks``."""
    try:
        from topo_pai.pruners.phew import phew_masks
    except ImportError as exc:
        raise ImportError("method 'phew' needs topo_pai.pruners.phew.phew_masks, which is not "
                          f"available: {exc}") from exc
    full = {t.param: int(budgets.get(t.param, t.numel)) for t in ctx.targets}
    # walks on every weight: attached masks only zero some |w| (read as zero, as every
    # method reads them), they do not take weights off the graph
    out = phew_masks(ctx.topology().with_masks({}), ctx.abs_weights(), full, ctx.seed, **options)
    result = {}
    for t in ctx.active:
        if t.param in out:
            result[t.param] = out[t.param]
        else:  # a layer off the traced graph: no walk reaches it, keep its largest |w|
            keep = top_k(ctx.abs_weights()[t.param].reshape(-1), full[t.param],
                         rng_for(ctx.seed, "phew", t.param))
            result[t.param] = keep.reshape(t.shape)
    return result


def _shuffle_masks(ctx, budgets, masks=None):
    """Layerwise shuffle (Frankle et al. 2021): each layer keeps as many weights as
    in ``masks``, at positions drawn uniformly at random (seeded per layer)."""
    del masks  # its counts arrive as ``budgets``
    out = {}
    for t in ctx.active:
        keep = np.zeros(t.numel, dtype=bool)
        k = budgets[t.param]
        keep[rng_for(ctx.seed, "shuffle", t.param).choice(t.numel, size=k, replace=False,
                                                           shuffle=False)] = True
        out[t.param] = keep.reshape(t.shape)
    return out


register_method(Method(
    "random", "score", _random_scores, randomized=True, default_allocation="uniform",
    summary="uniformly random weights, exact per-layer counts (default allocation 'uniform')"))
register_method(Method("magnitude", "score", _magnitude_scores, summary="|w|, global threshold"))
register_method(Method("snip", "score", _snip_scores, needs_data=True,
                       summary="|g * w| on data (Lee et al. 2019)"))
register_method(Method("iter_snip", "iterative", _snip_scores, needs_data=True,
                       params=IterSnipOptions,
                       summary="SNIP re-scored over `rounds` rounds, exponential schedule"))
register_method(Method("grasp", "score", _grasp_scores, needs_data=True,
                       params=GraspOptions,
                       summary="keep high w * Hg, i.e. remove high -w * Hg (Wang et al. 2020)"))
register_method(Method("synflow", "iterative", synflow_scores,
                       params=SynflowOptions,
                       summary="log10 |w * dR/dw| path flow, `rounds` rounds (Tanaka et al. 2020); "
                               "resolution='channel' is a faster variant"))
register_method(Method("phew", "masks", _phew_masks, randomized=True, default_allocation="erk",
                       params=PhewOptions,
                       summary="biased random walks on |w| (Patil & Dovrolis 2021); ERK budgets; "
                               "options go to phew_masks (element, stall_window, min_yield, max_walks)"))
register_method(Method("shuffle", "masks", _shuffle_masks, randomized=True,
                       params=ShuffleOptions, budgets_from_option="masks",
                       summary="permute the kept positions of `masks` within each layer"))
