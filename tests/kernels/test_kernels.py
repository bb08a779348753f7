"""The numba kernels of :mod:`topo_pai.kernels` (all but ``gram``, see
``test_gram_kernels.py``) against independent references.

* conv/pool kernels: against the pure-numpy twins in
  ``topo_pai.kernels.reference`` and, as a third opinion, against torch
  (``F.conv2d`` with explicit asymmetric padding, autograd for the transpose);
* CSR kernels: against scipy;
* mask kernels (``validate_copy``, ``kernel_csr``), ``group_by`` and
  ``scale_stats``: against plain numpy.

Every kernel is run with int32 and int64 index arrays (numba compiles one
specialisation per dtype). Values are small integers stored as float64, so
every comparison is exact whatever the summation order.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from topo_pai.kernels import reference as R  # noqa: E402
from topo_pai.kernels.elements import by_input, count_words, mask_elements  # noqa: E402
from topo_pai.kernels.intake import (  # noqa: E402
    validate_copy,
    validate_count,
    validate_kernel_counts,
)
from topo_pai.kernels.matvec import (  # noqa: E402
    csr_bilinear,
    csr_matvec,
    csr_rmatvec,
    dense_bilinear,
    dense_matvec,
    dense_rmatvec,
)
from topo_pai.kernels.multiplicity import counts_csr, kernel_csr  # noqa: E402
from topo_pai.kernels.planes import (  # noqa: E402
    image_to_rows,
    plane_backward,
    plane_effective,
    plane_forward,
    plane_weight_flow,
)
from topo_pai.kernels.pooling import pool_backward, pool_forward  # noqa: E402
from topo_pai.kernels.sorting import group_by  # noqa: E402
from topo_pai.kernels.vectors import add_into, count_both_positive, scale_stats  # noqa: E402
from topo_pai.metrics.neuron import (  # noqa: E402
    ConvElements,
    ConvPlan,
    conv_backward,
    conv_forward,
    tap_offsets,
)

INDEX_DTYPES = (np.int32, np.int64)
EXAMPLES = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------------------
# conv geometry
# ---------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    G = draw(st.integers(1, 3))
    per_group = draw(st.integers(1, 3))
    out_per_group = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    # total padding: symmetric, or one extra unit on the right (torch's 'same' with even spans)
    ph_tot = 2 * ph + draw(st.integers(0, 1))
    pw_tot = 2 * pw + draw(st.integers(0, 1))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    OH = (H + ph_tot - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pw_tot - dw * (KW - 1) - 1) // sw + 1
    assume(OH >= 1 and OW >= 1)
    seed = draw(st.integers(0, 2 ** 31 - 1))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    # element arrays may be narrower than the pointers (the engine uses int16 offsets)
    nz_dtype = draw(st.sampled_from((np.int16, dtype)))  # 4 numba specialisations in all
    unit = draw(st.booleans())  # empty nz_val: every weight is 1
    return dict(G=G, I=per_group, O=G * out_per_group, C=G * per_group, KH=KH, KW=KW,
                stride=(sh, sw), pad=(ph, pw), pad_tot=(ph_tot, pw_tot), dil=(dh, dw),
                H=H, W=W, OH=OH, OW=OW, seed=seed, density=density, dtype=dtype,
                nz_dtype=nz_dtype, unit=unit)


def conv_arrays(c):
    rng = np.random.default_rng(c["seed"])
    mask = rng.random((c["O"], c["I"], c["KH"], c["KW"])) < c["density"]
    # multiplicities 1..3, or all ones when the kernels get an empty nz_val
    weights = mask * (1 if c.get("unit") else rng.integers(1, 4, size=mask.shape))
    x = rng.integers(0, 6, size=(c["C"], c["H"], c["W"])).astype(np.float64)
    g = rng.integers(0, 6, size=(c["O"], c["OH"], c["OW"])).astype(np.float64)
    return weights.astype(np.float64), x, g, rng


def elements(weights, groups, dtype, nz_dtype=None, unit=False):
    """Unpruned elements grouped by output channel and by (global) input channel."""
    nz = dtype if nz_dtype is None else nz_dtype
    O, I, _, _ = weights.shape
    o, i, kh, kw = np.nonzero(weights)  # C order: grouped by o
    val = weights[o, i, kh, kw].astype(np.float64)
    gi = (o // (O // groups)) * I + i
    ptr_o = np.concatenate([[0], np.cumsum(np.bincount(o, minlength=O))]).astype(dtype)
    order = np.argsort(gi, kind="stable")
    ptr_i = np.concatenate([[0], np.cumsum(np.bincount(gi, minlength=groups * I))]).astype(dtype)
    empty = np.zeros(0)
    return dict(
        ptr_o=ptr_o, nz_i=gi.astype(nz), nz_kh=kh.astype(nz), nz_kw=kw.astype(nz),
        val=empty if unit else val, ptr_i=ptr_i, by_i_o=o[order].astype(nz),
        by_i_kh=kh[order].astype(nz), by_i_kw=kw[order].astype(nz),
        by_i_val=empty if unit else val[order],
    )


def plane_elements(c, el):
    """The engine's phase-plane plan and elements for a test case's element lists."""
    KH, KW = c["KH"], c["KW"]
    (sh, sw), (dh, dw) = c["stride"], c["dil"]
    plan = ConvPlan(c["C"], c["H"], c["W"], c["O"], c["OH"], c["OW"], tuple(c["stride"]),
                    tuple(c["pad"]), tuple(c["dil"]), c["OH"] + ((KH - 1) * dh) // sh,
                    c["OW"] + ((KW - 1) * dw) // sw)
    taps = tap_offsets(plan, (KH, KW))
    src = (el["nz_i"].astype(np.int64) * plan.plane
           + taps[el["nz_kh"] * KW + el["nz_kw"]]).astype(c["dtype"])
    by_i_i = np.repeat(np.arange(c["C"]), np.diff(el["ptr_i"]))
    by_i_src = (by_i_i * plan.plane + taps[el["by_i_kh"] * KW + el["by_i_kw"]]).astype(c["dtype"])
    return plan, ConvElements(None, el["ptr_o"], src, el["ptr_i"], el["by_i_o"], by_i_src, None,
                              np.zeros(0))


def run_conv_forward(c, el, x, out):
    """``out += conv(x)``; checks on the way that the kernel's two modes agree: writing
    (``init``, over NaN: every value that is read must be written) and accumulating."""
    plan, ce = plane_elements(c, el)
    y = conv_forward(plan, ce, x.reshape(-1), el["val"])
    if plan.n:
        xq = plan.to_planes(x.reshape(-1))
        yq = np.full(plan.O * plan.ostride, np.nan)
        plane_forward(xq, yq, plan.ostride, plan.n, ce.ptr_o, ce.src, el["val"], True)
        np.testing.assert_array_equal(plan.out_from_rows(yq), y)
        acc = plan.out_to_rows(out.copy())
        plane_forward(xq, acc, plan.ostride, plan.n, ce.ptr_o, ce.src, el["val"], False)
        np.testing.assert_array_equal(plan.out_from_rows(acc), out + y)
    out += y


def planes_to_image(plan, xq):
    """Numpy twin of the engine's plane -> image copy: the image positions of ``xq``."""
    (sh, sw), (ph, pw) = plan.stride, plan.pad
    planes = xq.reshape(plan.C, sh, sw, plan.Hq, plan.Wq)
    img = np.zeros((plan.C, plan.H, plan.W))
    for h in range(plan.H):
        for w in range(plan.W):
            R, a = divmod(h + ph, sh)
            Q, b = divmod(w + pw, sw)
            if R < plan.Hq and Q < plan.Wq:
                img[:, h, w] = planes[:, a, b, R, Q]
    return img.reshape(-1)


