"""Graph measures of a sparse mask beyond nodes and paths.

Every function here takes plain arrays (a layer's CSR block, degree vectors,
structure maps), so each measure can be tested on its own;
:meth:`topo_pai.Topology.metrics` assembles them into a :class:`MetricsTable`.
The definitions, with their sources, are in ``docs/metrics.md``.

The layer graph
---------------
Layer ``l`` is the bipartite graph between its *input units* (the channels or
features of its input, the columns of its multiplicity matrix ``M``) and its
*output units* (the rows). ``M[o, i]`` is the number of kept weight elements of
kernel ``(o, i)``: parallel edges, "kernel counts as multiplicities". With
weights, the weighted biadjacency ``W[o, i]`` sums ``|w|`` over the kept
elements of the kernel.

A unit is *kept* in a layer when it has at least one edge there. Degrees count
parallel edges: the in-degree of an output unit is its row sum of ``M``, the
out-degree of an input unit its column sum.

Spectra
-------
The adjacency matrix of a bipartite graph, ``[[0, B], [B^T, 0]]``, has the
eigenvalues ``+-sigma_k`` of its biadjacency block ``B`` (and zeros). Its
largest eigenvalue is ``mu0 = sigma_1`` and the largest eigenvalue other than
``+-mu0`` is ``mu_hat = sigma_2``: the second eigenvalue of a bipartite graph is
never ``-mu0``, which is ``mu0``'s mirror, not a second eigenvalue of the
spectrum's interesting part. So both are the two largest singular values of
the block, taken by :func:`top_singular_values` on the CSR block itself; the
``(C_in + C_out)^2`` adjacency is never formed. Singular values beyond the
block's rank are zero, so a block with one row or column, or of rank one, has
``mu_hat = 0``, and an empty block has ``mu0 = mu_hat = 0``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

#: Blocks with at most this many entries, or with a side shorter than 3 (where
#: ARPACK cannot find two singular values), take a dense SVD of the block itself.
DENSE_SVD_MAX_ENTRIES = 4096
#: A block larger than this many entries whose sparse SVD does not converge is
#: refused rather than densified (8 bytes an entry).
DENSE_SVD_FALLBACK_MAX_ENTRIES = 1 << 25


def top_singular_values(matrix) -> tuple[float, float]:
    """The two largest singular values ``(mu0, mu_hat)`` of a sparse matrix.

    ``scipy.sparse.linalg.svds`` (ARPACK, a fixed start vector, so the result
    is deterministic) on the CSR block; tiny blocks (see
    :data:`DENSE_SVD_MAX_ENTRIES`) take a dense SVD of the block. Missing
    singular values are 0.

    >>> import scipy.sparse as sp
    >>> top_singular_values(sp.csr_array(np.ones((3, 4))))  # rank one: sqrt(12), 0
    (3.4641016151377544, 0.0)
    >>> top_singular_values(sp.csr_array((0, 5)))
    (0.0, 0.0)
    """
    A = sp.csr_array(matrix, dtype=np.float64)
    m, n = A.shape
    if A.nnz == 0 or m == 0 or n == 0:
        return 0.0, 0.0
    if min(m, n) < 3 or m * n <= DENSE_SVD_MAX_ENTRIES:
        return _dense_top_two(A)
    from scipy.sparse.linalg import ArpackNoConvergence, svds

    v0 = np.random.default_rng(0).standard_normal(min(m, n))
    try:
        s = svds(A, k=2, v0=v0, return_singular_vectors=False)
    except ArpackNoConvergence:
        if m * n > DENSE_SVD_FALLBACK_MAX_ENTRIES:
            raise ValueError(f"the sparse SVD of a {m}x{n} block did not converge, and the "
                             "block is too large for a dense SVD") from None
        return _dense_top_two(A)
    s = np.sort(np.abs(s))[::-1]
    return _clean(float(s[0]), float(s[1]))


def _dense_top_two(A) -> tuple[float, float]:
    s = np.linalg.svd(A.toarray(), compute_uv=False)
    return _clean(float(s[0]), float(s[1]) if s.size > 1 else 0.0)


def _clean(mu0: float, mu_hat: float) -> tuple[float, float]:
    # a second singular value at rounding level of mu0 is a zero one (rank one)
    if mu_hat <= mu0 * 1e-13:
        mu_hat = 0.0
    return mu0, mu_hat


def degrees(matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(in_degree, out_degree)``: row sums (per output unit) and column sums (per
    input unit) of a non-negative multiplicity matrix, as float64."""
    A = sp.csr_array(matrix, dtype=np.float64)
    return np.asarray(A.sum(axis=1)).ravel(), np.asarray(A.sum(axis=0)).ravel()


