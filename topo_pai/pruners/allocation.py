"""Layerwise allocations: how many weights each layer keeps.

Every allocation first gives each layer a real density ``d_l``; exact integer
counts then follow one rule everywhere:

* the total kept is ``K = floor((1 - sparsity) * N + 0.5)`` (round half up),
  where ``N`` counts the prunable, non-excluded weights;
* layer ``l`` keeps ``floor(n_l * d_l)`` weights, and the ``K - sum floor(...)``
  weights left over go one each to the layers with the largest fractional parts
  ``n_l * d_l - floor(n_l * d_l)`` (largest-remainder rounding; ties go to the
  earlier layer), never above ``n_l``.

Allocations
-----------
``"uniform"``
    ``d_l = 1 - sparsity`` for every layer.
``"uniform+"``
    Gale et al. (2019): the first prunable layer in topological order
    (``Topology.layers[0]``) is dense, the last one (``Topology.layers[-1]``)
    keeps at least ``last_layer_min_density`` (default 0.2, i.e. its sparsity is
    capped at 80 %), and all other layers share the rest uniformly. When the
    uniform density of the non-first layers is already at least the floor, the
    last layer simply gets that density.
``"erk"``
    Erdős–Rényi-kernel (Evci et al. 2020): ``d_l = min(1, eps * r_l)`` with
    ``r_l = (sum(shape_l) / prod(shape_l)) ** erk_power`` (``erk_power`` default
    1); layers that would exceed density 1 are dense and ``eps`` is re-solved
    for the rest. ``erk_include_kernel=False`` uses only the (out, in) dims.
``"erk+"``
    ERK with the last layer in topological order (the classifier) dense.
``"ratios:<method>"``
    The per-layer counts of ``<method>``'s global ranking (resolved in
    :mod:`topo_pai.pruners.api`), with the pruning method's own options when
    ``<method>`` is that method (``prune(m, "synflow", s, allocation="ratios:synflow",
    rounds=2)``) and with ``<method>``'s defaults otherwise.
a dict
    ``{param or module name: density}`` for every non-excluded prunable layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from topo_pai.checks import check_bool, check_number
from topo_pai.registry import Registry


def check_allocation_options(options: Mapping) -> dict:
    """Allocation options (fields of :class:`ERKOptions`, :class:`UniformPlusOptions`)
    validated, as plain Python values.

    ``erk_power`` is a finite number ``>= 0`` (1 is ERK, 0 is uniform),
    ``erk_include_kernel`` a bool and ``last_layer_min_density`` a number in ``[0, 1]``.

    >>> check_allocation_options({"erk_power": 2, "erk_include_kernel": False,
    ...                           "last_layer_min_density": 0.5})
    {'erk_power': 2.0, 'erk_include_kernel': False, 'last_layer_min_density': 0.5}
    >>> check_allocation_options({"erk_power": float("inf")})
    Traceback (most recent call last):
    ...
    ValueError: erk_power must be a finite number >= 0, got inf; 1 is ERK, 0 is uniform
    """
    out = dict(options)
    if "erk_power" in out:
        out["erk_power"] = check_number("erk_power", out["erk_power"], minimum=0.0,
                                        hint="1 is ERK, 0 is uniform")
    if "erk_include_kernel" in out:
        out["erk_include_kernel"] = check_bool("erk_include_kernel", out["erk_include_kernel"])
    if "last_layer_min_density" in out:
        out["last_layer_min_density"] = check_number(
            "last_layer_min_density", out["last_layer_min_density"], minimum=0.0, maximum=1.0)
    return out


def n_keep(total: int, sparsity: float) -> int:
    """Number of weights kept out of ``total`` at ``sparsity``: round half up.

    >>> n_keep(270_000, 0.9), n_keep(10, 0.25), n_keep(3, 0.5)
    (27000, 8, 2)
    """
    return min(int(total), max(0, int(math.floor((1.0 - sparsity) * total + 0.5))))


def largest_remainder(targets: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers ``c_l`` in ``[0, caps_l]`` summing to ``total``, each within one of
    ``targets_l`` (largest-remainder rounding; ties go to the earlier entry).

    >>> largest_remainder([1.5, 1.5, 1.0], [3, 3, 3], 4)
    [2, 1, 1]
    >>> largest_remainder([0.4, 0.4, 0.2], [1, 1, 1], 1)
    [1, 0, 0]
    """
    x = np.clip(np.asarray(targets, dtype=np.float64), 0.0, None)
    caps = np.asarray(caps, dtype=np.int64)
    if total > caps.sum() or total < 0:
        raise ValueError(f"cannot place {total} kept weights in layers of {int(caps.sum())} "
                         "weights")
    c = np.minimum(np.floor(x).astype(np.int64), caps)
    left = int(total - c.sum())
    order_key = np.arange(len(c))
    while left != 0:
        if left > 0:
            room = np.flatnonzero(c < caps)
            # largest remainder first; lexsort sorts by the last key, ties by index
            pick = room[np.lexsort((order_key[room], -(x[room] - c[room])))][:left]
            c[pick] += 1
        else:
            have = np.flatnonzero(c > 0)
            pick = have[np.lexsort((-order_key[have], x[have] - c[have]))][:-left]
            c[pick] -= 1
        left = int(total - c.sum())
    return [int(v) for v in c]


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, *, power: float = 1.0,
                  include_kernel: bool = True, dense: Sequence[str] = ()) -> dict[str, float]:
    """Erdős–Rényi-kernel densities whose kept weights add up to ``density * N``.

    Parameters
    ----------
    shapes : mapping
        Layer name to weight shape (PyTorch order: ``(out, in, *kernel)``).
    density : float
        Overall fraction of weights kept, over all layers in ``shapes``.
    power : float
        ``erk_power``: the ERK ratio is raised to this power (1 is ERK; 0 is uniform).
    include_kernel : bool
        Whether kernel dims enter the ratio (ERK) or only ``(out, in)`` (ER).
    dense : sequence of str
        Layers forced dense (ERK+: the classifier).

    Returns
    -------
    dict
        Layer name to density in ``[0, 1]``.

    Examples
    --------
    jaxpruner's hand-checked values (``sparsity_distributions_test.py``), as
    sparsities, for shapes (2, 4), (3, 6) and (2, 4, 6) at 50 % sparsity:

    >>> d = erk_densities({"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}, 0.5)
    >>> {k: round(1 - v, 3) for k, v in d.items()}
    {'a': 0.0, 'b': 0.31, 'c': 0.655}
    """
    density = check_number("density", density, minimum=0.0, maximum=1.0)
    power = check_number("erk_power", power, minimum=0.0, hint="1 is ERK, 0 is uniform")
    include_kernel = check_bool("erk_include_kernel", include_kernel)
    names = list(shapes)
    n = {k: int(np.prod(shapes[k])) for k in names}
    total_keep = density * sum(n.values())

    def ratio(k):
        dims = tuple(shapes[k]) if include_kernel else tuple(shapes[k])[:2]
        size = float(np.prod(dims))
        if size == 0:
            return 0.0  # a layer without weights keeps none, whatever its density
        try:
            r = (sum(dims) / size) ** power
        except OverflowError:
            r = math.inf
        if not 0.0 < r < math.inf:  # e.g. erk_power=2000: every ratio 0 would divide by 0
            raise ValueError(f"erk_power={power:g} makes the ERK ratio of layer {k!r} (shape "
                             f"{tuple(shapes[k])}) {'overflow' if r else 'underflow'} float64; "
                             "use a smaller erk_power (1 is ERK, 0 is uniform)")
        return r

    r = {k: ratio(k) for k in names}
    dense_set = set(dense)
    unknown = dense_set - set(names)
    if unknown:
        raise ValueError(f"dense layers {sorted(unknown)} are not among the layers")
    # ERK: layer l keeps d_l = eps * r_l of its n_l weights, r_l = (sum(dims)/prod(dims))**power,
    # except the layers D that are dense (d_l = 1). The budget K = density * N fixes eps:
    #     sum_{l in D} n_l + eps * sum_{l not in D} r_l * n_l = K
    #  => eps = (K - sum_{l in D} n_l) / sum_{l not in D} r_l * n_l.
    # A layer with eps * r_l > 1 cannot keep more than all its weights: it joins D, which frees
    # budget for the others, so eps only grows and no layer ever leaves D. Repeat until none joins.
    while True:
        free = [k for k in names if k not in dense_set]
        budget = total_keep - sum(n[k] for k in dense_set)
        if budget < -1e-9 * max(1.0, total_keep):
            raise ValueError(f"the dense layers {sorted(dense_set)} alone hold "
                             f"{sum(n[k] for k in dense_set)} weights, more than the "
                             f"{total_keep:.0f} kept at density {density:g} (erk+ keeps the "
                             "last layer dense); use a lower sparsity or allocation 'erk'")
        if not free:
            eps = 0.0
            break
        weight = sum(r[k] * n[k] for k in free)
        if not math.isfinite(weight):
            raise ValueError(f"erk_power={power:g} makes the ERK ratios overflow float64; use a "
                             "smaller erk_power (1 is ERK, 0 is uniform)")
        eps = max(budget, 0.0) / weight if weight > 0 else 0.0
        over = [k for k in free if eps * r[k] > 1.0]
        if not over:
            break
        dense_set.update(over)
    return {k: 1.0 if k in dense_set else min(1.0, eps * r[k]) for k in names}


