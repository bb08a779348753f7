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

import contextlib
import math
import threading

import numpy as np
import scipy.sparse as sp

#: Blocks with at most this many entries, or with a side shorter than 3, take a dense
#: SVD of the block itself.
DENSE_SVD_MAX_ENTRIES = 4096
#: A block larger than this many entries that the iterative route cannot settle
#: (no convergence, no certificate, or a ``mu_hat`` below :data:`SQUARING_FLOOR`) is
#: refused rather than densified (8 bytes an entry).
DENSE_SVD_FALLBACK_MAX_ENTRIES = 1 << 25
#: The default ``spectral_tol``: every reported ``mu0`` and ``mu_hat`` is within
#: ``SPECTRAL_TOL * mu0`` of a singular value of the block (see
#: :func:`top_singular_values` for the certificate).
SPECTRAL_TOL = 1e-8
#: Below this ``mu_hat / mu0`` the rounding of the Gram matrix (``eps * mu0^2``) may
#: be a visible part of ``mu_hat^2``; such blocks take a direct SVD of the block.
SQUARING_FLOOR = 1e-6
#: Each of the two Lanczos runs is capped at this many basis vectors; a block that
#: needs more takes a direct SVD.
LANCZOS_MAX_COLUMNS = 600
#: Blocks with at least this fraction of non-zeros and at most
#: :data:`DENSE_OPERAND_MAX_ENTRIES` entries are multiplied as dense arrays
#: (one BLAS pass beats the sparse gather there).
DENSE_OPERAND_MIN_DENSITY = 0.25
DENSE_OPERAND_MAX_ENTRIES = 1 << 22
#: Blocks whose shorter side is at most this (and with at most
#: :data:`DENSE_OPERAND_MAX_ENTRIES` entries) form the dense Gram matrix (``side^2``
#: entries, one BLAS product) and take its top two eigenvectors from LAPACK
#: (``syevr``); longer sides take Lanczos, which never forms it. Measured block by
#: block on the VGG-19 and ResNet-50 layers of ``benchmarks/bench_metrics.py`` at
#: density 0.1, since whole Lanczos runs are compiled: Lanczos is faster on every one
#: of their blocks of side 64 and 128 (by 5-45 %; it was the other way round with
#: the convergence tests in Python). Tall random blocks with values 1-9 still favour
#: the Gram route at side 64 (1024 x 64) and 128 (2048 x 128), and at side 32 it is
#: faster on all of them: the bound stays there.
GRAM_MAX_SIDE = 32


#: The tightest ``spectral_tol`` accepted: float64 rounding of the products (and the
#: zeroing of a ``mu_hat`` at rounding level of ``mu0``, 1e-13) sits just below it.
MIN_SPECTRAL_TOL = 1e-12


def check_spectral_tol(tol) -> float:
    """``tol`` as a float, or a ``ValueError`` that says what is accepted.

    >>> check_spectral_tol(1e-6)
    1e-06
    """
    # integers are refused with the rest: none lies in the range, and float() of a huge
    # one would overflow
    ok = (isinstance(tol, (float, np.floating))
          and math.isfinite(float(tol)) and MIN_SPECTRAL_TOL <= float(tol) < 1.0)
    if not ok:
        raise ValueError(
            f"spectral_tol must be a number with {MIN_SPECTRAL_TOL:g} <= spectral_tol < 1, "
            f"got {tol!r}: it bounds the error of mu0 and mu_hat relative to mu0 (default "
            f"{SPECTRAL_TOL:g}; smaller is tighter and slower; below {MIN_SPECTRAL_TOL:g} "
            "float64 rounding cannot certify it)")
    return float(tol)


