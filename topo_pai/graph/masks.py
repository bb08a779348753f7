"""Mask intake: find, validate and compact the masks of every prunable layer.

The checks and their messages are :mod:`topo_pai.masks.validate`'s (the one mask
validator); here one pass over each mask (a numba kernel) checks that it holds only 0 and 1,
copies it to ``uint8`` (so later edits of the caller's tensors cannot change a
Topology) and counts the unpruned elements of every kernel, which are the
channel-level edge multiplicities.
"""

from __future__ import annotations

import numpy as np

from topo_pai.graph.ir import Layer, Program
from topo_pai.kernels.intake import validate_copy, validate_count, validate_kernel_counts
from topo_pai.kernels.matvec import (
    csr_bilinear,
    csr_matvec,
    csr_rmatvec,
    dense_bilinear,
    dense_matvec,
    dense_rmatvec,
)
from topo_pai.kernels.multiplicity import counts_csr, kernel_csr
from topo_pai.masks.validate import (
    bad_value,
    check_keys,
    check_shape,
    numeric_array,
    without_unprunable,
)

#: A layer's multiplicity matrix is kept as dense per-kernel counts (no index
#: arrays) when at least this fraction of its kernels is non-empty: a dense entry
#: costs ~1 byte per pass, a CSR non-zero ~12 bytes and a gather, and building the
#: CSR arrays costs a pass over all kernels besides.
DENSE_FRACTION = 0.05


class LayerMask:
    """A validated mask and its channel-level multiplicity matrix ``M``.

    ``M`` (shape ``(out units, in units)``) is held as dense per-kernel ``counts``
    (``(O * per_group_in,)``, row ``o`` at columns ``(o // out_per_group) *
    per_group_in + i``), as CSR arrays (``indptr``, ``indices``, ``data``), or
    both. Sparse layers (under :data:`DENSE_FRACTION` of their kernels non-empty)
    multiply through the CSR arrays, which are built from the counts on first
    use, so that neuron-resolution queries, which never multiply by ``M`` at a
    conv, never pay for them. :meth:`matvec`, :meth:`rmatvec` and
    :meth:`bilinear` give bit-identical results through either form.
    """

    __slots__ = ("_csr", "_index_dtype", "_nnz", "counts", "mask", "out_per_group",
                 "per_group_in", "shape", "sparse", "unpruned")

    def __init__(self, mask: np.ndarray, unpruned: int, indptr=None, indices=None, data=None,
                 shape: tuple[int, int] = (0, 0), *, counts=None, per_group_in: int = 1,
                 out_per_group: int = 1, index_dtype=np.int32, nnz: int | None = None):
        self.mask = mask  # uint8, the weight's shape
        self.unpruned = unpruned
        self.shape = shape
        self.counts = counts
        self.per_group_in = per_group_in
        self.out_per_group = out_per_group
        self._index_dtype = index_dtype
        self._csr = None if indptr is None else (indptr, indices, data)
        self._nnz = nnz
        if self._csr is None and counts is None:
            raise ValueError("LayerMask needs CSR arrays or dense counts")
        n_kernels = 0 if counts is None else counts.shape[0]
        self.sparse = counts is None or self.nnz < DENSE_FRACTION * n_kernels

    def _arrays(self):
        if self._csr is None:
            self._csr = counts_csr(self.counts, self.per_group_in, self.out_per_group,
                                   self.nnz, np.zeros(1, dtype=self._index_dtype))
        return self._csr

    @property
    def indptr(self) -> np.ndarray:
        return self._arrays()[0]

    @property
    def indices(self) -> np.ndarray:
        return self._arrays()[1]

    @property
    def data(self) -> np.ndarray:
        """Multiplicities (float32; summed edge weights for weighted copies)."""
        return self._arrays()[2]

    @property
    def nnz(self) -> int:
        """Number of non-zero entries of ``M`` (non-empty kernels)."""
        if self._nnz is None:  # built from CSR arrays
            self._nnz = int(self._csr[0][-1])
        return self._nnz

    @property
    def dense(self) -> bool:
        """Whether products with ``M`` go through the dense counts."""
        return not self.sparse

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        """``out += M @ x``."""
        if self.sparse:
            csr_matvec(*self._arrays(), x, out)
        else:
            dense_matvec(self.counts, self.per_group_in, self.out_per_group, x, out)

    def rmatvec(self, y: np.ndarray, out: np.ndarray) -> None:
        """``out += M.T @ y``."""
        if self.sparse:
            csr_rmatvec(*self._arrays(), y, out)
        else:
            dense_rmatvec(self.counts, self.per_group_in, self.out_per_group, y, out)

    def bilinear(self, left: np.ndarray, right: np.ndarray) -> float:
        """Sum of ``M[r, c]`` over rows with ``left > 0`` and columns with ``right > 0``."""
        if self.sparse:
            return csr_bilinear(*self._arrays(), left, right)
        return dense_bilinear(self.counts, self.per_group_in, self.out_per_group, left,
                              right)