def uniform_plus_densities(sizes: Mapping[str, int], density: float, *, first: str | None,
                           last: str | None, last_min_density: float = 0.2) -> dict[str, float]:
    """uniform+ densities (see the module docstring) over the layers in ``sizes``.

    ``first``/``last`` name the first and last prunable layers in topological
    order, or ``None`` when that layer is not among ``sizes`` (e.g. excluded, so
    already dense).

    >>> d = uniform_plus_densities({"in": 100, "mid": 1000, "out": 100}, 0.1,
    ...                            first="in", last="out")
    >>> {k: round(v, 4) for k, v in d.items()}
    {'in': 1.0, 'mid': 0.0, 'out': 0.2}
    >>> d = uniform_plus_densities({"in": 10, "mid": 1000, "out": 100}, 0.1,
    ...                            first="in", last="out")
    >>> {k: round(v, 4) for k, v in d.items()}
    {'in': 1.0, 'mid': 0.081, 'out': 0.2}
    """
    density = check_number("density", density, minimum=0.0, maximum=1.0)
    last_min_density = check_number("last_layer_min_density", last_min_density, minimum=0.0,
                                    maximum=1.0)
    total_keep = density * sum(sizes.values())
    out = {k: 0.0 for k in sizes}
    rest = dict(sizes)
    if first is not None:
        out[first] = 1.0
        total_keep -= rest.pop(first)
        if total_keep < -1e-9:
            raise ValueError(
                f"uniform+ keeps the first layer '{first}' dense ({sizes[first]} weights), which "
                f"is more than the {density * sum(sizes.values()):.0f} weights kept at density "
                f"{density:g}; use a lower sparsity or another allocation")
    total_keep = max(total_keep, 0.0)
    n_rest = sum(rest.values())
    d = total_keep / n_rest if n_rest else 0.0
    # the fewest whole weights that meet the minimum: a fractional target could be
    # rounded down below it
    need = math.ceil(last_min_density * rest[last] - 1e-9) if last in rest else 0
    if last is not None and last in rest and d * rest[last] < need:
        mids = {k: v for k, v in rest.items() if k != last}
        left = total_keep - need
        if not mids or left < -1e-9:
            raise ValueError(
                f"uniform+ keeps the last layer '{last}' at density >= {last_min_density:g}, "
                f"which needs more weights than the budget leaves at density {density:g}; "
                "lower last_layer_min_density or use another allocation")
        out[last] = need / rest[last]
        d_mid = max(left, 0.0) / sum(mids.values())
        for k in mids:
            out[k] = d_mid
    else:
        for k in rest:
            out[k] = d
    return out


