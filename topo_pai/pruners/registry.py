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
    exponential schedule ``density_t = density ** (t / rounds)`` and sets
    ``ctx.round`` (1, 2, ...) before each call. ``density`` is that of the final kept
    count (``keep / total``, ``keep = round((1 - sparsity) * total)``), not the requested
    ``1 - sparsity``: a round before the last may keep one weight more or fewer than
    Synaptic-Flow's ``(1 - sparsity) ** (t / rounds)``; the last keeps ``keep``. Its ``rounds`` option is the loop's.
``"masks"``
    ``fn(ctx, budgets, **options) -> {param: bool array}`` meeting every
    layer's integer budget exactly (PHEW, shuffle).

Any kind may return a :class:`MethodOutput` instead, to hand back its own account of
the run (NPB's balance report), which ``prune_with_scores`` returns as ``.report``.

Options are a frozen dataclass declared beside each method (``params``): keyword
options of :func:`~topo_pai.prune` map to its fields, which validate themselves; the
function is called with the fields as keyword arguments.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from topo_pai.registry import Entry, Registry

KINDS = ("score", "iterative", "masks")


@dataclass(frozen=True)
class MethodOutput:
    """What a method may return instead of a plain mapping: its result (scores or
    masks) and its own account of the run (``report``, e.g. NPB's balance report)."""

    result: Mapping
    report: Any = None


def options_dataclass(name: str, options: Mapping[str, Any]) -> type:
    """A frozen dataclass whose fields are ``options`` (name to default), for methods
    registered with an ``options`` dict instead of a ``params`` dataclass."""
    def default(v):
        if isinstance(v, (list, dict, set)):
            return field(default_factory=lambda v=v: copy.deepcopy(v))
        return field(default=v)

    cls_name = "".join(part.capitalize() for part in name.split("_")) + "Options"
    return dataclasses.make_dataclass(cls_name, [(k, Any, default(v)) for k, v in options.items()],
                                      frozen=True)


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
    params : dataclass type, optional
        The method's options (hyperparameters): a frozen dataclass whose fields have
        defaults and validate themselves in ``__post_init__``; ``prune(**options)``
        overrides them by name.
    options : dict
        Option name to default value, for a method registered without ``params``
        (a dataclass is made from it); with ``params``, its defaults (filled in).
    default_allocation : str or None
        Layer budgets used when neither ``allocation`` nor ``scope="layer"`` is
        given; ``None`` means one global threshold over the scores.
    summary : str
        One line for :func:`describe_methods`.
    budgets_from_option : str or None
        For ``"masks"`` methods that keep given masks' per-layer counts (shuffle):
        the option holding those masks; ``allocation`` and ``scope`` then do not apply.
    forwards_options : bool
        Pass options not in ``params`` through to ``fn`` (which validates them).
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
    params: type | None = None

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", options_dataclass(self.name, self.options))
        else:
            defaults = self.entry.defaults()
            if self.options and self.options != defaults:  # (dataclasses.replace passes both)
                raise ValueError(f"method {self.name!r}: give its options as params (a "
                                 "dataclass) or as options (a dict of defaults), not both")
            object.__setattr__(self, "options", defaults)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "masks" and self.default_allocation is None
                and self.budgets_from_option is None):
            raise ValueError(f"method {self.name!r} builds masks for layer budgets, so it needs "
                             "a default_allocation (e.g. 'erk')")

    @property
    def entry(self) -> Entry:
        """The method as a registry entry (its name, itself, its params dataclass)."""
        return Entry(self.name, self, self.params, self.summary)

    def make_params(self, options: Mapping[str, Any]):
        """The method's params dataclass from keyword ``options`` (unknown ones refused,
        naming the method and listing the valid options)."""
        return self.entry.make_params(dict(options), owner=f"method {self.name!r}")


#: The registered pruning methods.
METHODS: Registry[Method] = Registry(
    "pruning method", hint=" (or register one with topo_pai.pruners.register_method)")


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Add ``method`` to the registry (``overwrite=True`` to replace a name).

    A newly registered method also needs a configuration in the invariant
    suite (``tests/pruners/test_pruners.py``); the suite fails until it has one.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method expects a Method, got {type(method).__name__}")
    return METHODS.register(method.name, method, params=method.params, summary=method.summary,
                            overwrite=overwrite)


def available_methods() -> list[str]:
    """Names of the registered pruning methods, sorted.

    >>> from topo_pai.pruners import available_methods
    >>> {"random", "magnitude", "snip", "synflow"} <= set(available_methods())
    True
    """
    _ensure_builtins()
    return sorted(METHODS.names())


def get_method(name) -> Method:
    """The registered :class:`Method` called ``name``; ``ValueError`` listing the valid
    names otherwise."""
    _ensure_builtins()
    return METHODS.get(name)


def describe_methods() -> str:
    """A one-line-per-method table: name, kind, data, options and their defaults."""
    _ensure_builtins()
    lines = []
    for name in sorted(METHODS.names()):
        m = METHODS.get(name)
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
