"""``from_torch`` and :class:`Topology`: the masked network as a layered DAG.

Semantics (tested in ``tests/``):

* **Nodes** are the units of the network input and of the output of every
  Linear and Conv layer. At ``"channel"`` resolution a unit is a channel (or a
  feature of a 1-d tensor), the paper's model; at ``"neuron"`` resolution it is
  an element of the per-sample tensor.
* **Edges** are unpruned weights. At channel resolution a conv weight element
  ``(o, i, kh, kw)`` is one parallel edge from input channel ``i`` (within its
  group) to output channel ``o``; at neuron resolution there is one edge per
  unpruned element and output position whose input position lies inside the
  input (padding adds no nodes).
* **Non-parametric ops are structure.** Elementwise ops keep units, ``+``
  merges (counts add), ``cat`` stacks, a pool output unit connects to every
  input unit of its window (channel ``c`` to channel ``c`` once at channel
  resolution, as does a spatial mean), and a flatten maps channel ``c`` to its
  ``H*W`` features, so a Linear after it has one parallel edge from ``c`` per
  unpruned weight among them. Biases are neither nodes nor edges.
* **Paths** run from an input unit to an output unit. A node is *effective*
  when a path passes through it; so is an unpruned weight element (at neuron
  resolution: at some output position).
* **What ``model(x)`` computes is counted**: extra forward arguments take their
  defaults. A product by a constant keeps a unit where the constant is non-zero
  and removes it where it is zero (at channel resolution: zero at every position
  of the channel); in weighted flows it scales by ``|c|``. Offsets keep units;
  ``a - b`` merges like ``a + b``. Tied weights are refused.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from topo_pai.checks import check_bool
from topo_pai.coverage import Uncovered, warn_uncovered
from topo_pai.errors import MaskError, PathCountTooLarge
from topo_pai.graph.ir import Program, check_flow_factors
from topo_pai.graph.masks import LayerMask, attached_masks, layer_mask, scan, validate_keys
from topo_pai.graph.structure import Structure, build_structure
from topo_pai.graph.trace import trace, validate_input_shape
from topo_pai.kernels.multiplicity import kernel_weight_sums
from topo_pai.masks.mask import Masks
from topo_pai.masks.validate import (
    abs_weights_array,
    check_mapping,
    check_mask_value,
    parameter_names,
)
from topo_pai.metrics import exact as X
from topo_pai.metrics.channel import Block, ChannelEngine
from topo_pai.metrics.degrees import FAN_FIELDS, fan_stats
from topo_pai.metrics.engine import (
    Engine,
    EngineFactory,
    EngineOptions,
    group_counts,
    warn_if_underflowed,
)
from topo_pai.metrics.scaled import NodeCounts
from topo_pai.metrics.torch_neuron import neuron_engine
from topo_pai.metrics_table import COLUMNS as METRIC_COLUMNS
from topo_pai.metrics_table import MetricsTable
from topo_pai.summary import Summary

#: The engine factory of each resolution (see :mod:`topo_pai.metrics.engine` for the
#: contract); ``neuron_engine`` picks the Numba or the torch engine by ``EngineOptions``.
ENGINES: dict[str, EngineFactory] = {"channel": ChannelEngine, "neuron": neuron_engine}
RESOLUTIONS = tuple(ENGINES)


def _check_resolution(resolution: str) -> str:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be 'channel' or 'neuron', got {resolution!r}")
    return resolution


class PathCount:
    """The number of input-to-output paths.

    ``log10`` is always available and finite for any non-empty network (``-inf``
    when there are no paths). ``exact`` is the exact Python int, computed on
    first access with arbitrary precision. It is refused up front, with
    :class:`PathCountTooLarge`, when its estimated work (every entry the integer
    arithmetic touches, times the 64-bit words of the count) exceeds
    ``topo_pai.metrics.exact.EXACT_MAX_WORK`` (3e8) or its estimated memory (the
    Python-int arrays alive at once) exceeds ``EXACT_MAX_MEMORY`` (2 GiB). Use
    :meth:`exact_value` with larger ``max_work`` / ``max_memory`` to insist.
    """

    def __init__(self, log10: float, resolution: str, exact_fn, cost):
        self.log10 = float(log10)
        self.resolution = resolution
        self._exact_fn = exact_fn
        self._cost = cost  # (work, memory bytes), or a callable giving them
        self._exact: int | None = None

    @property
    def exact(self) -> int:
        return self.exact_value()

    @property
    def cost(self) -> tuple[float, float]:
        """Estimated ``(work, memory in bytes)`` of :attr:`exact`."""
        if callable(self._cost):
            self._cost = tuple(float(c) for c in self._cost())
        return self._cost

    def exact_value(self, max_work: float | None = None, max_memory: float | None = None) -> int:
        """The exact count; refuses when the estimated work exceeds ``max_work`` or the
        estimated memory exceeds ``max_memory`` bytes (defaults: the module limits)."""
        if self._exact is None:
            work_limit = X.EXACT_MAX_WORK if max_work is None else max_work
            memory_limit = X.EXACT_MAX_MEMORY if max_memory is None else max_memory
            for name, v in (("max_work", work_limit), ("max_memory", memory_limit)):
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
                    raise ValueError(f"{name} must be a number (math.inf insists on any size), "
                                     f"got {v!r}")
            work, memory = self.cost
            if work > work_limit:
                raise PathCountTooLarge(
                    f"an exact {self.resolution}-resolution count needs ~{work:.2g} units of "
                    f"work (entries x 64-bit words), above max_work={work_limit:.2g}; use "
                    ".log10, or call exact_value(max_work=...) to insist")
            if memory > memory_limit:
                raise PathCountTooLarge(
                    f"an exact {self.resolution}-resolution count needs ~{memory / 2**30:.3g} GiB "
                    f"of Python ints, above max_memory={memory_limit / 2**30:.3g} GiB; use "
                    ".log10, or call exact_value(max_memory=...) to insist")
            self._exact = int(self._exact_fn())
        return self._exact

    def __float__(self) -> float:
        return math.inf if self.log10 > 308 else (0.0 if self.log10 == -math.inf
                                                   else 10.0 ** self.log10)

    def __repr__(self) -> str:
        return f"PathCount(log10={self.log10:.6g}, resolution={self.resolution!r})"


class Topology:
    """A masked network as a layered DAG of node groups.

    Build one with :func:`from_torch`. Queries take ``resolution="channel"``
    (the paper's channel multigraph) or ``"neuron"`` (spatially unrolled) and are
    cached; :meth:`with_masks` reuses the traced structure for other masks.
    """

    def __init__(self, program: Program, structure, layer_masks: list[LayerMask],
                 unused_masks: dict[str, np.ndarray], param_names: set[str], index_dtype,
                 shared: dict | None = None, engine_options: EngineOptions | None = None):
        self.program = program
        self._engine_options = EngineOptions() if engine_options is None else engine_options
        self._structure = structure
        self._shared = {} if shared is None else shared  # per-trace caches
        self._layer_masks = layer_masks
        self._unused = unused_masks
        self._param_names = param_names
        self._index_dtype = index_dtype
        self._engines: dict[str, Engine] = {}

    # -- construction ---------------------------------------------------------------
    @classmethod
    def _build(cls, program, structure, masks, param_names, index_dtype,
               shared: dict | None = None,
               engine_options: EngineOptions | None = None) -> "Topology":
        if masks is None:
            masks = {}
        check_mapping(masks)
        validate_keys(masks, program, param_names)
        for name, m in masks.items():
            check_mask_value(name, m)
        if index_dtype is None:
            index_dtype = np.int32
        index_dtype = np.dtype(index_dtype)
        if index_dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise ValueError(f"index_dtype must be int32 or int64, got {index_dtype}")
        layer_masks = []
        in_units = {op.attrs["layer"]: program.values[op.inputs[0]][0]
                    for op in program.ops if op.kind == "layer"}
        for i, layer in enumerate(program.layers):
            layer_masks.append(layer_mask(layer, in_units[i], masks.get(layer.param), index_dtype))
        unused = {}
        for name, shape in program.unused_params.items():
            if name in masks:
                unused[name] = scan(name, masks[name], shape, 1, 1, 1)[0]
            else:
                unused[name] = np.ones(shape, dtype=np.uint8)
        return cls(program, structure, layer_masks, unused, param_names, index_dtype, shared,
                   engine_options)

    def with_masks(self, masks: Mapping[str, Any] | None) -> "Topology":
        """A new Topology for other masks on the same model, without tracing again.

        A prunable weight missing from ``masks`` is dense.
        """
        return Topology._build(self.program, self._structure, masks, self._param_names,
                               self._index_dtype, self._shared, self._engine_options)

    # -- structure ----------------------------------------------------------------------
    @property
    def layers(self):
        """The prunable layers in topological order (:class:`~topo_pai.graph.ir.Layer`)."""
        return list(self.program.layers)

    @property
    def group_names(self) -> list[str]:
        """Node-group names: ``"input"``, then each layer's module path (``"(model)"``
        when the model itself is the layer, e.g. a bare ``nn.Linear``)."""
        return ["input"] + [layer.name or "(model)" for layer in self.program.layers]

    @property
    def blocks(self) -> list[Block]:
        """Channel-level CSR blocks ``(src group, dst group, matrix)`` in topological order."""
        return list(self.engine("channel").blocks)

    @property
    def channel_structure(self) -> Structure:
        """How each layer's input and the network output draw on the node groups at
        channel resolution: ``layer_inputs[l]`` and ``outputs`` map group index to a
        scipy CSR unit map (``None`` for the identity), ``sizes`` gives each group's
        units (see :func:`topo_pai.graph.structure.build_structure`). Fixed by the
        architecture, shared by :meth:`with_masks` siblings."""
        return self._structure

    @property
    def uncovered(self) -> Uncovered | None:
        """Weight tensors of the model that no mask covers (not Linear or Conv weights) and
        their share of its parameters; :func:`from_torch` warns when there are any."""
        return self._shared.get("uncovered")

    @property
    def masks(self) -> Masks:
        """The validated masks of every prunable weight, as :class:`~topo_pai.Masks` (bool
        tensors). They are copies: changing them leaves this topology as it is (use
        :meth:`with_masks` for a new one). :attr:`masks_numpy` gives the stored arrays."""
        import torch

        return Masks._trusted({k: torch.from_numpy(v.astype(bool))
                               for k, v in self.masks_numpy.items()})

    @property
    def masks_numpy(self) -> dict[str, np.ndarray]:
        """The validated masks as read-only uint8 arrays: the stored ones, not copies."""
        out = {layer.param: lm.mask for layer, lm in zip(self.program.layers, self._layer_masks)}
        out.update(self._unused)
        for arr in out.values():
            arr.flags.writeable = False
        return out

    def n_nodes(self, resolution: str = "channel") -> int:
        engine = self.engine(resolution)
        return sum(math.prod(engine.group_shape(g)) for g in range(len(self.program.layers) + 1))

    @property
    def n_params(self) -> int:
        """Number of prunable weight elements (Linear and Conv weights)."""
        return int(sum(lm.mask.size for lm in self._layer_masks)
                   + sum(m.size for m in self._unused.values()))

    @property
    def n_unpruned(self) -> int:
        return int(sum(lm.unpruned for lm in self._layer_masks)
                   + sum(int(m.sum()) for m in self._unused.values()))

    # -- engines --------------------------------------------------------------------------
    def engine(self, resolution: str = "channel") -> Engine:
        """The counting engine of ``resolution`` for these masks (built on first use and
        kept): every query of this Topology is answered by it (see
        :mod:`topo_pai.metrics.engine`)."""
        _check_resolution(resolution)
        engine = self._engines.get(resolution)
        if engine is None:
            engine = self._engines[resolution] = ENGINES[resolution](
                self.program, self._structure, self._layer_masks, self._shared,
                options=self._engine_options)
        return engine

    # -- queries --------------------------------------------------------------------------
    def count_paths(self, resolution: str = "channel") -> PathCount:
        """Number of input-to-output paths (see :class:`PathCount`)."""
        engine = self.engine(resolution)
        log10 = engine.log10_total()
        # The estimate may need the block sizes; it is only asked for by .exact.
        return PathCount(log10, resolution, engine.exact_total,
                         lambda: engine.exact_cost(log10))

    def effective_nodes(self, resolution: str = "channel") -> int:
        """Number of nodes on at least one input-to-output path."""
        return sum(self.engine(resolution).effective_nodes())

    def effective_params(self, resolution: str = "channel") -> int:
        """Number of unpruned weight elements on at least one input-to-output path."""
        return sum(self.engine(resolution).effective_params())

    def effective_flops(self, resolution: str = "channel") -> int:
        """Multiply-accumulates of one forward pass through the effective subnetwork.

        Each effective weight is charged once per output position of its layer
        (``H_out * W_out`` for a conv, 1 for a Linear): the convention of the
        pruning literature's FLOP counters (density x dense FLOPs per layer),
        restricted to the weights that lie on a path. Pruned and ineffective
        weights cost nothing; biases, norms, activations and pooling are not
        counted.

        Examples
        --------
        >>> import torch, topo_pai
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(2 * 4 * 4, 3))
        >>> topo = topo_pai.from_torch(net, input_shape=(1, 4, 4))
        >>> topo.effective_flops() == 2 * 9 * 16 + 32 * 3
        True
        """
        per_layer = self.engine(resolution).effective_params()
        values = self.program.group_values
        total = 0
        for layer, n_eff in zip(self.program.layers, per_layer):
            out_shape = self.program.values[values[layer.group]]
            total += int(n_eff) * int(np.prod(out_shape[1:], dtype=np.int64))
        return total

    def effective_masks_numpy(self, resolution: str = "channel") -> dict[str, np.ndarray]:
        """Like :meth:`effective_masks` but with numpy bool arrays."""
        engine = self.engine(resolution)
        out: dict[str, np.ndarray] = {layer.param: engine.effective_mask(i)
                                      for i, layer in enumerate(self.program.layers)}
        for name, m in self._unused.items():
            out[name] = np.zeros(m.shape, dtype=bool)
        return out

    def effective_masks(self, resolution: str = "channel") -> Masks:
        """Bool torch tensors marking the effective weights of every prunable weight, as
        :class:`~topo_pai.Masks`."""
        import torch

        return Masks._trusted({k: torch.from_numpy(v)
                               for k, v in self.effective_masks_numpy(resolution).items()})

    def forward_counts(self, resolution: str = "channel") -> dict[str, NodeCounts]:
        """Paths from the inputs to every node, per node group (overflow-safe)."""
        return group_counts(self.engine(resolution), self.group_names, "forward")

    def backward_counts(self, resolution: str = "channel") -> dict[str, NodeCounts]:
        """Paths from every node to the outputs, per node group (overflow-safe)."""
        return group_counts(self.engine(resolution), self.group_names, "backward")

    def _edge_weights(self, weights) -> "EdgeWeights":
        """``weights`` validated: an :class:`EdgeWeights` of this network's weights (made by
        :meth:`edge_weights` of this Topology or of one of its :meth:`with_masks` siblings),
        or a mapping, validated now."""
        if not isinstance(weights, EdgeWeights):
            return self.edge_weights(weights)
        fits = (set(weights.flat) == {layer.param for layer in self.program.layers}
                and all(weights.flat[layer.param].size == int(np.prod(layer.weight_shape))
                        for layer in self.program.layers))
        if not fits:
            raise MaskError(f"these EdgeWeights were made for other weights "
                            f"({', '.join(sorted(weights.flat)[:4])}, ...) than this network's; "
                            "make them with this Topology's edge_weights(...)")
        return weights

    def edge_weights(self, weights: Mapping[str, Any] | None = None) -> "EdgeWeights":
        """Validate per-element edge weights once (finite, non-negative, right shapes),
        for repeated :meth:`flows` calls on this Topology or on its :meth:`with_masks`
        siblings (as iterative SynFlow does). Missing weights are 1."""
        weights = {} if weights is None else weights
        if not isinstance(weights, Mapping):
            raise MaskError(f"weights must be a mapping from parameter name to |w| (a tensor or "
                            f"array of the weight's shape), got {type(weights).__name__}")
        known = {layer.param for layer in self.program.layers}
        unknown = set(weights) - known - set(self._unused)
        if unknown:
            raise MaskError(f"weights given for {sorted(unknown)}, which are not prunable weights")
        flat, defaulted = {}, set()
        for name, w in weights.items():
            check_mask_value(name, w, "weights")
            if name in self._unused:  # not on the graph, but a mistake there is one anyway
                abs_weights_array(name, w, self._unused[name].shape)
        for layer in self.program.layers:
            w = weights.get(layer.param)
            if w is None:
                defaulted.add(layer.param)
                flat[layer.param] = np.ones(int(np.prod(layer.weight_shape)))
            else:
                flat[layer.param] = abs_weights_array(layer.param, w, layer.weight_shape)
        return EdgeWeights(flat, frozenset(defaulted))

    def _all_edge_weights(self, weights, caller: str, params=None) -> EdgeWeights:
        """:meth:`_edge_weights`, refused with a :class:`MaskError` when a weight of
        ``params`` (default: every layer's) was not given: the weighted measures of
        ``caller`` would mix ``|w|`` with edge counts (a missing weight is 1)."""
        prepared = self._edge_weights(weights)
        params = [layer.param for layer in self.program.layers] if params is None else params
        missing = [p for p in params if p in prepared.defaulted]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:6])
            more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            raise MaskError(
                f"{caller} needs the weights of every prunable layer it reads, but none were "
                f"given for {shown}{more}: its weighted values would mix |w| with edge counts "
                "(a missing weight is 1). Pass |w| of all of them, e.g. {n: p.detach().abs() "
                "for n, p in model.named_parameters() if n in topo.masks}, or no weights")
        return prepared

    def flows(self, weights: Mapping[str, Any] | None = None,
              resolution: str = "channel") -> "Flows":
        """Path flows with edge weights: every path counts the product of its weights.

        With ``weights`` ``{name: tensor}`` (typically ``|w|``; they must be finite and
        non-negative), or the :class:`EdgeWeights` that :meth:`edge_weights` validated
        once for reuse across :meth:`with_masks` calls, this is SynFlow's flow
        ``R = 1ᵀ(∏|W|)1`` on this graph, computed overflow-free. A prunable weight
        missing from ``weights`` has weight 1, so ``flows()`` with no weights gives
        plain path counts (weighted by the model's constant factors, if it has any).
        At channel resolution a kernel's edge weight is the sum of its unpruned
        elements' weights.

        A product by constants (``h * c``, ``h / c``) scales the flow through each
        unit by ``|c|`` there, as in SynFlow's linearised network (every tensor
        replaced by its absolute value); at channel resolution ``|c|`` must be the
        same at every position of a channel where it is non-zero.
        """
        engine = self.engine(resolution)
        check_flow_factors(self.program)  # |c| past 2**900 would overflow the scaled flows
        prepared = self._edge_weights(weights)
        return Flows(self, engine.with_weights([prepared.flat[x.param] for x in self.layers]))

    def layer_input_counts(self, layer: int, resolution: str = "channel") -> NodeCounts:
        """Paths from the network input into each input unit of ``layer`` (an index
        into :attr:`layers`): per channel or feature; at neuron resolution summed over
        each channel's positions. This is NPB's incoming path mass ``P_in``."""
        return self.engine(resolution).layer_input_counts(self._layer_index(layer))

    def layer_reach(self, layer: int, resolution: str = "channel") -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, outputs)`` bool arrays of ``layer``: which of its input units are
        reached from the network input, and which of its output units reach the
        network output (per channel/feature; at neuron resolution, any position)."""
        return self.engine(resolution).layer_reach(self._layer_index(layer))

    def summary(self, resolution: str = "channel") -> Summary:
        """Per-layer table: params, unpruned, effective params, nodes, paths in and out,
        and the fan-in/fan-out statistics of each layer's kept units (see :class:`Summary`)."""
        engine = self.engine(resolution)
        nodes_eff = engine.effective_nodes()
        params_eff = [0] + engine.effective_params()
        fwd, bwd = engine.forward(), engine.backward()
        values = self.program.group_values
        rows = []
        for g, name in enumerate(self.group_names):
            shape = self.program.values[values[g]]
            positions = int(np.prod(shape[1:], dtype=np.int64))
            if g == 0:
                kind, wshape, params, unpruned = "input", shape, 0, 0
                in_shape = None
                fans = dict.fromkeys(FAN_FIELDS)
            else:
                in_shape = tuple(self.program.values[self.program.layer_ops[g - 1].inputs[0]])
                layer = self.program.layers[g - 1]
                lm = self._layer_masks[g - 1]
                kind, wshape, params, unpruned = layer.kind, layer.weight_shape, lm.mask.size, \
                    lm.unpruned
                fans = fan_stats(lm.mask.reshape(layer.weight_shape), layer.groups)
            n_nodes = math.prod(engine.group_shape(g))
            rows.append(dict(
                name=name, kind=kind, shape=tuple(wshape), in_shape=in_shape,
                out_shape=tuple(shape), params=int(params), unpruned=int(unpruned),
                density=unpruned / params if params else None,
                effective_params=int(params_eff[g]), macs=int(params) * positions,
                effective_macs=int(params_eff[g]) * positions, nodes=int(n_nodes),
                effective_nodes=int(nodes_eff[g]), log10_in_paths=fwd[g].log10_total(),
                log10_out_paths=bwd[g].log10_total(), **fans,
            ))
        totals = dict(
            params=self.n_params, unpruned=self.n_unpruned,
            effective_params=sum(params_eff), nodes=self.n_nodes(resolution),
            effective_nodes=sum(nodes_eff), log10_paths=self.count_paths(resolution).log10,
            macs=sum(r["macs"] for r in rows),
            effective_macs=sum(r["effective_macs"] for r in rows),
        )
        return Summary(rows, totals, resolution)

    def _layer_matrices(self, weights=None) -> list:
        """:meth:`layer_matrix` of every layer, built side by side on the numba threads
        (the CSR kernels release the GIL; each layer's block is built once, by one
        thread), the largest masks first."""
        from topo_pai.metrics import scheduling

        sizes = [lm.mask.size for lm in self._layer_masks]
        return scheduling.map_largest_first(lambda i: self.layer_matrix(i, weights),
                                            range(len(sizes)), sizes)

    def _layer_index(self, layer) -> int:
        """``layer`` as an index into :attr:`layers` (``-n <= layer < n``, negative
        counting from the end as for a list), or a clear ``TypeError``/``IndexError``."""
        n = len(self.program.layers)
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layer must be an int index into Topology.layers (-{n} <= layer < "
                            f"{n}), got {layer!r} of type {type(layer).__name__}")
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} is out of range: this network has {n} prunable "
                             f"layer{'s' if n != 1 else ''} (Topology.layers), so layer must "
                             f"be in {-n}..{n - 1}")
        return int(layer) % n

    def layer_matrix(self, layer: int, weights=None):
        """Layer ``layer``'s own channel-graph block (an index into :attr:`layers`;
        negative counts from the end): a scipy ``csr_array`` of shape (output units,
        input units) holding the kept elements of every kernel (edge multiplicities),
        or with ``weights`` (as for :meth:`flows`, or an :class:`EdgeWeights`) the sum
        of the kept elements' ``|w|`` per kernel; ``weights`` must then hold this
        layer's weight (a :class:`~topo_pai.errors.MaskError` otherwise, rather than
        edge counts passed off as weights). Input units are the channels or features
        of the layer's input, before any structure (pool, flatten, add) that feeds it.

        Examples
        --------
        >>> import torch, topo_pai
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 2))
        >>> topo = topo_pai.from_torch(net, input_shape=(3,))
        >>> topo.layer_matrix(-1).shape
        (2, 4)
        >>> topo.layer_matrix(2)
        Traceback (most recent call last):
        ...
        IndexError: layer 2 is out of range: this network has 2 prunable layers \
(Topology.layers), so layer must be in -2..1
        """
        import scipy.sparse as sp

        layer = self._layer_index(layer)
        lm = self._layer_masks[layer]
        if weights is None:
            data = np.asarray(lm.data, dtype=np.float64)
        else:
            lay = self.program.layers[layer]
            prepared = self._all_edge_weights(weights, f"layer_matrix({layer}, weights)",
                                              [lay.param])
            data = kernel_weight_sums(lm.mask.reshape(-1), prepared.flat[lay.param],
                                      lay.kernel_volume, lm.indptr, lm.indices,
                                      lay.weight_shape[1])
        return sp.csr_array((data, lm.indices, lm.indptr), shape=lm.shape)

    def metrics(self, weights=None, resolution: str = "channel", *,
                spectra: bool = True, spectral_tol: float | None = None) -> MetricsTable:
        """Graph measures beyond nodes and paths, per layer and for the network.

        Effective sparsity and compression (Vysogorets & Kempe), effective kernels
        (DPaI), the degrees and the two largest singular values of every layer's
        bipartite channel graph with the Ramanujan gap and the spectral gap (Hoang
        et al.), and sink, source and disconnected units and lost edges (Cunegatti
        et al.); ``docs/metrics.md`` defines each. With ``weights`` (``{name:
        |w|}`` for every prunable layer, or an :class:`EdgeWeights` made from them)
        the spectral gap is also taken on ``|w|`` summed per kernel; unlike
        :meth:`flows`, a layer left out of ``weights`` is refused with a
        :class:`~topo_pai.errors.MaskError` naming it, since weight 1 there would
        mix kernel counts into the weighted spectra. ``resolution`` applies to the effective counts
        (parameters, kernels, nodes, paths); the layer graphs are the channel
        graph's. The singular values cost one small eigenproblem per layer (two
        with weights; see :func:`topo_pai.metrics.spectra.top_singular_values`),
        where every other measure is O(non-zeros); ``spectra=False`` leaves them
        out (their columns and totals are then ``None``). A layer with no kept edge
        keeps its conventional zeros (degrees, spectra, gaps) in its row but is left
        out of the totals' ``min_degree`` and gap means and minima, which are over the
        layers with an edge (0 when there is none).

        Accuracy: every reported ``mu0`` and ``mu_hat`` (weighted ones too) is within
        ``spectral_tol * mu0`` of the true value, by a residual certificate checked
        before it is returned, and never above it (interlacing), so each gap is
        within ``spectral_tol * mu0`` (the spectral gap within twice that). The
        certificate places each value near *a* singular value; that these are the
        first two rests on the Krylov assumption stated in ``docs/metrics.md``.
        ``spectral_tol`` defaults to ``1e-8``
        (:data:`topo_pai.metrics.spectra.SPECTRAL_TOL`); smaller is tighter and
        costs more Lanczos steps, and a block that cannot be certified takes a
        direct SVD. See ``docs/metrics.md`` for the proof and its one assumption.

        Examples
        --------
        >>> import torch, topo_pai
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> table = topo_pai.from_torch(net, input_shape=(3,)).metrics()
        >>> table[1]["mean_in_degree"], table[1]["ramanujan_gap"] > 0  # K_{3,4}: sigma_2 = 0
        (3.0, True)
        >>> table.totals["effective_compression"]
        1.0
        """
        from topo_pai.metrics import measures as ms
        from topo_pai.metrics import scheduling
        from topo_pai.metrics import spectra as spectral

        _check_resolution(resolution)
        spectra = check_bool("spectra", spectra)
        if spectral_tol is not None:
            spectral_tol = spectral.check_spectral_tol(spectral_tol)
        prepared = (None if weights is None
                    else self._all_edge_weights(weights, "metrics(weights=...)"))
        layers, sizes = self.program.layers, self.channel_structure.sizes
        mats = self._layer_matrices()
        weighted = ([None] * len(layers) if prepared is None
                    else self._layer_matrices(prepared))
        # the spectra run on background threads (their Lanczos kernels release the
        # GIL) while this thread takes every other measure, then joins them on the
        # blocks not yet started; collected before the rows
        pending = (spectral.start_top_singular_values(
            mats + ([] if prepared is None else weighted), spectral_tol) if spectra else None)
        try:
            with scheduling.numba_threads_beside(pending):
                counted, layer_rows, params_eff, roles = self._metrics_without_spectra(
                    resolution, mats)
            found = None if pending is None else pending.result()
        finally:
            if pending is not None:
                pending.close()  # an error above: stop the background work
        values = [None if found is None else
                  (found[i], None if prepared is None else found[len(mats) + i])
                  for i in range(len(mats))]
        for i, row in enumerate(layer_rows):
            row.update(ms.bipartite_measures(
                mats[i], weighted[i], spectra, degree_pair=row.pop("degree_pair"),
                spectral_tol=spectral_tol, singular_values=values[i]))
            layer_rows[i] = {k: row[k] for k in METRIC_COLUMNS}
        rows = [dict(dict.fromkeys(METRIC_COLUMNS), name=self.group_names[0], kind="input",
                     shape=tuple(self.program.values[self.program.group_values[0]]),
                     out_units=int(sizes[0]), **roles[0])] + layer_rows
        params, unpruned, eff = self.n_params, self.n_unpruned, sum(params_eff)
        sparsity, compression = ms.sparsity_and_compression(params, unpruned)
        eff_sparsity, eff_compression = ms.sparsity_and_compression(params, eff)
        kept_out = sum(r["kept_outputs"] for r in layer_rows)
        kept_in = sum(r["kept_inputs"] for r in layer_rows)
        edges = float(sum(lm.unpruned for lm in self._layer_masks))
        # a layer with no kept edge has no kept unit, so no degree to take a minimum of,
        # and its spectra are 0 by convention, not measured: its row keeps them, but the
        # network's minima and means are over the layers that have an edge
        live = [r for r in layer_rows if r["kernels"]]
        mins = [d for r in live for d in (r["min_in_degree"], r["min_out_degree"])]
        gaps = [r["ramanujan_gap"] for r in live]
        sgaps = [r["spectral_gap"] for r in live]
        wgaps = [r["weighted_spectral_gap"] for r in live]

        def mean(v):
            if not spectra:
                return None
            return float(np.mean(v)) if v else 0.0

        totals = dict(
            params=params, unpruned=unpruned, effective_params=eff, sparsity=sparsity,
            compression=compression, effective_sparsity=eff_sparsity,
            effective_compression=eff_compression,
            kernels=sum(r["kernels"] for r in layer_rows),
            effective_kernels=sum(r["effective_kernels"] for r in layer_rows),
            **counted,
            min_degree=float(min(mins)) if mins else 0.0,
            mean_in_degree=edges / kept_out if kept_out else 0.0,
            mean_out_degree=edges / kept_in if kept_in else 0.0,
            mean_ramanujan_gap=mean(gaps),
            min_ramanujan_gap=None if not spectra else (float(min(gaps)) if gaps else 0.0),
            mean_spectral_gap=mean(sgaps),
            mean_weighted_spectral_gap=None if prepared is None else mean(wgaps),
            **{k: sum(r[k] for r in rows) for k in ("sink_units", "source_units",
                                                    "disconnected_units")},
            **{k: sum(r[k] for r in layer_rows) for k in ("lost_in_edges", "lost_out_edges")},
        )
        return MetricsTable(rows, totals, resolution, prepared is not None)

    def _metrics_without_spectra(self, resolution: str, mats: list):
        """The measures of :meth:`metrics` other than the spectra: ``(counted,
        layer_rows, params_eff, roles)``, the rows holding each layer's
        ``degree_pair`` for :func:`~topo_pai.metrics.measures.bipartite_measures`."""
        from topo_pai.metrics import measures as ms

        layers, sizes = self.program.layers, self.channel_structure.sizes
        degree_pairs = [ms.degrees(M) for M in mats]  # once per layer: reused below
        in_deg = {0: np.zeros(sizes[0])}
        col_sums = []
        for i, (r, c) in enumerate(degree_pairs):
            in_deg[i + 1] = r
            col_sums.append(c)
        out_deg = {g: np.zeros(n) for g, n in sizes.items()}
        has_in = {g: (np.ones(n) if g == 0 else (in_deg[g] > 0).astype(np.float64))
                  for g, n in sizes.items()}
        input_has_in = []
        for i, inputs in enumerate(self.channel_structure.layer_inputs):
            reach = np.zeros(mats[i].shape[1])
            for g, S in inputs.items():
                out_deg[g] += col_sums[i] if S is None else S.T @ col_sums[i]
                reach += has_in[g] if S is None else S @ has_in[g]
            input_has_in.append(reach > 0)
        is_output = {g: np.zeros(n, dtype=bool) for g, n in sizes.items()}
        for g, S in self.channel_structure.outputs.items():
            is_output[g] |= True if S is None else (S.T @ np.ones(S.shape[0])) > 0
        roles = [ms.unit_roles(in_deg[g], out_deg[g], g == 0, is_output[g])
                 for g in range(len(sizes))]

        params_eff = self.engine(resolution).effective_params()
        eff_masks = None if resolution == "channel" else self.effective_masks_numpy(resolution)
        layer_rows = []
        for i, (layer, lm, M) in enumerate(zip(layers, self._layer_masks, mats)):
            row = {"degree_pair": degree_pairs[i]}
            if resolution == "channel":
                fin, bout = self.layer_reach(i, "channel")
                row["effective_kernels"] = ms.effective_kernels(M, fin, bout)
            else:
                O, per_group = layer.weight_shape[:2]
                row["effective_kernels"] = int(eff_masks[layer.param].reshape(
                    O, per_group, -1).any(axis=2).sum())
            sink = (in_deg[i + 1] > 0) & (out_deg[i + 1] == 0) & ~is_output[i + 1]
            row.update(ms.lost_edges(M, input_has_in[i], sink, degree_pair=degree_pairs[i]))
            row.update(roles[i + 1])
            row.update(name=self.group_names[i + 1], kind=layer.kind,
                       shape=tuple(layer.weight_shape), in_units=int(M.shape[1]),
                       out_units=int(M.shape[0]), params=int(lm.mask.size),
                       unpruned=int(lm.unpruned), effective_params=int(params_eff[i]),
                       effective_sparsity=ms.sparsity_and_compression(
                           int(lm.mask.size), int(params_eff[i]))[0])
            layer_rows.append(row)
        counted = {"effective_nodes": self.effective_nodes(resolution),
                   "nodes": self.n_nodes(resolution),
                   "log10_paths": self.count_paths(resolution).log10}
        return counted, layer_rows, params_eff, roles

    def to_networkx(self, max_edges: int = 200_000):
        """The channel graph as a ``networkx.DiGraph``.

        Nodes are ``(group_name, unit)`` with attributes ``layer`` (group index,
        for ``multipartite_layout(G, subset_key="layer")``) and ``unit``; each
        edge carries its ``multiplicity`` (parallel edges folded into one).
        """
        import networkx as nx

        blocks = self.engine("channel").blocks
        total = sum(b.nnz for b in blocks)
        if total > max_edges:
            raise ValueError(f"the channel graph has {total} edges, above max_edges={max_edges}; "
                             "to_networkx is meant for small networks (raise max_edges to insist)")
        G = nx.DiGraph()
        names = self.group_names
        for g, n in self._structure.sizes.items():
            G.add_nodes_from(((names[g], u), {"layer": g, "unit": u}) for u in range(n))
        for b in blocks:
            coo = b.matrix.tocoo()
            for r, c, v in zip(coo.row, coo.col, coo.data):
                key = ((names[b.src], int(c)), (names[b.dst], int(r)))
                if G.has_edge(*key):
                    G.edges[key]["multiplicity"] += int(v)
                else:
                    G.add_edge(*key, multiplicity=int(v))
        return G

    def __repr__(self) -> str:
        return (f"Topology({len(self.program.layers)} layers, {self.n_params} params, "
                f"{self.n_unpruned} unpruned)")


