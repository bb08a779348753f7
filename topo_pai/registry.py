"""One registry shape for every concern: pruning methods, allocations, models, datasets.

A :class:`Registry` maps a name to an :class:`Entry`: the registered object, the
dataclass of its hyperparameters (``None`` when it takes none) and a one-line summary.
``get`` refuses an unknown name with an error that lists the valid names and the
closest one. (open_lth's ``registry.py`` shape, one per concern, all alike.)

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ScaleOptions:
...     factor: float = 2.0
>>> reg = Registry("scaler")
>>> _ = reg.register("double", lambda x, factor: factor * x, params=ScaleOptions)
>>> reg.names(), reg.entry("double").defaults()
(['double'], {'factor': 2.0})
>>> reg.get("dubble")
Traceback (most recent call last):
...
ValueError: unknown scaler 'dubble'. Did you mean 'double'? Available scalers: double
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from topo_pai.checks import did_you_mean, prefixed

T = TypeVar("T")
_RAISE = object()


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object: its ``name``, the object (``value``), the dataclass of its
    hyperparameters (``params``; ``None``: it takes none) and a one-line ``summary``."""

    name: str
    value: T
    params: type | None = None
    summary: str = ""

    def option_names(self) -> list[str]:
        """The hyperparameters' names, in declaration order."""
        return [] if self.params is None else [f.name for f in dataclasses.fields(self.params)]

    def defaults(self) -> dict[str, Any]:
        """Hyperparameter name to its default (fields without one are left out)."""
        if self.params is None:
            return {}
        out = {}
        for f in dataclasses.fields(self.params):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def make_params(self, options: dict[str, Any], *, owner: str | None = None):
        """The hyperparameter dataclass built from ``options`` (keyword options map to its
        fields; the dataclass validates them). An unknown option is refused, naming
        ``owner`` (default: the entry) and listing the valid options; a value the
        dataclass refuses keeps its error, prefixed with ``owner`` when given.

        >>> @dataclass(frozen=True)
        ... class Rounds:
        ...     rounds: int = 1
        ...     def __post_init__(self):
        ...         if self.rounds < 1:
        ...             raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        >>> Entry("iterate", None, Rounds).make_params({"rounds": 0}, owner="method 'iterate'")
        Traceback (most recent call last):
        ...
        ValueError: method 'iterate': rounds must be >= 1, got 0
        """
        valid = self.option_names()
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for "
                             f"{owner or repr(self.name)}.{did_you_mean(unknown[0], valid)} "
                             f"Valid options: {', '.join(valid) or 'none'}")
        if self.params is None:
            return None
        try:
            return self.params(**options)
        except (ValueError, TypeError) as exc:
            if owner is None:
                raise
            raise prefixed(exc, owner) from None


def no_key(name: str) -> str:
    return name


def params_from_signature(fn: Callable, skip=(), name: str | None = None) -> type | None:
    """A frozen dataclass of the keyword parameters of ``fn`` (those with defaults, less
    ``skip``), for callables whose signature already declares their hyperparameters
    (the model builders); ``None`` when there are none."""
    import inspect

    fields = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default if p.default is not p.empty else dataclasses.MISSING
        fields.append((p.name, Any, dataclasses.field(default=default)))
    if not fields:
        return None
    return dataclasses.make_dataclass(name or f"{fn.__name__}_params", fields, frozen=True)


class Registry(Generic[T]):
    """Names to :class:`Entry` objects of one ``kind`` (e.g. ``"pruning method"``).

    Parameters
    ----------
    kind : str
        What is registered, as error messages name it.
    key : callable, optional
        Normalises a name before lookup (e.g. ignoring case, ``-`` and ``_``);
        registered names are normalised the same way.
    hint : str
        Appended to the unknown-name error, e.g. how to register one.
    """

    def __init__(self, kind: str, *, key: Callable[[str], str] = no_key, hint: str = ""):
        self.kind = kind
        self._key = key
        self._hint = hint
        self._entries: dict[str, Entry[T]] = {}
        self._by_key: dict[str, str] = {}

    def register(self, name: str, value: T, *, params: type | None = None, summary: str = "",
                 overwrite: bool = False) -> T:
        """Add ``value`` under ``name`` (``overwrite=True`` replaces an entry); return it."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty str, got {name!r}")
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"params of {self.kind} {name!r} must be a dataclass (its "
                            f"hyperparameters), got {params!r}")
        key = self._key(name)
        if key in self._by_key and not overwrite:
            raise ValueError(f"a {self.kind} named {self._by_key[key]!r} is already "
                             "registered; pass overwrite=True to replace it")
        self._entries.pop(self._by_key.get(key, name), None)
        self._entries[name] = Entry(name, value, params, summary)
        self._by_key[key] = name
        return value

    def entry(self, name) -> Entry[T]:
        """The :class:`Entry` called ``name``; a ``ValueError`` listing the names otherwise."""
        found = self._by_key.get(self._key(name)) if isinstance(name, str) else None
        if found is None:
            names = self.names()
            raise ValueError(f"unknown {self.kind} {name!r}.{did_you_mean(_plain(name), names)} "
                             f"Available {self.kind}s: {', '.join(names)}{self._hint}")
        return self._entries[found]

    def get(self, name, default=_RAISE) -> T:
        """The object registered as ``name`` (see :meth:`entry`); ``default`` instead of
        the error when given (as ``dict.get``)."""
        if default is not _RAISE and name not in self:
            return default
        return self.entry(name).value

    def canonical(self, name) -> str:
        """The registered spelling of ``name`` (see :meth:`entry`)."""
        return self.entry(name).name

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __getitem__(self, name) -> T:
        return self.get(name)

    def __setitem__(self, name: str, value: T) -> None:
        """Register or replace ``name``, keeping a replaced entry's params and summary."""
        old = self._entries.get(self._by_key.get(self._key(name), name))
        self.register(name, value, params=getattr(old, "params", None),
                      summary=getattr(old, "summary", ""), overwrite=True)

    def __delitem__(self, name: str) -> None:
        found = self.canonical(name)
        del self._entries[found]
        del self._by_key[self._key(found)]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self._key(name) in self._by_key

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def squash(name: str) -> str:
    """A name without case, ``-``, ``_`` or spaces (``"LeNet-5"`` is ``"lenet5"``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _plain(name):
    return name.strip().lower() if isinstance(name, str) else name