def counts_from_densities(sizes: Mapping[str, int], densities: Mapping[str, float],
                          total: int) -> dict[str, int]:
    """Exact per-layer counts summing to ``total`` (largest-remainder rounding)."""
    names = list(sizes)
    counts = largest_remainder([sizes[k] * densities[k] for k in names],
                               [sizes[k] for k in names], total)
    return dict(zip(names, counts))


# -- the registry of named allocations: one signature for all -----------------------------
#: ``fn(shapes, density, order, params) -> {name: density}``: ``shapes`` of the pruned
#: layers, the overall ``density``, ``order()`` giving the first and last pruned layer in
#: topological order (``None`` when not pruned; computed only when asked for) and the
#: allocation's options (its params dataclass, or ``None``).
AllocationFn = Callable[[Mapping[str, Sequence[int]], float, Callable, object], dict]


@dataclass(frozen=True)
class _Validated:
    def __post_init__(self):
        for k, v in check_allocation_options(dataclasses.asdict(self)).items():
            object.__setattr__(self, k, v)


@dataclass(frozen=True)
class UniformPlusOptions(_Validated):
    """Options of ``"uniform+"``."""

    last_layer_min_density: float = 0.2


@dataclass(frozen=True)
class ERKOptions(_Validated):
    """Options of ``"erk"`` and ``"erk+"``."""

    erk_power: float = 1.0
    erk_include_kernel: bool = True


