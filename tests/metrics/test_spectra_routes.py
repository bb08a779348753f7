"""The routes of topo_pai.metrics.spectra.top_singular_values (dense Gram + LAPACK,
block Lanczos on a dense or a sparse operand, the direct-SVD fallbacks) against
dense LAPACK SVDs of the block and closed forms, on the cases where they differ from
a plain SVD: clustered and repeated top spectra, rank-deficient blocks, a tiny
mu_hat, 1xN / Nx1 and empty blocks.

These tests assert agreement far tighter than the default accuracy contract
(|error| <= 1e-8 * mu0), so they ask for it: spectral tolerance TIGHT. The default
contract itself is tested in test_spectral_tolerance.py."""

import numpy as np
import pytest
import scipy.linalg as sl
import scipy.sparse as sp

from spectral_routes import force_route
from topo_pai.metrics import scheduling, spectra

ROUTES = ["gram-eigh", "lanczos-dense", "lanczos-sparse"]
TIGHT = 1e-12


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    """Force one route on blocks of any size (the defaults pick by size)."""
    return force_route(monkeypatch, request.param)


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts the calls of the direct-SVD fallback."""
    calls = []
    real = spectra._direct_top_two

    def spy(A, *args):
        calls.append(A.shape)
        return real(A, *args)

    monkeypatch.setattr(spectra, "_direct_top_two", spy)
    return calls


def _svd_oracle(B):
    s = sl.svdvals(np.asarray(B, dtype=np.float64))
    return float(s[0]), float(s[1]) if s.size > 1 else 0.0


def _with_spectrum(m, n, sigma, seed):
    """A dense m x n matrix with the given leading singular values (random singular
    vectors; the remaining ones are 0)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((m, len(sigma))))[0]
    V = np.linalg.qr(rng.standard_normal((n, len(sigma))))[0]
    return (U * np.asarray(sigma, dtype=np.float64)) @ V.T


@pytest.mark.parametrize("shape", [(60, 45), (45, 60), (130, 7)])
def test_random_blocks_against_lapack(route, shape):
    rng = np.random.default_rng(sum(shape))
    B = (rng.random(shape) < 0.3) * rng.integers(1, 9, shape)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), TIGHT)
    e0, e1 = _svd_oracle(B)
    assert mu0 == pytest.approx(e0, rel=1e-12)
    assert mu_hat == pytest.approx(e1, rel=1e-10)


def test_clustered_top_spectrum(route):
    """sigma_2 and sigma_3 a hair apart (the case that made ARPACK slow): the second
    value is still sigma_2, to rounding."""
    sigma = [10.0, 4.0, 4.0 - 1e-7, 3.99, 3.9] + list(np.linspace(3.8, 0.1, 40))
    B = _with_spectrum(70, 55, sigma, seed=1)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), TIGHT)
    assert mu0 == pytest.approx(10.0, rel=1e-12)
    assert mu_hat == pytest.approx(4.0, rel=1e-10)


@pytest.mark.parametrize("inner", [(20, 15), (1, 30), (30, 1)])
def test_repeated_top_value_two_equal_components(route, inner):
    """Two equal components: sigma_1 has multiplicity two, so mu_hat = mu0 (block
    Lanczos with block size 2 must not miss the second copy)."""
    rng = np.random.default_rng(7)
    R = rng.integers(1, 5, inner).astype(float)
    B = sl.block_diag(R, R, 0.5 * R)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), TIGHT)
    top = np.linalg.norm(R, 2)
    assert mu0 == pytest.approx(top, rel=1e-12)
    assert mu_hat == pytest.approx(top, rel=1e-10)


