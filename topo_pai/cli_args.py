"""Values of the ``topo-pai`` command's options: the ``type=`` parsers of its
arguments and the checks of the files and directories it reads and writes.

Each raises :class:`UsageError` (or argparse's ``ArgumentTypeError``) with a message
that names the option and says what it wants, so that a mistake is reported in one
line before any work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path


class UsageError(ValueError):
    """A mistake in the command line, reported without the exception's name."""


# ------------------------------------------------------------------ argument types
def int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


positive = int_at_least(1, "a positive integer")
non_negative = int_at_least(0, "an integer >= 0")


def seed(text: str) -> int:
    from topo_pai.checks import check_seed
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    try:
        return check_seed("a seed", value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fields(text: str, sep: str = ",") -> list[str]:
    """The ``sep``-separated fields of ``text``, stripped; an empty one (``0.5,,0.9``, a
    trailing comma) is refused rather than dropped, as it is likely a value left out.

    >>> fields(" 0.5, 0.9")
    ['0.5', '0.9']
    """
    parts = [v.strip() for v in text.split(sep)]
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty field between separators "
                                         f"{sep!r}; write each value once, without stray "
                                         "separators")
    return parts


def seeds(text: str) -> tuple[int, ...]:
    return tuple(seed(v) for v in fields(text))


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in fields(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def names(text: str) -> tuple[str, ...]:
    return tuple(fields(text))


def parse_sparsity(text: str) -> float:
    """A sparsity given as a fraction (``0.9``) or a percentage with ``%`` (``90%``).

    A bare number >= 1 is refused: ``1`` could mean 100 % or 1 %.

    >>> parse_sparsity("0.99"), parse_sparsity("99.5%"), parse_sparsity("0%")
    (0.99, 0.995, 0.0)
    >>> parse_sparsity("99")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: sparsity '99' is not a fraction in [0, 1); for 99 percent ...
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        v = float(raw[:-1] if percent else raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a fraction such as 0.9 or a "
                                         f"percentage such as 90%, got {text!r}") from None
    if percent:
        if not 0.0 <= v < 100.0:  # NaN fails too
            raise argparse.ArgumentTypeError(f"a sparsity percentage must lie in [0%, 100%), "
                                             f"got {text!r}")
        return v / 100.0
    if 0.0 <= v < 1.0:
        return v
    hint = (f"; for {v:g} percent write {v:g}% (or {v / 100:g})" if 1.0 <= v < 100.0
            else "; e.g. 0.9 or 90%")
    raise argparse.ArgumentTypeError(f"sparsity {text!r} is not a fraction in [0, 1){hint}")


def sparsities(text: str) -> tuple[float, ...]:
    return tuple(parse_sparsity(v) for v in fields(text))


#: Python's spellings of the JSON literals: ``topo-pai methods`` shows defaults such as
#: ``repair=True`` and ``K=None``, so a value copied from there means the same.
PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def value(text: str):
    """A KEY=VALUE value: JSON (``8``, ``0.5``, ``true``, ``null``, ``[1, 2]``), Python's
    ``True``/``False``/``None``, or else the text itself.

    >>> value("8"), value("false"), value("False"), value("None"), value("erk")
    (8, False, False, None, 'erk')
    """
    if text in PYTHON_LITERALS:
        return PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(pairs, flag: str) -> dict:
    out = {}
    for p in pairs or ():
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {p!r}")
        out[key] = value(val)
    return out


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in fields(text.replace("x", ",")))
    except (ValueError, argparse.ArgumentTypeError):
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input shape must be C,H,W (e.g. 3,32,32), or C,L or F "
                                         f"for 1-d inputs, got {text!r}")
    return dims


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', "
                                         f"got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', "
                                         f"got {text!r}")
    return value


# ------------------------------------------------------------------ output paths
def _writable_dir(directory: Path, flag: str) -> None:
    """Raise unless ``directory`` exists, is a directory and can be written to."""
    if not directory.exists():
        raise UsageError(f"{flag}: directory {str(directory)!r} does not exist; create it first")
    if not directory.is_dir():
        raise UsageError(f"{flag}: {str(directory)!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: directory {str(directory)!r} is not writable")


def check_output_file(path, flag: str, *, force: bool, suffixes=()) -> Path:
    """Check before any work that ``path`` can be written: its directory exists and is
    writable, it is not a directory, it has one of ``suffixes``, and it is only
    overwritten with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag}: {str(path)!r} is a directory; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag}: {str(path)!r} must end in {', '.join(suffixes)}")
    if path.exists() and not force:
        raise UsageError(f"{flag}: {str(path)!r} exists; refusing to overwrite it (pass "
                         "--force, or choose another file)")
    _writable_dir(path.parent if str(path.parent) else Path("."), flag)
    return path


def check_output_dir(path, flag: str) -> Path:
    """Check before any work that directory ``path`` exists or can be created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag}: {str(path)!r} is a file; give a directory")
        _writable_dir(path, flag)
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag}: cannot create {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot create {str(path)!r}: {str(parent)!r} is not "
                         "writable")
    return path


def check_input_file(path, flag: str) -> None:
    if Path(path).is_dir():
        raise UsageError(f"{flag}: {str(path)!r} is a directory; give a file")
    if not Path(path).is_file():
        raise UsageError(f"{flag}: file {str(path)!r} does not exist")
