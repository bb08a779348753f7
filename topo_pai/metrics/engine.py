"""The engine interface: what :class:`~topo_pai.Topology` asks of a counting engine.

An *engine* counts the paths of one masked network at one resolution
(``"channel"``: :class:`~topo_pai.metrics.channel.ChannelEngine`; ``"neuron"``:
:class:`~topo_pai.metrics.neuron.NeuronEngine` on Numba kernels, or
:class:`~topo_pai.metrics.torch_neuron.TorchNeuronEngine` on torch ops on the
model's device) and answers every per-group and per-layer question from those
counts. ``Topology`` holds one engine per resolution and delegates to it
without knowing which it is, so another implementation of a resolution drops in
by implementing :class:`Engine` and being registered in
``topo_pai.topology.ENGINES``. A factory there may also choose among
implementations itself (``neuron_engine`` does, per layer, by density, under
``engine="auto"``); ``Topology`` never
looks past the protocol (tested in ``tests/metrics/test_engine.py`` with a proxy that
exposes nothing else). The channel engine also offers ``blocks``, the explicit
CSR blocks behind ``Topology.blocks``, which belong to that resolution only.

Contract
--------
**Construction.** ``factory(program, structure, layer_masks, shared, options=...)``: the
traced :class:`~topo_pai.graph.ir.Program`, its channel structure maps
(:class:`~topo_pai.graph.structure.Structure`), the validated
:class:`~topo_pai.graph.masks.LayerMask` of every layer in ``program.layers``
order, a dict the engine may use to cache what depends on the architecture
only (it is shared by every ``Topology.with_masks`` sibling of one trace), and
the :class:`EngineOptions` of the trace (``from_torch(..., engine=...)`` and the
model's device). An engine computes lazily, caches its results, and never
modifies its inputs.

**Node groups.** Group ``0`` is the network input, group ``i + 1`` the output
of layer ``i``. :meth:`Engine.group_shape` gives the shape of a group's units:
``(C,)`` at channel resolution (channels, or the features of a 1-d value), the
per-sample tensor shape ``(C,)``, ``(C, L)`` or ``(C, H, W)`` at neuron
resolution. Per-group and per-layer arrays are C-ordered and flat unless said
otherwise.

**Scaled counts.** Counts overflow no float: every per-group vector is a
:class:`~topo_pai.metrics.scaled.Scaled`, a float64 numpy mantissa on the CPU
times ``2**e`` with one Python-int exponent per vector (unbounded), kept by
exact power-of-two rescaling so that ``max(m)`` stays within ``2**±SLACK_BITS``
(see :func:`~topo_pai.metrics.scaled.normalize`; sums and concatenations align
exponents first, as :func:`~topo_pai.metrics.scaled.combine` does). The only
error is float64 rounding in sums and products, so two engines of one
resolution agree up to float64 rounding on counts, flows and their log10, and
exactly on everything below. An engine that computes elsewhere (torch tensors
on a GPU) keeps the same mantissa-and-exponent form there and converts to
numpy at this boundary, on the calls that return arrays. ``risky`` marks a
vector whose dynamic range may have flushed a tiny count to zero (the engine
then reads reachability from exact arithmetic, not from the counts).

**Reachability is exact.** Effective nodes, parameters and masks and
:meth:`Engine.layer_reach` come from 0/1 (or saturated, ``min(x, 1)``)
arithmetic, or from counts proven free of underflow (no ``risky`` vector);
never from a threshold on a float that may have lost a small count.
:meth:`Engine.exact_total` is exact Python-int arithmetic
(:mod:`topo_pai.metrics.exact`, which any engine may call). An op an engine
cannot propagate is refused with :class:`~topo_pai.errors.UnsupportedOpError`
naming its fx node, never approximated.

**Weights.** :meth:`Engine.with_weights` returns the engine of the same masks
with non-negative edge weights (validated flat float64 arrays, one per layer, in
``program.layers`` order): forward and backward then carry weighted flows
(SynFlow's ``R = 1ᵀ(∏|W|)1``), constant factors in the model scale a unit by
``|c|`` instead of keeping or removing it, and at channel resolution a kernel's
edge weight is the sum of its unpruned elements' weights. Counting-only
queries (exact counts, effectiveness) are asked of unweighted engines only.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from topo_pai.graph.ir import Layer
from topo_pai.graph.masks import LayerMask
from topo_pai.kernels.multiplicity import kernel_weight_sums
from topo_pai.kernels.vectors import count_both_positive
from topo_pai.metrics.scaled import RISKY_BITS, NodeCounts, Scaled


class Engine(Protocol):
    """Path counts, reachability and flows of one masked network at one resolution.

    See the module docstring for the contract (groups, scaled counts, exact
    reachability, weights). ``layer`` arguments index ``program.layers``.
    """

    resolution: str  # "channel" or "neuron"

    def group_shape(self, group: int) -> tuple[int, ...]:
        """Shape of the units of node ``group`` at this resolution."""

    def forward(self) -> list[Scaled]:
        """Paths (flows, when weighted) from the network input into every unit, one
        flat :class:`Scaled` per node group."""

    def may_have_underflowed(self) -> bool:
        """Whether a forward or backward vector spans so many orders of magnitude that a
        count or flow far below its group's largest may read as zero (a ``risky``
        vector). Reachability is exact either way; per-unit counts and flows may not be."""

    def backward(self) -> list[Scaled]:
        """Paths (flows) from every unit to the network output, one per node group."""

    def log10_total(self) -> float:
        """log10 of the number of input-to-output paths (the total flow when weighted);
        ``-inf`` when there is none."""

    def exact_total(self) -> int:
        """The exact path count, as a Python int (unweighted engines)."""

    def exact_cost(self, log10_total: float) -> tuple[float, float]:
        """Estimated ``(work, memory in bytes)`` of :meth:`exact_total`, given its log10."""

    def effective_nodes(self) -> list[int]:
        """Per node group: units on at least one input-to-output path (exact)."""

    def effective_params(self) -> list[int]:
        """Per layer: unpruned weight elements on at least one path (exact)."""

    def effective_mask(self, layer: int) -> np.ndarray:
        """Bool array of the layer's weight shape: its unpruned elements on a path (exact)."""

    def layer_reach(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, outputs)`` bool arrays, one entry per channel (or feature) of the
        layer's input and output: reached from the network input, reaching its output,
        at some position (exact)."""

    def layer_input_counts(self, layer: int) -> NodeCounts:
        """Paths from the network input into each input channel (or feature) of the
        layer, summed over positions; mantissa shape ``(channels,)``."""

    def layer_flows(self, layer: int) -> tuple[NodeCounts, NodeCounts]:
        """Flows into every input unit of the layer and from every output unit to the
        network output, at this resolution: mantissas of shape ``(channels,)`` at
        channel resolution, the per-sample input and output shapes at neuron
        resolution."""

    def log10_through_weights(self, layer: int) -> np.ndarray:
        """``log10(w * dR/dw)`` for every element of the layer's weight (its shape): the
        flow through the element (SynFlow's score); ``-inf`` where pruned or on no path.
        Weights are the engine's (:meth:`with_weights`), 1 if it has none."""

    def with_weights(self, weights: list[np.ndarray]) -> Engine:
        """The engine of the same masks whose edges carry ``weights`` (see the module
        docstring)."""


#: How ``Topology`` builds an engine:
#: ``factory(program, structure, layer_masks, shared, options=EngineOptions(...))``.
EngineFactory = Callable[..., Engine]

#: The values of ``from_torch(..., engine=...)``.
ENGINE_CHOICES = ("auto", "numba", "torch")


@dataclass(frozen=True)
class EngineOptions:
    """Which implementation a resolution's factory builds, and where it computes.

    ``engine``: ``"numba"`` (the sparse kernels), ``"torch"`` (torch's dense ops, at
    neuron resolution) or ``"auto"`` (each layer on the faster of the two, by its
    density; see ``docs/architecture.md``). Channel resolution has only its sparse
    engine and takes any choice. ``device``: the torch device of the torch engine
    (the model's device).
    """

    engine: str = "auto"
    device: str = "cpu"

    def __post_init__(self):
        if self.engine not in ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINE_CHOICES))}, "
                             f"got {self.engine!r}")