def test_depthwise_diagonal_block(route):
    """A depthwise layer's channel block is diagonal: all singular values are the
    multiplicities, sorted."""
    d = np.full(40, 9.0)
    d[5] = 7.0
    mu0, mu_hat = spectra.top_singular_values(sp.diags_array(d).tocsr(), TIGHT)
    assert (mu0, mu_hat) == pytest.approx((9.0, 9.0), rel=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_rank_deficient(route, direct_calls, rank):
    """Rank 1 has mu_hat = 0 exactly (through the direct fallback, since the Gram
    route leaves sigma_2 at rounding level); ranks 2 and 3 the exact sigma_2."""
    rng = np.random.default_rng(rank)
    B = rng.integers(0, 3, (50, rank)) @ rng.integers(1, 3, (rank, 40))
    B[:, 0] = 0  # an empty column as well
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B.astype(float)), TIGHT)
    e0, e1 = _svd_oracle(B)
    assert mu0 == pytest.approx(e0, rel=1e-12)
    if rank == 1:
        assert mu_hat == 0.0
        assert direct_calls  # decided by the direct SVD, not by the squared route
    else:
        assert mu_hat == pytest.approx(e1, rel=1e-9)


def test_tiny_mu_hat_takes_the_direct_svd(route, direct_calls):
    """sigma_2 / sigma_1 = 1e-9: below the squaring floor, the direct SVD recovers it
    to relative precision (squared, it would be lost under eps * sigma_1^2)."""
    B = _with_spectrum(40, 30, [1.0, 1e-9], seed=3)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), TIGHT)
    assert direct_calls == [(40, 30)]
    assert mu0 == pytest.approx(1.0, rel=1e-12)
    assert mu_hat == pytest.approx(1e-9, rel=1e-5)


def test_mu_hat_above_the_floor_stays_on_the_fast_route(route, direct_calls):
    B = _with_spectrum(40, 30, [1.0, 1e-3, 1e-4], seed=4)
    # 1e-10, not TIGHT: a residual certificate of 1e-12 * mu0 on a mu_hat of 1e-3 * mu0
    # is below rounding, and an uncertifiable block rightly takes the direct SVD
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), 1e-10)
    assert not direct_calls
    assert (mu0, mu_hat) == pytest.approx((1.0, 1e-3), rel=1e-9)


def test_lanczos_without_convergence_falls_back(monkeypatch, direct_calls):
    monkeypatch.setattr(spectra, "GRAM_MAX_SIDE", 0)
    monkeypatch.setattr(spectra, "LANCZOS_MAX_COLUMNS", 4)
    rng = np.random.default_rng(9)
    B = (rng.random((90, 80)) < 0.2) * 1.0
    assert spectra.top_singular_values(sp.csr_array(B), TIGHT) == pytest.approx(_svd_oracle(B),
                                                                         rel=1e-12)
    assert direct_calls == [(90, 80)]


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (2, 3000), (3000, 2)])
def test_thin_blocks(shape):
    rng = np.random.default_rng(0)
    B = (rng.random(shape) < 0.1) * rng.integers(1, 4, shape)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), TIGHT)
    e0, e1 = _svd_oracle(B)
    assert mu0 == pytest.approx(e0, rel=1e-12)
    assert mu_hat == (0.0 if 1 in shape else pytest.approx(e1, rel=1e-12))


@pytest.mark.parametrize("shape", [(1000, 1000), (0, 700), (700, 0), (3, 5000)])
def test_empty_blocks(shape):
    assert spectra.top_singular_values(sp.csr_array(shape)) == (0.0, 0.0)


def test_gram_top_ritz_vectors_closed_form():
    """A diagonal operator with a clustered and a repeated eigenvalue: the two Ritz
    vectors span the top eigenvalues' space, and an exhausted Krylov space (k = 6)
    still returns them."""
    d = np.array([5.0, 3.0, 3.0 - 1e-9, 1.0, 0.5, 0.25])
    V = spectra.gram_top_ritz_vectors(lambda X: d[:, None] * X, 6, TIGHT)
    assert np.allclose(V.T @ V, np.eye(2), atol=1e-13)
    assert np.diag(V.T @ (d[:, None] * V)) == pytest.approx([5.0, 3.0], rel=1e-9)
    d = np.concatenate([[4.0, 4.0], np.linspace(3, 0, 300)])
    V = spectra.gram_top_ritz_vectors(lambda X: d[:, None] * X, d.size, TIGHT)
    assert np.diag(V.T @ (d[:, None] * V)) == pytest.approx([4.0, 4.0], rel=1e-10)
    assert spectra.gram_top_ritz_vectors(lambda X: d[:, None] * X, d.size, max_columns=4) is None


