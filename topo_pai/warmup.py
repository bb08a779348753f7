"""Fill numba's on-disk cache, so that the first real call does not compile.

``make install`` runs ``python -m topo_pai.warmup`` once. Numba compiles a kernel
per argument types on its first call and, with ``cache=True``, stores the machine
code next to the source (``__pycache__/*.nbi``, ``*.nbc``); compiling the kernels
of a first analysis takes tens of seconds, loading them from the cache well under
one. Types, not sizes, select the compiled code, so a small network that takes
every common path (bool and float masks; layers kept as CSR at extreme sparsity,
as dense counts, and dense ones counted by their complement; both resolutions;
exact counts, effective masks, SynFlow flows, the graph measures) compiles what a
first analysis of a real one needs.
"""

from __future__ import annotations

import os
import time


def warm() -> None:
    """Run the common queries on a small pruned ResNet-20 (see the module docstring)."""
    import torch

    import topo_pai
    from topo_pai.models import resnet20

    torch.manual_seed(0)
    model = resnet20()
    gen = torch.Generator().manual_seed(0)
    sparse = {n: torch.rand(p.shape, generator=gen) < 0.1
              for n, p in model.named_parameters() if p.dim() > 1}
    dense = {n: (torch.rand(p.shape, generator=gen) < 0.9).float()
             for n, p in model.named_parameters() if p.dim() > 1}
    # at PaI's extreme sparsities most layers keep under 5 % of their kernels and go
    # through the CSR kernels, which neither mask above reaches
    extreme = {n: torch.rand(p.shape, generator=gen) < 0.005
               for n, p in model.named_parameters() if p.dim() > 1}
    weights = {n: p.detach().abs() for n, p in model.named_parameters() if p.dim() > 1}
    for masks in (sparse, dense, extreme):
        topo = topo_pai.from_torch(model, masks, input_shape=(3, 8, 8))
        for res in ("channel", "neuron"):
            topo.summary(res)
            _ = topo.count_paths(res).exact
            topo.effective_masks(res)
            topo.flows(weights, resolution=res).log10_through_weights()
        topo.metrics(weights=weights)  # the O(non-zeros) measures' kernels, blocks built
    # the torch engine's own numba passes (masked weights, finished scores), which
    # engine="auto" reaches on larger dense models than this one
    topo_pai.from_torch(model, dense, input_shape=(3, 8, 8), engine="torch").flows(
        weights, resolution="neuron").log10_through_weights()


def warm_spectra() -> None:
    """Compile the Lanczos kernels of the layer spectra (:mod:`topo_pai.kernels.gram`)
    for the types :func:`~topo_pai.metrics.spectra.top_singular_values` passes them:
    a sparse block with int32 and with int64 indices, and a dense one stored in C
    order (a tall block) and in Fortran order (a wide one, transposed)."""
    import numpy as np
    import scipy.sparse as sp

    from topo_pai.metrics.spectra import top_singular_values

    rng = np.random.default_rng(0)
    sparse = sp.csr_array((rng.random((300, 300)) < 0.05).astype(np.float64))
    for index in (np.int32, np.int64):  # sides above GRAM_MAX_SIDE: the CSR route
        top_singular_values(sp.csr_array(
            (sparse.data, sparse.indices.astype(index), sparse.indptr.astype(index)),
            shape=sparse.shape))
    dense = (rng.random((300, 200)) < 0.6).astype(np.float64)
    for block in (dense, dense.T):  # dense enough, sides above GRAM_MAX_SIDE
        top_singular_values(sp.csr_array(block))


def warm_by_size() -> None:
    """Compile the kernels that size, not type, selects, which the small network of
    :func:`warm` does not reach: the chunked mask intake (masks of 2^18 elements or
    more, bool and float), the threaded element lists of large conv layers, the
    bracketed, chunked threshold of the pruners, and the torch engine's sparse layers'
    lists and scores."""
    import numba
    import numpy as np

    from topo_pai.kernels import intake, options
    from topo_pai.kernels.elements import by_input, count_words, mask_elements
    from topo_pai.kernels.sorting import group_by
    from topo_pai.kernels.vectors import scatter_log10_scores
    from topo_pai.pruners.select import rng_for, select_top

    n = options.PARALLEL_MIN_ELEMENTS * 9
    out, counts = np.empty(n, dtype=np.uint8), np.empty(n // 9, dtype=np.uint8)
    for dtype in (np.bool_, np.float32):
        mask = np.ones(n, dtype=dtype)
        intake.validate_kernel_counts(mask, 9, out, counts)
        intake.validate_count(mask, out)
    side = 1 << 9  # a 1x1 conv of 2^18 kernels, all kept: the threaded element lists
    kernels = np.ones(side * side, dtype=np.uint8)
    for index in (np.int32, np.int64):
        _, ptr_o, nz_i, src = mask_elements(
            kernels, kernels, count_words(kernels, 1), side, side, 1, side, 1,
            np.zeros(1, dtype=np.int64), np.zeros(1, dtype=index), np.zeros(1, dtype=np.int32),
            kernels.size)
        by_input(ptr_o, nz_i, src, side, numba.get_num_threads())
    scores = np.random.default_rng(0).random(n)
    alive = scores > 0.1
    select_top([scores], n // 2, rng_for(0))
    select_top([scores], n // 4, rng_for(0), [alive], workspace={})
    flat = np.flatnonzero(alive[:1000])
    group_by(flat % 9, 9)
    scatter_log10_scores(flat, scores[:flat.size], 0.0, scores, True, np.empty(1000))


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime
    start = time.perf_counter()
    warm()
    warm_spectra()
    warm_by_size()
    print(f"numba cache warm ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
