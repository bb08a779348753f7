"""The registry of pruning methods.

A method supplies *scores* (or, for the two mask-building methods, masks for
given budgets); everything else -- validation, layer budgets, thresholding,
tie-breaking, iteration schedules -- is shared (see :mod:`topo_pai.pruners.api`).
This is the split of open_lth's strategies and jaxpruner's ``calculate_scores``.

Kinds
-----
``"score"``
    ``fn(ctx, masks, **options) -> {param: float64 array}``, called once with
    ``masks=None``. Higher scores are kept; ``-inf`` is allowed (log-scores).
``"iterative"``
    The same signature, called once per round with the current masks (dict of
    bool arrays, excluded layers absent); the shared loop prunes along the
    exponential schedule ``density_t = density ** (t / rounds)``.
``"masks"``
    ``fn(ctx, budgets, **options) -> {param: bool array}`` meeting every
    layer's integer budget exactly (PHEW, shuffle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("score", "iterative", "masks")


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"snip"``.
    kind : {"score", "iterative", "masks"}
        See the module docstring.
    fn : callable
        The scoring (or mask-building) function.
    needs_data : bool
        Whether ``prune`` must be given ``data``.
    randomized : bool
        Whether the masks depend on ``seed`` beyond tie-breaking (random,
        PHEW, shuffle): tests check that another seed gives other masks.
    options : dict
        Option name to default value; ``prune(**options)`` may override them.
    default_allocation : str or None
        Layer budgets used when neither ``allocation`` nor ``scope="layer"`` is
        given; ``None`` means one global threshold over the scores.
    summary : str
        One line for :func:`describe_methods`.
    budgets_from_option : str or None
        For ``"masks"`` methods that keep given masks' per-layer counts (shuffle):
        the option holding those masks; ``allocation`` and ``scope`` then do not apply.
    forwards_options : bool
        Pass options not in ``options`` through to ``fn`` (which validates them).
    """

    name: str
    kind: str
    fn: Callable
    needs_data: bool = False
    randomized: bool = False
    options: dict = field(default_factory=dict)
    default_allocation: str | None = None
    summary: str = ""
    budgets_from_option: str | None = None
    forwards_options: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "masks" and self.default_allocation is None
                and self.budgets_from_option is None):
            raise ValueError(f"method {self.name!r} builds masks for layer budgets, so it needs "
                             "a default_allocation (e.g. 'erk')")


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Add ``method`` to the registry (``overwrite=True`` to replace a name).

    A newly registered method also needs a configuration in the invariant
    suite (``tests/pruners/test_pruners.py``); the suite fails until it has one.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method expects a Method, got {type(method).__name__}")
    if method.name in _REGISTRY and not overwrite:
        raise ValueError(f"a method named {method.name!r} is already registered; pass "
                         "overwrite=True to replace it")
    _REGISTRY[method.name] = method
    return method


def available_methods() -> list[str]:
    """Names of the registered pruning methods, sorted.

    >>> from topo_pai.pruners import available_methods
    >>> {"random", "magnitude", "snip", "synflow"} <= set(available_methods())
    True
    """
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_method(name) -> Method:
    """The registered :class:`Method` called ``name``; ``ValueError`` listing the valid
    names otherwise."""
    _ensure_builtins()
    if not isinstance(name, str) or name not in _REGISTRY:
        from topo_pai.checks import did_you_mean

        raise ValueError(f"unknown pruning method {name!r};{did_you_mean(name, _REGISTRY)} "
                         f"valid methods are: "
                         f"{', '.join(sorted(_REGISTRY))} (or register one with "
                         "topo_pai.pruners.register_method)")
    return _REGISTRY[name]


def describe_methods() -> str:
    """A one-line-per-method table: name, kind, data, options and their defaults."""
    _ensure_builtins()
    lines = []
    for name in sorted(_REGISTRY):
        m = _REGISTRY[name]
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items()) or "-"
        data = "data" if m.needs_data else "data-free"
        lines.append(f"{name:<10} {m.kind:<9} {data:<9} {opts}  -- {m.summary}")
    return "\n".join(lines)


#: Modules of topo_pai whose import registers methods. Imported on the first registry
#: query, so that the methods shipped with topo_pai do not depend on import order.
BUILTIN_MODULES = ("topo_pai.pruners.methods", "topo_pai.npb.methods")


def _ensure_builtins() -> None:
    # Importing here (not at module import) keeps `import topo_pai` free of torch.
    import importlib
    import sys

    for name in BUILTIN_MODULES:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional part of topo_pai that is absent
            if exc.name is None or not name.startswith(exc.name):
                raise