def top_singular_values(matrix, tol: float | None = None) -> tuple[float, float]:
    """The two largest singular values ``(mu0, mu_hat)`` of a sparse matrix.

    Accuracy contract (``tol`` defaults to :data:`SPECTRAL_TOL`, ``1e-8``)::

        |mu0_reported - mu0| <= tol * mu0   and   |mu_hat_reported - mu_hat| <= tol * mu0

    (plus rounding), and neither reported value exceeds the true one. Tiny blocks
    and the direct fallback take LAPACK's SVD of the block, exact to rounding,
    except blocks of more than :data:`DENSE_SVD_FALLBACK_MAX_ENTRIES` entries,
    whose fallback is ARPACK's ``svds``, certified like the others. The others are
    certified before they are returned:

    * two orthonormal vectors ``V`` approximate the top two eigenvectors of the
      Gram matrix ``G = B^T B`` of the block's shorter side (``B`` the block or its
      transpose, ``k x k`` with ``k = min(C_in, C_out)``): for ``k <=
      GRAM_MAX_SIDE`` LAPACK's ``syevr`` on the dense ``G`` (:data:`GRAM_MAX_SIDE`;
      formed in float32 where that is exact, see :func:`_gram_matrix`); longer
      sides take Lanczos with locking on ``G`` without forming it
      (:func:`gram_top_ritz_vectors`; compiled steps, products with the CSR block
      and its transpose, or with the dense block when at least
      :data:`DENSE_OPERAND_MIN_DENSITY` of it is non-zero);
    * the reported values ``s_1 >= s_2`` are the singular values of ``B V`` (no
      squaring), so ``s_i <= sigma_i`` by interlacing, and ``U = V Z`` (``Z`` the
      right singular vectors of ``B V``) are the Ritz vectors with Ritz values
      ``s_i^2``;
    * the residuals ``r_i = ||G u_i - s_i^2 u_i||`` are computed explicitly, as
      ``B^T (B u_i)`` on every route, with ``B U = (B V) Z`` from the product
      already taken (never with a formed ``G``; on the CSR route by
      :func:`topo_pai.kernels.gram.csr_times`, each row summed in index order).
      For a symmetric matrix, an eigenvalue ``lambda`` lies within
      ``r_i`` of the Ritz value ``s_i^2`` (the residual bound ``|theta - lambda| <=
      ||G u - theta u||``), so a singular value ``sigma`` lies within ``min(r_i /
      s_i, sqrt(r_i))`` of ``s_i`` (``|sigma - s| = |sigma^2 - s^2| / (sigma + s)``,
      and ``|sigma - s|^2 <= |sigma^2 - s^2|``). The values are returned only when
      both bounds are at most ``tol * s_1`` (``<= tol * mu0``); otherwise, and when
      ``mu_hat`` is below :data:`SQUARING_FLOOR` times ``mu0``, the block takes a
      direct SVD (dense LAPACK, or ``scipy.sparse.linalg.svds`` on blocks too large
      to densify).

    The certificate says that each value is that close to *a* singular value; that
    it is the first and second one, rather than a later one, rests on the Krylov
    spaces of the start vectors (seeded random ones, and all ones for the first
    run on a non-negative block) reaching the top singular
    directions, the assumption of every Krylov method (ARPACK's ``svds``
    included); the second run is deflated by the first vector, so a doubled top
    value is found twice, and the residual stop makes each run go well past the
    point where its top value stands out. The
    tests compare against dense SVDs on blocks with clustered and repeated top
    values. Results are deterministic; BLAS runs on one thread here. Missing
    singular values are 0.

    >>> import scipy.sparse as sp
    >>> top_singular_values(sp.csr_array(np.ones((3, 4))))  # rank one: sqrt(12), 0
    (3.4641016151377544, 0.0)
    >>> top_singular_values(sp.csr_array((0, 5)))
    (0.0, 0.0)
    """
    tol = SPECTRAL_TOL if tol is None else check_spectral_tol(tol)
    A = sp.csr_array(matrix, dtype=np.float64)
    if not A.has_canonical_format:  # the float32 Gram's exactness test reads the entries
        A = A.copy()  # summed on our copy, never the caller's matrix
        A.sum_duplicates()
    m, n = A.shape
    if A.nnz == 0 or m == 0 or n == 0:
        return 0.0, 0.0
    if min(m, n) < 3 or m * n <= DENSE_SVD_MAX_ENTRIES:
        return _dense_top_two(A)
    binary = bool(np.all(A.data == 1.0))  # a 0/1 block: its transposes move no values
    B = A if m >= n else _transposed(A, binary)  # G = B^T B is min(m, n) square
    k = B.shape[1]
    dense = m * n <= DENSE_OPERAND_MAX_ENTRIES
    with _one_blas_thread():
        if dense and k <= GRAM_MAX_SIDE:
            from scipy.linalg import eigh

            G = _gram_matrix(B)
            V = eigh(G, subset_by_index=[k - 2, k - 1], driver="evr")[1]
            # the certificate multiplies by B and B^T (O(nnz)), not by G as formed, so
            # G's own rounding is not trusted
            gram = _Products(B)
        else:
            if dense and A.nnz >= DENSE_OPERAND_MIN_DENSITY * m * n:
                gram = _DenseGram(A.toarray() if m >= n else A.toarray().T)
            else:  # B^T as its own CSR: a gather per row beats a scatter per column
                gram = _CsrGram(B, A if m < n else _transposed(B, binary), binary)
            # a non-negative block (kernel counts, |w| sums) has a non-negative top
            # eigenvector of G: its first Lanczos run starts from ones
            nonnegative = binary or bool(A.data.min() >= 0)
            V = gram_top_ritz_vectors(gram, k, tol, nonnegative=nonnegative)
        if V is not None:
            s = _certified(V, gram, tol)
            if s is not None and s[1] >= SQUARING_FLOOR * s[0]:
                return _clean(float(s[0]), float(s[1]))
        return _direct_top_two(A, tol)


