"""Overflow-free non-negative counts: ``value = mantissa * 2**exponent``.

Each vector carries one exponent and float64 mantissas, so a count of 10**5000
is as cheap as a count of 5. A vector is rescaled (to a maximum in [0.5, 1))
only when its maximum leaves [2**-SLACK_BITS, 2**SLACK_BITS]: rescaling costs a
pass over the vector, and most ops change the magnitude by far less than that.
Scaling is by exact powers of two, hence the only precision loss is float64
rounding in the sums (relative 1e-16 per op), not in the scaling.

An entry smaller than ``2**-1074`` times its vector's maximum would underflow
to zero and look unreachable. Vectors whose dynamic range comes near that are
flagged ``risky``; reachability is then recomputed in 0/1 arithmetic instead
of being read off the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from topo_pai.kernels.vectors import add_into, scale_stats

RISKY_BITS = 900  # dynamic range (in bits) past which reachability is re-checked in 0/1
# Mantissa maxima stay within 2**+-SLACK_BITS: products of two mantissas (forward x
# backward) stay far from overflow, and an entry RISKY_BITS below the maximum stays
# a normal float (2**-964 > 2**-1022).
SLACK_BITS = 64
# Sums of vectors at least this long run on both threads (a neuron-level
# activation map); shorter ones are not worth waking the threads for.
PARALLEL_ADD_MIN = 1 << 16
LOG10_2 = math.log10(2.0)


@dataclass
class Scaled:
    m: np.ndarray
    e: int = 0
    risky: bool = False
    zero: bool = False  # known to be all zeros (lets sums skip it)
    hi: float | None = None  # an upper bound on max(m) in the slack window (None: unknown)

    def log10(self) -> np.ndarray:
        """log10 of every count, ``log10(m) + e * log10(2)`` (``-inf`` where it is zero)."""
        with np.errstate(divide="ignore"):
            return np.log10(self.m) + self.e * LOG10_2

    def log10_total(self) -> float:
        """log10 of the sum of the counts (``-inf`` when it is zero)."""
        return log10_scaled(0.0 if self.zero else float(self.m.sum()), self.e)


def log10_scaled(mantissa: float, e: int) -> float:
    """log10 of the non-negative scalar ``mantissa * 2**e`` (``-inf`` when it is zero)."""
    return -math.inf if mantissa == 0.0 else math.log10(mantissa) + e * LOG10_2


def _scale(arr: np.ndarray, shift: int) -> None:
    """``arr *= 2**-shift`` exactly (a power-of-two product is exact unless subnormal)."""
    while shift:
        step = max(-1000, min(1000, shift))
        arr *= 2.0 ** -step
        shift -= step


def normalize(arr: np.ndarray, e: int = 0, risky: bool = False, *, copy: bool = False,
              integer: bool = False, bound: float | None = None) -> Scaled:
    """Wrap ``arr`` as the counts ``arr * 2**e``, rescaling it if its maximum left the
    slack window (in place, or on a copy with ``copy=True``).

    ``integer=True`` promises that every non-zero count ``arr * 2**e`` is at least
    1 (path counts are integers; edge-weighted flows are not). The smallest
    mantissa is then at least ``2**-e``, so the dynamic range is at most
    ``log2(max) + e`` bits and needs no scan for the minimum unless that bound
    passes :data:`RISKY_BITS`: one SIMD ``max`` replaces the full
    :func:`~topo_pai.kernels.vectors.scale_stats` scan. With ``integer``, a
    ``bound`` (a proven upper bound on ``max(arr)``, e.g. the input's bound times
    the largest fan-in) that keeps both tests within limits saves even that scan:
    small counts never need rescaling, so most ops touch their output only once.
    """
    if integer and bound is not None:
        if bound == 0.0:
            return Scaled(arr, 0, risky, zero=True)
        # The bound caps the maximum from above; integer counts cap it from below
        # (a non-zero maximum is at least 2**-e), so e <= SLACK_BITS keeps it in the window.
        if (2.0 ** -SLACK_BITS < bound <= 2.0 ** SLACK_BITS and e <= SLACK_BITS
                and math.log2(bound) + e <= RISKY_BITS):
            return Scaled(arr, e, risky, hi=bound)
    if integer:
        hi = float(arr.max()) if arr.shape[0] else 0.0
        lo = math.ldexp(1.0, -e)
        if hi > 0.0 and math.log2(hi) + e > RISKY_BITS:
            hi, lo = scale_stats(arr)
    else:
        hi, lo = scale_stats(arr)
    if hi == 0.0:
        return Scaled(arr, 0, risky, zero=True)
    if not math.isfinite(hi):
        raise FloatingPointError("a count became infinite; please report this as a bug")
    risky = risky or (math.log2(hi) - math.log2(lo) > RISKY_BITS)
    shift = math.frexp(hi)[1]  # hi in [2**(shift-1), 2**shift)
    if -SLACK_BITS < shift <= SLACK_BITS:
        return Scaled(arr, e, risky, hi=hi)
    if copy:
        arr = arr.copy()
    _scale(arr, shift)
    return Scaled(arr, e + shift, risky, hi=math.ldexp(hi, -shift))


def combine(parts: list[Scaled], n: int, *, integer: bool = False) -> Scaled:
    """Sum of scaled vectors of length ``n`` (a zero vector if there are none).

    The parts are not modified; a lone part is returned as is (or rescaled on a
    copy if it left the slack window). ``integer`` as in :func:`normalize`.
    """
    live = [p for p in parts if not p.zero]
    risky = any(p.risky for p in parts)
    if not live:
        return Scaled(np.zeros(n), 0, risky, zero=True)
    if len(live) == 1:
        p = live[0]
        if p.hi is not None:
            return p if p.risky == risky else Scaled(p.m, p.e, risky, hi=p.hi)
        return normalize(p.m, p.e, risky, copy=True, integer=integer)
    e_max = max(p.e for p in live)
    acc, owned = None, False  # never write into a part's array
    bound = 0.0 if integer else None
    for p in live:
        if bound is not None:
            bound = None if p.hi is None else bound + math.ldexp(p.hi, p.e - e_max)
        gap = e_max - p.e
        if gap > RISKY_BITS:
            risky = True
        if gap == 0:
            term, fresh = p.m, False
        else:
            term, fresh = p.m * 2.0 ** -min(gap, 1000), True
            _scale(term, gap - min(gap, 1000))
        if acc is None:
            acc, owned = term, fresh
        elif n >= PARALLEL_ADD_MIN:
            out = acc if owned else np.empty(n)
            add_into(acc, term, out)
            acc, owned = out, True
        elif owned:
            acc += term
        else:
            acc, owned = acc + term, True
    return normalize(acc, e_max, risky, integer=integer, bound=bound)


def log10_sum(parts: list[Scaled]) -> float:
    """log10 of the sum of all entries of all parts."""
    totals = [(float(p.m.sum()), p.e) for p in parts]
    totals = [(t, e) for t, e in totals if t > 0.0]
    if not totals:
        return -math.inf
    e_max = max(e for _, e in totals)
    s = sum(math.ldexp(t, e - e_max) for t, e in totals)
    return log10_scaled(s, e_max)


@dataclass(frozen=True)
class NodeCounts:
    """Per-node path counts of one node group, ``mantissa * 2**exponent``.

    ``mantissa`` has the group's shape: ``(units,)`` at channel resolution, the
    per-sample tensor shape at neuron resolution.
    """

    mantissa: np.ndarray
    exponent: int

    @property
    def log10(self) -> np.ndarray:
        """log10 of every count (``-inf`` where the count is zero)."""
        return Scaled(self.mantissa, self.exponent).log10()

    @property
    def log10_total(self) -> float:
        return Scaled(self.mantissa, self.exponent).log10_total()

    def to_float(self) -> np.ndarray:
        """The counts as float64 (may overflow to inf; use ``log10`` for big nets)."""
        with np.errstate(over="ignore"):
            return np.ldexp(self.mantissa, self.exponent)