def run_conv_backward(c, el, g, gin):
    """``gin += conv^T(g)``, checking the write and accumulate modes as above."""
    plan, ce = plane_elements(c, el)
    y = conv_backward(plan, ce, g.reshape(-1), el["by_i_val"])
    # a sum with another branch fused into the pass: bit-identical to adding after
    other = np.arange(y.shape[0], dtype=np.float64) % 5
    y_plus = conv_backward(plan, ce, g.reshape(-1), el["by_i_val"], base=other)
    np.testing.assert_array_equal(y_plus, y + other)
    if plan.n:
        no_base = np.zeros(0)
        gq = plan.out_to_rows(g.reshape(-1))
        args = (plan.ostride, plan.n, ce.ptr_i, ce.by_i_o, ce.by_i_src, el["by_i_val"],
                plan.plane)
        acc = np.full(plan.C * plan.plane, np.nan)
        plane_backward(gq, acc, *args, True, no_base)
        np.testing.assert_array_equal(planes_to_image(plan, acc), y)
        acc2 = np.ones(plan.C * plan.plane)
        plane_backward(gq, acc2, *args, False, no_base)
        np.testing.assert_array_equal(acc2, acc + 1)
    gin += y


def torch_conv(x, weights, c):
    """The same conv in torch, with explicit (left/top, right/bottom) zero padding."""
    (ph, pw), (ph_tot, pw_tot) = c["pad"], c["pad_tot"]
    xt = torch.from_numpy(x)[None]
    xt = F.pad(xt, (pw, pw_tot - pw, ph, ph_tot - ph))
    y = F.conv2d(xt, torch.from_numpy(weights), None, c["stride"], 0, c["dil"], c["G"])[0]
    assert tuple(y.shape) == (c["O"], c["OH"], c["OW"])
    return y.numpy()


def torch_conv_transpose(g, weights, c):
    xt = torch.zeros((c["C"], c["H"], c["W"]), dtype=torch.float64, requires_grad=True)
    (ph, pw), (ph_tot, pw_tot) = c["pad"], c["pad_tot"]
    y = F.conv2d(F.pad(xt[None], (pw, pw_tot - pw, ph, ph_tot - ph)), torch.from_numpy(weights),
                 None, c["stride"], 0, c["dil"], c["G"])[0]
    (y * torch.from_numpy(g)).sum().backward()
    return xt.grad.numpy()


@EXAMPLES
@given(conv_cases())
def test_conv_forward(c):
    weights, x, _, rng = conv_arrays(c)
    el = elements(weights, c["G"], c["dtype"], c["nz_dtype"], c["unit"])
    init = rng.integers(0, 3, size=c["O"] * c["OH"] * c["OW"]).astype(np.float64)
    out = init.copy()
    run_conv_forward(c, el, x, out)
    ref = R.conv_forward(x, weights, c["G"], c["stride"], c["pad"], c["dil"], (c["OH"], c["OW"]))
    np.testing.assert_array_equal(ref, torch_conv(x, weights, c))
    np.testing.assert_array_equal((out - init).reshape(ref.shape), ref)  # accumulates


