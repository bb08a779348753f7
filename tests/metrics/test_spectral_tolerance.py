"""The accuracy contract of topo_pai.metrics.spectra.top_singular_values:
|mu_reported - mu| <= spectral_tol * mu0 for mu0 and mu_hat, reported values never above
the true ones, on every route, against dense LAPACK SVDs (the oracle) on blocks where
convergence is hard (mu_hat at the bulk edge of a random sparse block, clustered and
repeated top values) and on closed forms; the residual bound it rests on; the certificate
check before returning; the validation of spectral_tol."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import scipy.sparse as sp
import torch

import topo_pai
from spectral_routes import force_route
from topo_pai.metrics import spectra

ROUTES = ["default", "gram-eigh", "lanczos-dense", "lanczos-sparse"]
#: rounding slack on top of the stated bound (the contract says "plus rounding")
ROUNDING = 1e-13


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    return force_route(monkeypatch, request.param)


def _oracle(B):
    s = sl.svdvals(np.asarray(B, dtype=np.float64))
    return float(s[0]), float(s[1]) if s.size > 1 else 0.0


def _assert_contract(B, tol):
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), tol)
    e0, e1 = _oracle(B)
    slack = ROUNDING * e0
    assert abs(mu0 - e0) <= tol * e0 + slack
    assert abs(mu_hat - e1) <= tol * e0 + slack
    assert mu0 <= e0 + slack and mu_hat <= e1 + slack  # interlacing: never above
    return mu0, mu_hat, e0, e1


def _bulk_edge_block(m, n, density, seed):
    """A random sparse multiplicity block: mu0 is the mean-degree outlier, mu_hat sits
    at the edge of the bulk with sigma_3, sigma_4, ... close below it."""
    rng = np.random.default_rng(seed)
    return (rng.random((m, n)) < density) * rng.integers(1, 10, (m, n)).astype(float)


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
@pytest.mark.parametrize("shape", [(300, 120), (90, 260)])
def test_bulk_edge_blocks_within_the_stated_bound(route, tol, shape):
    B = _bulk_edge_block(*shape, density=0.1, seed=sum(shape))
    _, _, e0, e1 = _assert_contract(B, tol)
    s = sl.svdvals(B)
    assert (s[1] - s[2]) / s[1] < 0.05  # the hard case: mu_hat in a cluster


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_clustered_and_repeated_top_values(route, tol):
    rng = np.random.default_rng(2)
    for sigma in ([10.0, 4.0, 4.0 - 1e-7, 3.99] + list(np.linspace(3.9, 0.1, 50)),
                  [7.0, 7.0, 7.0 - 1e-9] + list(np.linspace(6.5, 0.5, 40))):
        U = np.linalg.qr(rng.standard_normal((80, len(sigma))))[0]
        V = np.linalg.qr(rng.standard_normal((70, len(sigma))))[0]
        mu0, mu_hat, _, _ = _assert_contract((U * sigma) @ V.T, tol)
        assert mu_hat == pytest.approx(sigma[1], abs=tol * sigma[0] + 1e-12)


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_closed_forms(route, tol):
    """Disjoint union of complete bipartite graphs K_{a,b} with kernel multiplicity c:
    singular values c*sqrt(a*b) each; a d-regular circulant: mu0 = d."""
    blocks = [(3, 40, 30), (2, 25, 36), (1, 10, 10)]  # c, a, b: 3*sqrt(1200) > 2*sqrt(900)
    B = sl.block_diag(*[np.full((b, a), float(c)) for c, a, b in blocks])
    mu0, mu_hat, _, _ = _assert_contract(B, tol)
    assert abs(mu0 - 3 * math.sqrt(1200)) <= tol * mu0 + 1e-12 * mu0
    assert abs(mu_hat - 2 * math.sqrt(900)) <= tol * mu0 + 1e-12 * mu0
    n, d = 120, 7
    C = np.zeros((n, n))
    for j in range(d):
        C[np.arange(n), (np.arange(n) + j * 11) % n] += 1.0
    mu0, _, _, _ = _assert_contract(C, tol)
    assert abs(mu0 - d) <= tol * d + 1e-12 * d


def test_residual_bound_holds_for_any_unit_vector():
    """The certificate's lemma: for a unit u and s = ||B u||, some singular value of B
    lies within singular_value_error_bound(||B^T B u - s^2 u||, s) of s."""
    rng = np.random.default_rng(0)
    for trial in range(30):
        B = _bulk_edge_block(40, 25, 0.3, trial)
        sigma = sl.svdvals(B)
        u = rng.standard_normal(25)
        if trial % 3 == 0:  # near an eigenvector too: the tight regime
            u = np.linalg.svd(B)[2][trial % 5] + 1e-4 * u
        u /= np.linalg.norm(u)
        s = np.linalg.norm(B @ u)
        r = np.linalg.norm(B.T @ (B @ u) - s**2 * u)
        bound = spectra.singular_value_error_bound(np.array([r]), np.array([s]))[0]
        assert np.min(np.abs(sigma - s)) <= bound * (1 + 1e-12) + 1e-12


def test_singular_value_error_bound_closed_form():
    out = spectra.singular_value_error_bound(np.array([1e-6, 4e-2, 0.0]), np.array([2.0, 0.1, 0.0]))
    assert out[0] == pytest.approx(5e-7)  # r / s
    assert out[1] == pytest.approx(0.2)  # sqrt(r) < r / s
    assert out[2] == 0.0


def test_uncertified_vectors_are_not_returned(monkeypatch):
    """Vectors that fail the explicit residual certificate send the block to the direct
    SVD, whatever produced them."""
    monkeypatch.setattr(spectra, "GRAM_MAX_SIDE", 0)
    poor = []

    def not_converged(gram, k, tol=None, max_columns=None, nonnegative=False):
        poor.append(k)
        return np.linalg.qr(np.random.default_rng(1).standard_normal((k, 2)))[0]

    monkeypatch.setattr(spectra, "gram_top_ritz_vectors", not_converged)
    direct = []
    real = spectra._direct_top_two
    monkeypatch.setattr(spectra, "_direct_top_two", lambda A, *a: direct.append(A.shape) or real(A, *a))
    B = _bulk_edge_block(120, 100, 0.2, 4)
    assert spectra.top_singular_values(sp.csr_array(B)) == pytest.approx(_oracle(B), rel=1e-12)
    assert poor == [100] and direct == [(120, 100)]


@pytest.mark.parametrize("scale", [1, 9, 3000])
def test_float32_gram_is_exact_or_not_used(scale):
    """Integer blocks take a float32 Gram product when every partial sum is an integer
    below 2**24 (then exact); larger ones, and non-integer ones, stay float64."""
    rng = np.random.default_rng(scale)
    D = (rng.random((600, 80)) < 0.5) * rng.integers(1, scale + 1, (600, 80)).astype(float)
    for B in (D, D + 0.5 * (D > 0)):
        G = spectra._gram_matrix(sp.csr_array(B))
        assert G.dtype == np.float64 and np.array_equal(G, B.T @ B)


@pytest.mark.parametrize("scale, float32", [(1, True), (9, True), (3000, False)])
def test_float32_gram_route_is_taken_where_exact(scale, float32, monkeypatch):
    rng = np.random.default_rng(scale)
    D = (rng.random((600, 80)) < 0.5) * rng.integers(1, scale + 1, (600, 80)).astype(float)
    casts = []
    real = sp.csr_array.astype
    monkeypatch.setattr(sp.csr_array, "astype",
                        lambda self, dtype, *a, **k: casts.append(np.dtype(dtype))
                        or real(self, dtype, *a, **k))
    spectra._gram_matrix(sp.csr_array(D))
    assert (np.dtype(np.float32) in casts) == float32


def test_duplicate_entries_are_summed_before_the_float32_test():
    """A CSR block may hold one entry as many stored parts (scipy sums them on use):
    their sum, not the largest part, decides whether float32 is exact."""
    rng = np.random.default_rng(3)
    D = (rng.random((200, 40)) < 0.5).astype(float)
    rows, cols = np.nonzero(D)
    rows = np.concatenate([rows, np.zeros(4096, dtype=rows.dtype)])
    cols = np.concatenate([cols, np.zeros(4096, dtype=cols.dtype)])
    A = sp.coo_array((np.ones(rows.size), (rows, cols)), shape=D.shape).tocsr()
    assert not A.has_canonical_format or A.nnz < rows.size  # the duplicates are there
    dense = A.toarray()
    nnz_before = A.nnz
    got = spectra.top_singular_values(A, tol=1e-12)
    assert got == pytest.approx(_oracle(dense), rel=1e-11)
    assert A.nnz == nnz_before  # the caller's matrix is left as it was


@pytest.mark.parametrize("bad", [0, 0.0, -1e-8, 1, 1.5, float("nan"), float("inf"), "1e-8",
                                 True, [1e-8], 10**400, 1e-13, np.float64(1e-15)])
def test_spectral_tol_is_validated(bad):
    with pytest.raises(ValueError, match="spectral_tol"):
        spectra.check_spectral_tol(bad)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="spectral_tol must be a number"):
        topo_pai.from_torch(net, input_shape=(3,)).metrics(spectral_tol=bad)


def test_metrics_passes_spectral_tol_and_meets_it(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(90, 120), torch.nn.ReLU(), torch.nn.Linear(120, 70))
    gen = torch.Generator().manual_seed(1)
    masks = {n: (torch.rand(p.shape, generator=gen) < 0.2).float()
             for n, p in net.named_parameters() if p.dim() > 1}
    topo = topo_pai.from_torch(net, masks, input_shape=(90,))
    weights = {n: p.detach().abs() for n, p in net.named_parameters() if n in masks}
    seen = []
    real = spectra.top_singular_values
    monkeypatch.setattr(spectra, "top_singular_values",
                        lambda A, tol=None: seen.append(tol) or real(A, tol))
    table = topo.metrics(weights, spectral_tol=1e-3)
    assert seen == [1e-3] * 4
    for i, row in enumerate(table.rows[1:]):  # rows[0] is the input
        for key, W in (("", topo.layer_matrix(i)), ("weighted_", topo.layer_matrix(i, weights))):
            e0, e1 = _oracle(W.toarray())
            assert abs(row[key + "mu0"] - e0) <= 1e-3 * e0 + ROUNDING * e0
            assert abs(row[key + "mu_hat"] - e1) <= 1e-3 * e0 + ROUNDING * e0


def test_the_arpack_fallback_is_certified_too(monkeypatch):
    """Blocks too large to densify fall back to ARPACK's svds; its vectors pass the
    same residual certificate (else a ValueError names spectral_tol)."""
    monkeypatch.setattr(spectra, "DENSE_SVD_FALLBACK_MAX_ENTRIES", 0)
    monkeypatch.setattr(spectra, "gram_top_ritz_vectors", lambda *a, **k: None)  # no convergence
    monkeypatch.setattr(spectra, "GRAM_MAX_SIDE", 0)
    B = _bulk_edge_block(150, 90, 0.2, 5)
    mu0, mu_hat = spectra.top_singular_values(sp.csr_array(B), tol=1e-8)
    want = _oracle(B)
    assert mu0 <= want[0] * (1 + ROUNDING) and mu_hat <= want[1] + ROUNDING * want[0]
    assert abs(mu0 - want[0]) <= 1e-8 * want[0] and abs(mu_hat - want[1]) <= 1e-8 * want[0]
    monkeypatch.setattr(spectra, "_certified", lambda *a: None)
    with pytest.raises(ValueError, match="spectral_tol"):
        spectra.top_singular_values(sp.csr_array(B), tol=1e-8)


@pytest.mark.parametrize("route_name", ["lanczos-dense", "lanczos-sparse"])
def test_first_run_starts_from_ones_on_non_negative_blocks(monkeypatch, route_name):
    """The first Lanczos run starts from the all-ones vector on a non-negative block
    (its top eigenvector is non-negative, so the start reaches it) and from a random
    vector otherwise; the second run always from a random one. Both blocks (the second
    with signs flipped at random, so no longer non-negative) meet the contract."""
    force_route(monkeypatch, route_name)
    starts = []
    real = spectra._top_ritz_pair

    def spy(gram, k, locked, *args):
        starts.append((locked is None, args[-1]))
        return real(gram, k, locked, *args)

    monkeypatch.setattr(spectra, "_top_ritz_pair", spy)
    B = _bulk_edge_block(300, 140, 0.1, 5)
    signs = np.where(np.random.default_rng(6).random(B.shape) < 0.5, -1.0, 1.0)
    for block, ones in ((B, True), (B * signs, False)):
        starts.clear()
        _assert_contract(block, 1e-8)
        assert starts == [(True, ones), (False, False)]
