"""NPB (Node-Path Balancing, Algorithm 1 of the paper) on a :class:`~topo_pai.Topology`.

For each prunable layer, in the Topology's topological order (never module
registration order):

1. read the incoming path mass ``P_in`` of the layer's input units from the
   Topology's forward counts, with every earlier layer already at its NPB mask
   (``p_in="channel"``, the default: paths of the channel graph; ``"neuron"``:
   paths of the unrolled graph summed over each channel's positions);
2. solve the per-layer problem exactly (:func:`topo_pai.npb.solver.solve_layer`):
   kernel counts ``M[o, i] in {0..K}`` maximising
   ``alpha*nodes + (1-alpha)*paths + beta*(non-empty kernels)`` under the layer's
   budget, where a node counts its edges up to its fair share of the budget
   (``tau="fair"``; ``tau=1`` counts effective channels, as the official code).
   A grouped or depthwise conv is solved group by group, the layer budget split
   evenly over its groups (sizes differ by at most one);
3. place ``M[o, i]`` weights inside kernel ``(o, i)``: the largest initial
   ``|w|`` (``placement="magnitude"``, the default) or seeded random positions.

Budgets come from ERK unless another allocation is given. Residual shortcuts are
ordinary layers with their own ``P_in``; nothing depends on names, chunking or
hard-coded ``K`` schedules: ``K`` is an option (an int, or a mapping from
parameter name to int), capped at the kernel volume.

Finally (``repair=True``) weights that lie on no input-output path are moved,
layer by layer in topological order, to free positions whose input unit is
reached from the input and whose output unit reaches the output, largest ``|w|``
first. This is the official ``fine_tune_mask`` idea done on the graph: the layer
budget stays exact and the result is deterministic. The report gives, per
layer, the weights it relocated.

``variant="official"`` reproduces the official code's objective for ablations:
``tau = 1``, the official normalisers (node term over ``C_in + C_out``, the
official ``max_path`` formula with its ``q = 0`` quirk) and no repair on Linear
layers (the official ``fine_tune_mask`` only repairs convs). See
``docs/npb_solver.md`` §1 for the exact definitions.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from topo_pai.metrics.degrees import FAN_FIELDS, fan_stats
from topo_pai.metrics.scaled import log10_scaled
from topo_pai.npb.solver import NODE_VARIANTS, TAU_FAIR, solve_layer

VARIANTS = ("balanced", "official")
#: Solver settings of each variant (tau is the variant's default; see ``check_options``).
VARIANT_SETTINGS = {
    "balanced": {"tau": TAU_FAIR, "node_norm": "achievable", "path_norm": "max",
                 "repair_linear": True},
    "official": {"tau": 1.0, "node_norm": "channels", "path_norm": "official",
                 "repair_linear": False},
}
P_IN = ("channel", "neuron")
PLACEMENTS = ("magnitude", "random")


@dataclass(frozen=True)
class LayerReport:
    """How one layer was balanced.

    ``objective``, ``node_term``, ``path_term``, ``reg_term`` and ``upper_bound``
    are sums over the groups of a grouped conv. ``relocated`` counts the weights
    the repair step moved in this layer. The fan statistics (see
    :func:`topo_pai.metrics.degrees.fan_stats`) describe the final mask.
    """

    name: str
    budget: int
    K: int
    n_in: int
    n_out: int
    effective_in: int
    effective_out: int
    nonempty_kernels: int
    log10_paths_out: float  # log10 of sum_i P_i * r_i: paths reaching this layer's outputs
    objective: float
    node_term: float
    path_term: float
    reg_term: float
    upper_bound: float
    optimal: bool
    seconds: float
    groups: int = 1
    tau_in: float = 1.0
    tau_out: float = 1.0
    relocated: int = 0
    fan_in_median: float = 0.0
    fan_in_max: int = 0
    fan_out_median: float = 0.0
    fan_out_max: int = 0
    p_in: np.ndarray = field(default=None, repr=False)  # the instance's P_in (mantissas)


class BalanceReport(list):
    """One :class:`LayerReport` per NPB-pruned layer, in topological order; prints as
    a table (budget, K, effective channels, paths achieved, objective and its bound,
    weights relocated by the repair, fan-in/fan-out median/max of the final mask)."""

    def to_records(self) -> list[dict]:
        fields = [f for f in LayerReport.__dataclass_fields__ if f != "p_in"]
        return [{f: getattr(r, f) for f in fields} for r in self]

    def __str__(self) -> str:
        head = ("layer", "budget", "K", "eff. in", "eff. out", "kernels", "log10 paths",
                "objective", "bound", "optimal", "relocated", "fan-in med/max",
                "fan-out med/max")
        cells = [head] + [(r.name, str(r.budget), str(r.K), f"{r.effective_in}/{r.n_in}",
                           f"{r.effective_out}/{r.n_out}", str(r.nonempty_kernels),
                           f"{r.log10_paths_out:.2f}", f"{r.objective:.6f}",
                           f"{r.upper_bound:.6f}", "yes" if r.optimal else "no",
                           str(r.relocated), f"{r.fan_in_median:g}/{r.fan_in_max}",
                           f"{r.fan_out_median:g}/{r.fan_out_max}") for r in self]
        widths = [max(len(row[j]) for row in cells) for j in range(len(head))]
        lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(row, widths))) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------


def _real(value, name: str, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"NPB option {name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        span = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
        raise ValueError(f"NPB option {name} must be a finite number {span}, got {value!r}")
    return v


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def check_options(*, alpha, beta, K, tau, node, p_in, placement, repair, variant,
                  layer_names=()) -> dict:
    """Validate NPB's options; return them normalised with the variant's solver settings.

    Every error names the option and says what it accepts. ``layer_names`` (param
    or module names) are the keys a ``K`` mapping may use.
    """
    if variant not in VARIANTS:
        raise ValueError(f"NPB option variant must be one of {VARIANTS}, got {variant!r}")
    settings = dict(VARIANT_SETTINGS[variant])
    alpha = _real(alpha, "alpha", 0.0, 1.0)
    beta = _real(beta, "beta", 0.0)
    if node not in NODE_VARIANTS:
        raise ValueError(f"NPB option node must be one of {NODE_VARIANTS}, got {node!r}")
    if p_in not in P_IN:
        raise ValueError(f"NPB option p_in must be 'channel' or 'neuron', got {p_in!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"NPB option placement must be 'magnitude' or 'random', got "
                         f"{placement!r}")
    if not isinstance(repair, (bool, np.bool_)):
        raise ValueError(f"NPB option repair must be True or False, got {repair!r}")
    if tau is None:
        tau = settings["tau"]
    elif tau != TAU_FAIR:
        ok = not isinstance(tau, (bool, str)) and isinstance(tau, numbers.Real) \
            and math.isfinite(float(tau)) and float(tau) > 0
        if not ok:
            raise ValueError(f"NPB option tau must be 'fair', None (the variant's default) or a "
                             f"finite number > 0 (tau=1 counts effective channels), got {tau!r}")
        tau = float(tau)
    if variant == "official" and tau != 1.0:
        raise ValueError(f"variant='official' fixes tau=1 (the official effective-channel "
                         f"term); got tau={tau!r}. Drop tau, or use variant='balanced'")
    if K is not None:
        if isinstance(K, Mapping):
            known = set(layer_names)
            unknown = [k for k in K if known and k not in known]
            if unknown:
                raise ValueError(f"NPB option K names {unknown[:5]}, which are not prunable "
                                 "layers on the traced graph")
            K = {k: _positive_int(v, f"NPB option K[{k!r}]") for k, v in K.items()}
        else:
            K = _positive_int(K, "NPB option K")
    settings.update(alpha=alpha, beta=beta, K=K, tau=tau, node=node, p_in=p_in,
                    placement=placement, repair=bool(repair), variant=variant)
    return settings


def _kernel_cap(K, layer) -> int:
    volume = layer.kernel_volume
    if K is None:
        return volume
    if isinstance(K, Mapping):
        k = K.get(layer.param, K.get(layer.name, volume))
    else:
        k = K
    return min(int(k), volume)


# ----------------------------------------------------------------------------
# Per-layer solve and placement
# ----------------------------------------------------------------------------


def _place(M, weight_abs, layer, placement, rng) -> np.ndarray:
    """A bool mask with ``M[o, i]`` kept elements in kernel ``(o, i)``."""
    O, per_group = layer.weight_shape[:2]
    kv = layer.kernel_volume
    w = weight_abs.reshape(O, per_group, kv)
    if placement == "magnitude":
        # stable sort on -|w|: largest first, lower index first among equals
        order = np.argsort(-w, axis=2, kind="stable")
    else:
        order = np.argsort(rng.random(w.shape), axis=2, kind="stable")
    rank = np.argsort(order, axis=2, kind="stable")  # position of each element in `order`
    keep = rank < M[:, :, None]
    return keep.reshape(layer.weight_shape)


def group_budgets(n: int, groups: int) -> np.ndarray:
    """Split a layer budget over equal-sized groups: sizes differ by at most one and
    the larger ones are evenly spaced over the groups (never the first ones).

    >>> group_budgets(10, 4).tolist()
    [2, 3, 2, 3]
    """
    base, extra = divmod(int(n), int(groups))
    out = np.full(groups, base, dtype=np.int64)
    if extra:
        out[np.floor((np.arange(extra) + 0.5) * (groups / extra)).astype(np.int64)] += 1
    return out


def _solve_layer_groups(P, layer, n: int, K: int, opts: dict):
    """Solve one layer (per group when grouped); returns ``(M (O, per_group), parts)``
    with ``parts`` the per-group :class:`~topo_pai.npb.solver.LayerSolution` list."""
    O, per_group = layer.weight_shape[:2]
    G = layer.groups
    og = O // G
    M = np.zeros((O, per_group), dtype=np.int64)
    parts = []
    for g, n_g in enumerate(group_budgets(n, G)):
        sol = solve_layer(P[g * per_group:(g + 1) * per_group], og, int(n_g), K, opts["alpha"],
                          opts["beta"], opts["node"], tau=opts["tau"],
                          node_norm=opts["node_norm"], path_norm=opts["path_norm"])
        M[g * og:(g + 1) * og] = sol.M
        parts.append(sol)
    return M, parts


def npb_masks(topo, weights_abs: dict[str, np.ndarray], budgets: dict[str, int], *,
              alpha: float = 0.01, beta: float = 1.0, K=None, tau=None, node: str = "degree",
              p_in: str = "channel", placement: str = "magnitude", repair: bool = True,
              variant: str = "balanced", seed: int = 0):
    """NPB masks for the given per-layer budgets; returns ``(masks, reports)``.

    ``topo`` is a Topology of the model (its masks are ignored: layers without a
    budget stay dense). ``weights_abs`` holds ``|w|`` per parameter (placement and
    repair order). Layers missing from ``budgets`` are left dense. ``tau=None``
    takes the variant's default (``"fair"`` for ``"balanced"``, 1 for ``"official"``).
    """
    layers = topo.layers
    names = {layer.param for layer in layers} | {layer.name for layer in layers}
    opts = check_options(alpha=alpha, beta=beta, K=K, tau=tau, node=node, p_in=p_in,
                         placement=placement, repair=repair, variant=variant,
                         layer_names=names)
    rng = np.random.default_rng(seed)
    masks: dict[str, np.ndarray] = {}
    rows = []
    current = topo.with_masks({})
    for idx, layer in enumerate(layers):
        if layer.param not in budgets:
            continue
        t0 = time.perf_counter()
        counts = current.layer_input_counts(idx, opts["p_in"])
        k = _kernel_cap(opts["K"], layer)
        n = int(budgets[layer.param])
        M, parts = _solve_layer_groups(counts.mantissa, layer, n, k, opts)
        masks[layer.param] = _place(M, weights_abs[layer.param], layer, opts["placement"], rng)
        r = np.concatenate([s.row_sums for s in parts])
        mass = float(np.dot(counts.mantissa, r))
        log10_out = log10_scaled(mass, counts.exponent)
        rows.append(dict(
            name=layer.param, budget=n, K=k, n_in=len(counts.mantissa),
            n_out=layer.weight_shape[0], effective_in=sum(s.n_eff_in for s in parts),
            effective_out=sum(s.n_eff_out for s in parts),
            nonempty_kernels=sum(s.n_kernels for s in parts), log10_paths_out=log10_out,
            objective=sum(s.objective for s in parts), node_term=sum(s.node_term for s in parts),
            path_term=sum(s.path_term for s in parts), reg_term=sum(s.reg_term for s in parts),
            upper_bound=sum(s.upper_bound for s in parts),
            optimal=all(s.optimal for s in parts), seconds=time.perf_counter() - t0,
            groups=layer.groups, tau_in=parts[0].problem.tau_in,
            tau_out=parts[0].problem.tau_out, p_in=counts.mantissa))
        current = topo.with_masks(masks)
    moved: dict[str, int] = {}
    if opts["repair"]:
        skip = () if opts["repair_linear"] else \
            tuple(layer.param for layer in layers if layer.kind == "Linear")
        masks, moved = relocate_ineffective(topo, masks, weights_abs, skip=skip)
    by_param = {layer.param: layer for layer in layers}
    reports = BalanceReport()
    for row in rows:
        layer = by_param[row["name"]]
        fans = fan_stats(masks[layer.param], layer.groups)
        reports.append(LayerReport(**row, relocated=moved.get(layer.param, 0),
                                   **{f: fans[f] for f in FAN_FIELDS}))
    return masks, reports


# ----------------------------------------------------------------------------
# Repair
# ----------------------------------------------------------------------------


def relocate_ineffective(topo, masks: dict[str, np.ndarray], weights_abs: dict[str, np.ndarray],
                         resolution: str = "channel", skip=()):
    """:func:`repair_masks`, also returning ``{param: weights relocated}``.

    Layers named in ``skip`` are left as they are (the official code repairs
    convs only).
    """
    out = {k: v.copy() for k, v in masks.items()}
    moved: dict[str, int] = {}
    skip = set(skip)
    for idx, layer in enumerate(topo.layers):
        if layer.param not in out or layer.param in skip:
            continue
        current = topo.with_masks(out)
        eff = current.effective_masks_numpy(resolution)[layer.param]
        kept = out[layer.param]
        n_free = int(np.count_nonzero(kept & ~eff))
        if n_free == 0:
            continue
        fin, bout = current.layer_reach(idx, resolution)
        ok = bout[:, None] & fin[layer.input_units()]
        ok = ok.reshape(ok.shape + (1,) * (kept.ndim - 2))
        cand = np.flatnonzero((~kept & ok).reshape(-1))
        if cand.size == 0:
            continue
        take = min(n_free, cand.size)
        w = weights_abs[layer.param].reshape(-1)[cand]
        chosen = cand[np.argsort(-w, kind="stable")[:take]]
        new = (kept & eff).reshape(-1)
        new[chosen] = True
        if take < n_free:  # keep the budget exact: some ineffective weights stay
            stay = np.flatnonzero((kept & ~eff).reshape(-1))[: n_free - take]
            new[stay] = True
        out[layer.param] = new.reshape(kept.shape)
        moved[layer.param] = take
    return out, moved


def repair_masks(topo, masks: dict[str, np.ndarray], weights_abs: dict[str, np.ndarray],
                 resolution: str = "channel") -> dict[str, np.ndarray]:
    """Move kept-but-ineffective weights to positions where they lie on a path.

    Layer by layer in topological order: drop the layer's ineffective weights and
    add as many at free positions joining a reached input unit to an output unit
    that reaches the output (largest ``|w|`` first, then lowest index). A weight
    added there is effective at once, and removing ineffective weights takes no
    path away, so effectiveness only grows. When a layer has fewer such free
    positions than freed weights, the remainder stays where it was: the budget is
    exact. Deterministic. The inputs are not modified.
    """
    return relocate_ineffective(topo, masks, weights_abs, resolution)[0]