@EXAMPLES
@given(conv_cases())
def test_conv_backward(c):
    weights, x, g, rng = conv_arrays(c)
    el = elements(weights, c["G"], c["dtype"], c["nz_dtype"], c["unit"])
    init = rng.integers(0, 3, size=c["C"] * c["H"] * c["W"]).astype(np.float64)
    gin = init.copy()
    run_conv_backward(c, el, g, gin)
    ref = R.conv_backward(g, weights, c["G"], c["stride"], c["pad"], c["dil"],
                          (c["C"], c["H"], c["W"]))
    np.testing.assert_array_equal(ref, torch_conv_transpose(g, weights, c))
    np.testing.assert_array_equal((gin - init).reshape(ref.shape), ref)
    # adjoint identity <conv(x), g> == <x, conv^T(g)>
    fwd = R.conv_forward(x, weights, c["G"], c["stride"], c["pad"], c["dil"], (c["OH"], c["OW"]))
    assert (fwd * g).sum() == (x * ref).sum()


@EXAMPLES
@given(conv_cases(), st.sampled_from([0.2, 0.5, 1.0]))
def test_conv_effective(c, p_on):
    weights, _, _, rng = conv_arrays(c)
    el = elements(weights, c["G"], c["dtype"], c["nz_dtype"], c["unit"])
    fin = (rng.random((c["C"], c["H"], c["W"])) < p_on).astype(np.float64)
    bout = (rng.random((c["O"], c["OH"], c["OW"])) < p_on).astype(np.float64)
    n = len(el["nz_i"])
    flags = np.full(n, 7, dtype=np.uint8)  # every flag must be written
    plan, ce = plane_elements(c, el)
    plane_effective(plan.to_planes(fin.reshape(-1)), plan.out_to_rows(bout.reshape(-1)),
                    plan.ostride, plan.n, ce.ptr_o, ce.src, flags)
    sums = np.full(n, -1.0)
    plane_weight_flow(plan.to_planes(fin.reshape(-1)), plan.out_to_rows(bout.reshape(-1)),
                      plan.ostride, plan.n, ce.ptr_o, ce.src, sums)
    o, i, kh, kw = np.nonzero(weights)
    want = np.zeros(n, dtype=np.uint8)
    for t in range(n):
        single = np.zeros_like(weights)
        single[o[t], i[t], kh[t], kw[t]] = 1
        y = R.conv_forward(fin, single, c["G"], c["stride"], c["pad"], c["dil"],
                           (c["OH"], c["OW"]))
        want[t] = (y * bout).sum() > 0
        assert sums[t] == (y * bout).sum()
    np.testing.assert_array_equal(flags, want)


@pytest.mark.parametrize("dtype", INDEX_DTYPES)
@pytest.mark.parametrize("unit", [False, True])
@pytest.mark.parametrize("geometry", [
    # stride 1 with full-width output rows: the kernels fuse rows into one run
    dict(KH=3, KW=3, stride=(1, 1), pad=(1, 1), pad_tot=(2, 2), dil=(1, 1), H=6, W=5),
    dict(KH=1, KW=1, stride=(1, 1), pad=(0, 0), pad_tot=(0, 0), dil=(1, 1), H=4, W=7),
    dict(KH=2, KW=4, stride=(1, 1), pad=(0, 1), pad_tot=(1, 3), dil=(1, 1), H=5, W=6),
    dict(KH=3, KW=3, stride=(1, 1), pad=(2, 2), pad_tot=(4, 4), dil=(2, 2), H=5, W=5),
    # 1-d convs are (C, 1, L)
    dict(KH=1, KW=3, stride=(1, 1), pad=(0, 2), pad_tot=(0, 4), dil=(1, 2), H=1, W=9),
    dict(KH=1, KW=3, stride=(1, 2), pad=(0, 1), pad_tot=(0, 2), dil=(1, 1), H=1, W=9),
])
def test_conv_kernels_fixed_geometries(geometry, unit, dtype):
    c = dict(geometry, G=1, I=2, O=3, C=2, seed=3, density=0.7, dtype=dtype, unit=unit)
    c["OH"] = (c["H"] + c["pad_tot"][0] - c["dil"][0] * (c["KH"] - 1) - 1) // c["stride"][0] + 1
    c["OW"] = (c["W"] + c["pad_tot"][1] - c["dil"][1] * (c["KW"] - 1) - 1) // c["stride"][1] + 1
    weights, x, g, _ = conv_arrays(c)
    el = elements(weights, 1, dtype, np.int16, unit)
    out = np.zeros(c["O"] * c["OH"] * c["OW"])
    run_conv_forward(c, el, x, out)
    np.testing.assert_array_equal(out.reshape(c["O"], c["OH"], c["OW"]),
                                  torch_conv(x, weights, c))
    gin = np.zeros(c["C"] * c["H"] * c["W"])
    run_conv_backward(c, el, g, gin)
    np.testing.assert_array_equal(gin.reshape(c["C"], c["H"], c["W"]),
                                  torch_conv_transpose(g, weights, c))


@st.composite
def mask_element_cases(draw):
    groups = draw(st.integers(1, 3))
    per_group_in = draw(st.integers(1, 20))  # rows of 8+ kernels exercise the word skips
    out_per_group = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 0.8, 1.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return groups, per_group_in, out_per_group, KH, KW, density, seed