class TableEngine(ABC):
    """What the numpy engines share: forward and backward tables propagated together on
    first use and kept, and reachability read off them.

    A table maps the engine's keys (group index at channel resolution, value id at
    neuron resolution) to :class:`Scaled` vectors; :attr:`group_keys` lists the key of
    every node group. Subclasses supply :meth:`_propagate_forward`,
    :meth:`_propagate_backward` and :meth:`_exact_reach`.
    """

    group_keys: list

    def __init__(self):
        self._fwd: dict | None = None
        self._bwd: dict | None = None
        self._reach: tuple[dict, dict] | None = None

    @abstractmethod
    def _propagate_forward(self) -> dict:
        """The forward table: counts (flows) from the input into every keyed value."""

    @abstractmethod
    def _propagate_backward(self) -> dict:
        """The backward table: counts (flows) from every keyed value to the output."""

    @abstractmethod
    def _exact_reach(self) -> tuple[dict, dict]:
        """Forward and backward reachability in 0/1 arithmetic, keyed as the tables."""

    def _propagate(self) -> None:
        # Both directions at once, on the first query of either: nearly every query
        # needs both, and one pass after the other runs faster than two far apart.
        if self._fwd is None:
            self._fwd = self._propagate_forward()
            self._bwd = self._propagate_backward()

    @property
    def fwd(self) -> dict:
        self._propagate()
        return self._fwd

    @property
    def bwd(self) -> dict:
        self._propagate()
        return self._bwd

    @property
    def reach(self) -> tuple[dict, dict]:
        """``(rf, rb)``: per key, an array whose positive entries are the units reached
        from the input (``rf``) and reaching the output (``rb``). Read off the counts
        (every consumer only asks "> 0", which an exact count answers) unless scaling
        may have flushed a tiny count to zero (a ``risky`` vector); then recomputed in
        0/1 arithmetic."""
        if self._reach is None:
            fwd, bwd = self.fwd, self.bwd
            if any(s.risky for s in fwd.values()) or any(s.risky for s in bwd.values()):
                self._reach = self._exact_reach()
            else:
                self._reach = ({k: s.m for k, s in fwd.items()},
                               {k: s.m for k, s in bwd.items()})
        return self._reach

    def may_have_underflowed(self) -> bool:
        return any(s.risky for s in self.fwd.values()) or any(s.risky for s in self.bwd.values())

    def forward(self) -> list[Scaled]:
        fwd = self.fwd
        return [fwd[k] for k in self.group_keys]

    def backward(self) -> list[Scaled]:
        bwd = self.bwd
        return [bwd[k] for k in self.group_keys]

    def effective_nodes(self) -> list[int]:
        rf, rb = self.reach
        return [int(count_both_positive(rf[k], rb[k])) for k in self.group_keys]


