"""The Lanczos kernels of ``topo_pai.kernels.gram`` against their numpy twin
(``topo_pai.kernels.reference.lanczos_steps``) and against scipy / dense numpy.

* ``csr_times`` on canonical and non-canonical CSR (duplicates, unsorted columns,
  empty rows), int32 and int64 indices, small-integer data (exact in any order)
  and float weights;
* ``lanczos_steps_csr`` / ``lanczos_steps_dense`` step for step against the
  reference: the same basis, the same tridiagonal coefficients, with and without a
  locked vector, and the early stop on a vanished vector;
* ``top_tridiagonal_pair`` against scipy's ``eigh_tridiagonal``, and whole runs
  (``lanczos_run_csr`` / ``lanczos_run_dense``) against ``reference.lanczos_run``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from topo_pai.kernels import gram as K
from topo_pai.kernels import reference as R

INDEX_DTYPES = (np.int32, np.int64)


def _random_csr(m, n, density, seed, integer=True):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    values = rng.integers(1, 8, (m, n)) if integer else rng.random((m, n)) * 3.0
    return sp.csr_array(np.where(mask, values, 0).astype(np.float64))


def _non_canonical(seed, index_dtype):
    """A 7 x 6 CSR with duplicate and unsorted entries and empty rows (0, 3, 6),
    and its dense sum."""
    rng = np.random.default_rng(seed)
    rows = [[], [4, 1, 4, 0], [2, 2, 2], [], [5, 0, 3, 1, 5], [1], []]
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(index_dtype)
    indices = np.array([c for r in rows for c in r], dtype=index_dtype)
    data = rng.random(indices.size) * 2 - 1
    dense = np.zeros((7, 6))
    np.add.at(dense, (np.repeat(np.arange(7), np.diff(indptr)), indices), data)
    return indptr, indices, data, dense


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape, density", [((40, 30), 0.3), ((30, 40), 0.05), ((5, 50), 0.6)])
def test_csr_times_small_integers_exact(index_dtype, shape, density):
    B = _random_csr(*shape, density, seed=shape[0])
    x = np.random.default_rng(1).integers(-5, 6, shape[1]).astype(np.float64)
    out = np.full(shape[0], np.nan)
    K.csr_times(B.indptr.astype(index_dtype), B.indices.astype(index_dtype), B.data, x, out)
    # small integers: every partial sum is exact, so any summation order agrees
    assert np.array_equal(out, B.toarray() @ x)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_csr_times_non_canonical_and_float(index_dtype):
    indptr, indices, data, dense = _non_canonical(3, index_dtype)
    x = np.random.default_rng(4).standard_normal(6)
    out = np.full(7, np.nan)
    K.csr_times(indptr, indices, data, x, out)
    assert out == pytest.approx(dense @ x, rel=1e-13, abs=1e-14)
    assert out[0] == out[3] == out[6] == 0.0  # empty rows


def _start(k, first, seed):
    """A basis array with ``first`` locked unit vectors and an orthogonal start vector."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((k, first + 1)))[0].T
    basis = np.zeros((first + 12, k))
    basis[:first + 1] = Q
    return basis


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_lanczos_steps_csr_against_reference(first, index_dtype):
    B = _random_csr(50, 20, 0.3, seed=7, integer=False)
    BT = B.T.tocsr()
    arrays = [a.astype(index_dtype) if a.dtype.kind == "i" else a
              for a in (B.indptr, B.indices, B.data, BT.indptr, BT.indices, BT.data)]
    want_basis = _start(20, first, 8)
    got_basis = want_basis.copy()
    want_ab = np.zeros((2, 12))
    got_ab = np.zeros((2, 12))
    dense = B.toarray()
    # two stretches of steps (as between two convergence tests), then compare
    want = R.lanczos_steps(lambda x: dense.T @ (dense @ x), want_basis, first, *want_ab,
                           0, 5, 0.0, first == 0)
    want = R.lanczos_steps(lambda x: dense.T @ (dense @ x), want_basis, first, *want_ab,
                           want[0], 11, want[1], first == 0)
    got = K.lanczos_steps_csr(*arrays, got_basis, first, *got_ab, 0, 5, 0.0, first == 0)
    got = K.lanczos_steps_csr(*arrays, got_basis, first, *got_ab, got[0], 11, got[1],
                              first == 0)
    assert got[0] == want[0] == 11
    assert got[1] == pytest.approx(want[1], rel=1e-12)
    assert got_ab == pytest.approx(want_ab, rel=1e-9, abs=1e-9)
    assert got_basis == pytest.approx(want_basis, abs=1e-9)
    # a Lanczos basis: orthonormal, and orthogonal to the locked vector
    Q = got_basis[:first + 12]
    assert Q @ Q.T == pytest.approx(np.eye(first + 12), abs=1e-12)
    # the coefficients are the projection of G on the Lanczos vectors: tridiagonal
    L = Q[first:first + 11]
    G = dense.T @ dense
    if first:
        P = np.eye(20) - np.outer(Q[0], Q[0])
        G = P @ G @ P
    T = np.diag(got_ab[0, :11]) + np.diag(got_ab[1, :10], 1) + np.diag(got_ab[1, :10], -1)
    assert L @ G @ L.T == pytest.approx(T, abs=1e-10 * np.abs(G).max())