@dataclass(frozen=True)
class EdgeWeights:
    """Validated flat float64 edge weights per prunable weight (see
    :meth:`Topology.edge_weights`). ``defaulted`` names the prunable weights that
    were not given and so have weight 1 (:meth:`Topology.metrics` refuses those)."""

    flat: dict
    defaulted: frozenset = frozenset()


class Flows:
    """Weighted path flows of a :class:`Topology` (see :meth:`Topology.flows`)."""

    def __init__(self, topo: Topology, engine: Engine):
        self.topology = topo
        self.resolution = engine.resolution
        self._engine = engine

    @property
    def blocks(self) -> list[Block]:
        """Channel-resolution CSR blocks whose data are the summed edge weights per kernel."""
        if self.resolution != "channel":
            raise ValueError("weighted blocks exist at channel resolution; call "
                             "flows(weights, resolution='channel')")
        return list(self._engine.blocks)

    @property
    def log10_total(self) -> float:
        """log10 of the total flow ``R`` (the path count when all weights are 1)."""
        return self._engine.log10_total()

    @property
    def forward(self) -> dict[str, NodeCounts]:
        """Flow from the inputs into every node, per node group."""
        return group_counts(self._engine, self.topology.group_names, "forward")

    @property
    def backward(self) -> dict[str, NodeCounts]:
        """Flow from every node to the outputs, per node group."""
        return group_counts(self._engine, self.topology.group_names, "backward")

    def layer_flows(self, layer: int) -> tuple[NodeCounts, NodeCounts]:
        """``(into, out_of)``: the flow from the inputs into every input unit of ``layer``
        (an index into :attr:`Topology.layers`) and from every output unit to the
        outputs; per channel (or feature) at channel resolution, per element of the
        layer's per-sample input and output at neuron resolution. At channel
        resolution, the score of a weight of output ``o`` and input ``i`` is
        ``log10 w + out_of.log10[o] + into.log10[layer.input_units()[o, i]]``."""
        return self._engine.layer_flows(self.topology._layer_index(layer))

    def log10_through_weights(self) -> dict[str, np.ndarray]:
        """log10 of the flow through every weight element, ``w * dR/dw`` (SynFlow's
        score), with the weight's shape; ``-inf`` for pruned or pathless weights."""
        program = self.topology.program
        out = {layer.param: self._engine.log10_through_weights(i)
               for i, layer in enumerate(program.layers)}
        warn_if_underflowed(self._engine, "flows through the weights")
        for name, shape in program.unused_params.items():  # off the traced graph: no flow
            out[name] = np.full(shape, -np.inf)
        return out