def test_deterministic_and_input_untouched(route):
    rng = np.random.default_rng(5)
    A = sp.csr_array((rng.random((120, 90)) < 0.3).astype(float))
    before = A.copy()
    assert spectra.top_singular_values(A) == spectra.top_singular_values(A)
    assert (A != before).nnz == 0 and A.has_canonical_format == before.has_canonical_format


@pytest.mark.parametrize("shape, density, route", [
    ((600, 30), 0.1, "gram-eigh"),  # side 30 <= GRAM_MAX_SIDE
    ((300, 30), 0.6, "gram-eigh"),  # the same, dense enough for a dense operand
    ((600, 100), 0.6, "_DenseGram"),  # side 100 > GRAM_MAX_SIDE, dense enough
    ((600, 200), 0.6, "_DenseGram"),  # side 200 > GRAM_MAX_SIDE, dense enough
    ((600, 200), 0.1, "_CsrGram"),  # side 200 > GRAM_MAX_SIDE, sparse
    ((300, 900), 0.1, "_CsrGram"),  # the same, wide: B^T is the block itself
])
def test_route_choice(monkeypatch, shape, density, route):
    """The size and density rules pick the route, and every route meets the default
    contract against LAPACK."""
    seen = []
    real = spectra.gram_top_ritz_vectors

    def spy(gram, k, *args, **kwargs):
        seen.append(type(gram).__name__)
        return real(gram, k, *args, **kwargs)

    monkeypatch.setattr(spectra, "gram_top_ritz_vectors", spy)
    rng = np.random.default_rng(shape[0] + int(10 * density))
    B = (rng.random(shape) < density) * rng.integers(1, 4, shape).astype(float)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B))
    assert seen == ([] if route == "gram-eigh" else [route])
    e0, e1 = _svd_oracle(B)
    assert abs(mu0 - e0) <= 1e-8 * e0 and abs(mu_hat - e1) <= 1e-8 * e0
    assert mu0 <= e0 * (1 + 1e-13) and mu_hat <= e1 + 1e-13 * e0


def test_binary_csr_route_reads_no_values():
    """A 0/1 block on the CSR route passes no values (the kernels read ones) and gets
    the same spectrum as the same block with its ones stored."""
    rng = np.random.default_rng(22)
    B = sp.csr_array((rng.random((400, 300)) < 0.1).astype(float))
    gram = spectra._CsrGram(B, B.T.tocsr())
    assert gram.B[2].size == 0 and gram.BT[2].size == 0
    weighted = spectra._CsrGram(B * 2.0, (B * 2.0).T.tocsr())
    assert weighted.B[2].size == B.nnz
    X = rng.standard_normal((300, 2))
    assert np.array_equal(4.0 * gram(X), weighted(X))  # powers of two: exact
    e0, e1 = _svd_oracle(B.toarray())
    mu0, mu_hat = spectra.top_singular_values(B)
    assert abs(mu0 - e0) <= 1e-8 * e0 and abs(mu_hat - e1) <= 1e-8 * e0


def test_compiled_lanczos_matches_its_numpy_twin():
    """gram_top_ritz_vectors with the compiled steps (_CsrGram, _DenseGram) finds the
    same two vectors as with the numpy reference steps (a plain function)."""
    rng = np.random.default_rng(21)
    B = sp.csr_array((rng.random((300, 120)) < 0.2) * rng.random((300, 120)))
    BT = B.T.tocsr()
    D = B.toarray()
    want = spectra.gram_top_ritz_vectors(lambda X: D.T @ (D @ X), 120, TIGHT)
    for gram in (spectra._CsrGram(B, BT), spectra._DenseGram(D)):
        got = spectra.gram_top_ritz_vectors(gram, 120, TIGHT)
        assert np.abs(got.T @ want) == pytest.approx(np.eye(2), abs=1e-9)
        assert gram(want) == pytest.approx(D.T @ (D @ want), rel=1e-12, abs=1e-12)