def _sizes(shapes) -> dict[str, int]:
    return {n: int(np.prod(s, dtype=np.int64)) for n, s in shapes.items()}


def _uniform(shapes, density, order, params) -> dict[str, float]:
    return {n: density for n in shapes}


def _uniform_plus(shapes, density, order, params: UniformPlusOptions) -> dict[str, float]:
    first, last = order()
    return uniform_plus_densities(_sizes(shapes), density, first=first, last=last,
                                  last_min_density=params.last_layer_min_density)


def _erk(shapes, density, order, params: ERKOptions) -> dict[str, float]:
    return erk_densities(shapes, density, power=params.erk_power,
                         include_kernel=params.erk_include_kernel)


def _erk_plus(shapes, density, order, params: ERKOptions) -> dict[str, float]:
    _, last = order()
    return erk_densities(shapes, density, power=params.erk_power,
                         include_kernel=params.erk_include_kernel,
                         dense=() if last is None else (last,))


#: The named allocations (besides ``"ratios:<method>"`` and ``{name: density}``).
ALLOCATIONS: Registry[AllocationFn] = Registry("allocation")
ALLOCATIONS.register("uniform", _uniform, summary="the same density in every layer")
ALLOCATIONS.register("uniform+", _uniform_plus, params=UniformPlusOptions,
                     summary="first layer dense, last at least last_layer_min_density")
ALLOCATIONS.register("erk", _erk, params=ERKOptions, summary="Erdős–Rényi-kernel")
ALLOCATIONS.register("erk+", _erk_plus, params=ERKOptions,
                     summary="Erdős–Rényi-kernel, last layer dense")
NAMED_ALLOCATIONS = tuple(ALLOCATIONS.names())


def allocation_options() -> dict[str, list[str]]:
    """Every allocation option name to the allocations that take it."""
    out: dict[str, list[str]] = {}
    for entry in ALLOCATIONS.entries():
        for name in entry.option_names():
            out.setdefault(name, []).append(entry.name)
    return out
