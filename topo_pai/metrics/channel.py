"""The channel graph: CSR blocks between node groups, in topological order.

Block ``(src, dst)`` holds the edge multiplicities from the units of node
group ``src`` to those of layer group ``dst``: the layer's own multiplicity
matrix ``M`` (unpruned elements per kernel) composed with the structure map of
its input (``M @ S``). Forward counts are layered mat-vecs (one per layer, on
its input summed over the groups that feed it), backward counts the transposed
mat-vecs, both in :mod:`.scaled` arithmetic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from topo_pai.graph.ir import Program
from topo_pai.graph.masks import LayerMask
from topo_pai.graph.structure import Structure, build_structure, has_factors
from topo_pai.metrics import exact as X
from topo_pai.metrics.engine import (
    TableEngine,
    linear_log10_scores,
    log10_weights,
    unit_effective,
    weighted_layer_masks,
)
from topo_pai.metrics.scaled import NodeCounts, Scaled, combine, log10_sum, normalize


class Block:
    """Edges from node group ``src`` to layer group ``dst`` as CSR arrays."""

    __slots__ = ("src", "dst", "indptr", "indices", "data", "shape", "_matrix")

    def __init__(self, src: int, dst: int, indptr, indices, data, shape):
        self.src, self.dst = src, dst
        self.indptr, self.indices, self.data, self.shape = indptr, indices, data, shape
        self._matrix = None

    @property
    def arrays(self):
        return self.indptr, self.indices, self.data

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def matrix(self) -> sp.csr_array:
        """The block as a scipy ``csr_array`` of shape (units of dst, units of src)."""
        if self._matrix is None:
            self._matrix = sp.csr_array((self.data, self.indices, self.indptr), shape=self.shape)
        return self._matrix

    def __repr__(self) -> str:
        return f"Block(src={self.src}, dst={self.dst}, shape={self.shape}, nnz={self.nnz})"


def build_blocks(layer_inputs, layer_masks: list[LayerMask]) -> list[Block]:
    blocks = []
    for layer, (inputs, lm) in enumerate(zip(layer_inputs, layer_masks)):
        for src, S in inputs.items():
            if S is None:
                blocks.append(Block(src, layer + 1, lm.indptr, lm.indices, lm.data, lm.shape))
                continue
            M = sp.csr_array((lm.data, lm.indices, lm.indptr), shape=lm.shape)
            A = sp.csr_array(M @ S)
            A.sum_duplicates()
            A.sort_indices()
            blocks.append(Block(src, layer + 1, A.indptr, A.indices, A.data, A.shape))
    return blocks


def _apply(S, v: np.ndarray) -> np.ndarray:
    return v if S is None else S @ v


def _apply_t(S, v: np.ndarray) -> np.ndarray:
    return v if S is None else S.T @ v


class ChannelGraph:
    """Counting and reachability over the channel graph.

    Propagation runs layer by layer: a layer's input counts are first summed
    over the node groups that feed it (through their structure maps, which are
    cheap vector ops), then multiplied once by the layer's multiplicity matrix.
    In a residual net a block input draws on many groups, and multiplying each
    group's counts by the same matrix separately (one block each) would repeat
    the layer's largest cost once per group. The explicit CSR :attr:`blocks`
    are built only when asked for.
    """

    def __init__(self, sizes: dict[int, int], blocks: list[Block] | None, layer_inputs, outputs,
                 layer_masks: list[LayerMask]):
        self.sizes = sizes
        self._blocks = blocks
        self.layer_inputs = layer_inputs
        self.outputs = outputs
        self.layer_masks = layer_masks
        self._incoming: dict[int, list[Block]] | None = None

    @property
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            self._blocks = build_blocks(self.layer_inputs, self.layer_masks)
        return self._blocks

    @property
    def incoming(self) -> dict[int, list[Block]]:
        if self._incoming is None:
            self._incoming = {g: [] for g in self.sizes}
            for b in self.blocks:
                self._incoming[b.dst].append(b)
        return self._incoming

    def n_block_entries(self) -> int:
        """Total non-zeros of the blocks, building only blocks that are not a layer's
        own matrix."""
        if self._blocks is not None:
            return sum(b.nnz for b in self._blocks)
        total = 0
        for inputs, lm in zip(self.layer_inputs, self.layer_masks):
            for S in inputs.values():
                if S is None:
                    total += lm.nnz
                else:
                    M = sp.csr_array((lm.data, lm.indices, lm.indptr), shape=lm.shape)
                    A = sp.csr_array(M @ S)
                    A.sum_duplicates()
                    total += A.nnz
        return total

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    # -- counts -------------------------------------------------------------------
    def forward(self) -> list[Scaled]:
        fwd = [Scaled(np.ones(self.sizes[0]))]
        for layer, lm in enumerate(self.layer_masks):
            x = self.layer_input_flow(layer, fwd)
            out = np.zeros(self.sizes[layer + 1])
            if x.zero:
                fwd.append(Scaled(out, 0, x.risky, zero=True))
                continue
            lm.matvec(x.m, out)
            fwd.append(normalize(out, x.e, x.risky))
        return fwd

    def backward(self) -> list[Scaled]:
        parts: dict[int, list[Scaled]] = {g: [] for g in self.sizes}
        for g, S in self.outputs.items():
            parts[g].append(Scaled(_apply_t(S, np.ones(S.shape[0])) if S is not None
                                   else np.ones(self.sizes[g])))
        bwd: list[Scaled] = [None] * self.n_groups  # type: ignore[list-item]
        for g in range(self.n_groups - 1, 0, -1):
            bwd[g] = b = combine(parts.pop(g), self.sizes[g])
            lm = self.layer_masks[g - 1]
            gin = np.zeros(lm.shape[1])
            if b.zero:
                s = Scaled(gin, 0, b.risky, zero=True)
            else:
                lm.rmatvec(b.m, gin)
                s = normalize(gin, b.e, b.risky)
            for src, S in self.layer_inputs[g - 1].items():
                if S is None:
                    parts[src].append(s)
                else:
                    parts[src].append(Scaled(S.T @ s.m, s.e, s.risky, s.zero))
        bwd[0] = combine(parts.pop(0), self.sizes[0])
        return bwd

    def log10_paths(self, fwd: list[Scaled]) -> float:
        parts = [Scaled(_apply(S, fwd[g].m), fwd[g].e) for g, S in self.outputs.items()]
        return log10_sum(parts)

    # -- reachability (0/1 arithmetic, exact) -----------------------------------------
    def reach_forward(self) -> list[np.ndarray]:
        r = [np.ones(self.sizes[0])]
        for layer, lm in enumerate(self.layer_masks):
            out = np.zeros(self.sizes[layer + 1])
            lm.matvec(self.layer_input_reach(layer, r), out)
            r.append(np.minimum(out, 1.0))
        return r

    def reach_backward(self) -> list[np.ndarray]:
        acc = {g: np.zeros(n) for g, n in self.sizes.items()}
        for g, S in self.outputs.items():
            acc[g] += np.ones(self.sizes[g]) if S is None else _apply_t(S, np.ones(S.shape[0]))
        r: list[np.ndarray] = [None] * self.n_groups  # type: ignore[list-item]
        for g in range(self.n_groups - 1, 0, -1):
            r[g] = np.minimum(acc[g], 1.0)
            lm = self.layer_masks[g - 1]
            gin = np.zeros(lm.shape[1])
            lm.rmatvec(r[g], gin)
            for src, S in self.layer_inputs[g - 1].items():
                acc[src] += _apply_t(S, gin)
        r[0] = np.minimum(acc[0], 1.0)
        return r

    def layer_input_flow(self, layer: int, fwd) -> Scaled:
        """Scaled counts (or flows) into the units of ``layer``'s input value."""
        parts = []
        for g, S in self.layer_inputs[layer].items():
            f = fwd[g]
            parts.append(Scaled(f.m if S is None else S @ f.m, f.e, f.risky, f.zero))
        return combine(parts, self.layer_masks[layer].shape[1])

    def layer_input_reach(self, layer: int, rf: list[np.ndarray]) -> np.ndarray:
        """0/1 reachability of the units of ``layer``'s input value."""
        parts = [_apply(S, rf[g]) for g, S in self.layer_inputs[layer].items()]
        return np.minimum(np.sum(parts, axis=0), 1.0)

    def effective_params(self, rf, rb) -> list[int]:
        counts = []
        for layer, lm in enumerate(self.layer_masks):
            fin = self.layer_input_reach(layer, rf)
            bout = rb[layer + 1]
            if lm.unpruned == 0:
                counts.append(0)
            elif bool(np.all(bout > 0)) and bool(np.all(fin > 0)):
                counts.append(lm.unpruned)  # every row and column is on a path
            else:
                counts.append(int(lm.bilinear(bout, fin)))
        return counts