@EXAMPLES
@given(mask_element_cases())
def test_mask_elements(case):
    groups, I, opg, KH, KW, density, seed = case
    O = groups * opg
    rng = np.random.default_rng(seed)
    mask = (rng.random((O, I, KH, KW)) < density).astype(np.uint8)
    counts = mask.reshape(O * I, KH * KW).sum(axis=1).astype(np.uint8)
    plane = 1000
    from topo_pai.kernels import elements as element_kernels

    taps = rng.permutation(KH * KW).astype(np.int64)  # any table: spans are looked up
    flat_dtype = np.int32 if seed % 2 else np.int64  # int64 for layers of 2**31+ elements
    args = (O, I, KH * KW, opg, plane, taps, np.zeros(1, np.int64), np.zeros(1, flat_dtype))
    words = count_words(counts, KH * KW)
    got = mask_elements(mask.reshape(-1), counts, words, *args, int(mask.sum()))
    # the word-skipping scan must agree with the byte-by-byte one, and the kernel that
    # large layers get (on numba's threads) with the one small layers get
    plain = mask_elements(mask.reshape(-1), counts, np.zeros(0, np.uint64), *args,
                          int(mask.sum()))
    threaded = element_kernels._mask_elements_parallel(mask.reshape(-1), counts, words, *args)
    for a, b, c in zip(got, plain, threaded):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    flat, ptr_o, nz_i, src = got
    o, i, kh, kw = np.nonzero(mask)  # output-major, as documented
    np.testing.assert_array_equal(flat, np.flatnonzero(mask))
    assert flat.dtype == flat_dtype
    np.testing.assert_array_equal(ptr_o, np.concatenate([[0], np.cumsum(np.bincount(
        o, minlength=O))]))
    np.testing.assert_array_equal(nz_i, (o // opg) * I + i)
    np.testing.assert_array_equal(src, nz_i * plane + taps[kh * KW + kw])
    for arr in (flat, ptr_o, nz_i, src):
        assert arr.dtype.kind == "i"
    # regrouped by input channel: a stable sort by input channel
    ptr_i, by_i_o, by_i_src, order = by_input(ptr_o, nz_i, src, groups * I, 2)
    for parts in (1, 2, 5):  # the threaded kernel, as many tasks as output channels or more
        for a, b in zip((ptr_i, by_i_o, by_i_src, order),
                        element_kernels._by_input_parallel(ptr_o, nz_i, src, groups * I, parts)):
            np.testing.assert_array_equal(a, b)
    want = np.argsort(nz_i, kind="stable")
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(ptr_i, np.concatenate([[0], np.cumsum(np.bincount(
        nz_i, minlength=groups * I))]))
    np.testing.assert_array_equal(by_i_o, o[want])
    np.testing.assert_array_equal(by_i_src, src[want])


def test_conv_kernels_big_case_both_dtypes():
    """One larger fixed case (a realistic 3x3 stride-2 'same'-ish conv)."""
    c = dict(G=2, I=3, O=4, C=6, KH=3, KW=3, stride=(2, 2), pad=(1, 1), pad_tot=(2, 2),
             dil=(1, 1), H=17, W=12, OH=9, OW=6, seed=5, density=0.6)
    for dtype in INDEX_DTYPES:
        c["dtype"] = dtype
        weights, x, g, _ = conv_arrays(c)
        el = elements(weights, c["G"], dtype)
        out = np.zeros(c["O"] * c["OH"] * c["OW"])
        run_conv_forward(c, el, x, out)
        np.testing.assert_array_equal(out.reshape(c["O"], c["OH"], c["OW"]),
                                      torch_conv(x, weights, c))
        gin = np.zeros(c["C"] * c["H"] * c["W"])
        run_conv_backward(c, el, g, gin)
        np.testing.assert_array_equal(gin.reshape(c["C"], c["H"], c["W"]),
                                      torch_conv_transpose(g, weights, c))


def test_reference_conv_on_python_ints():
    """The reference kernels also run on object arrays of Python ints (exact counts)."""
    w = np.ones((1, 1, 3, 3), dtype=np.int64).astype(object)
    big = 10 ** 400
    x = np.full((1, 4, 4), big, dtype=object)
    y = R.conv_forward(x, w, 1, (1, 1), (1, 1), (1, 1), (4, 4))
    assert y[0, 0, 0] == 4 * big and y[0, 1, 1] == 9 * big and y[0, 0, 1] == 6 * big
    g = R.conv_backward(np.full((1, 4, 4), big, dtype=object), w, 1, (1, 1), (1, 1), (1, 1),
                        (1, 4, 4))
    assert g[0, 0, 0] == 4 * big and g[0, 2, 1] == 9 * big


# ---------------------------------------------------------------------------
# pools
# ---------------------------------------------------------------------------

@st.composite
def pool_cases(draw):
    C = draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    OH, OW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    win = lambda n: st.lists(st.integers(0, n - 1), max_size=4, unique=True).map(sorted)  # noqa: E731
    hwin = [np.array(w, dtype=np.int64) for w in draw(st.lists(win(H), min_size=OH, max_size=OH))]
    wwin = [np.array(w, dtype=np.int64) for w in draw(st.lists(win(W), min_size=OW, max_size=OW))]
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    return C, H, W, hwin, wwin, seed, dtype


def to_csr(windows, dtype):
    ptr = np.concatenate([[0], np.cumsum([len(w) for w in windows])]).astype(dtype)
    idx = (np.concatenate(windows) if windows else np.zeros(0)).astype(dtype)
    return ptr, idx


def naive_pool(x, hwin, wwin):
    C = x.shape[0]
    out = np.zeros((C, len(hwin), len(wwin)))
    for c in range(C):
        for y, rows in enumerate(hwin):
            for z, cols in enumerate(wwin):
                out[c, y, z] = sum(x[c, r, q] for r in rows for q in cols)
    return out


@EXAMPLES
@given(pool_cases())
def test_pool_forward_and_backward(case):
    C, H, W, hwin, wwin, seed, dtype = case
    OH, OW = len(hwin), len(wwin)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=(C, H, W)).astype(np.float64)
    g = rng.integers(0, 6, size=(C, OH, OW)).astype(np.float64)
    g[rng.random(g.shape) < 0.3] = 0.0  # the backward kernel skips zero gradients
    hp, hi = to_csr(hwin, dtype)
    wp, wi = to_csr(wwin, dtype)

    ref = R.pool_forward(x, hwin, wwin)
    np.testing.assert_array_equal(ref, naive_pool(x, hwin, wwin))
    init = rng.integers(0, 3, size=C * OH * OW).astype(np.float64)
    out = init.copy()
    pool_forward(x.reshape(-1), C, H, W, out, OH, OW, hp, hi, wp, wi)
    np.testing.assert_array_equal((out - init).reshape(ref.shape), ref)

    gref = R.pool_backward(g, hwin, wwin, (H, W))
    assert (ref * g).sum() == (x * gref).sum()  # adjoint
    init = rng.integers(0, 3, size=C * H * W).astype(np.float64)
    gin = init.copy()
    pool_backward(g.reshape(-1), C, H, W, gin, OH, OW, hp, hi, wp, wi)
    np.testing.assert_array_equal((gin - init).reshape(gref.shape), gref)


@pytest.mark.parametrize("dtype", INDEX_DTYPES)
def test_pool_kernels_match_torch_sum_pool(dtype):
    """Windows of a 3x3 stride-2 padding-1 pool (clipped to the input) vs torch."""
    C, H, W, k, s, p = 2, 7, 6, 3, 2, 1

    def windows(n):
        out = (n + 2 * p - k) // s + 1
        return [np.array([q for q in range(y * s - p, y * s - p + k) if 0 <= q < n])
                for y in range(out)]

    hwin, wwin = windows(H), windows(W)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, size=(C, H, W)).astype(np.float64)
    want = F.avg_pool2d(torch.from_numpy(x)[None], k, s, p, count_include_pad=True,
                        divisor_override=1)[0].numpy()
    out = np.zeros(want.size)
    pool_forward(x.reshape(-1), C, H, W, out, len(hwin), len(wwin), *to_csr(hwin, dtype),
                 *to_csr(wwin, dtype))
    np.testing.assert_array_equal(out.reshape(want.shape), want)


