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

The spectral measures (``mu0``, ``mu_hat``) come from
:func:`topo_pai.metrics.spectra.top_singular_values`.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from topo_pai.metrics.spectra import top_singular_values


def degrees(matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(in_degree, out_degree)``: row sums (per output unit) and column sums (per
    input unit) of a non-negative multiplicity matrix, as float64."""
    from topo_pai.kernels.degrees import csr_degrees

    A = _csr(matrix)
    return csr_degrees(A.indptr, A.indices, A.data, A.shape[1])  # one pass, entry order


def _csr(matrix):
    """``matrix`` as a float64 CSR array, without a copy when it already is one."""
    if isinstance(matrix, sp.csr_array) and matrix.dtype == np.float64:
        return matrix
    return sp.csr_array(matrix, dtype=np.float64)


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
    That 0 is a convention, not a measurement: :meth:`topo_pai.Topology.metrics`
    keeps it in the layer's row but leaves such layers out of its network totals.

    >>> ramanujan_gap(5.0, 10.0, 4.0)
    1.0
    """
    return _sqrt_minus_one(d_left) + _sqrt_minus_one(d_right) - float(mu_hat)


def _sqrt_minus_one(d: float) -> float:
    return math.sqrt(d - 1.0) if d >= 1.0 else 0.0


def check_biadjacency(name: str, matrix):
    """``matrix`` as a float64 CSR array whose stored entries are all finite and
    non-negative, or a ``ValueError`` naming ``name`` and the first bad entry.

    A layer graph's entries are edge multiplicities (kept elements per kernel) or
    ``|w|`` summed per kernel; a negative entry would silently cancel edges in the
    degree sums (a row ``[1, -1]`` would count as an unkept unit).

    >>> check_biadjacency("matrix", np.array([[1.0, -1.0]]))
    Traceback (most recent call last):
    ...
    ValueError: matrix has the entry -1.0 at (0, 1): a layer graph holds edge multiplicities (kept elements per kernel) or |w| summed per kernel, so every entry must be finite and >= 0 (pass abs() of signed weights)
    """
    A = _csr(matrix)
    data = A.data
    bad = ~np.isfinite(data) | (data < 0)
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(A.indptr, k, side="right") - 1)
        raise ValueError(
            f"{name} has the entry {float(data[k])!r} at ({row}, {int(A.indices[k])}): a layer "
            "graph holds edge multiplicities (kept elements per kernel) or |w| summed per "
            "kernel, so every entry must be finite and >= 0 (pass abs() of signed weights)")
    return A


def bipartite_measures(matrix, weighted=None, spectra: bool = True, *,
                       degree_pair=None, spectral_tol: float | None = None,
                       singular_values=None) -> dict:
    """The measures of one layer graph (see the module docstring).

    Parameters
    ----------
    matrix : sparse or dense array, shape (output units, input units)
        Edge multiplicities ``M`` (finite, non-negative: a negative or non-finite
        entry is refused with a ``ValueError``).
    weighted : sparse or dense array, optional
        The weighted biadjacency ``W`` (same pattern; ``|w|`` summed per kernel,
        finite and non-negative like ``matrix``); adds
        ``weighted_mu0``, ``weighted_mu_hat`` and ``weighted_spectral_gap``
        (``None`` without it).
    spectra : bool
        Take the singular values (default). Without them ``mu0``, ``mu_hat``,
        both gaps and the weighted trio are ``None`` and the rest costs O(nnz).
    degree_pair : tuple of arrays, optional
        ``degrees(matrix)`` when the caller has it already.
    spectral_tol : float, optional
        The accuracy of the singular values relative to ``mu0`` (see
        :func:`top_singular_values`; default :data:`~topo_pai.metrics.spectra.SPECTRAL_TOL`).
    singular_values : tuple, optional
        ``(top_singular_values(matrix), top_singular_values(weighted))`` (the second
        ``None`` without weights) when the caller has them already
        (:func:`~topo_pai.metrics.spectra.many_top_singular_values`).

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
    A = check_biadjacency("matrix", matrix)
    if weighted is not None:
        weighted = check_biadjacency("weighted", weighted)
    if A.nnz and not A.data.all():  # explicit zeros are not edges
        A = A.copy()
        A.eliminate_zeros()
        degree_pair = None
    in_deg, out_deg = degrees(A) if degree_pair is None else degree_pair
    min_in, mean_in = kept_degree_stats(in_deg)
    min_out, mean_out = kept_degree_stats(out_deg)
    if spectra and singular_values is None:
        singular_values = (top_singular_values(A, spectral_tol),
                           None if weighted is None else top_singular_values(weighted,
                                                                             spectral_tol))
    mu0, mu_hat = singular_values[0] if spectra else (None, None)
    out = dict(
        kernels=int(A.nnz), edges=float(A.data.sum()),
        kept_inputs=int(np.count_nonzero(out_deg)), kept_outputs=int(np.count_nonzero(in_deg)),
        min_in_degree=min_in, mean_in_degree=mean_in,
        min_out_degree=min_out, mean_out_degree=mean_out,
        mu0=mu0, mu_hat=mu_hat, spectral_gap=None if mu0 is None else mu0 - mu_hat,
        ramanujan_gap=None if mu0 is None else ramanujan_gap(mean_out, mean_in, mu_hat),
        weighted_mu0=None, weighted_mu_hat=None, weighted_spectral_gap=None,
    )
    if weighted is not None and spectra:
        wmu0, wmu_hat = singular_values[1]
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


def lost_edges(matrix, input_has_in: np.ndarray, output_is_sink: np.ndarray, *,
               degree_pair=None) -> dict:
    """Edges of one layer that touch a source or a sink unit (Cunegatti et al.).

    ``lost_in_edges``: edges (with multiplicity) leaving an input unit that has
    no in-edge (``~input_has_in``; never a network input unit); ``lost_out_edges``:
    edges entering an output unit that is a sink.

    >>> lost_edges(np.array([[1, 2], [3, 0]]), np.array([True, False]), np.array([False, True]))
    {'lost_in_edges': 2.0, 'lost_out_edges': 3.0}
    """
    in_deg, out_deg = degrees(matrix) if degree_pair is None else degree_pair
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
    from topo_pai.kernels.degrees import csr_count_within

    A = _csr(matrix)
    rows, cols = np.asarray(bout, dtype=bool), np.asarray(fin, dtype=bool)
    if rows.all() and cols.all():  # every unit on a path (most layers): the non-zeros
        return int(np.count_nonzero(A.data))
    # an entry counts when it is non-zero, its row reaches the output and its column
    # is reached: an integer count in one pass, no product
    return int(csr_count_within(A.indptr, A.indices, A.data, rows, cols))


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