class ChannelEngine(TableEngine):
    """The channel-resolution :class:`~topo_pai.metrics.engine.Engine`: the paper's
    channel multigraph, counted over :class:`ChannelGraph` (see the engine contract)."""

    resolution = "channel"

    def __init__(self, program: Program, structure: Structure, layer_masks: list[LayerMask],
                 shared: dict, *, weights: list[np.ndarray] | None = None, options=None):
        del options  # one implementation (sparse) at channel resolution, on the CPU
        super().__init__()
        self.program = program
        self.structure = structure
        self.layer_masks = layer_masks
        self.weights = weights  # flat per layer, or None (unit weights)
        self._shared = shared
        self.graph = ChannelGraph(structure.sizes, None, structure.layer_inputs,
                                  structure.outputs, layer_masks)
        self.group_keys = list(range(len(program.layers) + 1))
        self._group_values = program.group_values

    @property
    def blocks(self) -> list[Block]:
        return self.graph.blocks

    def group_shape(self, group: int) -> tuple[int, ...]:
        return (self.program.values[self._group_values[group]][0],)

    def _propagate_forward(self) -> dict:
        return dict(enumerate(self.graph.forward()))

    def _propagate_backward(self) -> dict:
        return dict(enumerate(self.graph.backward()))

    def _exact_reach(self) -> tuple[dict, dict]:
        return (dict(enumerate(self.graph.reach_forward())),
                dict(enumerate(self.graph.reach_backward())))

    def log10_total(self) -> float:
        return self.graph.log10_paths(self.forward())

    def exact_total(self) -> int:
        return X.channel_exact(self.graph)

    def exact_cost(self, log10_total: float) -> tuple[float, float]:
        return X.estimate(self.program, self.layer_masks, self.resolution, log10_total,
                          self.graph.n_block_entries(), self.graph.sizes)

    def effective_params(self) -> list[int]:
        return self.graph.effective_params(*self.reach)

    def layer_reach(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        rf, rb = self.reach
        return (self.graph.layer_input_reach(layer, rf) > 0,
                rb[self.program.layers[layer].group] > 0)

    def effective_mask(self, layer: int) -> np.ndarray:
        fin, bout = self.layer_reach(layer)
        return unit_effective(self.layer_masks[layer], self.program.layers[layer], fin, bout)

    def _layer_scaled(self, layer: int) -> tuple[Scaled, Scaled]:
        """Scaled flows into the layer's input units and out of its output units."""
        return (self.graph.layer_input_flow(layer, self.fwd),
                self.bwd[self.program.layers[layer].group])

    def layer_input_counts(self, layer: int) -> NodeCounts:
        s = self.graph.layer_input_flow(layer, self.fwd)
        return NodeCounts(s.m, s.e)

    def layer_flows(self, layer: int) -> tuple[NodeCounts, NodeCounts]:
        fin, bout = self._layer_scaled(layer)
        return NodeCounts(fin.m, fin.e), NodeCounts(bout.m, bout.e)

    def log10_through_weights(self, layer: int) -> np.ndarray:
        fin, bout = self._layer_scaled(layer)
        spec = self.program.layers[layer]
        logw = log10_weights(self.layer_masks[layer],
                             None if self.weights is None else self.weights[layer])
        if spec.kind == "Linear":
            return linear_log10_scores(logw, fin, bout)
        pair = bout.log10()[:, None] + fin.log10()[spec.input_units()]
        return logw + pair.reshape(pair.shape + (1,) * (logw.ndim - 2))

    def with_weights(self, weights: list[np.ndarray]) -> ChannelEngine:
        return ChannelEngine(self.program, self._weighted_structure(),
                             weighted_layer_masks(self.program.layers, self.layer_masks, weights),
                             self._shared, weights=weights)

    def _weighted_structure(self) -> Structure:
        """Structure maps whose products by constants carry ``|factor|`` (built once per
        trace; the counting maps when the model has no constant factors)."""
        if "weighted" not in self._shared:
            self._shared["weighted"] = (build_structure(self.program, weighted=True)
                                        if has_factors(self.program) else self.structure)
        return self._shared["weighted"]