def _transposed(A, binary: bool):
    """``A^T`` as a canonical float64 CSR array (``A`` canonical), by the compiled
    counting sort :func:`topo_pai.kernels.gram.csr_transpose`; a ``binary`` (0/1)
    ``A`` moves no values (the ones are made afresh)."""
    from topo_pai.kernels.gram import csr_transpose

    indptr, indices, data = csr_transpose(A.indptr, A.indices,
                                          np.empty(0) if binary else A.data, A.shape[1])
    if binary:
        data = np.ones(indices.shape[0])
    T = sp.csr_array((data, indices, indptr), shape=A.shape[::-1])
    T.has_canonical_format = True  # rows in increasing order, no duplicates (A has none)
    return T


def _gram_matrix(B):
    """``B^T B`` as a dense float64 array. A block of small integers (kernel
    multiplicities) is multiplied in float32, which is exact there and twice as
    fast: every partial sum of ``G[i, j] = sum_r B[r, i] B[r, j]`` is an integer of
    at most ``max(B) * max(column sum)``, and integers below ``2**24`` are exact in
    float32."""
    data = B.data
    if data.size and data.min() >= 0 and np.all(data == np.rint(data)):
        column_sums = np.bincount(B.indices, weights=data, minlength=B.shape[1])
        if float(data.max()) * float(column_sums.max()) < 2.0**24:
            D32 = B.astype(np.float32).toarray()
            return (D32.T @ D32).astype(np.float64)
    D = B.toarray()
    return D.T @ D


