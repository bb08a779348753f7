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
   budget, each term normalised by its true per-layer maximum;
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
budget stays exact and the result is deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from topo_pai.npb.solver import solve_layer


@dataclass(frozen=True)
class LayerReport:
    """How one layer was balanced."""

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
    p_in: np.ndarray = field(default=None, repr=False)  # the instance's P_in (mantissas)


class BalanceReport(list):
    """One :class:`LayerReport` per NPB-pruned layer, in topological order; prints as
    a table (budget, K, effective channels, paths achieved, objective and its bound)."""

    def to_records(self) -> list[dict]:
        fields = [f for f in LayerReport.__dataclass_fields__ if f != "p_in"]
        return [{f: getattr(r, f) for f in fields} for r in self]

    def __str__(self) -> str:
        head = ("layer", "budget", "K", "eff. in", "eff. out", "kernels", "log10 paths",
                "objective", "bound", "optimal")
        cells = [head] + [(r.name, str(r.budget), str(r.K), f"{r.effective_in}/{r.n_in}",
                           f"{r.effective_out}/{r.n_out}", str(r.nonempty_kernels),
                           f"{r.log10_paths_out:.2f}", f"{r.objective:.6f}",
                           f"{r.upper_bound:.6f}", "yes" if r.optimal else "no") for r in self]
        widths = [max(len(row[j]) for row in cells) for j in range(len(head))]
        lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(row, widths))) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _kernel_cap(K, layer) -> int:
    volume = layer.kernel_volume
    if K is None:
        return volume
    if isinstance(K, dict):
        k = K.get(layer.param, K.get(layer.name, volume))
    else:
        k = K
    try:
        k = int(k)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"K for layer '{layer.param}' must be an int, got {k!r}") from exc
    if k < 1:
        raise ValueError(f"K for layer '{layer.param}' must be >= 1, got {k}")
    return min(k, volume)


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


def _layer_M(sol_M, layer):
    """Solver output (C_out, C_in) as kernel counts (O, per_group)."""
    if layer.groups != 1:
        raise ValueError(f"NPB's per-layer problem is defined for groups=1; layer "
                         f"'{layer.param}' has groups={layer.groups}. Exclude it "
                         "(exclude=[...]) to keep it dense.")
    return np.asarray(sol_M, dtype=np.int64)


def npb_masks(topo, weights_abs: dict[str, np.ndarray], budgets: dict[str, int], *,
              alpha: float = 0.01, beta: float = 1.0, K=None, node: str = "degree",
              p_in: str = "channel", placement: str = "magnitude", repair: bool = True,
              seed: int = 0):
    """NPB masks for the given per-layer budgets; returns ``(masks, reports)``.

    ``topo`` is a Topology of the model (its masks are ignored: layers without a
    budget stay dense). ``weights_abs`` holds ``|w|`` per parameter (placement and
    repair order). Layers missing from ``budgets`` are left dense.
    """
    if p_in not in ("channel", "neuron"):
        raise ValueError(f"p_in must be 'channel' or 'neuron', got {p_in!r}")
    if placement not in ("magnitude", "random"):
        raise ValueError(f"placement must be 'magnitude' or 'random', got {placement!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    rng = np.random.default_rng(seed)
    masks: dict[str, np.ndarray] = {}
    reports = BalanceReport()
    current = topo.with_masks({})
    for idx, layer in enumerate(topo.layers):
        if layer.param not in budgets:
            continue
        t0 = time.perf_counter()
        counts = current.layer_input_counts(idx, p_in)
        k = _kernel_cap(K, layer)
        sol = solve_layer(counts.mantissa, layer.weight_shape[0], int(budgets[layer.param]), k,
                          alpha, beta, node)
        M = _layer_M(sol.M, layer)
        masks[layer.param] = _place(M, weights_abs[layer.param], layer, placement, rng)
        mass = float(np.dot(counts.mantissa, sol.row_sums))
        log10_out = (math.log10(mass) + counts.exponent * math.log10(2.0)) if mass > 0 \
            else -math.inf
        reports.append(LayerReport(
            layer.param, int(budgets[layer.param]), k, len(counts.mantissa),
            layer.weight_shape[0], sol.n_eff_in, sol.n_eff_out, sol.n_kernels, log10_out,
            sol.objective, sol.node_term, sol.path_term, sol.reg_term, sol.upper_bound,
            sol.optimal, time.perf_counter() - t0, counts.mantissa))
        current = topo.with_masks(masks)
    if repair:
        masks = repair_masks(topo, masks, weights_abs)
    return masks, reports


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
    out = {k: v.copy() for k, v in masks.items()}
    for idx, layer in enumerate(topo.layers):
        if layer.param not in out:
            continue
        current = topo.with_masks(out)
        eff = current.effective_masks_numpy(resolution)[layer.param]
        kept = out[layer.param]
        n_free = int(np.count_nonzero(kept & ~eff))
        if n_free == 0:
            continue
        fin, bout = current.layer_reach(idx, resolution)
        O, per_group = layer.weight_shape[:2]
        cols = (np.arange(O) // (O // layer.groups))[:, None] * per_group + np.arange(per_group)
        ok = bout[:, None] & fin[cols]
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
    return out
