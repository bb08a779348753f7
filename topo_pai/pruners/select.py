"""Thresholding: keep the ``k`` highest scores, ties broken by a seeded draw.

Selection is O(n): ``np.partition`` finds the k-th largest score, everything
above it is kept, and the remaining slots are filled with a seeded random
choice among the scores equal to it, taken in a fixed order (layer order, then
flat index). So every kept score is ``>=`` every pruned score, and equal scores
never make the result depend on memory layout.

Iterative methods select among the weights still *alive*; two small numba
kernels (gather the alive scores, then compare against the threshold) keep a
round at a few passes over the score arrays, with no index arrays.

On large inputs the k-th largest score is found by bracketing
(:func:`_bracketed_kth`): two order statistics of a strided sample bound it, one
pass counts the scores above the bracket and copies those inside it, and only
that copy, a few per cent of the scores, is partitioned. The value found is the
one a full partition finds (the k-th largest is unique as a value), so masks do
not change; when the sample misleads, the full partition runs instead.
"""

from __future__ import annotations

import math
import zlib

import numba
import numpy as np

from topo_pai.kernels import options


def rng_for(seed: int, *keys) -> np.random.Generator:
    """An independent generator for ``seed`` and string/int ``keys`` (e.g. a layer name).

    Streams depend only on their keys, so adding a layer never changes another
    layer's draws.
    """
    words = [int(seed)]
    for k in keys:
        words.append(k if isinstance(k, int) else zlib.crc32(str(k).encode()))
    return np.random.default_rng(np.random.SeedSequence(words))


def check_finite_or_inf(name: str, method: str, scores: np.ndarray) -> None:
    """Raise if ``scores`` holds NaN (``min`` propagates NaN: one pass, no temporary)."""
    if scores.size and np.isnan(scores.min()):
        raise ValueError(f"method {method!r} produced NaN scores for '{name}' "
                         f"({int(np.isnan(scores).sum())} of {scores.size}); check the model's "
                         "weights and data for NaN/inf")


# Both kernels are branch-free so that LLVM vectorises them.

@numba.njit(nogil=True, cache=True)
def _gather_alive(scores, alive, out, start):
    """Append the scores of alive entries to ``out`` from ``start``; return the end.
    ``out`` needs one slot of slack: dead entries are written and then overwritten."""
    k = start
    for i in range(scores.shape[0]):
        out[k] = scores[i]
        k += alive[i]
    return k


@numba.njit(nogil=True, cache=True)
def _bracket(scores, alive, use_alive, lo, hi, out, start):
    """Copy the alive scores in ``[lo, hi]`` to ``out`` from ``start``; return the end
    and how many alive scores are above ``hi``. ``out`` needs one slot of slack."""
    k = start
    n_above = 0
    if use_alive:
        for i in range(scores.shape[0]):
            v = scores[i]
            out[k] = v
            k += alive[i] & (v >= lo) & (v <= hi)
            n_above += alive[i] & (v > hi)
    else:
        for i in range(scores.shape[0]):
            v = scores[i]
            out[k] = v
            k += (v >= lo) & (v <= hi)
            n_above += v > hi
    return k, n_above


