"""The two largest singular values of a layer's biadjacency block, certified.

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

from topo_pai.metrics.scheduling import Pending, start_largest_first

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
#: Blocks whose largest entry lies outside ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT]`` are
#: scaled by a power of two into ``[0.5, 1)`` (exact) before the routes above: the Gram
#: products square the entries and the norms of the residuals square them again, so a
#: block near 1e77 overflowed (Lanczos then looped on NaN) and one near 1e-78 underflowed
#: (a certificate of zeros let a wrong value through).
SAFE_EXPONENT = 128


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
    peak = float(np.abs(A.data).max())
    if not math.isfinite(peak):
        raise ValueError("top_singular_values: the matrix holds a non-finite entry (inf or "
                         "NaN); its singular values are not defined")
    if peak == 0.0:
        return 0.0, 0.0
    if 2.0 ** -SAFE_EXPONENT <= peak <= 2.0 ** SAFE_EXPONENT:
        return _top_two(A, tol)
    shift = math.frexp(peak)[1]  # peak * 2**-shift lies in [0.5, 1)
    scaled = sp.csr_array((np.ldexp(A.data, -shift), A.indices, A.indptr), shape=A.shape)
    scaled.has_canonical_format = True
    mu0, mu_hat = _top_two(scaled, tol)
    return math.ldexp(mu0, shift), math.ldexp(mu_hat, shift)


def _top_two(A, tol: float) -> tuple[float, float]:
    """:func:`top_singular_values` of a canonical CSR block with entries of moderate size."""
    m, n = A.shape
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


def _dense_top_two(A) -> tuple[float, float]:
    s = np.linalg.svd(A.toarray(), compute_uv=False)
    return _clean(float(s[0]), float(s[1]) if s.size > 1 else 0.0)


def _clean(mu0: float, mu_hat: float) -> tuple[float, float]:
    # a second singular value at rounding level of mu0 is a zero one (rank one)
    if mu_hat <= mu0 * 1e-13:
        mu_hat = 0.0
    return mu0, mu_hat
