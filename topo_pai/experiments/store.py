"""The results of one sweep directory: its files, its lock and how they stay consistent.

A sweep directory holds

* ``config.json``: the :class:`SweepConfig` that created it. A later run must
  ask for the same set of trials with the same recipe (the order of the grid's
  lists does not matter); another configuration is refused
  (:class:`SweepConfigMismatch`), never mixed in or overwritten. It also holds
  the SHA-256 of every model given as ``file.py:callable``; a later run whose
  file differs is refused too (two models under one name).
* ``results.jsonl``: the single source of truth, one JSON line per finished
  trial, appended and fsync'ed as each trial finishes. A killed sweep loses
  only the trials still running; the next run skips every trial in the table.
  Should a trial id appear twice, the first row counts (with a warning); a line
  cut short by a kill is ignored and its trial runs again, and the next run
  removes it from the file (under the lock), so that every line of the file
  stays a row for any reader.
* ``results.csv`` and ``results.json``: the same rows sorted by trial id,
  exported from ``results.jsonl`` (atomically) when a run starts, after every
  trial and when a run ends -- also when nothing was left to run -- so a kill
  between a row's append and its export is repaired by the next run.
  Non-finite numbers are written as the strings ``"-inf"``, ``"inf"`` and
  ``"nan"`` in the JSON files (``float()`` reads them back).
* ``epochs.jsonl``: the per-epoch training metrics of every trained trial
  (``{"trial_id": ..., "history": [{epoch, lr, train_loss, train_acc, test_loss,
  test_acc, seconds}, ...]}``), exactly one record per row of ``results.jsonl``:
  a trial's record is written before its row, and records without a row (their
  trial was killed and runs again) are dropped when the next run starts.
* ``failures.jsonl``: the error of every failed attempt (such trials are retried
  by the next run).
* ``sweep.lock``: one sweep at a time. A run holds an exclusive lock on it
  (``flock``, released by the operating system even after ``kill -9``); a second
  run on the same directory is refused at once with :class:`SweepLocked`,
  naming the process that holds it. The file itself stays and means nothing.

Rows hold the columns of :data:`topo_pai.experiments.schema.COLUMNS` (and the
measure columns when present); this module is the only writer of these files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

from topo_pai.errors import TopoPaiError
from topo_pai.experiments.config import SweepConfig, Trial
from topo_pai.experiments.schema import COLUMNS, METRIC_COLUMNS, NONFINITE_COLUMNS, table_columns

#: Test hook, inert unless set: ``"<point>:<n>"`` makes this process SIGKILL itself the
#: n-th time it reaches ``point`` of :meth:`ResultsStore.add` (see ``_crash_point``).
CRASH_ENV = "TOPO_PAI_TEST_CRASH_AT"


class SweepConfigMismatch(TopoPaiError, ValueError):
    """The sweep directory holds results of a different configuration."""


class SweepLocked(TopoPaiError, RuntimeError):
    """Another sweep is running on the same directory."""


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "-inf", "inf", "nan": JSON has no literal for them
    return v


def _from_json(k, v):
    if k in NONFINITE_COLUMNS and isinstance(v, str):
        return float(v)
    return v


def _crash_point(point: str) -> None:
    """Test hook: SIGKILL this process the n-th time it passes ``point`` if
    ``$TOPO_PAI_TEST_CRASH_AT`` is ``"<point>:<n>"``; does nothing otherwise."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    where, _, count = spec.partition(":")
    if where != point:
        return
    left = int(count or 1) - 1
    os.environ[CRASH_ENV] = f"{where}:{left}"
    if left <= 0:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: readers and a kill see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it; end a line cut short by a kill first."""
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_lines(path: Path) -> None:
    """Rewrite ``path`` (atomically) without the lines that are not JSON: rows cut short by
    a kill, whose trials run again. Called under the directory's lock; the rows that parse
    are kept byte for byte."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue  # a blank line too: nothing to keep
        kept.append(line if line.endswith("\n") else line + "\n")
    repaired = "".join(kept)
    if repaired != text:
        _atomic_write(path, repaired)