@pytest.mark.parametrize("order", ["C", "F"])
def test_lanczos_steps_dense_against_reference(order):
    D = np.asarray(_random_csr(30, 25, 0.7, seed=9, integer=False).toarray(), order=order)
    want_basis = _start(25, 1, 10)
    got_basis = want_basis.copy()
    want_ab = np.zeros((2, 12))
    got_ab = np.zeros((2, 12))
    want = R.lanczos_steps(lambda x: D.T @ (D @ x), want_basis, 1, *want_ab, 0, 9, 2.0, False)
    got = K.lanczos_steps_dense(D, got_basis, 1, *got_ab, 0, 9, 2.0, False)
    assert got == want == (9, 2.0)  # no growth of the scale when grow is False
    assert got_ab == pytest.approx(want_ab, rel=1e-9, abs=1e-9)
    assert got_basis == pytest.approx(want_basis, abs=1e-9)


def test_lanczos_steps_stop_on_a_vanished_vector():
    """G of rank 2: the Krylov space of a start vector is spanned by it and G's range
    (dimension 3), so the third new vector vanishes, and both the kernel and the
    reference stop there (3 steps, not 8)."""
    rng = np.random.default_rng(11)
    D = rng.standard_normal((2, 15))  # G = D^T D has rank 2
    B = sp.csr_array(D)
    BT = B.T.tocsr()
    basis = _start(15, 0, 12)
    ab = np.zeros((2, 12))
    ref_basis = basis.copy()
    ref_ab = np.zeros((2, 12))
    got = K.lanczos_steps_csr(B.indptr, B.indices, B.data, BT.indptr, BT.indices, BT.data,
                              basis, 0, *ab, 0, 8, 0.0, True)
    want = R.lanczos_steps(lambda x: D.T @ (D @ x), ref_basis, 0, *ref_ab, 0, 8, 0.0, True)
    assert got[0] == want[0] == 3
    assert ab[1, 2] <= 1e-12 * got[1]
    # an invariant subspace: the Ritz values are G's eigenvalues 0, lambda_2, lambda_1
    T = np.diag(ab[0, :3]) + np.diag(ab[1, :2], 1) + np.diag(ab[1, :2], -1)
    theta = np.linalg.eigvalsh(T)
    assert theta[1:] == pytest.approx(np.linalg.eigvalsh(D @ D.T), rel=1e-10)
    assert abs(theta[0]) <= 1e-12 * theta[2]


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_csr_times_binary_block_without_values(index_dtype):
    """Empty ``data`` stands for all ones: the same result, bit for bit, as the ones
    passed explicitly (and as the dense product of the 0/1 pattern)."""
    B = sp.csr_array((np.random.default_rng(13).random((60, 45)) < 0.2).astype(np.float64))
    x = np.random.default_rng(14).standard_normal(45)
    indptr, indices = B.indptr.astype(index_dtype), B.indices.astype(index_dtype)
    got = K.csr_times(indptr, indices, np.empty(0), x, np.full(60, np.nan))
    want = K.csr_times(indptr, indices, B.data, x, np.full(60, np.nan))
    assert np.array_equal(got, want)
    assert got == pytest.approx(B.toarray() @ x, rel=1e-13, abs=1e-14)