def singular_value_error_bound(residual, s):
    """The distance from ``s`` to the nearest singular value certified by the
    residual ``||B^T B u - s^2 u||`` of a unit vector ``u``: ``min(residual / s,
    sqrt(residual))`` (elementwise).

    >>> singular_value_error_bound(np.array([1e-6, 1e-6]), np.array([2.0, 0.0]))
    array([5.e-07, 1.e-03])
    """
    residual = np.asarray(residual, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(s > 0, residual / np.where(s > 0, s, 1.0), np.inf)
    return np.minimum(relative, np.sqrt(residual))


def _certified(V, products, tol):
    """The singular values of ``B V`` if their explicit residual certificate is within
    ``tol * s_1`` (see :func:`top_singular_values`), else ``None``. ``products`` has
    ``times(X) = B X`` and ``times_t(Y) = B^T Y``; ``B U`` is ``(B V) Z`` (``U = V
    Z``), so the residuals take one product with ``B^T`` per vector."""
    BV = products.times(V)
    _, s, Zt = np.linalg.svd(BV, full_matrices=False)
    U = V @ Zt.T
    residual = np.linalg.norm(products.times_t(BV @ Zt.T) - U * s**2, axis=0)
    if np.all(singular_value_error_bound(residual, s) <= tol * s[0]):
        return s
    return None


def gram_top_ritz_vectors(gram, k: int, tol: float | None = None,
                          max_columns: int | None = None, nonnegative: bool = False):
    """Two orthonormal Ritz vectors (``k x 2``) of the largest eigenvalues of a
    symmetric positive semidefinite operator ``G``, or ``None`` without convergence.

    ``gram(X)`` multiplies a ``k x b`` array (here ``b = 1``). Lanczos with locking:
    a first run finds the top Ritz pair ``(theta_1, u_1)`` of ``G``, a second one
    the top Ritz pair of ``G`` deflated by ``u_1`` (every vector is kept orthogonal
    to ``u_1``), so a doubled top eigenvalue is found twice. Each run starts from a
    seeded random vector, except the first one on a ``nonnegative`` operator (one
    with no negative entry, such as ``B^T B`` of a block of kernel counts or ``|w|``
    sums), which starts from the all-ones vector: by Perron-Frobenius ``G`` then has
    a non-negative top eigenvector ``p``, and ``1^T p >= ||p|| > 0``, so the start
    always has a component along the top eigenvalue's eigenspace, at least the
    typical ``1 / sqrt(k)`` of a random start and near 1 when ``p`` is spread out,
    as on random masks (about a third fewer steps in that run). The run then
    orthogonalises every new vector fully against its whole
    basis (the three-term recurrence, then classical Gram-Schmidt, twice when the
    first pass removed much: :func:`topo_pai.kernels.gram._extend`), and takes the Ritz pair of the
    tridiagonal projection (:func:`topo_pai.kernels.gram.top_tridiagonal_pair`); its residual
    ``||G u - theta u||`` is ``beta |y_last|``, exact with full
    reorthogonalisation. A run stops when the singular-value bound ``min(r /
    sqrt(theta), sqrt(r))`` is at most :data:`LANCZOS_MARGIN` times ``tol *
    sqrt(theta_1)`` (``tol`` defaults to :data:`SPECTRAL_TOL`), the first run also
    when its residual is at most ``LOCK_RESIDUAL * tol * theta_1`` (the second
    vector's residual on ``G`` grows by the first one's: ``u_1^T G u_2 = r_1^T u_2``,
    counted in the second run's bound), when a new vector vanishes (at most
    ``1e-12 theta_1``: an invariant subspace, the Ritz values are exact) or when the
    basis spans all ``k`` dimensions. :func:`top_singular_values` then checks the
    bound with an explicit residual. Each run uses at most ``max_columns``
    (:data:`LANCZOS_MAX_COLUMNS`) vectors.

    >>> G = np.diag([5.0, 4.0, 4.0, 1.0, 0.5])
    >>> V = gram_top_ritz_vectors(lambda X: G @ X, 5)
    >>> np.round(np.diag(V.T @ G @ V), 12)
    array([5., 4.])
    """
    tol = SPECTRAL_TOL if tol is None else tol
    max_columns = min(k, LANCZOS_MAX_COLUMNS if max_columns is None else max_columns)
    rng = np.random.default_rng(0)
    first = _top_ritz_pair(gram, k, None, 0.0, 0.0, tol, max_columns, rng, nonnegative)
    if first is None:
        return None
    u1, theta1, r1, _ = first
    second = _top_ritz_pair(gram, k, u1, theta1, r1, tol, max_columns, rng, False)
    if second is None:
        return None
    return np.linalg.qr(np.column_stack([u1, second[0]]))[0]


#: A Lanczos run stops at this fraction of the certified bound, so that the explicit
#: certificate of :func:`top_singular_values` (which also sees the coupling of the two
#: vectors) passes.
LANCZOS_MARGIN = 0.5
#: The first (locked) Ritz vector's residual is driven below this times ``tol *
#: theta_1``: it is added to the second vector's residual.
LOCK_RESIDUAL = 1e-3


def _top_ritz_pair(gram, k, locked, theta1, r1, tol, max_columns, rng, from_ones):
    """``(u, theta, residual, columns)``: the top Ritz pair of ``G`` (``locked`` is
    ``None``) or of ``G`` deflated by the unit vector ``locked``, whose Ritz value
    ``theta1`` and residual ``r1`` are given; ``None`` when ``max_columns`` vectors
    do not converge (see :func:`gram_top_ritz_vectors`). The run starts from the
    all-ones vector when ``from_ones``, else from ``rng``'s next normal vector (drawn
    either way, so that the second run's start does not depend on the first's). The
    whole run, steps and convergence tests, is compiled code (``gram.run``) when the
    operator has it (:class:`_CsrGram`, :class:`_DenseGram`), else its numpy twin
    :func:`topo_pai.kernels.reference.lanczos_run` with ``gram`` as the operator."""
    first = 0 if locked is None else 1  # rows of `basis` before the Lanczos vectors
    limit = k - first  # the dimensions the Lanczos vectors can span
    size = min(limit, max_columns)
    if size < 1:
        return None
    # rows past the current step are written before they are read: no zeroing (the
    # basis may be hundreds of vectors, of which a run uses tens)
    basis = np.empty((first + size, k))
    if locked is not None:
        basis[0] = locked
    alpha = np.zeros(size)
    beta = np.zeros(size)
    v = rng.standard_normal(k)
    if from_ones:
        v = np.ones(k)
    for _ in range(2):
        v -= (basis[:first] @ v) @ basis[:first]
    basis[first] = v / np.linalg.norm(v)
    args = (basis, first, alpha, beta, size, limit, float(theta1), locked is None, float(r1),
            float(tol), LANCZOS_MARGIN, LOCK_RESIDUAL)
    run = getattr(gram, "run", None)
    if run is None:
        from topo_pai.kernels.reference import lanczos_run

        state, j, theta, y, residual = lanczos_run(lambda x: gram(x[:, None])[:, 0], *args)
    else:
        state, j, theta, y, residual = run(*args)
    if state < 0:
        return None
    return y @ basis[first:first + j], float(theta), float(residual), int(j)


class _CsrGram:
    """``X -> B^T (B X)`` for a CSR ``B`` with ``B^T`` given as its own CSR, by the
    kernels of :mod:`topo_pai.kernels.gram` (products and whole Lanczos runs; a 0/1 block,
    ``binary``, found from ``B`` when not given, passes empty values, which the
    kernels read as ones)."""

    def __init__(self, B, BT, binary: bool | None = None):
        dtype = np.result_type(B.indices, B.indptr, BT.indices, BT.indptr)
        if binary is None:
            binary = bool(np.all(B.data == 1.0))

        def arrays(M):
            data = np.empty(0) if binary else np.asarray(M.data, dtype=np.float64)
            return (np.asarray(M.indptr, dtype=dtype), np.asarray(M.indices, dtype=dtype), data)

        self.B, self.BT = arrays(B), arrays(BT)
        self.shape = B.shape

    def __call__(self, X):
        return self.times_t(self.times(X))

    def times(self, X):
        """``B X``, column by column (:func:`topo_pai.kernels.gram.csr_times`)."""
        return _columns_times(self.B, self.shape[0], X)

    def times_t(self, Y):
        """``B^T Y``, column by column."""
        return _columns_times(self.BT, self.shape[1], Y)

    def run(self, *args):
        """A whole Lanczos run (:func:`topo_pai.kernels.gram.lanczos_run_csr`)."""
        from topo_pai.kernels.gram import lanczos_run_csr

        return lanczos_run_csr(*self.B, *self.BT, *args)


def _columns_times(arrays, rows: int, X):
    """The CSR matrix ``arrays`` (``indptr, indices, data``) times each column of ``X``."""
    from topo_pai.kernels.gram import csr_times

    out = np.empty((rows, X.shape[1]))
    for j in range(X.shape[1]):
        out[:, j] = csr_times(*arrays, np.ascontiguousarray(X[:, j], dtype=np.float64),
                              np.empty(rows))
    return out


class _Products:
    """``X -> B^T (B X)`` and the two products ``B X``, ``B^T Y`` for a block ``B``
    held as a dense array or a scipy sparse array (the dense-operand Lanczos route,
    and the certificates of the dense-Gram and direct routes)."""

    def __init__(self, B):
        self.B = B

    def __call__(self, X):
        return self.B.T @ (self.B @ X)

    def times(self, X):
        return self.B @ X

    def times_t(self, Y):
        return self.B.T @ Y


class _DenseGram(_Products):
    """:class:`_Products` of a dense ``D``, with compiled Lanczos steps."""

    def run(self, *args):
        """A whole Lanczos run (:func:`topo_pai.kernels.gram.lanczos_run_dense`)."""
        from topo_pai.kernels.gram import lanczos_run_dense

        return lanczos_run_dense(self.B, *args)


def _direct_top_two(A, tol: float = SPECTRAL_TOL) -> tuple[float, float]:
    """A direct SVD: dense LAPACK where the block may be densified, else ARPACK's
    ``svds``, whose right singular vectors then pass the same residual certificate
    as the iterative routes (on ``A^T A``)."""
    m, n = A.shape
    if m * n <= DENSE_SVD_FALLBACK_MAX_ENTRIES:
        return _dense_top_two(A)
    from scipy.sparse.linalg import ArpackNoConvergence, svds

    v0 = np.random.default_rng(0).standard_normal(min(m, n))
    try:
        _, _, vt = svds(A, k=2, v0=v0)
    except ArpackNoConvergence:
        raise ValueError(f"the sparse SVD of a {m}x{n} block did not converge, and the "
                         "block is too large for a dense SVD") from None
    V = np.linalg.qr(vt.T)[0]  # orthonormal to rounding, as the certificate assumes
    with _one_blas_thread():
        s = _certified(V, _Products(A), tol)
    if s is None:
        raise ValueError(f"the sparse SVD of a {m}x{n} block could not be certified to "
                         f"spectral_tol={tol:g}: pass a larger spectral_tol")
    return _clean(float(s[0]), float(s[1]))


_BLAS_CONTROLLER = []
_BLAS_LOCK = threading.Lock()
_BLAS_LIMIT = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def _one_blas_thread():
    """Pin BLAS to one thread: these products are small, and on shared cores a
    second BLAS thread made them many times slower. Re-entrant and shared between
    threads (:func:`many_top_singular_values`): the first entry sets the limit, the
    last exit restores it, so no block ever runs with the limit lifted. (The
    controller is made once, after numpy's and scipy's BLAS are loaded: finding them
    costs ms.)"""
    with _BLAS_LOCK:
        if not _BLAS_CONTROLLER:
            import scipy.linalg  # noqa: F401  (loads scipy's own BLAS)
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER.append(ThreadpoolController())
        if _BLAS_LIMIT["depth"] == 0:
            _BLAS_LIMIT["limiter"] = _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")
        _BLAS_LIMIT["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_LIMIT["depth"] -= 1
            if _BLAS_LIMIT["depth"] == 0:
                _BLAS_LIMIT["limiter"].restore_original_limits()
                _BLAS_LIMIT["limiter"] = None


@contextlib.contextmanager
def numba_threads_beside(pending):
    """The calling thread's numba kernels run on the numba threads that ``pending``'s
    background threads leave (at least one) until the block ends: the background work
    and the caller's own parallel kernels then hold no more threads than there are
    numba threads, instead of two on one core (``numba.set_num_threads`` is per
    thread, so the background threads are not affected). Measured on ResNet-50's
    ``metrics()`` with two numba threads: 6-8 % faster than letting the caller's
    kernels take both."""
    import numba

    saved = numba.get_num_threads()
    busy = 0 if pending is None else pending.background
    numba.set_num_threads(max(1, saved - busy))
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def many_top_singular_values(matrices, tol: float | None = None) -> list:
    """:func:`top_singular_values` of each matrix, in order, on up to
    ``numba.get_num_threads()`` threads.

    The Lanczos steps run in numba kernels that release the GIL, so the blocks of a
    network's layers are taken two (or more) at a time, largest first. Each block's
    values are the same as from a lone call (every block is computed on its own,
    BLAS on one thread), so the result does not depend on the thread count; set
    ``numba.set_num_threads(1)`` (or ``NUMBA_NUM_THREADS=1``) for one thread.

    >>> import scipy.sparse as sp
    >>> many_top_singular_values([sp.csr_array(np.ones((3, 4))), sp.csr_array((2, 2))])
    [(3.4641016151377544, 0.0), (0.0, 0.0)]
    """
    return start_top_singular_values(matrices, tol).result()


def start_top_singular_values(matrices, tol: float | None = None) -> Pending:
    """:func:`many_top_singular_values`, started on ``numba.get_num_threads() - 1``
    background threads (:func:`start_largest_first`): the caller goes on with other
    work (which then shares the cores with the blocks' Lanczos kernels) and collects
    the list with ``.result()``, taking the blocks not yet started itself. With one
    numba thread nothing runs in the background: ``.result()`` computes the list then.

    >>> import scipy.sparse as sp
    >>> pending = start_top_singular_values([sp.csr_array(np.ones((3, 4)))])
    >>> pending.result()
    [(3.4641016151377544, 0.0)]
    """
    matrices = list(matrices)

    def size(M):
        return M.nnz if sp.issparse(M) else np.size(M)

    blas = contextlib.ExitStack()
    blas.enter_context(_one_blas_thread())  # held until the results are collected
    try:
        pending = start_largest_first(lambda M: top_singular_values(M, tol), matrices,
                                      [size(M) for M in matrices])
    except BaseException:
        blas.close()
        raise
    pending.on_done(blas.close)
    return pending


class Pending:
    """Results of work started by :func:`start_largest_first`, in the order of its
    items. ``result()`` waits for them; ``close()`` (for a caller that stops early,
    on an error) cancels what has not started and waits for the rest. Either runs
    the ``on_done`` callbacks once."""

    def __init__(self, collect, cancel=None, background: int = 0):
        self._collect = collect  # () -> list: waits for (or computes) every item
        self._cancel = cancel  # () -> None: drops the items not started, waits for the rest
        #: threads working in the background until the results are collected
        self.background = background
        self._callbacks = []
        self._results = None
        self._open = True

    def on_done(self, callback) -> None:
        """Call ``callback()`` once the work is over (collected, failed or closed)."""
        self._callbacks.append(callback)

    def result(self) -> list:
        """The list of results; re-raises the first failure of an item."""
        if self._open:
            try:
                self._results = self._collect()
            finally:
                self._finish()
        if self._results is None:
            raise RuntimeError("these results were closed before they were collected")
        return self._results

    def close(self) -> None:
        """Stop waiting for the results (a no-op once they are collected)."""
        if self._open:
            try:
                if self._cancel is not None:
                    self._cancel()
            finally:
                self._finish()

    def _finish(self) -> None:
        self._open = False
        for callback in self._callbacks:
            callback()


def start_largest_first(fn, items, sizes) -> Pending:
    """:func:`map_largest_first`, started in the background: ``numba.get_num_threads()
    - 1`` threads take the items largest first, and the caller's thread joins them
    at ``.result()`` (taking items not yet started, then waiting for the rest), so the
    work never holds more threads than the numba threads, and the caller's thread
    does not sit idle while the work it waits for is queued. With one thread or one
    item nothing starts, and ``.result()`` computes the list on the caller's thread.
    ``.close()`` leaves the items not yet started and waits for the others.

    >>> start_largest_first(lambda x: -x, [1, 2], sizes=[1, 2]).result()
    [-1, -2]
    """
    import numba

    items = list(items)
    workers = min(numba.get_num_threads(), len(items))
    if workers <= 1:
        return Pending(lambda: [fn(x) for x in items])
    queue = iter(sorted(range(len(items)), key=lambda i: sizes[i], reverse=True))
    lock = threading.Lock()
    results = [None] * len(items)
    failures = {}  # item index -> its exception
    stopped = threading.Event()  # a failure, an interrupt or close(): start nothing more

    def take():
        with lock:
            return None if stopped.is_set() else next(queue, None)

    def work():
        while (i := take()) is not None:
            try:
                results[i] = fn(items[i])
            except BaseException as error:  # noqa: BLE001 (re-raised by result(); stops the others)
                failures[i] = error
                stopped.set()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    for t in threads:
        t.start()

    def join():
        for t in threads:
            t.join()

    def collect():
        try:
            work()
            join()
        except BaseException:  # an interrupt while waiting
            stopped.set()
            raise
        if failures:
            raise failures[min(failures)]
        return results

    def cancel():
        stopped.set()
        join()

    return Pending(collect, cancel, background=len(threads))


def map_largest_first(fn, items, sizes) -> list:
    """``[fn(x) for x in items]``, in order, computed on up to
    ``numba.get_num_threads()`` threads with the largest items (by ``sizes``) started
    first, so that the last ones to finish are short. For work that releases the GIL
    (numba ``nogil`` kernels, BLAS, LAPACK): each item is computed on its own, so the
    results do not depend on the thread count; with one thread (or one item) it is
    a plain loop.

    >>> map_largest_first(lambda x: x * x, [1, 5, 2], sizes=[1, 5, 2])
    [1, 25, 4]
    """
    return start_largest_first(fn, items, sizes).result()


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
        :func:`top_singular_values`; default :data:`SPECTRAL_TOL`).
    singular_values : tuple, optional
        ``(top_singular_values(matrix), top_singular_values(weighted))`` (the second
        ``None`` without weights) when the caller has them already
        (:func:`many_top_singular_values`).

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