def kept_degree_stats(degree: np.ndarray) -> tuple[float, float]:
    """``(min, mean)`` of the degrees of the kept units (degree > 0); ``(0, 0)`` when
    no unit is kept.

    >>> kept_degree_stats(np.array([0.0, 2.0, 4.0]))
    (2.0, 3.0)
    """
    kept = degree[degree > 0]
    if kept.size == 0:
        return 0.0, 0.0
    return float(kept.min()), float(kept.mean())


def ramanujan_gap(d_left: float, d_right: float, mu_hat: float) -> float:
    """``sqrt(d_left - 1) + sqrt(d_right - 1) - mu_hat`` (Hoang et al., ICLR 2023).

    ``d_left`` and ``d_right`` are the average degrees of the kept input and
    output units, so they are at least 1 whenever the layer has an edge; an
    empty layer has ``d = 0`` and its terms are taken as 0 (gap ``-mu_hat = 0``).

    >>> ramanujan_gap(5.0, 10.0, 4.0)
    1.0
    """
    return _sqrt_minus_one(d_left) + _sqrt_minus_one(d_right) - float(mu_hat)


def _sqrt_minus_one(d: float) -> float:
    return math.sqrt(d - 1.0) if d >= 1.0 else 0.0


def bipartite_measures(matrix, weighted=None, spectra: bool = True) -> dict:
    """The measures of one layer graph (see the module docstring).

    Parameters
    ----------
    matrix : sparse or dense array, shape (output units, input units)
        Edge multiplicities ``M``.
    weighted : sparse or dense array, optional
        The weighted biadjacency ``W`` (same pattern); adds
        ``weighted_mu0``, ``weighted_mu_hat`` and ``weighted_spectral_gap``
        (``None`` without it).
    spectra : bool
        Take the singular values (default). Without them ``mu0``, ``mu_hat``,
        both gaps and the weighted trio are ``None`` and the rest costs O(nnz).

    Returns
    -------
    dict
        ``kernels`` (non-zero entries), ``edges`` (sum of multiplicities),
        ``kept_inputs``, ``kept_outputs``, ``min_in_degree``, ``mean_in_degree``
        (over kept output units), ``min_out_degree``, ``mean_out_degree`` (over
        kept input units), ``mu0``, ``mu_hat``, ``spectral_gap`` (``mu0 -
        mu_hat``), ``ramanujan_gap`` (with ``d_left = mean_out_degree``,
        ``d_right = mean_in_degree``) and the weighted trio.

    >>> m = bipartite_measures(np.ones((2, 3)))      # K_{3,2}: sigma = sqrt(6), 0
    >>> round(m["mu0"] ** 2, 9), m["mu_hat"], round(m["ramanujan_gap"], 9)  # 1 + sqrt(2)
    (6.0, 0.0, 2.414213562)
    """
    A = sp.csr_array(matrix, dtype=np.float64)
    A.eliminate_zeros()
    in_deg, out_deg = degrees(A)
    min_in, mean_in = kept_degree_stats(in_deg)
    min_out, mean_out = kept_degree_stats(out_deg)
    mu0, mu_hat = top_singular_values(A) if spectra else (None, None)
    out = dict(
        kernels=int(A.nnz), edges=float(A.sum()),
        kept_inputs=int(np.count_nonzero(out_deg)), kept_outputs=int(np.count_nonzero(in_deg)),
        min_in_degree=min_in, mean_in_degree=mean_in,
        min_out_degree=min_out, mean_out_degree=mean_out,
        mu0=mu0, mu_hat=mu_hat, spectral_gap=None if mu0 is None else mu0 - mu_hat,
        ramanujan_gap=None if mu0 is None else ramanujan_gap(mean_out, mean_in, mu_hat),
        weighted_mu0=None, weighted_mu_hat=None, weighted_spectral_gap=None,
    )
    if weighted is not None and spectra:
        wmu0, wmu_hat = top_singular_values(weighted)
        out.update(weighted_mu0=wmu0, weighted_mu_hat=wmu_hat,
                   weighted_spectral_gap=wmu0 - wmu_hat)
    return out