# ---------------------------------------------------------------------------
# CSR
# ---------------------------------------------------------------------------

@st.composite
def csr_cases(draw):
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    data_dtype = draw(st.sampled_from([np.float64, np.float32]))
    rng = np.random.default_rng(seed)
    A = sp.random(m, n, density=density, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 5, size=k).astype(np.float64))
    A.sort_indices()
    return A, A.indptr.astype(dtype), A.indices.astype(dtype), A.data.astype(data_dtype), rng


@EXAMPLES
@given(csr_cases())
def test_csr_matvec(case):
    A, indptr, indices, data, rng = case
    x = rng.integers(0, 7, size=A.shape[1]).astype(np.float64)
    init = rng.integers(0, 3, size=A.shape[0]).astype(np.float64)
    out = init.copy()
    csr_matvec(indptr, indices, data, x, out)
    np.testing.assert_array_equal(out, init + A @ x)


@EXAMPLES
@given(csr_cases())
def test_csr_rmatvec(case):
    A, indptr, indices, data, rng = case
    y = rng.integers(0, 7, size=A.shape[0]).astype(np.float64)
    y[rng.random(y.shape) < 0.3] = 0.0
    init = rng.integers(0, 3, size=A.shape[1]).astype(np.float64)
    out = init.copy()
    csr_rmatvec(indptr, indices, data, y, out)
    np.testing.assert_array_equal(out, init + A.T @ y)


@EXAMPLES
@given(csr_cases())
def test_csr_bilinear(case):
    A, indptr, indices, data, rng = case
    left = (rng.random(A.shape[0]) < 0.6).astype(np.float64)
    right = (rng.random(A.shape[1]) < 0.6).astype(np.float64)
    assert csr_bilinear(indptr, indices, data, left, right) == left @ (A @ right)


def test_csr_kernels_unsorted_and_duplicate_free_rows():
    """Rows whose column indices are not sorted still multiply correctly."""
    indptr = np.array([0, 3, 3, 5], dtype=np.int32)
    indices = np.array([4, 0, 2, 3, 1], dtype=np.int32)
    data = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    A = sp.csr_array((data, indices, indptr), shape=(3, 5)).toarray()
    x = np.arange(1.0, 6.0)
    out = np.zeros(3)
    csr_matvec(indptr, indices, data, x, out)
    np.testing.assert_array_equal(out, A @ x)
    y = np.array([1.0, 2.0, 3.0])
    out = np.zeros(5)
    csr_rmatvec(indptr, indices, data, y, out)
    np.testing.assert_array_equal(out, A.T @ y)


# ---------------------------------------------------------------------------
# masks: validate_copy, kernel_csr
# ---------------------------------------------------------------------------

VALUES = [0.0, 1.0, 2.0, -1.0, 0.5, float("nan"), float("inf"), -0.0, 1e-300]


@EXAMPLES
@given(st.lists(st.sampled_from(VALUES), max_size=40),
       st.sampled_from([np.float64, np.float32]))
def test_validate_copy_floats(values, dtype):
    flat = np.array(values, dtype=dtype)
    out = np.full(flat.shape, 9, dtype=np.uint8)
    n_bad = validate_copy(flat, out)
    with np.errstate(invalid="ignore"):
        want_bad = int(np.count_nonzero(~((flat == 0) | (flat == 1))))
    assert n_bad == want_bad
    np.testing.assert_array_equal(out, (flat == 1).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.int64])
def test_validate_copy_integers(dtype):
    info = np.iinfo(dtype)
    flat = np.array([0, 1, 1, 0, 2, info.max, info.min, 1], dtype=dtype)
    out = np.zeros(flat.shape, dtype=np.uint8)
    n_bad = validate_copy(flat, out)
    assert n_bad == int(np.count_nonzero((flat != 0) & (flat != 1)))
    np.testing.assert_array_equal(out, (flat == 1).astype(np.uint8))
    ok = np.array([0, 1, 1, 0], dtype=dtype)
    out = np.zeros(4, dtype=np.uint8)
    assert validate_copy(ok, out) == 0
    np.testing.assert_array_equal(out, [0, 1, 1, 0])


