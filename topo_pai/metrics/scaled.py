"""Overflow-free non-negative counts: ``value = mantissa * 2**exponent``.

Each vector carries one exponent and mantissas with maximum in [0.5, 1), so a
count of 10**5000 is as cheap as a count of 5. Scaling is by exact powers of
two, hence the only precision loss is float64 rounding in the sums (relative
1e-16 per op), not in the scaling.

An entry smaller than ``2**-1074`` times its vector's maximum would underflow
to zero and look unreachable. Vectors whose dynamic range comes near that are
flagged ``risky``; reachability is then recomputed in 0/1 arithmetic instead
of being read off the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from topo_pai.kernels import propagate as K

RISKY_BITS = 900  # dynamic range (in bits) past which reachability is re-checked in 0/1
LOG10_2 = math.log10(2.0)


@dataclass
class Scaled:
    m: np.ndarray
    e: int = 0
    risky: bool = False
    zero: bool = False  # known to be all zeros (lets sums skip it)

    def log10_total(self) -> float:
        total = 0.0 if self.zero else float(self.m.sum())
        return -math.inf if total == 0.0 else math.log10(total) + self.e * LOG10_2


def _scale(arr: np.ndarray, shift: int) -> None:
    """``arr *= 2**-shift`` exactly (a power-of-two product is exact unless subnormal)."""
    while shift:
        step = max(-1000, min(1000, shift))
        arr *= 2.0 ** -step
        shift -= step


def normalize(arr: np.ndarray, e: int = 0, risky: bool = False) -> Scaled:
    """Rescale ``arr`` in place so that its maximum lies in [0.5, 1)."""
    hi, lo = K.scale_stats(arr)
    if hi == 0.0:
        return Scaled(arr, 0, risky, zero=True)
    if not math.isfinite(hi):
        raise FloatingPointError("a count became infinite; please report this as a bug")
    shift = math.frexp(hi)[1]
    _scale(arr, shift)
    risky = risky or (math.log2(hi) - math.log2(lo) > RISKY_BITS)
    return Scaled(arr, e + shift, risky)


def combine(parts: list[Scaled], n: int) -> Scaled:
    """Sum of scaled vectors of length ``n`` (a zero vector if there are none).

    The parts are not modified; a lone part is returned as is.
    """
    live = [p for p in parts if not p.zero]
    risky = any(p.risky for p in parts)
    if not live:
        return Scaled(np.zeros(n), 0, risky, zero=True)
    if len(live) == 1:
        p = live[0]
        hi, _ = K.scale_stats(p.m)
        if 0.5 <= hi < 1.0:
            return Scaled(p.m, p.e, risky)
        return normalize(p.m.copy(), p.e, risky)
    e_max = max(p.e for p in live)
    acc = np.zeros(n)
    for p in live:
        gap = e_max - p.e
        if gap > RISKY_BITS:
            risky = True
        if gap == 0:
            acc += p.m
        else:
            tmp = p.m.copy()
            _scale(tmp, gap)
            acc += tmp
    return normalize(acc, e_max, risky)


def log10_sum(parts: list[Scaled]) -> float:
    """log10 of the sum of all entries of all parts."""
    totals = [(float(p.m.sum()), p.e) for p in parts]
    totals = [(t, e) for t, e in totals if t > 0.0]
    if not totals:
        return -math.inf
    e_max = max(e for _, e in totals)
    s = sum(math.ldexp(t, e - e_max) for t, e in totals)
    return math.log10(s) + e_max * LOG10_2


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
        with np.errstate(divide="ignore"):
            return np.log10(self.mantissa) + self.exponent * LOG10_2

    @property
    def log10_total(self) -> float:
        return Scaled(self.mantissa, self.exponent).log10_total()

    def to_float(self) -> np.ndarray:
        """The counts as float64 (may overflow to inf; use ``log10`` for big nets)."""
        with np.errstate(over="ignore"):
            return np.ldexp(self.mantissa, self.exponent)