def weighted_layer_masks(layers: list[Layer], layer_masks: list[LayerMask],
                         weights: list[np.ndarray]) -> list[LayerMask]:
    """Copies of ``layer_masks`` whose multiplicity matrices hold, per kernel, the sum
    of the unpruned elements' weights (flat float64 ``weights``, one per layer)."""
    out = []
    for layer, lm, w in zip(layers, layer_masks, weights, strict=True):
        data = kernel_weight_sums(lm.mask.reshape(-1), w, layer.kernel_volume, lm.indptr,
                                  lm.indices, layer.weight_shape[1])
        out.append(LayerMask(lm.mask, lm.unpruned, lm.indptr, lm.indices, data, lm.shape))
    return out


def log10_weights(lm: LayerMask, weights: np.ndarray | None) -> np.ndarray:
    """``log10 w`` of a layer's unpruned elements (flat ``weights``, None: all 1), ``-inf``
    where pruned, in the weight's shape."""
    mask = lm.mask.astype(bool)
    if weights is None:
        return np.where(mask, 0.0, -np.inf)
    w = weights.reshape(mask.shape)
    with np.errstate(divide="ignore"):
        return np.where(mask, np.log10(np.where(mask, w, 1.0)), -np.inf)


def linear_log10_scores(log10_weights: np.ndarray, fin: Scaled, bout: Scaled) -> np.ndarray:
    """``log10(w * dR/dw)`` of a Linear layer: ``(log10 w + log10 bout) + log10 fin``
    (this order of additions is SynFlow's, which its fast path repeats bit for bit)."""
    return log10_weights + bout.log10()[:, None] + fin.log10()[None, :]