def _row_order_sums(indptr, indices, data, x):
    """``B x`` with each row's terms added one by one in index order (Python floats)."""
    out = np.empty(len(indptr) - 1)
    for r in range(out.size):
        total = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            total += (1.0 if data.size == 0 else float(data[q])) * float(x[indices[q]])
        out[r] = total
    return out


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_rows", [1, 3, 4, 5, 7, 8, 30])
def test_csr_times_four_rows_at_a_time_keep_each_rows_order(index_dtype, n_rows):
    """Rows go four side by side, with rows of unequal length and empty rows: every
    row is still its own terms summed in index order, bit for bit (float values, so
    any other order would differ), for any number of rows (the last n_rows % 4 alone)."""
    rng = np.random.default_rng(n_rows)
    B = sp.random_array((n_rows, 23), density=0.35, format="csr", rng=rng)
    B = sp.csr_array((B.data * 1e3 * rng.standard_normal(B.nnz), B.indices, B.indptr),
                     shape=B.shape)
    x = rng.standard_normal(23) * 10.0 ** rng.integers(-8, 8, 23)
    indptr, indices = B.indptr.astype(index_dtype), B.indices.astype(index_dtype)
    for data in (B.data, np.empty(0)):
        got = K.csr_times(indptr, indices, data, x, np.full(n_rows, np.nan))
        assert np.array_equal(got, _row_order_sums(indptr, indices, data, x))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape, density", [((40, 30), 0.3), ((30, 40), 0.05), ((1, 9), 0.5),
                                            ((9, 1), 0.5), ((6, 8), 0.0)])
def test_csr_transpose_equals_scipy_and_its_twin(index_dtype, shape, density):
    """The compiled transpose gives scipy's ``B.T.tocsr()`` array for array (rows
    sorted, canonical), with values and for a 0/1 block without them; the numpy twin
    agrees. Empty rows and columns included."""
    B = _random_csr(*shape, density, seed=sum(shape), integer=False)
    want = B.T.tocsr()
    want.sort_indices()
    indptr, indices = B.indptr.astype(index_dtype), B.indices.astype(index_dtype)
    for data in (B.data, np.empty(0)):
        got = K.csr_transpose(indptr, indices, data, shape[1])
        twin = R.csr_transpose(indptr, indices, data, shape[1])
        assert np.array_equal(got[0], want.indptr) and np.array_equal(got[1], want.indices)
        assert np.array_equal(got[2], want.data if data.size else data)
        assert got[0].dtype == got[1].dtype == np.dtype(index_dtype)
        for a, b in zip(got, twin):
            assert np.array_equal(a, b) and a.dtype == b.dtype


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape, density, integer", [((40, 30), 0.3, True), ((30, 40), 0.05, False),
                                                     ((6, 8), 0.0, True), ((1, 9), 0.6, False)])
def test_degree_kernels_equal_their_twins_and_scipy(index_dtype, shape, density, integer):
    """``csr_degrees`` gives scipy's row sums (``B @ 1``) and numpy's column sums
    (``bincount``) bit for bit, and its twin; ``csr_count_within`` counts the stored
    non-zeros between flagged rows and columns, as its twin and a dense count do
    (an explicit stored zero is not counted)."""
    from topo_pai.kernels import degrees as D

    B = _random_csr(*shape, density, seed=shape[0] + 7, integer=integer)
    if B.nnz:
        B.data[0] = 0.0  # an explicit zero: stored, not a kernel
    indptr, indices = B.indptr.astype(index_dtype), B.indices.astype(index_dtype)
    rows, cols = D.csr_degrees(indptr, indices, B.data, shape[1])
    assert np.array_equal(rows, B @ np.ones(shape[1]))
    assert np.array_equal(cols, np.bincount(B.indices, weights=B.data, minlength=shape[1]))
    for a, b in zip((rows, cols), R.csr_degrees(indptr, indices, B.data, shape[1])):
        assert np.array_equal(a, b)
    rng = np.random.default_rng(shape[1])
    row_flags, col_flags = rng.random(shape[0]) < 0.6, rng.random(shape[1]) < 0.6
    dense = B.toarray() != 0
    want = int(dense[row_flags][:, col_flags].sum())
    assert D.csr_count_within(indptr, indices, B.data, row_flags, col_flags) == want
    assert R.csr_count_within(indptr, indices, B.data, row_flags, col_flags) == want


# ---------------------------------------------------------------------------
# the top pair of a tridiagonal matrix, and whole Lanczos runs
# ---------------------------------------------------------------------------

