"""Statistics for studies whose arms share their seeds: paired differences, Holm's
correction and collapse rates.

Every arm of one seed starts from the same initial weights and sees the same batches
(:mod:`topo_pai.experiments.sweep`), so two arms are compared through the differences of
their accuracies seed by seed, not as two independent samples. Runs that collapse to
chance make a cell bimodal; there a t-test means little, so :func:`compare_arms` reports the
two collapse rates instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Default accuracy below which a run counts as collapsed (chance is 0.1 for 10 classes).
COLLAPSE_BELOW = 0.2


@dataclass(frozen=True)
class PairedDifference:
    """Paired differences ``a_s - b_s`` over the seeds both arms have.

    Attributes
    ----------
    seeds : tuple of int
    mean : float
        Mean difference.
    ci : tuple of float
        t-based two-sided confidence interval of the mean (``nan`` with one seed).
    dz : float
        Effect size ``mean / sd`` of the differences (``inf`` with a non-zero mean
        and no spread, ``nan`` with one seed).
    p : float
        Two-sided paired t-test of a zero mean (``nan`` with one seed; 1.0 when
        every difference is 0).
    p_greater, p_less : float
        One-sided p-values of ``mean > margin`` (against ``H0: mean <= margin``) and
        of ``mean < margin`` (against ``H0: mean >= margin``). Non-inferiority of
        ``b`` to ``a`` within a margin ``m`` is ``p_less`` with ``margin=m``.
    margin : float
    """

    seeds: tuple[int, ...]
    mean: float
    ci: tuple[float, float]
    dz: float
    p: float
    p_greater: float
    p_less: float
    margin: float = 0.0

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *, margin: float = 0.0,
                      level: float = 0.95) -> PairedDifference:
    """Compare two arms given as ``{seed: value}`` over the seeds both have.

    Parameters
    ----------
    a, b : mapping of seed to float
    margin : float
        The shift of the one-sided tests ``p_greater`` and ``p_less``.
    level : float
        Confidence level of :attr:`PairedDifference.ci`.

    Notes
    -----
    With one shared seed every test, the interval and ``dz`` are ``nan``. When every
    seed moved by exactly the same amount (no spread), the t statistic is undefined
    (``scipy.stats.ttest_rel`` returns ``nan``); this function returns the t-test's limit
    as the spread goes to zero instead: ``p = 0`` for a non-zero shift (``1`` for none),
    ``ci = (mean, mean)``, ``dz = ±inf``, and the one-sided p-values 0 or 1 by the side
    of ``margin`` the shift lies on. Such a ``p`` counts as significant under
    :func:`holm`; with few seeds (two runs that differ by the same number of test
    samples) it says only that the seeds agreed, so report ``n`` beside it.

    Examples
    --------
    >>> d = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.75, 2: 0.6})
    >>> d.n, round(d.mean, 4), round(d.p, 4)
    (3, 0.0833, 0.0377)

    Every seed 0.25 apart (0.25 and the values are exact in binary):

    >>> d = paired_difference({0: 1.0, 1: 0.5}, {0: 0.75, 1: 0.25})
    >>> d.mean, d.p, d.dz, d.ci
    (0.25, 0.0, inf, (0.25, 0.25))
    """
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError(f"the arms share no seed (seeds {sorted(a)} and {sorted(b)})")
    missing = [s for s in seeds if a[s] is None or b[s] is None]
    if missing:
        raise ValueError(f"seed(s) {missing} have no value (None) in one arm; drop them, or "
                         "record the run's value")
    d = np.array([float(a[s]) - float(b[s]) for s in seeds])
    if not np.isfinite(d).all():
        raise ValueError(f"non-finite values among the paired differences {d.tolist()}")
    mean = float(d.mean())
    n = d.size
    if n < 2:
        return PairedDifference(seeds, mean, (math.nan, math.nan), math.nan, math.nan,
                                math.nan, math.nan, margin)
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # every seed moved by exactly the same amount: no spread to test against
        dz = math.copysign(math.inf, mean) if mean != 0.0 else math.nan
        p = 1.0 if mean == 0.0 else 0.0
        p_greater = 0.0 if mean > margin else 1.0
        p_less = 0.0 if mean < margin else 1.0
        return PairedDifference(seeds, mean, (mean, mean), dz, p, p_greater, p_less, margin)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    t0 = mean / se
    tm = (mean - margin) / se
    p = float(2 * stats.t.sf(abs(t0), n - 1))
    p_greater = float(stats.t.sf(tm, n - 1))
    p_less = float(stats.t.cdf(tm, n - 1))
    return PairedDifference(seeds, mean, (mean - half, mean + half), mean / sd, p, p_greater,
                            p_less, margin)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (``nan`` stays ``nan``
    and does not count as a test).

    ``adjusted[i] <= alpha`` exactly when Holm's procedure at level ``alpha`` rejects
    hypothesis ``i``; this controls the family-wise error rate at ``alpha``.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, float("nan")])
    [0.03, 0.06, 0.06, nan]
    """
    kinds = [x for x in pvalues if isinstance(x, (str, bytes, bool, np.bool_))]
    if kinds:
        raise ValueError(f"p-values must be numbers, got {kinds[:3]}")
    p = [float(x) for x in pvalues]
    bad = [x for x in p if not (math.isnan(x) or 0.0 <= x <= 1.0)]
    if bad:
        raise ValueError(f"p-values must lie in [0, 1] (or be nan), got {bad}")
    live = sorted((x, i) for i, x in enumerate(p) if not math.isnan(x))
    m = len(live)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (x, i) in enumerate(live):
        running = max(running, min(1.0, (m - rank) * x))
        out[i] = running
    return out


