"""Registry entries for NPB and the seed paper's SynFlow-based widening method.

* ``npb``: Algorithm 1 (see :mod:`topo_pai.npb.pruner`), ERK budgets by default.
* ``synflow_widen``: a *reconstruction* of the ICLR paper's "fairly naive method
  based on SynFlow". The paper gives no algorithm; the released code holds an
  unused ``impsynflow`` option that suggests it. Here: iterative SynFlow in which
  every ``delta_t``-th round (up to round ``max_t``) scores weights at random
  instead, which spreads the kept weights over more channels (wider subnetworks,
  more effective nodes) while the other rounds keep preserving paths.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from topo_pai.npb.pruner import check_options, npb_masks
from topo_pai.pruners.methods import check_resolution, check_rounds, synflow_scores
from topo_pai.pruners.registry import Method, MethodOutput, register_method
from topo_pai.pruners.select import rng_for, top_k


@dataclass(frozen=True)
class NPBOptions:
    """``npb``'s options, as :func:`topo_pai.npb.pruner.npb_masks` takes them, checked by
    :func:`topo_pai.npb.pruner.check_options` when built (the layer names of a ``K``
    mapping when the model is traced)."""

    alpha: float = 0.01
    beta: float = 1.0
    K: int | None = None
    tau: float | None = None
    node: str = "degree"
    p_in: str = "channel"
    placement: str = "magnitude"
    repair: bool = True
    variant: str = "balanced"

    def __post_init__(self):
        # the values alone; the layer names a K mapping uses are checked with the model
        check_options(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class SynflowWidenOptions:
    """``synflow_widen``: SynFlow's options, and which rounds score at random (every
    ``delta_t``-th, up to round ``max_t`` when given)."""

    rounds: int = 100
    delta_t: int = 10
    max_t: int | None = None
    resolution: str = "neuron"

    def __post_init__(self):
        object.__setattr__(self, "rounds", check_rounds(self.rounds))
        check_resolution(self.resolution)
        for name in ("delta_t", "max_t"):
            value = getattr(self, name)
            if value is None and name == "max_t":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"synflow_widen option {name} must be a positive int"
                                 f"{' or None' if name == 'max_t' else ''}, got {value!r}")


def _npb(ctx, budgets, **options):
    """NPB masks for the framework's per-layer budgets, with the balance report, which
    ``prune_with_scores`` returns as ``.report``."""
    topo = ctx.topology()
    on_graph = {layer.param for layer in topo.layers}
    wanted = {t.param: int(budgets[t.param]) for t in ctx.active if t.param in on_graph}
    masks, report = npb_masks(topo, ctx.abs_weights(), wanted, seed=ctx.seed, **options)
    out = {}
    for t in ctx.active:
        if t.param in masks:
            out[t.param] = masks[t.param]
        else:  # off the traced graph: no path crosses it; keep its largest |w|
            keep = top_k(ctx.abs_weights()[t.param].reshape(-1), int(budgets[t.param]),
                         rng_for(ctx.seed, "npb", t.param))
            out[t.param] = keep.reshape(t.shape)
    return MethodOutput(out, report)


def _synflow_widen(ctx, masks, delta_t=10, max_t=None, resolution="neuron"):
    """SynFlow scores, except on rounds ``t = ctx.round`` with ``t % delta_t == 0`` (and
    ``t <= max_t`` when given), which use seeded uniform random scores."""
    t = ctx.round
    if t % int(delta_t) == 0 and (max_t is None or t <= int(max_t)):
        return {n: rng_for(ctx.seed, f"widen{t}", n).random(ctx.abs_weights()[n].shape)
                for n in ctx.active_names}
    return synflow_scores(ctx, masks, resolution=resolution)


register_method(Method(
    "npb", "masks", _npb, default_allocation="erk", params=NPBOptions,
    summary="Node-Path Balancing: exact per-layer node/path optimum on ERK budgets "
            "(variant='official' for the official objective)"))
register_method(Method(
    "synflow_widen", "iterative", _synflow_widen, randomized=True,
    params=SynflowWidenOptions,
    summary="SynFlow with random scores every delta_t-th round (reconstruction of the "
            "ICLR paper's naive method)"))
