"""Sparse conv layers of the torch engine: the kept elements as CSR matrices.

A conv layer with ``O`` output channels and ``K = C * KH * KW`` weights per output
(one group) is the product of its ``(O, K)`` weight matrix with the unfolded input
``(K, P)`` (``P`` output positions, :func:`torch.nn.functional.unfold`); its
transpose is the product of the weight matrix's transpose with the output gradient,
folded back (:func:`torch.nn.functional.fold`); and the flow through each weight
element is a row of the output gradient times a row of the unfolded input, needed
only where the element is kept (:func:`torch.sparse.sampled_addmm`). With the
weight matrix as CSR, all three cost the kept elements times ``P``, where the dense
convolutions cost every element times ``P``. The products are sums of non-negative
terms, as in the dense ops, so a sum is zero exactly when every term is.

Iterative pruners take weights away round after round, so each layer's kept
elements are kept in the trace's cache: the next mask's elements are read off
the previous list (cost: the previous kept elements) when the new mask keeps a
subset of them, checked exactly by their number; otherwise off the mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from topo_pai.graph.masks import LayerMask
from topo_pai.kernels.sorting import group_by

#: A conv layer of the torch engine runs on its kept elements (CSR) at or below this
#: density, on the dense convolutions above it; measured in
#: ``benchmarks/bench_engines.py`` (the sparse products beat the dense convolutions
#: below about 0.25 on ResNet-18's layers at 64x64, and a layer at this density also
#: skips the dense layer's weight tensor and the log10 of every element's flow).
SPARSE_MAX_DENSITY = 0.2
#: Layers with less work (elements times output positions) stay dense: their
#: convolutions cost little more than the calls (ResNet-20's layers, 2.4M each at
#: 32x32, gained nothing measurable; ResNet-18's at 64x64 hold 8M to 151M).
SPARSE_MIN_WORK = 1 << 24


@dataclass(frozen=True)
class KeptElements:
    """The kept elements of an ``(O, K)`` weight matrix: row-major flat indices
    (ascending) with their row pointers, and the same elements column by column
    (rows ascending within a column; ``by_column = flat[order]``) with the column
    pointers."""

    flat: np.ndarray
    row_ptr: np.ndarray
    by_column: np.ndarray
    col_ptr: np.ndarray
    order: np.ndarray


def kept_elements(mask: np.ndarray, rows: int, cols: int,
                  previous: KeptElements | None = None,
                  n_kept: int | None = None) -> KeptElements:
    """The kept elements of the 0/1 ``mask`` of an ``(rows, cols)`` matrix (``n_kept``:
    its number of ones, if known); from ``previous`` (cost: its elements) when the
    mask keeps a subset of them.

    >>> k = kept_elements(np.array([[0, 1, 1], [1, 0, 1]], dtype=np.uint8), 2, 3)
    >>> k.flat.tolist(), k.row_ptr.tolist(), k.by_column.tolist(), k.col_ptr.tolist()
    ([1, 2, 3, 5], [0, 2, 4], [3, 1, 2, 5], [0, 1, 2, 4])
    """
    mask = mask.reshape(-1).view(np.uint8)
    flat = None
    if previous is not None:
        candidate = previous.flat[mask[previous.flat] != 0]
        if n_kept is None:
            n_kept = int(np.count_nonzero(mask))
        if candidate.size == n_kept:  # every kept element was kept before
            flat = candidate
    if flat is None:
        flat = np.flatnonzero(mask)
    row_ptr = np.searchsorted(flat, np.arange(rows + 1, dtype=np.int64) * cols)
    col_ptr, order = group_by(flat % cols, cols)
    return KeptElements(flat, row_ptr, flat[order], col_ptr, order)


def _csr(ptr: np.ndarray, index: np.ndarray, values: np.ndarray, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on 3 ops
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(ptr), torch.from_numpy(index),
                                       torch.from_numpy(values), shape)


class SparseConv:
    """One conv layer (one group, on the CPU) as CSR products over unfolded positions.

    ``geometry``: the layer's :class:`~topo_pai.metrics.torch_neuron.ConvGeometry`;
    ``kept``: its :class:`KeptElements`; ``weights``: flat float64 edge weights of all
    elements (``None``: every kept element weighs 1).
    """

    def __init__(self, geometry, kept: KeptElements, weights: np.ndarray | None):
        self.geo = geometry
        self.kept = kept
        O, C, KH, KW = geometry.weight4
        self.K = C * KH * KW
        self.P = geometry.OH * geometry.OW
        if weights is None:
            values = np.ones(kept.flat.size)
            values_t = values
        else:  # the column-major values from the row-major ones: a gather from a short array
            values = weights[kept.flat]
            values_t = values[kept.order]
        self.matrix = _csr(kept.row_ptr, kept.flat % self.K, values, (O, self.K))
        self.matrix_t = _csr(kept.col_ptr, kept.by_column // self.K, values_t, (self.K, O))
        self._unfolded: tuple[torch.Tensor, torch.Tensor] | None = None

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """The unfolded input ``(K, P)``; the last one is kept, as the flows through the
        weights need the forward pass's input again."""
        if self._unfolded is not None and self._unfolded[0] is x:
            return self._unfolded[1]
        g = self.geo
        cols = F.unfold(g.pad(x.view(1, g.C, g.H, g.W)), g.weight4[2:], g.dilation, g.padding,
                        g.stride)[0]
        self._unfolded = (x, cols)
        return cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.matrix @ self._unfold(x)).reshape(-1)

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        geo = self.geo
        cols = self.matrix_t @ g.view(geo.O, self.P)
        size = (geo.H, geo.W) if geo.native else geo.padded[2:]
        gin = F.fold(cols.unsqueeze(0), size, geo.weight4[2:], geo.dilation, geo.padding,
                     geo.stride)
        return geo.unpad(gin).reshape(-1)

    def through(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per kept element (in the order of ``kept.flat``), the sum over output
        positions of ``x[in] * g[out]``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sampled = torch.sparse.sampled_addmm(self.matrix, g.view(self.geo.O, self.P),
                                                 self._unfold(x).t(), beta=0.0)
        return sampled.values()


def runs_sparse(lm: LayerMask, kind: str, groups: int, positions: int,
                device: torch.device) -> bool:
    """Whether the torch engine takes this layer on its kept elements: a conv with
    one group, on the CPU (the CSR products are not exercised on accelerators here),
    at least :data:`SPARSE_MIN_WORK` elements times its ``positions`` (output
    positions), density at most :data:`SPARSE_MAX_DENSITY`; or with no kept element
    at all, whatever its size (its products then cost nothing)."""
    size = lm.mask.size
    return (kind != "Linear" and groups == 1 and device.type == "cpu"
            and (lm.unpruned == 0 or (size * positions >= SPARSE_MIN_WORK
                                      and lm.unpruned <= SPARSE_MAX_DENSITY * size)))


def layer_kept_elements(shared: dict, layer: int, lm: LayerMask, rows: int) -> KeptElements:
    """:func:`kept_elements` of a layer's mask, through the trace's cache ``shared``
    (the last list of each layer is kept there for the next round's mask)."""
    key = ("torch kept elements", layer)
    hit = shared.get(key)
    if hit is not None and hit[0] is lm.mask:
        return hit[1]
    kept = kept_elements(lm.mask, rows, lm.mask.size // rows, None if hit is None else hit[1],
                         lm.unpruned)
    shared[key] = (lm.mask, kept)
    return kept