def _tridiagonal_cases():
    rng = np.random.default_rng(31)
    cases = [(np.array([2.5]), np.zeros(0)), (np.array([2.0, 2.0]), np.array([1.0])),
             (np.ones(7), np.full(6, 1e-9)),  # a tight cluster at the top
             (np.array([3.0, 3.0, 1.0, 3.0]), np.array([0.0, 2.0, 0.0])),  # splits
             (np.zeros(5), np.zeros(4)), (np.arange(40.0), np.full(39, 1e-300))]
    for n in (2, 3, 10, 60, 250):
        for scale in (1e-200, 1e-3, 1.0, 1e200):
            cases.append((rng.standard_normal(n) * scale, rng.standard_normal(n - 1) * scale))
    return cases


@pytest.mark.parametrize("case", range(len(_tridiagonal_cases())))
def test_top_tridiagonal_pair_matches_scipy(case):
    """The largest eigenvalue within a few ulps of ``||T||`` of scipy's
    ``eigh_tridiagonal``, and a unit vector whose residual is at rounding level: on
    one entry, clusters, splits (zero off-diagonal entries), a zero matrix, and random
    matrices over 400 orders of magnitude."""
    from scipy.linalg import eigh_tridiagonal

    d, e = _tridiagonal_cases()[case]
    theta, y = K.top_tridiagonal_pair(d, e)
    want = d[0] if d.size == 1 else eigh_tridiagonal(d, e, eigvals_only=True)[-1]
    norm = max(np.abs(d).max() + 2 * (np.abs(e).max() if e.size else 0.0), 1e-300)
    assert abs(theta - want) <= 8 * np.finfo(float).eps * norm
    T = (np.diag(d) + np.diag(e, 1) + np.diag(e, -1)) / norm  # no overflow in the check
    assert np.linalg.norm(y) == pytest.approx(1.0, rel=1e-14)
    assert np.linalg.norm(T @ y - theta / norm * y) <= 1e-13


def _run_inputs(k, first, seed):
    basis = _start(k, first, seed)
    return basis, np.zeros(11), np.zeros(11)


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("route", ["csr", "dense"])
def test_lanczos_run_against_the_numpy_twin(first, route):
    """``lanczos_run_csr`` / ``lanczos_run_dense`` against
    ``reference.lanczos_run`` (the numpy steps between the same compiled tests): the
    same state and number of steps, the same Ritz pair to rounding, the pair an
    eigenpair of the tridiagonal projection, and its residual ``beta |y_last|``."""
    B = _random_csr(60, 40, 0.3, seed=13 + first, integer=False)
    D = B.toarray()
    BT = B.T.tocsr()
    size, limit = 11, 40 - first
    want_basis, want_a, want_b = _run_inputs(40, first, 14)
    got_basis, got_a, got_b = want_basis.copy(), want_a.copy(), want_b.copy()
    theta1, r1 = (0.0, 0.0) if first == 0 else (50.0, 1e-9)
    tail = (size, limit, theta1, first == 0, r1, 1e-4, 0.5, 1e-3)
    want = R.lanczos_run(lambda x: D.T @ (D @ x), want_basis, first, want_a, want_b, *tail)
    if route == "csr":
        got = K.lanczos_run_csr(B.indptr, B.indices, B.data, BT.indptr, BT.indices, BT.data,
                                got_basis, first, got_a, got_b, *tail)
    else:
        got = K.lanczos_run_dense(D, got_basis, first, got_a, got_b, *tail)
    assert got[:2] == want[:2] and got[0] in (1, -1)
    j = got[1]
    assert got[2] == pytest.approx(want[2], rel=1e-12)
    assert np.abs(got[3]) == pytest.approx(np.abs(want[3]), abs=1e-9)
    T = np.diag(got_a[:j]) + np.diag(got_b[:j - 1], 1) + np.diag(got_b[:j - 1], -1)
    assert np.linalg.norm(T @ got[3] - got[2] * got[3]) <= 1e-12 * abs(got[2])
    assert got[4] == pytest.approx(got_b[j - 1] * abs(got[3][-1]), rel=1e-12)


def test_lanczos_run_gives_up_after_size_vectors():
    """A tolerance no run can meet within ``size`` vectors: state -1 after exactly
    ``size`` steps (the caller then takes a direct SVD)."""
    B = _random_csr(80, 50, 0.3, seed=17, integer=False)
    BT = B.T.tocsr()
    basis, a, b = _run_inputs(50, 0, 18)
    got = K.lanczos_run_csr(B.indptr, B.indices, B.data, BT.indptr, BT.indices, BT.data,
                            basis, 0, a, b, 11, 50, 0.0, True, 0.0, 1e-300, 0.5, 1e-3)
    assert got[:2] == (-1, 11)