def attached_masks(model) -> dict:
    """Masks attached to ``model``: ``torch.nn.utils.prune``'s ``<name>_mask`` buffers,
    and ``torch.nn.utils.parametrize`` parametrisations that hold a ``mask`` tensor
    (as :func:`topo_pai.apply_masks` with ``method="parametrize"`` registers)."""
    import torch

    found = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, _ in list(mod.named_parameters(recurse=False)):
            if pname.endswith("_orig"):
                base = pname[: -len("_orig")]
                buf = getattr(mod, base + "_mask", None)
                if buf is not None:
                    found[prefix + base] = buf
        plists = getattr(mod, "parametrizations", None)
        if plists is not None:
            for tensor_name, plist in plists.items():
                held = [p.mask for p in plist if isinstance(getattr(p, "mask", None),
                                                            torch.Tensor)]
                if len(held) == 1:
                    found[prefix + tensor_name] = held[0]
                elif len(held) > 1:  # several masks in a chain act as their product
                    prod = held[0].bool()
                    for extra in held[1:]:
                        prod = prod & extra.bool()
                    found[prefix + tensor_name] = prod
    return without_unprunable(found, model, "masks attached to the model")


def _flat_numpy(name: str, m) -> np.ndarray:
    return np.ascontiguousarray(numeric_array(name, m)).reshape(-1)


def validate_keys(masks, program: Program, param_names: set[str]) -> None:
    """Refuse every key of ``masks`` that is not a prunable weight of ``program``."""
    prunable = {layer.param for layer in program.layers} | set(program.unused_params)
    check_keys(masks, prunable, param_names)


def _check_shape(name: str, m, shape) -> None:
    if not hasattr(m, "shape"):  # not a tensor or array: refused as such, not by its shape
        numeric_array(name, m)
    check_shape(name, m.shape, shape)


def scan(name: str, m, shape: tuple[int, ...], group_size: int, per_group_in: int,
         out_per_group: int, index_dtype=np.int32):
    """Validate one mask; return its uint8 copy and its multiplicity CSR arrays."""
    _check_shape(name, m, shape)
    flat = _flat_numpy(name, m)
    out = np.empty(flat.shape[0], dtype=np.uint8)
    if validate_copy(flat, out):
        raise bad_value(name, flat, shape)
    csr = kernel_csr(out, group_size, per_group_in, out_per_group, np.zeros(1, dtype=index_dtype))
    return out.reshape(shape), csr


def layer_mask(layer: Layer, in_units: int, m, index_dtype) -> LayerMask:
    """Validate ``m`` (``None``: dense) and build ``layer``'s :class:`LayerMask` in one
    pass over the mask: copy, 0/1 check and per-kernel counts are fused."""
    shape = layer.weight_shape
    out_units, per_group_in = shape[0], shape[1]
    out_per_group = out_units // layer.groups
    group_size = layer.kernel_volume
    n_kernels = out_units * per_group_in
    if n_kernels >= 2 ** 31 - 1:  # its CSR row pointers could pass int32
        index_dtype = np.int64
    if m is None:
        mask = np.ones(int(np.prod(shape)), dtype=np.uint8)
        counts = mask if group_size == 1 else np.full(
            n_kernels, group_size, dtype=np.uint8 if group_size < 256 else np.int32)
        nonempty, ones = n_kernels, mask.shape[0]
    else:
        _check_shape(layer.param, m, shape)
        flat = _flat_numpy(layer.param, m)
        mask = np.empty(flat.shape[0], dtype=np.uint8)
        if group_size == 1:
            bad, ones = validate_count(flat, mask)
            counts = mask
            nonempty = ones
        else:
            counts = np.empty(n_kernels, dtype=np.uint8 if group_size < 256 else np.int32)
            bad, nonempty, ones = validate_kernel_counts(flat, group_size, mask, counts)
        if bad:
            raise bad_value(layer.param, flat, shape)
    return LayerMask(mask.reshape(shape), int(ones), shape=(out_units, in_units), counts=counts,
                     per_group_in=per_group_in, out_per_group=out_per_group,
                     index_dtype=index_dtype, nnz=int(nonempty))