@st.composite
def kernel_csr_cases(draw):
    groups = draw(st.integers(1, 3))
    per_group_in = draw(st.integers(1, 4))
    out_per_group = draw(st.integers(1, 3))
    kernel = draw(st.sampled_from([(), (1,), (3,), (2, 2), (3, 3), (1, 5)]))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    return groups, per_group_in, out_per_group, kernel, density, seed, dtype


@EXAMPLES
@given(kernel_csr_cases())
def test_kernel_csr(case):
    groups, pgi, opg, kernel, density, seed, dtype = case
    O = groups * opg
    rng = np.random.default_rng(seed)
    mask = (rng.random((O, pgi) + kernel) < density).astype(np.uint8)
    group_size = int(np.prod(kernel)) if kernel else 1
    indptr, indices, data = kernel_csr(mask.reshape(-1), group_size, pgi, opg,
                                       np.zeros(1, dtype=dtype))
    assert indptr.dtype == np.dtype(dtype) and indices.dtype == np.dtype(dtype)
    # dense multiplicity matrix from the definition
    taps = mask.reshape(O, pgi, -1).sum(axis=2)
    M = np.zeros((O, groups * pgi), dtype=np.int64)
    for o in range(O):
        M[o, (o // opg) * pgi:(o // opg + 1) * pgi] = taps[o]
    rows, cols = np.nonzero(M)  # row-major: sorted columns within each row
    np.testing.assert_array_equal(indptr, np.concatenate([[0], np.cumsum(np.bincount(
        rows, minlength=O))]))
    np.testing.assert_array_equal(indices, cols)
    np.testing.assert_array_equal(data, M[rows, cols])
    got = sp.csr_array((data.astype(np.float64), indices, indptr), shape=M.shape).toarray()
    np.testing.assert_array_equal(got, M)


# ---------------------------------------------------------------------------
# group_by, scale_stats
# ---------------------------------------------------------------------------

@EXAMPLES
@given(st.integers(1, 10).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n - 1), max_size=60))),
    st.sampled_from(INDEX_DTYPES))
def test_group_by(case, dtype):
    n_keys, keys = case
    keys = np.array(keys, dtype=dtype)
    ptr, order = group_by(keys, n_keys)
    np.testing.assert_array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(
        keys.astype(np.int64), minlength=n_keys))]))
    np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))
    for k in range(n_keys):
        assert np.all(keys[order[ptr[k]:ptr[k + 1]]] == k)


@EXAMPLES
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-300, 1e300)), max_size=30))
def test_scale_stats(values):
    x = np.array(values, dtype=np.float64)
    hi, lo = scale_stats(x)
    pos = x[x > 0]
    if pos.size:
        assert hi == pos.max() and lo == pos.min()
    else:
        assert hi == 0.0 and lo == math.inf


@EXAMPLES
@given(st.lists(st.sampled_from([0.0, -0.0, 1e-310, 5e-324, 0.25, 1.0, 3.5, 1e300]),
                max_size=40), st.integers(0, 2 ** 31 - 1))
def test_scale_stats_special_values(values, seed):
    """Subnormals, -0.0 and arrays longer than one parallel chunk."""
    x = np.array(values, dtype=np.float64)
    if seed % 3 == 0:  # a long array spanning several chunks
        x = np.random.default_rng(seed).permutation(np.resize(x, 70_000)) if x.size else x
    hi, lo = scale_stats(x)
    pos = x[x > 0]
    assert (hi, lo) == ((pos.max(), pos.min()) if pos.size else (0.0, math.inf))


@EXAMPLES
@given(st.integers(0, 3000), st.integers(0, 2 ** 31 - 1))
def test_count_both_positive(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, size=n) * rng.random(n)
    b = rng.integers(0, 3, size=n) * rng.random(n)
    assert count_both_positive(a, b) == np.count_nonzero((a > 0) & (b > 0))


# ---------------------------------------------------------------------------
# fused mask intake and dense multiplicity matrices
# ---------------------------------------------------------------------------

@EXAMPLES
@given(kernel_csr_cases(), st.sampled_from([np.float32, np.float64, np.uint8]),
       st.booleans())
def test_fused_intake_matches_validate_and_kernel_csr(case, src_dtype, poison):
    """validate_count / validate_kernel_counts + counts_csr == validate_copy + kernel_csr."""
    groups, pgi, opg, kernel, density, seed, dtype = case
    O = groups * opg
    rng = np.random.default_rng(seed)
    flat = (rng.random((O, pgi) + kernel) < density).astype(src_dtype).reshape(-1)
    if poison and flat.size:
        flat[rng.integers(flat.size)] = 2
    group_size = int(np.prod(kernel)) if kernel else 1
    ref_out = np.zeros(flat.size, dtype=np.uint8)
    ref_bad = validate_copy(flat, ref_out)
    out = np.full(flat.size, 9, dtype=np.uint8)
    if group_size == 1:
        bad, ones = validate_count(flat, out)
        counts, nonempty = out, ones
    else:
        counts = np.full(O * pgi, 99, dtype=np.uint8)
        bad, nonempty, ones = validate_kernel_counts(flat, group_size, out, counts)
        np.testing.assert_array_equal(counts, ref_out.reshape(O * pgi, -1).sum(axis=1))
    assert bad == ref_bad
    np.testing.assert_array_equal(out, ref_out)
    assert ones == int(ref_out.sum()) and nonempty == int(np.count_nonzero(counts))
    want = kernel_csr(ref_out, group_size, pgi, opg, np.zeros(1, dtype=dtype))
    got = counts_csr(counts, pgi, opg, nonempty, np.zeros(1, dtype=dtype))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("n_kernels", [1, 7, 40_000])