def collapsed(values: Mapping[int, float], below: float = COLLAPSE_BELOW) -> dict[int, bool]:
    """``{seed: value < below}``: which runs fell to (near) chance."""
    return {s: float(v) < below for s, v in values.items()}


@dataclass(frozen=True)
class ArmComparison:
    """What :func:`compare_arms` found for arms ``a`` and ``b`` over their shared seeds.

    ``test`` is None when a run of either arm collapsed; then only the collapse
    counts ``collapsed_a / n`` and ``collapsed_b / n`` speak."""

    n: int
    collapsed_a: int
    collapsed_b: int
    test: PairedDifference | None


def compare_arms(a: Mapping[int, float], b: Mapping[int, float], *,
                 collapse: Mapping[int, float] | None = None,
                 collapse_b: Mapping[int, float] | None = None, margin: float = 0.0,
                 below: float = COLLAPSE_BELOW) -> ArmComparison:
    """Paired comparison of ``a`` and ``b`` (``{seed: accuracy}``), unless a run collapsed.

    ``collapse`` / ``collapse_b`` are the values that decide collapse for each arm
    (e.g. validation accuracy, so that the test set decides nothing); by default the
    compared values themselves.

    Examples
    --------
    >>> c = compare_arms({0: 0.8, 1: 0.1}, {0: 0.7, 1: 0.6})
    >>> c.n, c.collapsed_a, c.collapsed_b, c.test is None
    (2, 1, 0, True)
    """
    seeds = sorted(set(a) & set(b))
    deciding = []
    for name, given, own in (("collapse", collapse, a), ("collapse_b", collapse_b, b)):
        if given is None:  # `is None`: an empty mapping given is not "use the compared values"
            given = own
        lacking = [s for s in seeds if s not in given]
        if lacking:
            raise ValueError(f"{name} has no value for seed(s) {lacking} of the compared "
                             "arms; give one for every shared seed")
        deciding.append(given)
    ca = collapsed({s: deciding[0][s] for s in seeds}, below)
    cb = collapsed({s: deciding[1][s] for s in seeds}, below)
    k_a, k_b = sum(ca.values()), sum(cb.values())
    test = None
    if k_a == 0 and k_b == 0 and seeds:
        test = paired_difference({s: a[s] for s in seeds}, {s: b[s] for s in seeds},
                                 margin=margin)
    return ArmComparison(len(seeds), k_a, k_b, test)