def unit_roles(in_degree: np.ndarray, out_degree: np.ndarray, is_input: bool,
               is_output: np.ndarray) -> dict:
    """Sink, source and disconnected units of one node group (Cunegatti et al.).

    ``in_degree``/``out_degree`` count a unit's edges in the whole network
    (its layer's row; every block that reads it). ``is_input`` says the group
    is the network input (its units need no in-edge), ``is_output`` marks the
    units that are network outputs (they need no out-edge).

    * *disconnected*: no edge at all;
    * *source*: out-edges but no in-edge, and not a network input unit: what it
      passes on carries nothing from the input;
    * *sink*: in-edges but no out-edge, and not a network output unit: what
      reaches it goes nowhere.

    >>> unit_roles(np.array([0., 0., 2., 1.]), np.array([0., 3., 0., 1.]), False,
    ...            np.zeros(4, bool))
    {'sink_units': 1, 'source_units': 1, 'disconnected_units': 1}
    """
    has_in = in_degree > 0
    has_out = out_degree > 0
    isolated = ~has_in & ~has_out
    source = np.zeros_like(has_in) if is_input else (~has_in & has_out)
    sink = has_in & ~has_out & ~np.asarray(is_output, dtype=bool)
    return dict(sink_units=int(sink.sum()), source_units=int(source.sum()),
                disconnected_units=int(isolated.sum()))


def lost_edges(matrix, input_has_in: np.ndarray, output_is_sink: np.ndarray) -> dict:
    """Edges of one layer that touch a source or a sink unit (Cunegatti et al.).

    ``lost_in_edges``: edges (with multiplicity) leaving an input unit that has
    no in-edge (``~input_has_in``; never a network input unit); ``lost_out_edges``:
    edges entering an output unit that is a sink.

    >>> lost_edges(np.array([[1, 2], [3, 0]]), np.array([True, False]), np.array([False, True]))
    {'lost_in_edges': 2.0, 'lost_out_edges': 3.0}
    """
    in_deg, out_deg = degrees(matrix)
    return dict(lost_in_edges=float(out_deg[~np.asarray(input_has_in, bool)].sum()),
                lost_out_edges=float(in_deg[np.asarray(output_is_sink, bool)].sum()))


def effective_kernels(matrix, fin: np.ndarray, bout: np.ndarray) -> int:
    """Kernels (non-zero entries of ``M``) whose input unit is reached from the
    network input (``fin``) and whose output unit reaches the output (``bout``):
    the effective-kernel count of DPaI (ICLR 2025).

    >>> effective_kernels(np.array([[1, 2], [3, 0]]), np.array([True, False]),
    ...                   np.array([True, True]))
    2
    """
    A = sp.csr_array(matrix)
    A.eliminate_zeros()
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    return int(np.count_nonzero(np.asarray(bout, bool)[rows] & np.asarray(fin, bool)[A.indices]))


def sparsity_and_compression(params: int, kept: int) -> tuple[float, float]:
    """``(1 - kept / params, params / kept)``: sparsity and compression of ``kept``
    of ``params`` weights (Vysogorets & Kempe, JMLR 2023); compression is ``inf``
    when nothing is kept, and both are 0/1 for an empty network.

    >>> sparsity_and_compression(100, 10)
    (0.9, 10.0)
    >>> sparsity_and_compression(100, 0)
    (1.0, inf)
    """
    if params == 0:
        return 0.0, 1.0
    return 1.0 - kept / params, (params / kept if kept else math.inf)