def _json_lines(path: Path):
    """``(line number, object)`` for each line of ``path`` that parses; lines cut short by a
    kill (or otherwise not JSON) are skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                continue


def read_results(path, *, warn: bool = True) -> dict[str, dict]:
    """The rows of a ``results.jsonl`` by trial id: the first row of each id wins.

    Lines cut short by a kill are skipped (their trials run again). With ``warn``,
    rows that repeat an id or lack one are reported in one :class:`UserWarning`.
    Columns added in later versions are ``None`` in older rows.
    """
    path = Path(path)
    rows: dict[str, dict] = {}
    repeated: dict[str, list[int]] = {}
    malformed: list[int] = []
    for number, obj in _json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("trial_id"), str):
            malformed.append(number)
            continue
        tid = obj["trial_id"]
        if tid in rows:
            repeated.setdefault(tid, []).append(number)
            continue
        rows[tid] = {k: _from_json(k, obj.get(k))
                     for k in COLUMNS + tuple(c for c in METRIC_COLUMNS if c in obj)}
    if warn and (repeated or malformed):
        parts = []
        if repeated:
            shown = ", ".join(f"{t!r} (again on line(s) {', '.join(map(str, n))})"
                              for t, n in list(repeated.items())[:3])
            parts.append(f"{len(repeated)} trial id(s) appear more than once, e.g. {shown}; "
                         "the first row of each is kept and the others ignored")
        if malformed:
            parts.append(f"line(s) {', '.join(map(str, malformed[:5]))} are not result rows "
                         "and are ignored")
        warnings.warn(f"{path}: " + "; ".join(parts), UserWarning, stacklevel=2)
    return rows


def _read_stored_config(path: Path) -> SweepConfig:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
            raise ValueError("it holds no 'config' object")
        return SweepConfig.from_dict(stored["config"])
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise SweepConfigMismatch(
            f"the sweep's configuration file {str(path)!r} is corrupt ({exc}); restore it, or "
            "start a new --out directory") from None


def model_file_hashes(cfg: SweepConfig) -> dict[str, str]:
    """``{model spec: sha256 of its file}`` for the models given as
    ``path/to/file.py:callable`` whose file exists (as a sweep resolves it, from the
    current directory). Zoo and ``package.module`` models are not hashed."""
    from topo_pai.models.spec import FILE, parse_model_spec

    out = {}
    for text in cfg.models:
        try:
            spec = parse_model_spec(text)
        except ValueError:
            continue  # refused with its own message where the model is built
        path = Path(spec.target)
        if spec.kind == FILE and path.is_file():
            out[text] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def check_model_files(config_path: Path, cfg: SweepConfig) -> None:
    """Refuse to resume a sweep whose model file changed since its first run: the rows
    already written and the new ones would come from two different models under one
    name. Directories written before the hashes were stored are not checked."""
    try:
        stored = json.loads(config_path.read_text(encoding="utf-8")).get("model_files") or {}
    except (OSError, ValueError, AttributeError):
        return  # a missing or corrupt config.json is refused by check_same_config
    for text, digest in model_file_hashes(cfg).items():
        if text in stored and stored[text] != digest:
            raise SweepConfigMismatch(
                f"model file of {text!r} changed since the first run of the sweep in "
                f"{str(config_path.parent)!r}: its rows and new ones would come from two "
                "different models under one name. Restore the file, or use a new --out "
                "directory for the changed model")


def check_same_config(directory: Path, cfg: SweepConfig) -> bool:
    """Raise unless ``directory`` is empty of results or holds ``cfg``'s; True if it has
    a config.json."""
    config_path = directory / "config.json"
    if config_path.exists():
        have = _read_stored_config(config_path)
        if not have.same_as(cfg):
            differs = have.differences(cfg)
            hint = ""
            if "metrics" in differs:  # rows with and without the measures must not mix
                hint = (f" Its rows hold the graph measures of metrics = {have.metrics!r} "
                        f"(--metrics {have.metrics}); one results table has one setting.")
            raise SweepConfigMismatch(
                f"sweep directory {str(directory)!r} holds results from a different "
                f"configuration (differs in {differs}); refusing to mix or overwrite them."
                f"{hint} Use a new --out directory, or delete this one to start over")
        return True
    if (directory / "results.jsonl").exists() or any(directory.glob("results.*")):
        raise SweepConfigMismatch(
            f"sweep directory {str(directory)!r} holds results but no config.json; refusing "
            "to overwrite them. Use a new --out directory")
    return False


class _DirectoryLock:
    """An exclusive, non-blocking lock on ``path`` that the OS drops when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's note
        try:
            self._lock(fd)
        except OSError:
            os.close(fd)
            try:
                holder = path.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            self._fd = None
            raise SweepLocked(
                f"another sweep is running on {str(path.parent)!r} ({holder}); two sweeps on "
                "one directory would run trials twice. Wait for it to finish, or use another "
                "--out directory") from None
        self._fd = fd
        note = (f"pid {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.write(fd, note.encode())

    @staticmethod
    def _lock(fd: int) -> None:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    __del__ = release


class ResultsStore:
    """The results table of one sweep directory (see the module docs).

    Opening it takes the directory's lock (:class:`SweepLocked` if another sweep
    holds it), checks or writes ``config.json``, drops epoch records without a
    result row and exports ``results.csv``/``results.json``. Use it as a context
    manager, or call :meth:`close`, to release the lock.
    """

    def __init__(self, out_dir, cfg: SweepConfig):
        self.dir = Path(out_dir)
        self.cfg = cfg
        if self.dir.exists() and not self.dir.is_dir():
            raise SweepConfigMismatch(f"sweep directory {str(self.dir)!r} is a file; pass a "
                                      "directory (it is created if missing)")
        if self.dir.exists():
            check_same_config(self.dir, cfg)  # before the lock file is made; again under it
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _DirectoryLock(self.dir / "sweep.lock")
        try:
            self.config_path = self.dir / "config.json"
            self.jsonl = self.dir / "results.jsonl"
            self.epochs = self.dir / "epochs.jsonl"
            if not check_same_config(self.dir, cfg):
                _atomic_write(self.config_path, json.dumps(
                    {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
                     "model_files": model_file_hashes(cfg)}, indent=2) + "\n")
            check_model_files(self.config_path, cfg)
            _drop_torn_lines(self.jsonl)
            self._rows = read_results(self.jsonl)
            # the SIMD levels the rows ran at, and those already warned about
            self._levels = {r.get("cpu_capability") for r in self._rows.values()} - {None}
            self._warned_levels: set[str] = set()
            self._drop_orphan_epochs()
            self.export()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory's lock (the rows stay readable)."""
        self._lock.release()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rows(self) -> list[dict]:
        return sorted(self._rows.values(), key=lambda r: r["trial_id"])

    def done(self) -> set[str]:
        return set(self._rows)

    def _drop_orphan_epochs(self) -> None:
        """Keep one epochs record per result row: drop those of trials that have no row (a
        kill came between the two appends, or cut the row short) and repeats."""
        if not self.epochs.exists():
            return
        kept, seen, changed = [], set(), False
        for _, rec in _json_lines(self.epochs):
            tid = rec.get("trial_id") if isinstance(rec, dict) else None
            if tid in self._rows and tid not in seen:
                seen.add(tid)
                kept.append(json.dumps(rec) + "\n")
            else:
                changed = True
        text = "".join(kept)
        if changed or text != self.epochs.read_text(encoding="utf-8", errors="replace"):
            _atomic_write(self.epochs, text)

    def add(self, row: dict) -> bool:
        """Record one finished trial; False (and nothing written) if it is already there.

        Its epochs record is appended first and its row second: the row commits
        the trial, so a kill between the two leaves a record the next run drops."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"result row lacks columns {missing}")
        if row["trial_id"] in self._rows:
            return False
        self._check_cpu_level(row)
        if row.get("history"):
            _append(self.epochs, {"trial_id": row["trial_id"], "history": row["history"]})
        _crash_point("before-row")
        keys = table_columns([row])
        _append(self.jsonl, {k: _json_safe(row[k]) for k in keys})
        self._rows[row["trial_id"]] = {k: row[k] for k in keys}
        _crash_point("after-row")
        self.export()
        return True

    def _check_cpu_level(self, row: dict) -> None:
        """Warn (once per level) when a trial ran with torch's CPU kernels at another SIMD
        level than the rows before it: its float32 results would differ in the last bits
        on their machine, so the table mixes two machines' roundings."""
        level = row.get("cpu_capability")
        if level is None:
            return
        others = sorted(self._levels - {level})
        self._levels.add(level)
        if not others or level in self._warned_levels:
            return
        self._warned_levels.add(level)
        warnings.warn(
            f"sweep {str(self.dir)!r}: trial {row['trial_id']!r} ran with torch's CPU kernels at "
            f"{level}, earlier rows at {', '.join(others)}; float32 results (masks pruned from "
            "data, trained accuracies) are bit-identical only at one level. To stay at "
            f"{others[0]}, set ATEN_CPU_CAPABILITY={others[0].lower()} (and "
            "ONEDNN_MAX_CPU_ISA) before torch is imported (README, 'Reproducible trials')",
            UserWarning, stacklevel=3)

    def record_failure(self, trial: Trial, error: str) -> None:
        _append(self.dir / "failures.jsonl",
                {"trial_id": trial.trial_id, "time": time.time(), "error": error})

    def export(self) -> None:
        """Rewrite ``results.csv`` and ``results.json`` from the table (sorted by trial id)."""
        import csv
        import io

        rows = self.rows
        columns = table_columns(rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
        _atomic_write(self.dir / "results.csv", buf.getvalue())
        _crash_point("between-exports")
        _atomic_write(self.dir / "results.json", json.dumps(
            [{k: _json_safe(r.get(k)) for k in columns} for r in rows], indent=1) + "\n")


def rows_to_records(rows: Iterable[dict]) -> list[dict]:
    """Rows with ``-inf``/``nan`` strings turned back into floats (for JSON loaded elsewhere)."""
    return [{k: _from_json(k, v) for k, v in r.items()} for r in rows]
