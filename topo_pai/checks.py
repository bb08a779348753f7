"""Checks of numeric and boolean options, shared by the pruners and the experiments.

Each returns the value as a plain Python ``int``/``float``/``bool`` or raises
``ValueError`` naming the option, the accepted range and the value given.
``bool`` is refused where a number is expected (``True`` as a count or a rate is
always a mistake), and so are strings, NaN and infinities.

>>> check_number("erk_power", 0.5, minimum=0.0)
0.5
>>> check_number("erk_power", float("nan"), minimum=0.0)
Traceback (most recent call last):
...
ValueError: erk_power must be a finite number >= 0, got nan
>>> check_int("rounds", 0, minimum=1)
Traceback (most recent call last):
...
ValueError: rounds must be an int >= 1, got 0
"""

from __future__ import annotations

import math
import numbers


def _range_text(minimum, maximum, min_open: bool, max_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if min_open else '['}{minimum:g}, {maximum:g}{')' if max_open else ']'}"
    if minimum is not None:
        return f" {'>' if min_open else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if max_open else '<='} {maximum:g}"
    return ""


def check_number(name: str, value, *, minimum: float | None = None,
                 maximum: float | None = None, min_open: bool = False, max_open: bool = False,
                 hint: str = "") -> float:
    """``value`` as a finite float within the given bounds (``*_open``: bound excluded).

    >>> check_number("temperature", 200, minimum=0.0, min_open=True)
    200.0
    >>> check_number("last_layer_min_density", 1.5, minimum=0.0, maximum=1.0)
    Traceback (most recent call last):
    ...
    ValueError: last_layer_min_density must be a finite number in [0, 1], got 1.5
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    if ok and minimum is not None:
        ok = v > minimum if min_open else v >= minimum
    if ok and maximum is not None:
        ok = v < maximum if max_open else v <= maximum
    if not ok:
        raise ValueError(f"{name} must be a finite number"
                         f"{_range_text(minimum, maximum, min_open, max_open)}, got {value!r}"
                         f"{'; ' + hint if hint else ''}")
    return v


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None,
              hint: str = "") -> int:
    """``value`` as an int within ``[minimum, maximum]``; floats such as ``2.0`` are refused.

    >>> check_int("max_batches", 3, minimum=1)
    3
    >>> check_int("stall_window", 1.5, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: stall_window must be an int >= 1, got 1.5
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        raise ValueError(f"{name} must be an int{_range_text(minimum, maximum, False, False)}, "
                         f"got {value!r}{'; ' + hint if hint else ''}")
    return int(value)


#: The largest seed: torch.manual_seed takes seeds in [0, 2**64 - 1].
MAX_SEED = 2**64 - 1


def check_seed(name: str, value) -> int:
    """``value`` as an int seed in ``[0, MAX_SEED]`` (what ``torch.manual_seed`` takes).

    >>> check_seed("seed", 2**64)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an int in [0, 2**64 - 1] (torch's seed range), got 18446744073709551616
    """
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
            or not 0 <= value <= MAX_SEED):
        raise ValueError(f"{name} must be an int in [0, 2**64 - 1] (torch's seed range), got "
                         f"{value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (numpy's included); ``1``, ``"yes"`` and the like are refused.

    >>> check_bool("erk_include_kernel", False)
    False
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def prefixed(exc: Exception, where: str) -> Exception:
    """``exc`` with ``where: `` before its message (what the error is about), of its own
    type where that type takes a message alone, else ValueError (TypeError for one).

    >>> prefixed(ValueError("rounds must be an int >= 1, got 0"), "method 'synflow'")
    ValueError("method 'synflow': rounds must be an int >= 1, got 0")
    """
    message = f"{where}: {exc}"
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - an exception type with another constructor
        return TypeError(message) if isinstance(exc, TypeError) else ValueError(message)


def did_you_mean(name, choices) -> str:
    """A ``" Did you mean 'x'?"`` hint naming the closest of ``choices``, or ``""``.

    >>> did_you_mean("synflw", ["snip", "synflow"])
    " Did you mean 'synflow'?"
    >>> did_you_mean("zzz", ["snip"])
    ''
    """
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