def test_many_top_singular_values_same_on_any_thread_count():
    """The blocks of several routes (and an empty one), taken side by side on two
    threads and on one: the same values, bit for bit, as one call per block."""
    import numba

    rng = np.random.default_rng(23)
    blocks = [sp.csr_array((rng.random(shape) < d) * rng.integers(1, 4, shape).astype(float))
              for shape, d in (((600, 300), 0.1), ((200, 400), 0.6), ((90, 60), 0.3),
                               ((5, 7), 0.5))]
    blocks.append(sp.csr_array((40, 30)))
    want = [spectra.top_singular_values(B) for B in blocks]
    saved = numba.get_num_threads()
    try:
        for threads in {1, min(2, numba.config.NUMBA_NUM_THREADS)}:
            numba.set_num_threads(threads)
            assert spectra.many_top_singular_values(blocks) == want
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2])
def test_started_work_results_failures_and_close(threads):
    """``start_largest_first``: results in item order; a failing item re-raises at
    ``result()``; ``close()`` before ``result()`` stops waiting, and ``result()``
    then says so; the ``on_done`` callbacks run exactly once either way."""
    import threading

    import numba

    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        done = []
        pending = scheduling.start_largest_first(lambda x: 10 * x, [3, 1, 2], sizes=[3, 1, 2])
        pending.on_done(lambda: done.append(1))
        assert pending.result() == [30, 10, 20]
        assert pending.result() == [30, 10, 20] and done == [1]

        def fail_on_two(x):
            if x == 2:
                raise ValueError("item two")
            return x

        pending = scheduling.start_largest_first(fail_on_two, [1, 2, 3], sizes=[1, 2, 3])
        pending.on_done(lambda: done.append(2))
        with pytest.raises(ValueError, match="item two"):
            pending.result()
        assert done == [1, 2]

        release = threading.Event()
        pending = scheduling.start_largest_first(lambda x: release.wait(5.0) and x, [1, 2],
                                         sizes=[1, 2])
        pending.on_done(lambda: done.append(3))
        release.set()
        pending.close()
        pending.close()
        assert done == [1, 2, 3]
        with pytest.raises(RuntimeError, match="closed before"):
            pending.result()
    finally:
        numba.set_num_threads(saved)


def test_started_work_caller_joins_with_one_background_thread():
    """With two numba threads, ``start_largest_first`` starts one background thread
    and the caller's thread takes items at ``result()``: while one thread is held on
    the largest item, the other takes all the rest, and one of the two is the
    caller's."""
    import threading

    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    saved = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        release = threading.Event()

        def fn(x):
            if x == "held":
                release.wait(10.0)
            elif x == 1:  # the smallest, so the last of the others: let "held" go
                release.set()
            return threading.get_ident()

        before = threading.active_count()
        pending = scheduling.start_largest_first(fn, ["held", 3, 2, 1], sizes=[9, 3, 2, 1])
        assert threading.active_count() <= before + 1 and pending.background == 1
        with scheduling.numba_threads_beside(pending):  # the caller's kernels keep to the rest
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 2
        ran = pending.result()
        assert release.is_set()
        assert ran[1] == ran[2] == ran[3] != ran[0]
        assert threading.get_ident() in ran
        assert threading.active_count() == before
    finally:
        numba.set_num_threads(saved)