@pytest.mark.parametrize("parallel_from", [1, 1 << 30])
def test_intake_serial_and_chunked_agree(monkeypatch, n_kernels, parallel_from):
    """Both drivers of the intake (one serial span, or chunks on numba's threads, split
    wherever the size falls) give the reference's copy, counts and totals."""
    from topo_pai.kernels import options

    monkeypatch.setattr(options, "PARALLEL_MIN_ELEMENTS", parallel_from)
    rng = np.random.default_rng(n_kernels)
    flat = (rng.random(n_kernels * 9) < 0.3).astype(np.float32)
    flat[rng.integers(flat.size)] = 0.5
    out = np.full(flat.size, 7, dtype=np.uint8)
    counts = np.full(n_kernels, 99, dtype=np.uint8)
    bad, nonempty, ones = validate_kernel_counts(flat, 9, out, counts)
    ref = (flat == 1).astype(np.uint8)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(counts, ref.reshape(n_kernels, 9).sum(axis=1))
    assert (bad, nonempty, ones) == (1, int(np.count_nonzero(counts)), int(ref.sum()))
    out2 = np.empty_like(out)
    assert validate_count(flat, out2) == (1, int(ref.sum()))
    assert validate_copy(flat, out2) == 1
    np.testing.assert_array_equal(out2, ref)