#: Elements per block when effective masks are assembled output unit by output unit.
_EFFECTIVE_CHUNK = 1 << 22


def unit_effective(lm: LayerMask, layer: Layer, fin: np.ndarray, bout: np.ndarray) -> np.ndarray:
    """Unpruned weights whose output unit reaches the outputs (``bout``) and whose input
    unit is reached from the inputs (``fin``), where units are channels or features.

    Built in blocks of output units, and only for output units that keep an unpruned
    weight and reach the outputs: the result is allocated zeroed (untouched pages of a
    huge, mostly pruned layer cost no memory) and no temporary is larger than a block.
    """
    shape = layer.weight_shape
    O, per_group = shape[:2]
    out_per_group = layer.out_per_group
    mask = lm.mask.reshape(O, -1).view(bool)  # 0/1 uint8: a view, not a copy
    eff = np.zeros(mask.shape, dtype=bool)
    rows = bout if lm.dense else bout & (np.diff(lm.indptr) > 0)
    rows = np.flatnonzero(rows)
    fin_g = fin.reshape(layer.groups, per_group)
    kv = mask.shape[1] // per_group
    step = max(1, _EFFECTIVE_CHUNK // max(1, mask.shape[1]))
    for start in range(0, rows.size, step):
        r = rows[start:start + step]
        if r[-1] - r[0] + 1 == r.size:  # consecutive rows (dense layers): views, not copies
            r = slice(int(r[0]), int(r[-1]) + 1)
            groups = np.arange(r.start, r.stop) // out_per_group
        else:
            groups = r // out_per_group
        keep = np.repeat(fin_g[groups], kv, axis=1) if kv > 1 else fin_g[groups]
        if isinstance(r, slice):
            np.logical_and(mask[r], keep, out=eff[r])
        else:
            eff[r] = mask[r] & keep
    return eff.reshape(shape)


def group_counts(engine: Engine, names: list[str], direction: str) -> dict[str, NodeCounts]:
    """An engine's ``"forward"`` or ``"backward"`` counts as :class:`NodeCounts` per node
    group name, each with its group's shape. The mantissas are read-only views of the
    engine's cached arrays: no copy, and a write cannot change later results."""
    table = engine.forward() if direction == "forward" else engine.backward()
    warn_if_underflowed(engine, f"{direction} counts", stacklevel=4)
    return {name: NodeCounts(_read_only(s.m.reshape(engine.group_shape(g))), s.e)
            for g, (name, s) in enumerate(zip(names, table, strict=True))}


def warn_if_underflowed(engine: Engine, what: str, stacklevel: int = 3) -> None:
    """Warn when ``what`` may hold a count or flow read as zero although non-zero: one
    exponent per node group holds about 2**1074 of dynamic range (README, "How it
    works"). Never silent: the values are then only exact for the larger entries."""
    if engine.may_have_underflowed():
        warnings.warn(
            f"{what}: a node group spans more than 2**{RISKY_BITS} between its largest and "
            "smallest non-zero count or flow, so the smallest may read as 0 (log10 -inf) or "
            "lose precision. Effective nodes, params and masks stay exact, the total accurate.",
            RuntimeWarning, stacklevel=stacklevel)


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view
