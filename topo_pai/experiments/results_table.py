"""Read a results table (a sweep's, or one written by hand) into typed records.

:func:`load_results` reads a ``.csv``, ``.json`` or ``.jsonl`` table, or a sweep
directory; :func:`typed_record` types the known columns of one row (the column
sets of :mod:`topo_pai.experiments.schema`), as
:func:`~topo_pai.experiments.aggregation.aggregate` and the figures of
:mod:`topo_pai.experiments.plotting` read them.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from topo_pai.experiments.schema import BOOL_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS


def _parse_bool(v, column):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(f"column {column!r} must be a boolean (True/False), got {v!r}")


def parse_float(v, column):
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
        return math.nan
    try:
        return float(v)  # float() reads "-inf", "inf", "nan", "-Infinity"
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} must be a number, got {v!r}") from None


def _parse_int(v, column):
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return None
    if isinstance(v, str):
        v = v.strip()
        try:
            return int(v)
        except ValueError:
            v = parse_float(v, column)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"column {column!r} must be an integer, got {v!r}")
        return int(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    raise ValueError(f"column {column!r} must be an integer, got {v!r}")


def typed_record(row: Mapping) -> dict:
    out = {}
    for k, v in row.items():
        if k in BOOL_COLUMNS:
            out[k] = _parse_bool(v, k)
        elif k in INT_COLUMNS:
            out[k] = _parse_int(v, k)
        elif k in FLOAT_COLUMNS:
            out[k] = parse_float(v, k)
        else:
            out[k] = v
    return out


def load_results(path) -> list[dict]:
    """Read a results table written by a sweep (or by hand) into a list of records.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.csv``, ``.json`` (a list of row objects, or an object holding one
        under ``"results"``, ``"rows"``, ``"records"`` or ``"trials"``) or
        ``.jsonl`` (one row object per line) file, or a sweep directory holding
        ``results.json``, ``results.csv`` or ``results.jsonl``.

    Returns
    -------
    list of dict
        Known columns typed, whatever the file type: ``shuffled`` bool; ``seed``,
        ``effective_nodes``, ``n_nodes``, ``*_params``, ``flops``, ``dense_flops``,
        ``epochs``, ``threads`` and the metric counts (``kernels``,
        ``effective_kernels``, ``*_units``) int; ``sparsity``, ``log10_paths``,
        ``accuracy``, ``test_loss``, ``val_*``, ``*_seconds`` and the other metric
        columns float. Non-finite floats round-trip (``"-inf"``, ``"nan"``,
        ``-Infinity``), an empty or null float reads as NaN and an empty int as
        ``None``. Other columns are kept as read.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or a directory holds no results file.
    ValueError
        Unknown file type, malformed content, or a value of the wrong type.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "results.csv")
    >>> with open(p, "w") as f:
    ...     _ = f.write("method,shuffled,sparsity,seed,log10_paths,accuracy\\n"
    ...                 "snip,True,0.99,0,-inf,\\n")
    >>> (row,) = load_results(p)
    >>> row["shuffled"], row["seed"], row["log10_paths"], row["accuracy"]
    (True, 0, -inf, nan)
    """
    p = Path(os.fspath(path))
    if p.is_dir():
        for name in ("results.json", "results.csv", "results.jsonl"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"directory {str(p)!r} holds no results.json, results.csv "
                                    "or results.jsonl; pass the results file or a sweep directory")
    if not p.is_file():
        raise FileNotFoundError(f"results file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"results file {str(p)!r} must end in .csv, .json or .jsonl")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"results file {str(p)!r} is not a text file ({exc})") from None
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        rows = _jsonl_rows(p, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"results file {str(p)!r} is not valid JSON ({exc}); pass a "
                             "sweep's results.json, results.csv or results.jsonl") from None
        if isinstance(data, Mapping):
            key = next((k for k in ("results", "rows", "records", "trials") if k in data), None)
            if key is None:
                raise ValueError(f"{str(p)!r} holds a JSON object without a 'results' list; "
                                 "expected a list of row objects")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
            raise ValueError(f"{str(p)!r} must hold a JSON list of row objects")
        rows = data
    return [typed_record(r) for r in rows]


def _jsonl_rows(p: Path, text: str) -> list:
    """The row objects of a ``.jsonl`` file. A last line cut short (a sweep killed while
    appending it, whose trial runs again) is skipped with a warning, as the sweep skips it;
    any other line that is not a JSON object is an error naming it."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for k, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(lines) - 1 and not text.endswith("\n"):
                warnings.warn(f"{str(p)!r}: line {n} is cut short (a sweep killed while "
                              "writing it) and is skipped", UserWarning, stacklevel=3)
                continue
            raise ValueError(f"results file {str(p)!r}, line {n}: not JSON ({exc}); if a sweep "
                             "wrote it, rerunning the sweep's command removes lines cut short "
                             "by a kill") from None
        if not isinstance(row, Mapping):
            raise ValueError(f"results file {str(p)!r}, line {n}: expected a row object, got "
                             f"{type(row).__name__}")
        rows.append(row)
    return rows
