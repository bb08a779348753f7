"""The channel graph: CSR blocks between node groups, in topological order.

Block ``(src, dst)`` holds the edge multiplicities from the units of node
group ``src`` to those of layer group ``dst``: the layer's own multiplicity
matrix ``M`` (unpruned elements per kernel) composed with the structure map of
its input (``M @ S``). Forward counts are layered mat-vecs over the blocks,
backward counts the transposed mat-vecs, both in :mod:`.scaled` arithmetic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from topo_pai.graph.masks import LayerMask
from topo_pai.kernels import propagate as K
from topo_pai.metrics.scaled import Scaled, combine, log10_sum, normalize


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
    """Counting and reachability over the channel blocks."""

    def __init__(self, sizes: dict[int, int], blocks: list[Block], layer_inputs, outputs,
                 layer_masks: list[LayerMask]):
        self.sizes = sizes
        self.blocks = blocks
        self.layer_inputs = layer_inputs
        self.outputs = outputs
        self.layer_masks = layer_masks
        self.incoming: dict[int, list[Block]] = {g: [] for g in sizes}
        for b in blocks:
            self.incoming[b.dst].append(b)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    # -- counts -------------------------------------------------------------------
    def forward(self) -> list[Scaled]:
        fwd = [Scaled(np.ones(self.sizes[0]))]
        for g in range(1, self.n_groups):
            parts = []
            for b in self.incoming[g]:
                src = fwd[b.src]
                out = np.zeros(self.sizes[g])
                K.csr_matvec(*b.arrays, src.m, out)
                parts.append(normalize(out, src.e, src.risky))
            fwd.append(combine(parts, self.sizes[g]))
        return fwd

    def backward(self) -> list[Scaled]:
        parts: dict[int, list[Scaled]] = {g: [] for g in self.sizes}
        for g, S in self.outputs.items():
            parts[g].append(Scaled(_apply_t(S, np.ones(S.shape[0])) if S is not None
                                   else np.ones(self.sizes[g])))
        bwd: list[Scaled] = [None] * self.n_groups  # type: ignore[list-item]
        for g in range(self.n_groups - 1, -1, -1):
            bwd[g] = combine(parts[g], self.sizes[g])
            for b in self.incoming[g]:
                out = np.zeros(self.sizes[b.src])
                K.csr_rmatvec(*b.arrays, bwd[g].m, out)
                parts[b.src].append(normalize(out, bwd[g].e, bwd[g].risky))
        return bwd

    def log10_paths(self, fwd: list[Scaled]) -> float:
        parts = [Scaled(_apply(S, fwd[g].m), fwd[g].e) for g, S in self.outputs.items()]
        return log10_sum(parts)

    # -- reachability (0/1 arithmetic, exact) -----------------------------------------
    def reach_forward(self) -> list[np.ndarray]:
        r = [np.ones(self.sizes[0])]
        for g in range(1, self.n_groups):
            out = np.zeros(self.sizes[g])
            for b in self.incoming[g]:
                K.csr_matvec(*b.arrays, r[b.src], out)
            r.append(np.minimum(out, 1.0))
        return r

    def reach_backward(self) -> list[np.ndarray]:
        acc = {g: np.zeros(n) for g, n in self.sizes.items()}
        for g, S in self.outputs.items():
            acc[g] += np.ones(self.sizes[g]) if S is None else _apply_t(S, np.ones(S.shape[0]))
        r: list[np.ndarray] = [None] * self.n_groups  # type: ignore[list-item]
        for g in range(self.n_groups - 1, -1, -1):
            r[g] = np.minimum(acc[g], 1.0)
            for b in self.incoming[g]:
                K.csr_rmatvec(*b.arrays, r[g], acc[b.src])
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
            counts.append(int(K.csr_bilinear(lm.indptr, lm.indices, lm.data, rb[layer + 1], fin)))
        return counts
