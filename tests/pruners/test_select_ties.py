"""``select_top`` against its previous implementation, which scanned for tied entries
after every threshold. Today one ``>=`` pass keeps every tied entry when they all fit
in the budget, and the scan runs only when some must be drawn; the kept sets (and the
draws among ties) must be the same as before, bit for bit."""

from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from topo_pai.kernels import options
from topo_pai.pruners import select
from topo_pai.pruners.select import rng_for, select_top


def previous_select_top(scores, k, rng, alive=None):
    """The previous implementation, in plain numpy (threshold by a full partition)."""
    flat = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    live = None if alive is None else [np.asarray(a, dtype=bool).reshape(-1) for a in alive]
    lives = live if live is not None else [np.ones(f.size, dtype=bool) for f in flat]
    total = sum(int(a.sum()) for a in lives)
    out = [np.zeros(f.size, dtype=bool) for f in flat]
    if k >= total:
        for o, a in zip(out, lives):
            o[:] = a
    elif k > 0:
        buf = np.concatenate([f[a] for f, a in zip(flat, lives)])
        kth = total - k
        buf.partition(kth)
        threshold = float(buf[kth])
        need = k
        for f, a, o in zip(flat, lives, out):
            o[:] = a & (f > threshold)
            need -= int(o.sum())
        if need > 0:
            tied = [np.flatnonzero(a & (f == threshold)) for f, a in zip(flat, lives)]
            sizes = np.cumsum([0] + [t.size for t in tied])
            if need == sizes[-1]:
                chosen = np.arange(need)
            else:
                chosen = np.sort(rng.choice(int(sizes[-1]), size=need, replace=False,
                                            shuffle=False))
            for j, (t, o) in enumerate(zip(tied, out)):
                part = chosen[(chosen >= sizes[j]) & (chosen < sizes[j + 1])] - sizes[j]
                o[t[part]] = True
    return [o.reshape(np.shape(s)) for o, s in zip(out, scores)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=60),
       st.integers(1, 4), st.booleans(), st.data())
def test_select_top_keeps_what_it_kept_before(entries, n_layers, with_alive, data):
    # few distinct values (-inf, +inf among them): ties at the threshold of every size
    values = np.array([[-np.inf, 0.0, 1.0, 1.0, 2.0, np.inf][v] for v, _ in entries])
    alive = np.array([a for _, a in entries]) if with_alive else None
    cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), min_size=n_layers - 1,
                                     max_size=n_layers - 1)))
    parts = np.split(np.arange(len(entries)), cuts)
    scores = [values[p] for p in parts]
    lives = None if alive is None else [alive[p] for p in parts]
    n_alive = len(entries) if alive is None else int(alive.sum())
    k = data.draw(st.integers(0, n_alive + 1))
    got = select_top(scores, k, rng_for(3, "ties"), lives, workspace={})
    want = previous_select_top(scores, k, rng_for(3, "ties"), lives)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_all_tied_entries_kept_without_a_draw():
    """When every entry tied at the threshold fits, no draw happens: any seed gives the
    same mask."""
    scores = [np.array([3.0, 1.0, 2.0, 2.0]), np.array([2.0, 0.0])]
    masks = {tuple(np.concatenate(select_top(scores, 4, rng_for(s, "t")))) for s in range(20)}
    assert masks == {(True, False, True, True, True, False)}


# -- the bracketed k-th largest (large inputs) -----------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from(["ties", "spread", "inf"]),
       st.booleans(), st.floats(0.0, 1.0), st.booleans())
def test_bracketed_selection_keeps_what_a_full_partition_keeps(seed, n_layers, kind, with_alive,
                                                               at, chunked):
    """With the bracket on from the first candidate and a small sample, every size of
    tie, -inf/+inf blocks and layers sorted by value, one pass or chunks on threads:
    the masks of a full partition."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 3000))
    if kind == "ties":
        values = rng.integers(0, 4, n).astype(float)
    elif kind == "spread":
        values = np.sort(rng.standard_normal(n))  # each layer a band of values
    else:
        values = np.where(rng.random(n) < 0.5, -np.inf, rng.standard_normal(n))
        values[rng.random(n) < 0.05] = np.inf
    alive = rng.random(n) < 0.7 if with_alive else None
    parts = np.array_split(np.arange(n), n_layers)
    scores = [values[p] for p in parts]
    lives = None if alive is None else [alive[p] for p in parts]
    n_alive = n if alive is None else int(alive.sum())
    k = max(1, min(n_alive - 1, round(at * n_alive)))
    with mock.patch.object(select, "BRACKET_MIN_CANDIDATES", 1), \
            mock.patch.object(select, "BRACKET_SAMPLE", 128), \
            mock.patch.object(options, "PARALLEL_MIN_ELEMENTS", 1 if chunked else 1 << 30):
        got = select_top(scores, k, rng_for(3, "ties"), lives, workspace={})
    want = previous_select_top(scores, k, rng_for(3, "ties"), lives)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_bracket_takes_large_inputs_and_gives_the_partitions_value():
    rng = np.random.default_rng(0)
    scores = [rng.standard_normal(150_000), np.log10(rng.random(90_000))]
    flat = np.concatenate(scores)
    for k in (1, 1000, 120_000, 239_999):
        buf = np.empty(flat.size + 1)
        got = select._bracketed_kth(scores, None, flat.size, k, buf)
        assert got == np.partition(flat, flat.size - k)[flat.size - k]


def test_bracket_misled_by_its_sample_falls_back_to_the_full_partition():
    """Values that are large exactly where the strided sample looks: the bracket misses
    the k-th largest, says so, and ``select_top`` still keeps the right entries."""
    n = 1 << 17
    step = n // select.BRACKET_SAMPLE
    values = np.arange(n, dtype=float)
    values[::step] += 10.0 * n  # the sample sees only these
    k = n // 2
    assert select._bracketed_kth([values], None, n, k, np.empty(n + 1)) is None
    got = select_top([values], k, rng_for(0, "t"))[0]
    want = previous_select_top([values], k, rng_for(0, "t"))[0]
    np.testing.assert_array_equal(got, want)