@numba.njit(parallel=True, nogil=True, cache=True)
def _bracket_chunks(scores, alive, use_alive, lo, hi, out, start, chunks):
    """:func:`_bracket` over ``chunks`` slices on numba's threads, each writing from
    its own offset (``out`` needs ``start + len(scores)`` slots), then compacted in
    order: the same result."""
    n = scores.shape[0]
    ends = np.empty(chunks, dtype=np.int64)
    n_above = 0
    for c in numba.prange(chunks):
        a, b = c * n // chunks, (c + 1) * n // chunks
        ends[c], up = _bracket(scores[a:b], alive[a:b] if use_alive else alive, use_alive,
                               lo, hi, out, start + a)
        n_above += up
    k = start
    for c in range(chunks):
        for t in range(start + c * n // chunks, ends[c]):  # t >= k: moves go left
            out[k] = out[t]
            k += 1
    return k, n_above


@numba.njit(parallel=True, nogil=True, cache=True)
def _at_least_chunks(scores, alive, use_alive, threshold, out, chunks):
    """:func:`_at_least` over ``chunks`` slices on numba's threads."""
    n = scores.shape[0]
    n_up = 0
    n_eq = 0
    for c in numba.prange(chunks):
        a, b = c * n // chunks, (c + 1) * n // chunks
        up, eq = _at_least(scores[a:b], alive[a:b] if use_alive else alive, use_alive,
                           threshold, out[a:b])
        n_up += up
        n_eq += eq
    return n_up, n_eq


@numba.njit(nogil=True, cache=True)
def _above(scores, alive, use_alive, threshold, out):
    """``out = alive & (scores > threshold)``; return how many are set."""
    n = 0
    if use_alive:
        for i in range(scores.shape[0]):
            up = alive[i] & (scores[i] > threshold)
            out[i] = up
            n += up
    else:
        for i in range(scores.shape[0]):
            up = scores[i] > threshold
            out[i] = up
            n += up
    return n


@numba.njit(nogil=True, cache=True)
def _at_least(scores, alive, use_alive, threshold, out):
    """``out = alive & (scores >= threshold)``; return how many are above the threshold
    and how many equal it."""
    n_up = 0
    n_eq = 0
    if use_alive:
        for i in range(scores.shape[0]):
            up = alive[i] & (scores[i] > threshold)
            eq = alive[i] & (scores[i] == threshold)
            out[i] = up | eq
            n_up += up
            n_eq += eq
    else:
        for i in range(scores.shape[0]):
            up = scores[i] > threshold
            eq = scores[i] == threshold
            out[i] = up | eq
            n_up += up
            n_eq += eq
    return n_up, n_eq


@numba.njit(nogil=True, cache=True)
def _tied(scores, alive, use_alive, threshold, idx):
    """Write the flat indices of alive entries equal to ``threshold`` to ``idx``
    (ascending); return how many. Ties are rare, so the branch predicts well."""
    m = 0
    for i in range(scores.shape[0]):
        if scores[i] == threshold and ((not use_alive) or alive[i]):
            idx[m] = i
            m += 1
    return m


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


#: Candidates from which :func:`_bracketed_kth` replaces a full partition (below it, a
#: partition is as fast), and the size of its strided sample.
BRACKET_MIN_CANDIDATES = 1 << 16
BRACKET_SAMPLE = 1 << 14


# Layers of options.PARALLEL_MIN_ELEMENTS scores or more are bracketed and thresholded
# in slices on numba's threads.

def _bracket_layer(scores, alive, use_alive, lo, hi, out, start):
    if scores.shape[0] >= options.PARALLEL_MIN_ELEMENTS:
        return _bracket_chunks(scores, alive, use_alive, lo, hi, out, start,
                               options.PARALLEL_CHUNKS)
    return _bracket(scores, alive, use_alive, lo, hi, out, start)


def _at_least_layer(scores, alive, use_alive, threshold, out):
    if scores.shape[0] >= options.PARALLEL_MIN_ELEMENTS:
        return _at_least_chunks(scores, alive, use_alive, threshold, out,
                                options.PARALLEL_CHUNKS)
    return _at_least(scores, alive, use_alive, threshold, out)


def _scratch(workspace: dict | None, size: int) -> np.ndarray:
    """A float64 buffer of at least ``size`` entries, kept in ``workspace`` for reuse."""
    buf = None if workspace is None else workspace.get("gather")
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=np.float64)
        if workspace is not None:
            workspace["gather"] = buf
    return buf


