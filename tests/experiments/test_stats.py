"""Paired statistics of studies, against scipy and brute-force definitions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from topo_pai.experiments.stats import compare_arms, holm, paired_difference


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=8),
       st.floats(-0.2, 0.2))
def test_paired_difference_matches_scipy(pairs, margin):
    a = {s: x for s, (x, _) in enumerate(pairs)}
    b = {s: y for s, (_, y) in enumerate(pairs)}
    d = np.array([x - y for x, y in pairs])
    r = paired_difference(a, b, margin=margin)
    assert r.n == len(pairs) and r.mean == pytest.approx(d.mean(), abs=1e-12)
    if d.std(ddof=1) > 1e-9:
        assert r.p == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue,
                                    rel=1e-6, abs=1e-12)
        assert r.p_greater == pytest.approx(
            stats.ttest_1samp(d - margin, 0.0, alternative="greater").pvalue, rel=1e-6,
            abs=1e-12)
        assert r.p_less == pytest.approx(
            stats.ttest_1samp(d - margin, 0.0, alternative="less").pvalue, rel=1e-6, abs=1e-12)
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert r.ci == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
        assert r.dz == pytest.approx(d.mean() / d.std(ddof=1))


def test_pairs_by_seed_not_by_position():
    a = {3: 0.5, 1: 0.9, 2: 0.7}
    b = {1: 0.8, 2: 0.6, 3: 0.4, 9: 0.0}  # seed 9 has no partner
    r = paired_difference(a, b)
    assert r.seeds == (1, 2, 3) and r.mean == pytest.approx(0.1) and r.dz == math.inf
    assert r.p == 0.0 and r.ci == (pytest.approx(0.1), pytest.approx(0.1))
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def _holm_brute(p, alpha):
    """Holm's procedure as stated: sort, reject while p_(k) <= alpha / (m - k)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    rejected = set()
    for k, i in enumerate(order):
        if p[i] <= alpha / (m - k):
            rejected.add(i)
        else:
            break
    return rejected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=7))
def test_holm_adjusted_values_reject_exactly_what_the_procedure_rejects(p):
    adj = holm(p)
    for alpha in (0.01, 0.05, 0.1, 0.5):
        assert {i for i, x in enumerate(adj) if x <= alpha} == _holm_brute(p, alpha)


def test_holm_ignores_missing_tests_and_refuses_bad_values():
    assert holm([math.nan, 0.02])[1] == 0.02
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_collapsed_runs_are_counted_not_tested():
    c = compare_arms({0: 0.8, 1: 0.7, 2: 0.75}, {0: 0.6, 1: 0.5, 2: 0.65},
                     collapse={0: 0.8, 1: 0.15, 2: 0.75})
    assert (c.n, c.collapsed_a, c.collapsed_b, c.test) == (3, 1, 0, None)
    c = compare_arms({0: 0.8, 1: 0.7, 2: 0.75}, {0: 0.6, 1: 0.5, 2: 0.65})
    assert c.collapsed_a == c.collapsed_b == 0 and c.test.mean == pytest.approx(0.1667, abs=1e-4)


def test_dz_of_a_constant_shift_has_the_sign_of_the_shift():
    """Every seed 0.25 lower gave dz = +inf (noise of 1e-16 gave -3.8e15)."""
    assert paired_difference({0: 0.25, 1: 0.5}, {0: 0.5, 1: 0.75}).dz == -math.inf
    assert paired_difference({0: 0.5, 1: 0.75}, {0: 0.25, 1: 0.5}).dz == math.inf


def test_collapse_values_given_decide_and_must_cover_every_seed():
    """An empty collapse mapping fell back to the compared (test) values; one lacking a
    seed raised a bare KeyError."""
    test_a, test_b = {0: 0.8, 1: 0.15}, {0: 0.7, 1: 0.6}
    with pytest.raises(ValueError, match=r"collapse has no value for seed\(s\) \[0, 1\]"):
        compare_arms(test_a, test_b, collapse={}, collapse_b={})
    with pytest.raises(ValueError, match=r"collapse_b has no value for seed\(s\) \[1\]"):
        compare_arms(test_a, test_b, collapse={0: 0.8, 1: 0.8}, collapse_b={0: 0.7})
    c = compare_arms(test_a, test_b, collapse={0: 0.8, 1: 0.8}, collapse_b={0: 0.7, 1: 0.6})
    assert c.collapsed_a == 0 and c.test is not None  # validation decided: no collapse


def test_missing_values_and_non_numeric_p_values_are_refused():
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] have no value"):
        paired_difference({0: 0.5, 1: None}, {0: 0.4, 1: 0.3})
    with pytest.raises(ValueError, match="must be numbers"):
        holm(["0.1", True])