def from_torch(model, masks: Mapping[str, Any] | None = None, input_shape=None, *,
               index_dtype=None, engine: str = "auto") -> Topology:
    """Trace ``model`` with torch.fx and build the layered DAG of its masks.

    Parameters
    ----------
    model : torch.nn.Module
        Any fx-traceable model built from Linear, Conv1d/2d, activations, norms,
        dropout, pools, flatten/view/reshape, ``+``/``-``, products and divisions
        by constants, ``cat`` and spatial means; a bare Linear/Conv is a one-layer
        model. It is traced as ``model(x)`` runs it (every other forward argument
        at its default), never executed and not modified. Two layers sharing one
        weight tensor are refused.
    masks : mapping, optional
        Parameter name (as in ``model.named_parameters()``, e.g.
        ``"layer1.0.conv1.weight"``) to a 0/1 tensor or array of that shape. If
        ``None``, the masks attached by ``torch.nn.utils.prune`` (or by
        :func:`topo_pai.apply_masks`, either method) are used. A
        prunable weight without a mask is dense; a mask given as ``None``, sparse or on
        the meta device is an error. Masks are copied; given ones replace attached ones.
    input_shape : tuple of int
        Shape of one input sample, without the batch dimension, e.g. ``(3, 32, 32)``.
    index_dtype : {None, numpy.int32, numpy.int64}
        Index dtype of the CSR blocks (default int32).
    engine : {"auto", "numba", "torch"}
        How neuron-resolution queries compute. ``"numba"``: sparse Numba kernels on the
        CPU, whose cost follows the kept weights. ``"torch"``: torch's dense conv, linear
        and pool ops in float64 on the model's device (CPU or CUDA), whose cost does not
        depend on the density. ``"auto"`` (default): path counts and reachability on
        Numba, except conv layers of middling density (about 0.2 to 0.8, over enough
        positions; ``topo_pai.metrics.torch_neuron.TorchConvCounts``), whose counts take
        torch's float64 convolutions on the CPU; weighted flows (:meth:`Topology.flows`,
        SynFlow) on torch where the network's work density reaches
        ``topo_pai.metrics.torch_neuron.TORCH_MIN_DENSITY`` (a measured crossover;
        always when the model is on a GPU), on Numba elsewhere; on the CPU, torch's
        sparse conv layers run on their kept elements
        (``topo_pai.metrics.torch_sparse.SPARSE_MAX_DENSITY``). All give the same
        results up to float64 rounding, and exactly the same reachability. Channel
        resolution always runs its sparse engine.

    Returns
    -------
    Topology

    Examples
    --------
    >>> import torch
    >>> import topo_pai
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> topo = topo_pai.from_torch(model, input_shape=(4,))
    >>> topo.count_paths().exact  # 4 * 3 * 2
    24
    >>> mask = torch.ones(3, 4)
    >>> mask[0] = 0
    >>> topo.with_masks({"0.weight": mask}).effective_nodes()  # one hidden unit is cut off
    8
    """
    validate_input_shape(input_shape)
    EngineOptions(engine)  # a bad choice is refused before the (longer) trace
    program = trace(model, input_shape)
    options = EngineOptions(engine, _model_device(model))
    structure = build_structure(program)
    if masks is None:
        masks = attached_masks(model)
    topo = Topology._build(program, structure, masks, parameter_names(model), index_dtype,
                           engine_options=options)
    topo._shared["uncovered"] = warn_uncovered(model)
    return topo


def _model_device(model) -> str:
    """The device of the model's first parameter or buffer (``"cpu"`` if it has none, or
    if it lives on the meta device, which tracing refuses with its own message)."""
    import itertools

    for t in itertools.chain(model.parameters(), model.buffers()):
        return "cpu" if t.device.type == "meta" else str(t.device)
    return "cpu"