def test_element_lists_pick_the_threaded_kernels_by_size(monkeypatch):
    """mask_elements and by_input run their threaded kernels from
    PARALLEL_MIN_ELEMENTS (kernels plus kept elements; elements) up, the serial ones
    below, with the same lists either way."""
    from topo_pai.kernels import elements as element_kernels
    from topo_pai.kernels import options

    rng = np.random.default_rng(3)
    O, I, kk = 6, 5, 9
    mask = (rng.random(O * I * kk) < 0.3).astype(np.uint8)
    counts = mask.reshape(O * I, kk).sum(axis=1).astype(np.uint8)
    args = (mask, counts, count_words(counts, kk), O, I, kk, O, 100,
            np.arange(kk, dtype=np.int64), np.zeros(1, np.int32), np.zeros(1, np.int32))
    n_kept = int(mask.sum())
    threaded = []
    for name in ("_mask_elements_parallel", "_by_input_parallel"):
        kernel = getattr(element_kernels, name)
        monkeypatch.setattr(element_kernels, name,
                            lambda *a, _k=kernel, _n=name: threaded.append(_n) or _k(*a))
    results = {}
    for parallel_from in (1 << 30, O * I + n_kept, 1):
        monkeypatch.setattr(options, "PARALLEL_MIN_ELEMENTS", parallel_from)
        threaded.clear()
        flat, ptr_o, nz_i, src = mask_elements(*args, n_kept)
        lists = by_input(ptr_o, nz_i, src, I, 2)
        results[parallel_from] = (flat, ptr_o, nz_i, src) + lists
        assert threaded == (["_mask_elements_parallel"] if parallel_from <= O * I + n_kept
                            else []) + (["_by_input_parallel"] if parallel_from <= n_kept
                                        else [])
    first, *others = results.values()
    for other in others:
        for a, b in zip(first, other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fill", [0.0, 0.02, 0.07, 0.09, 0.5, 1.0])
def test_counts_csr_both_loops_match_the_definition(fill):
    """counts_csr branches per kernel below BRANCH_FREE_FRACTION of non-empty kernels
    and compacts branch-free above it: both loops (the fills fall on either side)
    give the row-major non-zeros of the count matrix, with grouped columns."""
    from topo_pai.kernels.multiplicity import BRANCH_FREE_FRACTION

    groups, pgi, opg = 3, 40, 50
    O = groups * opg
    rng = np.random.default_rng(int(fill * 100))
    counts = ((rng.random(O * pgi) < fill) * rng.integers(1, 10, O * pgi)).astype(np.uint8)
    nnz = int(np.count_nonzero(counts))
    assert (nnz >= BRANCH_FREE_FRACTION * counts.size) == (fill > 0.08)
    indptr, indices, data = counts_csr(counts, pgi, opg, nnz, np.zeros(1, dtype=np.int32))
    M = np.zeros((O, groups * pgi), dtype=np.int64)
    for o in range(O):
        M[o, (o // opg) * pgi:(o // opg + 1) * pgi] = counts[o * pgi:(o + 1) * pgi]
    rows, cols = np.nonzero(M)
    assert indices.shape == data.shape == (nnz,)
    np.testing.assert_array_equal(indptr, np.concatenate([[0], np.cumsum(np.bincount(
        rows, minlength=O))]))
    np.testing.assert_array_equal(indices, cols)
    np.testing.assert_array_equal(data, M[rows, cols])


@EXAMPLES
@given(kernel_csr_cases(), st.integers(0, 2 ** 31 - 1))
def test_dense_kernels_bit_identical_to_csr(case, seed2):
    """dense_matvec / dense_rmatvec / dense_bilinear give exactly the CSR results,
    also on non-integer inputs where a different summation order would show."""
    groups, pgi, opg, _, density, seed, dtype = case
    O = groups * opg
    rng = np.random.default_rng(seed)
    counts = ((rng.random(O * pgi) < density) * rng.integers(1, 10, O * pgi)).astype(np.uint8)
    csr = counts_csr(counts, pgi, opg, int(np.count_nonzero(counts)), np.zeros(1, dtype=dtype))
    r2 = np.random.default_rng(seed2)
    x = r2.random(groups * pgi) * 10.0 ** r2.integers(-5, 5, groups * pgi)
    x[r2.random(x.shape) < 0.3] = 0.0
    y = r2.random(O)
    y[r2.random(O) < 0.3] = 0.0
    init_o, init_i = r2.random(O), r2.random(groups * pgi)
    a, b = init_o.copy(), init_o.copy()
    dense_matvec(counts, pgi, opg, x, a)
    csr_matvec(*csr, x, b)
    np.testing.assert_array_equal(a, b)
    a, b = init_i.copy(), init_i.copy()
    dense_rmatvec(counts, pgi, opg, y, a)
    csr_rmatvec(*csr, y, b)
    np.testing.assert_array_equal(a, b)
    assert dense_bilinear(counts, pgi, opg, y, x) == csr_bilinear(*csr, y, x)
    M = sp.csr_array((csr[2].astype(np.float64), csr[1], csr[0]),
                     shape=(O, groups * pgi)).toarray()
    assert dense_bilinear(counts, pgi, opg, y, x) == ((y > 0) @ M @ (x > 0))


def test_layer_mask_dense_and_sparse_forms_agree():
    """A LayerMask held densely builds the same CSR arrays on demand as a sparse one."""
    from topo_pai.graph.ir import Layer
    from topo_pai.graph.masks import layer_mask

    layer = Layer(1, "c", "c.weight", "Conv2d", "c", (6, 2, 3, 3), groups=2)
    rng = np.random.default_rng(0)
    for density in (0.02, 0.5, 1.0):
        m = (rng.random((6, 2, 3, 3)) < density).astype(np.float32)
        lm = layer_mask(layer, 4, m, np.int64)
        assert lm.dense == (np.count_nonzero(m.reshape(12, 9).sum(1)) >= 0.05 * 12)
        want = kernel_csr(m.astype(np.uint8).reshape(-1), 9, 2, 3, np.zeros(1, np.int64))
        for g, w in zip((lm.indptr, lm.indices, lm.data), want):
            np.testing.assert_array_equal(g, w)
        assert lm.unpruned == int(m.sum()) and lm.nnz == int(want[0][-1])


@EXAMPLES
@given(st.integers(0, 5000), st.integers(0, 2 ** 31 - 1))
def test_add_into(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n), rng.random(n)
    out = np.full(n, np.nan)
    add_into(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    want = a + b
    add_into(a, b, a)  # in place
    np.testing.assert_array_equal(a, want)


@EXAMPLES
@given(st.integers(0, 4), st.integers(0, 5), st.integers(0, 5), st.integers(0, 3))
def test_image_to_rows(O, OH, OW, extra):
    y = np.arange(O * OH * OW, dtype=np.float64) + 1.0
    yq = np.full(O * OH * (OW + extra), np.nan)
    image_to_rows(y, O, OH, OW, OW + extra, yq)
    want = np.pad(y.reshape(O, OH, OW), ((0, 0), (0, 0), (0, extra)))
    np.testing.assert_array_equal(yq.reshape(O, OH, OW + extra), want)


# ---------------------------------------------------------------------------
# Scaled counts: lazy normalisation
# ---------------------------------------------------------------------------

@EXAMPLES
@given(st.lists(st.integers(0, 2 ** 40), min_size=1, max_size=40), st.integers(-60, 300),
       st.integers(0, 2))
# a maximum of 2**-65 with a bound inside the window: the bound alone must not skip the rescale
@example(values=[1], e=65, slack=2)
def test_normalize_integer_counts_match_exact_scan(values, e, slack):
    """With integer counts, the bound-based and scan-based paths give the same
    counts, exponent window and risky flag as the exact two-sided scan."""
    from topo_pai.metrics.scaled import RISKY_BITS, SLACK_BITS, normalize

    m = np.array(values, dtype=np.float64) * 2.0 ** -max(e, 0)  # counts >= 1 when e >= 0
    e = max(e, 0)
    exact = normalize(m.copy(), e)
    fast = normalize(m.copy(), e, integer=True)
    true_hi = float(m.max())
    bound = true_hi * (1 + slack)  # any proven upper bound
    bounded = normalize(m.copy(), e, integer=True, bound=bound)
    for s in (exact, fast, bounded):
        assert s.zero == (true_hi == 0.0)
        if not s.zero:
            assert 2.0 ** -SLACK_BITS <= s.m.max() <= 2.0 ** SLACK_BITS
            assert s.hi >= s.m.max()
            np.testing.assert_array_equal(np.ldexp(s.m, s.e), np.ldexp(exact.m, exact.e))
    # the fast paths may only be more cautious than the exact range test
    assert fast.risky >= exact.risky and bounded.risky >= exact.risky
    if not exact.zero and math.log2(true_hi) + e <= RISKY_BITS:
        assert not fast.risky


def test_combine_large_parts_sums_exactly_and_keeps_parts():
    from topo_pai.metrics.scaled import PARALLEL_ADD_MIN, Scaled, combine

    n = PARALLEL_ADD_MIN + 3
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, n).astype(np.float64)
    b = rng.integers(0, 100, n).astype(np.float64)
    c = rng.integers(0, 100, n).astype(np.float64)
    parts = [Scaled(a.copy(), 0, hi=100.0), Scaled(b.copy(), 3, hi=100.0), Scaled(c.copy(), 0)]
    s = combine(parts, n, integer=True)
    np.testing.assert_array_equal(np.ldexp(s.m, s.e), a + 8 * b + c)
    np.testing.assert_array_equal(parts[0].m, a)  # parts are not modified
    np.testing.assert_array_equal(parts[1].m, b)