def test_numba_threads_beside_background_work():
    """``numba_threads_beside``: the caller's numba threads are those the background
    threads leave, at least one, and are restored after the block, also on an error;
    with nothing in the background they are unchanged."""
    import numba

    saved = numba.get_num_threads()
    n = numba.config.NUMBA_NUM_THREADS
    try:
        numba.set_num_threads(n)
        for background, inside in ((0, n), (1, max(1, n - 1)), (n + 3, 1)):
            with scheduling.numba_threads_beside(scheduling.Pending(list, background=background)):
                assert numba.get_num_threads() == inside
            assert numba.get_num_threads() == n
        with scheduling.numba_threads_beside(None):
            assert numba.get_num_threads() == n
        with pytest.raises(RuntimeError, match="inside"):
            with scheduling.numba_threads_beside(scheduling.Pending(list, background=n)):
                raise RuntimeError("inside")
        assert numba.get_num_threads() == n
    finally:
        numba.set_num_threads(saved)


def test_metrics_overlap_leaves_no_threads_on_an_error(monkeypatch):
    """``metrics`` takes the other measures while the spectra run in the background;
    when those fail, the error reaches the caller and the background work is over
    (BLAS limit restored, no worker thread left)."""
    import threading

    import torch

    import topo_pai

    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    topo = topo_pai.from_torch(net, input_shape=(6,))
    before = threading.active_count()

    def broken(*args, **kwargs):
        raise RuntimeError("measures failed")

    monkeypatch.setattr(type(topo), "_metrics_without_spectra", broken)
    with pytest.raises(RuntimeError, match="measures failed"):
        topo.metrics()
    assert threading.active_count() == before
    assert spectra._BLAS_LIMIT["depth"] == 0


def test_metrics_same_on_any_thread_count():
    """``Topology.metrics`` builds its layer blocks (and the weighted ones) side by side
    on the numba threads: the table is the same, value for value, on one thread and on
    two, and the same as building each block alone with ``layer_matrix``."""
    import numba
    import torch

    import topo_pai

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(12, 140, 1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(140 * 16, 10))
    g = torch.Generator().manual_seed(4)
    masks = {n: (torch.rand(p.shape, generator=g) < 0.3).float()
             for n, p in net.named_parameters() if p.dim() > 1}
    topo = topo_pai.from_torch(net, masks, input_shape=(3, 4, 4))
    weights = {n: p.detach().abs() for n, p in net.named_parameters() if n in masks}
    alone = [topo.layer_matrix(i) for i in range(len(topo.layers))]
    saved = numba.get_num_threads()
    tables = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            fresh = topo_pai.from_torch(net, masks, input_shape=(3, 4, 4))
            built = fresh._layer_matrices()
            assert all((a != b).nnz == 0 and a.shape == b.shape for a, b in zip(built, alone))
            tables.append((fresh.metrics().rows, fresh.metrics(weights=weights).rows))
    finally:
        numba.set_num_threads(saved)
    assert tables[0] == tables[-1]


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e-90, 1e77, 1e160, 1e300])
def test_blocks_far_from_one_keep_the_contract(route, scale):
    """Entries near 1e77 overflowed the squared products (Lanczos looped on NaN) and
    near 1e-90 underflowed them (a certificate of zeros passed mu_hat off by 20 %); the
    block is scaled by a power of two first, so every route keeps the contract."""
    rng = np.random.default_rng(0)
    B = (rng.random((90, 80)) < 0.3) * rng.random((90, 80))
    ref = _svd_oracle(B)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B * scale), TIGHT)
    assert abs(mu0 / scale - ref[0]) <= 1e-11 * ref[0]
    assert abs(mu_hat / scale - ref[1]) <= 1e-11 * ref[0]


def test_non_finite_entries_are_refused():
    B = sp.csr_array(np.array([[1.0, 2.0, 0.0], [np.inf, 1.0, 3.0], [0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite entry"):
        spectra.top_singular_values(B)


def test_tridiagonal_bisection_returns_on_nan():
    """A NaN from an overflowed product made the bisection loop forever."""
    from topo_pai.kernels.gram import top_tridiagonal_pair

    theta, y = top_tridiagonal_pair(np.array([np.nan, 2.0]), np.array([0.5]))
    assert np.isnan(theta) and y.shape == (2,)
