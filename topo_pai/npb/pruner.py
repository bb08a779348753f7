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

    ``objective``, ``node_term``, ``path_term``, ``reg_term``, ``upper_bound`` and
    ``optimal`` describe the layer's solve, before the repair step moved
    ``relocated`` weights; they are sums over the groups of a grouped conv.
    ``effective_in``/``effective_out`` (inputs with a kept weight that count as
    nodes, outputs with a kept weight from one), ``nonempty_kernels``,
    ``log10_paths_out`` and the fan statistics (see
    :func:`topo_pai.metrics.degrees.fan_stats`) describe the returned mask, with
    ``P`` read off the returned masks of the layers before it; without a repair they
    equal the solve's. ``tau_in``/``tau_out`` are the first group's saturation
    levels (the groups' budgets differ by at most one weight).
    """

    name: str
    budget: int
    K: int
    n_in: int
    n_out: int
    effective_in: int
    effective_out: int
    nonempty_kernels: int
    # log10 of sum_i P_i * r_i, the path term's mass (r_i: kept weights reading input i);
    # at p_in="channel" the paths into this layer's outputs; at "neuron" P_i sums input
    # i's positions and padding is ignored, so it is not a path count there
    log10_paths_out: float
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
    a table (budget, K, effective channels, log10 path mass and kernels of the returned
    mask, the solve's objective and its bound, weights relocated by the repair,
    fan-in/fan-out median/max of the returned mask)."""

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


def _check_capacity(layer, n: int, k: int) -> None:
    """Refuse a budget that ``k`` kept elements per kernel cannot hold, naming the layer
    and the ``K`` that would (a grouped conv's budget is split over its groups)."""
    O, per_group = layer.weight_shape[:2]
    kernels = (O // layer.groups) * per_group  # per group
    most = int(group_budgets(n, layer.groups).max()) if n else 0
    if most > kernels * k:
        k_min = -(-most // kernels)
        where = f" ({most} in one of its {layer.groups} groups)" if layer.groups > 1 else ""
        raise ValueError(f"NPB option K={k} is too small for layer '{layer.param}': its budget "
                         f"of {n} weights{where} needs at least {k_min} kept elements per "
                         f"kernel; pass K={{'{layer.param}': {k_min}}} (a mapping sets K per "
                         "layer), a larger K, or leave K unset")


def _mask_stats(mask: np.ndarray, layer, counts, node: str) -> dict:
    """``effective_in``, ``effective_out``, ``nonempty_kernels`` and ``log10_paths_out``
    of a layer's 0/1 ``mask`` under the input path counts ``counts``, as the solver
    defines them (:func:`topo_pai.npb.solver.evaluate`): ``r_i`` kept elements read input
    ``i``, an input counts when ``r_i > 0`` and it is live (every input for
    ``node="degree"``, ``P_i > 0`` for ``"paths"``), an output when a live input feeds it."""
    O, per_group = layer.weight_shape[:2]
    G = layer.groups
    M = mask.reshape(G, O // G, per_group, -1).sum(axis=3, dtype=np.int64)  # kernel counts
    P = counts.mantissa
    live = np.ones(P.size, dtype=bool) if node == "degree" else P > 0
    r = M.sum(axis=1).reshape(-1)  # input g * per_group + j feeds group g's outputs
    c_live = (M * live.reshape(G, 1, per_group)).sum(axis=2).reshape(-1)
    return {"effective_in": int(np.count_nonzero((r > 0) & live)),
            "effective_out": int(np.count_nonzero(c_live)),
            "nonempty_kernels": int(np.count_nonzero(M)),
            "log10_paths_out": log10_scaled(float(np.dot(P, r)), counts.exponent)}


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
    caps = {layer.param: _kernel_cap(opts["K"], layer) for layer in layers
            if layer.param in budgets}
    for layer in layers:  # before any solve: a K too small is the user's to fix
        if layer.param in caps:
            _check_capacity(layer, int(budgets[layer.param]), caps[layer.param])
    rng = np.random.default_rng(seed)
    masks: dict[str, np.ndarray] = {}
    rows = []
    solve_counts = {}
    current = topo.with_masks({})
    for idx, layer in enumerate(layers):
        if layer.param not in budgets:
            continue
        t0 = time.perf_counter()
        counts = solve_counts[idx] = current.layer_input_counts(idx, opts["p_in"])
        k = caps[layer.param]
        n = int(budgets[layer.param])
        M, parts = _solve_layer_groups(counts.mantissa, layer, n, k, opts)
        masks[layer.param] = _place(M, weights_abs[layer.param], layer, opts["placement"], rng)
        rows.append((idx, dict(
            name=layer.param, budget=n, K=k, n_in=len(counts.mantissa),
            n_out=layer.weight_shape[0],
            objective=sum(s.objective for s in parts), node_term=sum(s.node_term for s in parts),
            path_term=sum(s.path_term for s in parts), reg_term=sum(s.reg_term for s in parts),
            upper_bound=sum(s.upper_bound for s in parts),
            optimal=all(s.optimal for s in parts), seconds=time.perf_counter() - t0,
            groups=layer.groups, tau_in=parts[0].problem.tau_in,
            tau_out=parts[0].problem.tau_out, p_in=counts.mantissa)))
        current = topo.with_masks(masks)
    moved: dict[str, int] = {}
    if opts["repair"]:
        skip = () if opts["repair_linear"] else \
            tuple(layer.param for layer in layers if layer.kind == "Linear")
        masks, moved = relocate_ineffective(topo, masks, weights_abs, skip=skip, caps=caps)
    final = topo.with_masks(masks) if any(moved.values()) else None
    reports = BalanceReport()
    for idx, row in rows:
        layer = layers[idx]
        # the returned mask's numbers; P changes only where an earlier layer was repaired
        counts = solve_counts[idx] if final is None else \
            final.layer_input_counts(idx, opts["p_in"])
        stats = _mask_stats(masks[layer.param], layer, counts, opts["node"])
        fans = fan_stats(masks[layer.param], layer.groups)
        reports.append(LayerReport(**row, **stats, relocated=moved.get(layer.param, 0),
                                   **{f: fans[f] for f in FAN_FIELDS}))
    return masks, reports


# ----------------------------------------------------------------------------
# Repair
# ----------------------------------------------------------------------------


def _within_caps(cand: np.ndarray, kept: np.ndarray, kv: int, cap: int) -> np.ndarray:
    """The candidates (flat indices, in order of preference) that fit: a kernel of
    ``kv`` elements holding ``c`` kept ones takes its first ``cap - c`` candidates."""
    kern = cand // kv
    by_kernel = np.argsort(kern, kind="stable")  # stable: preference order within a kernel
    sorted_kern = kern[by_kernel]
    rank = np.empty_like(kern)
    rank[by_kernel] = np.arange(kern.size) - np.searchsorted(sorted_kern, sorted_kern)
    held = kept.reshape(-1, kv).sum(axis=1, dtype=np.int64)
    return cand[held[kern] + rank < cap]


def open_positions(topo, masks: dict[str, np.ndarray], idx: int, resolution: str) -> np.ndarray:
    """The elements of layer ``idx`` that would lie on an input-output path if kept,
    the other layers' masks being ``masks``: those joining a reached input unit to an
    output unit that reaches the output (the units' reach does not depend on this
    layer's mask: the graph is acyclic).

    At ``"channel"`` resolution that is every element of kernel ``(o, i)`` when input
    channel ``i`` is reached and output channel ``o`` reaches the output, read off the
    layer's reach flags. At ``"neuron"`` it is per element: one that joins such units
    at some position, so this layer's effective mask with the layer itself dense
    (a whole-network pass, hence the channel shortcut)."""
    layer = topo.layers[idx]
    current = topo.with_masks(masks)
    shape = layer.weight_shape
    if resolution == "channel":
        fin, bout = current.layer_reach(idx, resolution)
        ok = bout[:, None] & fin[layer.input_units()]
        return np.broadcast_to(ok.reshape(ok.shape + (1,) * (len(shape) - 2)), shape)
    opened = topo.with_masks({**masks, layer.param: np.ones(shape, dtype=bool)})
    return opened.effective_masks_numpy(resolution)[layer.param]


def relocate_ineffective(topo, masks: dict[str, np.ndarray], weights_abs: dict[str, np.ndarray],
                         resolution: str = "channel", skip=(), caps=None):
    """:func:`repair_masks`, also returning ``{param: weights relocated}``.

    Layers named in ``skip`` are left as they are (the official code repairs
    convs only). ``caps`` maps a layer to the most kept elements one of its kernels
    may hold (NPB's ``K``); a kernel is filled up to it, counting the kept elements it
    held before, ineffective ones included (so the cap holds whichever of them stay).
    """
    out = {k: v.copy() for k, v in masks.items()}
    moved: dict[str, int] = {}
    skip = set(skip)
    caps = caps or {}
    for idx, layer in enumerate(topo.layers):
        if layer.param not in out or layer.param in skip:
            continue
        current = topo.with_masks(out)
        eff = current.effective_masks_numpy(resolution)[layer.param]
        kept = out[layer.param]
        n_free = int(np.count_nonzero(kept & ~eff))
        if n_free == 0:
            continue
        cand = np.flatnonzero((open_positions(topo, out, idx, resolution) & ~kept).reshape(-1))
        w = weights_abs[layer.param].reshape(-1)[cand]
        cand = cand[np.argsort(-w, kind="stable")]
        kv = layer.kernel_volume
        if caps.get(layer.param, kv) < kv:
            cand = _within_caps(cand, kept, kv, caps[layer.param])
        if cand.size == 0:
            continue
        take = min(n_free, cand.size)
        chosen = cand[:take]
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
    that reaches the output (largest ``|w|`` first, then lowest index), at
    ``resolution`` (at ``"neuron"``: an element that joins them at some position).
    A weight added there is effective at once, and removing ineffective weights
    takes no path away, so effectiveness only grows. When a layer has fewer such free
    positions than freed weights, the remainder stays where it was: the budget is
    exact. Deterministic. The inputs are not modified.
    """
    return relocate_ineffective(topo, masks, weights_abs, resolution)[0]