def _bracketed_kth(flat, live, total: int, k: int, buf: np.ndarray) -> float | None:
    """The k-th largest of the ``total`` candidates (alive entries of ``flat``), or
    ``None`` when the sample's bracket misses it.

    A strided sample (every layer in proportion to its size) gives two order
    statistics about ``4 sigma`` of a binomial count on either side of the k-th
    largest's rank; everything above the upper one is counted, everything within is
    copied to ``buf`` (room for every score, alive or not, plus one) and
    partitioned. The result is exact whatever the sample: the bracket only decides
    whether this shortcut applies.
    """
    n_all = sum(f.size for f in flat)
    step = max(1, n_all // BRACKET_SAMPLE)
    if live is None:
        sample = np.concatenate([f[::step] for f in flat])
    else:
        sample = np.concatenate([f[::step][a[::step].view(np.bool_)] for f, a in zip(flat, live)])
    m = sample.size
    if m < 64:
        return None
    q = (total - k) / total  # the k-th largest's rank from below, as a fraction
    r = q * (m - 1)
    spread = 4.0 * math.sqrt(m * q * (1.0 - q)) + 2.0
    lo_i, hi_i = max(0, math.floor(r - spread)), min(m - 1, math.ceil(r + spread))
    sample.partition((lo_i, hi_i))
    lo = -math.inf if lo_i == 0 else float(sample[lo_i])
    hi = math.inf if hi_i == m - 1 else float(sample[hi_i])
    empty = np.zeros(0, dtype=np.bool_)
    end, above = 0, 0
    for i, f in enumerate(flat):
        end, n_up = _bracket_layer(f, empty if live is None else live[i], live is not None,
                                   lo, hi, buf, end)
        above += n_up
    need = k - above  # the k-th largest is the need-th largest within the bracket
    if not 1 <= need <= end:
        return None
    idx = end - need
    buf[:end].partition(idx)
    return float(buf[idx])


def select_top(scores: list[np.ndarray], k: int, rng: np.random.Generator,
               alive: list[np.ndarray] | None = None,
               workspace: dict | None = None) -> list[np.ndarray]:
    """Keep the ``k`` highest scores over several arrays with one threshold.

    Parameters
    ----------
    scores : list of float64 arrays
        One array per layer (any shape); never modified.
    k : int
        Number of entries to keep in total.
    rng : numpy.random.Generator
        Draws among entries tied at the threshold.
    alive : list of bool arrays, optional
        Only these entries compete (and at most these are kept).
    workspace : dict, optional
        Scratch memory reused across calls (iterative pruning).

    Returns
    -------
    list of bool arrays
        The kept entries, with the shapes of ``scores``.
    """
    flat = [_flat(np.asarray(s, dtype=np.float64)) for s in scores]
    live = None if alive is None else [_flat(np.asarray(a, dtype=np.bool_)) for a in alive]
    empty = np.zeros(0, dtype=np.bool_)
    n_live = [f.size for f in flat] if live is None else [int(np.count_nonzero(a)) for a in live]
    total = sum(n_live)
    out = [np.zeros(f.size, dtype=bool) for f in flat]
    if k >= total:
        for o, a in zip(out, live if live is not None else [None] * len(out)):
            if a is None:
                o[:] = True
            else:
                o[:] = a
    elif k > 0:
        threshold = None
        if total >= BRACKET_MIN_CANDIDATES:
            threshold = _bracketed_kth(flat, live, total, k,
                                       _scratch(workspace, sum(f.size for f in flat) + 1))
        if threshold is None:
            if live is None:
                buf = np.concatenate(flat) if len(flat) > 1 else flat[0].copy()
            else:
                buf = _scratch(workspace, total + 1)
                end = 0
                for f, a in zip(flat, live):
                    end = _gather_alive(f, a, buf, end)
            kth = total - k
            buf[:total].partition(kth)
            threshold = float(buf[kth])
        lives = live if live is not None else [empty] * len(flat)
        counts = [_at_least_layer(f, a, live is not None, threshold, o)
                  for f, a, o in zip(flat, lives, out)]
        need = k - sum(up for up, _ in counts)
        if need < sum(eq for _, eq in counts):
            # more entries tie at the threshold than are kept: keep those above it and
            # fill from the tied ones, in a fixed order (when every tied entry is kept,
            # which is the common case, ``>=`` above is already the answer)
            for f, a, o in zip(flat, lives, out):
                _above(f, a, live is not None, threshold, o)
            tied = []
            for f, a in zip(flat, lives):
                idx = np.empty(f.size, dtype=np.int64)  # pages are touched only where written
                tied.append(idx[:_tied(f, a, live is not None, threshold, idx)])
            sizes = np.cumsum([0] + [t.size for t in tied])
            chosen = np.sort(rng.choice(int(sizes[-1]), size=need, replace=False,
                                        shuffle=False))
            for j, (t, o) in enumerate(zip(tied, out)):
                part = chosen[(chosen >= sizes[j]) & (chosen < sizes[j + 1])] - sizes[j]
                o[t[part]] = True
    return [o.reshape(np.shape(s)) for o, s in zip(out, scores)]


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Bool array marking the ``k`` largest entries of ``scores``.

    >>> import numpy as np
    >>> top_k(np.array([0.1, 3.0, -np.inf, 2.0]), 2, rng_for(0)).tolist()
    [False, True, False, True]
    >>> int(top_k(np.zeros(10), 4, rng_for(0)).sum())
    4
    """
    return select_top([scores], k, rng)[0]
