"""Resumable sweeps: models x methods x sparsities x seeds (x shuffled), one row per trial.

A sweep directory holds

* ``config.json``: the :class:`SweepConfig` and its fingerprint. A directory
  written by a different configuration is refused (:class:`SweepConfigMismatch`),
  never overwritten.
* ``results.jsonl``: one JSON line per finished trial, appended and fsync'ed by
  the one process that owns the table, as each trial finishes. A killed sweep
  loses only the trials still running; the next run skips every trial already
  in the table (a trial id appears at most once).
* ``results.csv`` and ``results.json``: the same rows, sorted, rewritten
  atomically after every trial.
* ``epochs.jsonl``: the per-epoch training metrics of every trained trial
  (``{"trial_id": ..., "history": [{epoch, lr, train_loss, train_acc, test_loss,
  test_acc, seconds}, ...]}``).
* ``failures.jsonl``: the error of every failed attempt (such trials are retried
  by the next run).

Trials run in this process (``workers=1``), in parallel local worker processes
(``workers>1``), or on a Dask cluster (``engine="dask"``, see
:mod:`topo_pai.experiments.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from topo_pai.errors import TopoPaiError

COLUMNS = (
    "trial_id", "model", "dataset", "method", "shuffled", "sparsity", "seed",
    "effective_nodes", "n_nodes", "log10_paths", "effective_params", "unpruned_params",
    "total_params", "flops", "dense_flops", "accuracy", "test_loss", "epochs",
    "prune_seconds", "train_seconds", "device",
)
ENGINES = ("local", "dask")
ORDERS = ("grid", "reverse", "random")


class SweepConfigMismatch(TopoPaiError, ValueError):
    """The sweep directory holds results of a different configuration."""


class SweepError(TopoPaiError, RuntimeError):
    """Some trials failed; the finished ones are saved and the failed ones are retried next run."""


@dataclass(frozen=True)
class Trial:
    """One cell of the grid."""

    model: str
    method: str
    shuffled: bool
    sparsity: float
    seed: int

    @property
    def trial_id(self) -> str:
        tag = f"{self.method}+shuffle" if self.shuffled else self.method
        return f"{self.model}/{tag}/s{self.sparsity:.6g}/seed{self.seed}"


def _tuple(name, value, kind) -> tuple:
    if isinstance(value, (str, int, float)):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"sweep {name} must be a list, got {value!r}") from None
    for v in out:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ValueError(f"sweep {name} must hold {kind.__name__} values, got {v!r}")
    return out


@dataclass(frozen=True)
class SweepConfig:
    """The grid and recipe of a sweep; everything that decides a trial's result.

    Parameters
    ----------
    models : list of str
        Names from :func:`topo_pai.models.available_models`, built for the
        dataset's input shape and class count.
    dataset : str
        From :func:`topo_pai.experiments.data.available_datasets`.
    methods : list of str
        From :func:`topo_pai.available_methods`.
    sparsities : list of float
        Fractions in ``[0, 1)``.
    seeds : list of int
        Seeds initialisation, pruning, shuffling and training.
    shuffled : list of str
        Methods (a subset of ``methods``) whose masks are also shuffled within
        each layer (``topo_pai.prune(..., "shuffle", masks=...)``).
    model_kwargs : dict
        ``{model name: {kwarg: value}}``, e.g. ``{"conv6": {"width": 0.5}}``.
    method_options : dict
        ``{method: {option: value}}`` passed to :func:`topo_pai.prune`.
    train : dict or None
        :class:`~topo_pai.experiments.training.TrainConfig` fields; None only
        measures the topology (accuracy stays empty).
    train_limit, test_limit : int or None
        Use a seeded subset of the training / test split.
    prune_samples : int
        Training samples given to the data-dependent pruners (one batch).
    resources : dict
        What one trial needs on a distributed engine, e.g. ``{"GPU": 1}``.
    """

    models: tuple[str, ...]
    dataset: str = "fashion-mnist"
    methods: tuple[str, ...] = ("random",)
    sparsities: tuple[float, ...] = (0.9,)
    seeds: tuple[int, ...] = (0,)
    shuffled: tuple[str, ...] = ()
    model_kwargs: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    train: dict | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    prune_samples: int = 1000
    resources: dict = field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "models", _tuple("models", self.models, str))
        set_(self, "methods", _tuple("methods", self.methods, str))
        set_(self, "shuffled", _tuple("shuffled", self.shuffled, str))
        set_(self, "seeds", _tuple("seeds", self.seeds, int))
        set_(self, "sparsities", tuple(float(s) for s in _tuple("sparsities", self.sparsities,
                                                                  (int, float))))
        for name in ("models", "methods", "sparsities", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"sweep {name} is empty; give at least one value")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"sweep {name} has duplicates: {getattr(self, name)}")
        bad = [s for s in self.sparsities if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"sweep sparsities must lie in [0, 1) (fractions, e.g. 0.99), "
                             f"got {bad}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"sweep seeds must be non-negative, got {self.seeds}")
        extra = [m for m in self.shuffled if m not in self.methods]
        if extra:
            raise ValueError(f"sweep shuffled names {extra}, which are not in methods "
                             f"{list(self.methods)}")
        for name in ("model_kwargs", "method_options", "resources"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"sweep {name} must be a dict, got {getattr(self, name)!r}")
        bad = {k: v for k, v in self.resources.items()
               if not isinstance(k, str) or isinstance(v, bool)
               or not isinstance(v, (int, float)) or not v > 0}
        if bad:
            raise ValueError(f"sweep resources must map names to positive numbers (e.g. "
                             f"{{'GPU': 1}}), got {bad}")
        unknown = [k for k in self.model_kwargs if k not in self.models]
        if unknown:
            raise ValueError(f"sweep model_kwargs names {unknown}, which are not in models")
        unknown = [k for k in self.method_options if k not in self.methods]
        if unknown:
            raise ValueError(f"sweep method_options names {unknown}, which are not in methods")
        if self.train is not None:
            from topo_pai.experiments.training import TrainConfig
            if not isinstance(self.train, dict):
                raise ValueError(f"sweep train must be a dict of TrainConfig fields or None, "
                                 f"got {self.train!r}")
            known = {f.name for f in fields(TrainConfig)}
            unknown = sorted(set(self.train) - known)
            if unknown:
                raise ValueError(f"sweep train has unknown fields {unknown}; known: "
                                 f"{sorted(known)}")
            TrainConfig(**self.train)  # validates values
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"sweep {name} must be a positive int or None, got {v!r}")
        if not isinstance(self.prune_samples, int) or self.prune_samples < 1:
            raise ValueError(f"sweep prune_samples must be a positive int, got "
                             f"{self.prune_samples!r}")

    def validate_names(self) -> None:
        """Check model, method and dataset names against the registries (imports torch)."""
        from topo_pai.experiments.data import available_datasets
        from topo_pai.models import available_models
        from topo_pai.pruners import available_methods
        for kind, names, known in (("model", self.models, available_models()),
                                   ("method", self.methods, available_methods()),
                                   ("dataset", (self.dataset,), available_datasets())):
            for n in names:
                if n not in known:
                    raise ValueError(f"unknown {kind} {n!r}; available: {', '.join(known)}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"sweep configuration has unknown keys {unknown}; known: "
                             f"{sorted(known)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path) -> "SweepConfig":
        """Read a ``.json`` or ``.toml`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep configuration file {str(path)!r} does not exist")
        if path.suffix == ".toml":
            import tomllib
            return cls.from_dict(tomllib.loads(path.read_text()))
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        raise ValueError(f"sweep configuration {str(path)!r} must be .json or .toml")

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def trials(self) -> list[Trial]:
        out = []
        for model in self.models:
            for s in self.sparsities:
                for method in self.methods:
                    for shuffled in ((False, True) if method in self.shuffled else (False,)):
                        for seed in self.seeds:
                            out.append(Trial(model, method, shuffled, s, seed))
        return out


# --------------------------------------------------------------------- one trial
def _datasets(cfg: SweepConfig, data_root):
    from topo_pai.experiments.data import load_dataset
    # limit= selects before converting to float (the same samples as Dataset.subset)
    train = load_dataset(cfg.dataset, "train", root=data_root, limit=cfg.train_limit, seed=0)
    test = load_dataset(cfg.dataset, "test", root=data_root, limit=cfg.test_limit, seed=0)
    return train, test


def run_trial(cfg: SweepConfig, trial: Trial, *, data_root=None, device="auto") -> dict:
    """Build, prune, measure and (if ``cfg.train``) train one trial; return its row."""
    import numpy as np
    import torch

    import topo_pai
    from topo_pai.experiments.curves import topology_record
    from topo_pai.experiments.training import TrainConfig, resolve_device, seed_everything, train
    from topo_pai.models import get_model
    from topo_pai.pruners import get_method

    train_set, test_set = _datasets(cfg, data_root)
    C, H, W = train_set.input_shape
    seed_everything(trial.seed)
    model = get_model(trial.model, in_channels=C, num_classes=train_set.num_classes,
                      input_size=(H, W), **cfg.model_kwargs.get(trial.model, {}))
    options = dict(cfg.method_options.get(trial.method, {}))
    data = None
    if get_method(trial.method).needs_data:
        gen = torch.Generator().manual_seed(trial.seed)
        idx = torch.randperm(len(train_set), generator=gen)[:cfg.prune_samples]
        data = (train_set.x[idx], train_set.y[idx])
    t0 = time.perf_counter()
    masks = topo_pai.prune(model, trial.method, trial.sparsity, input_shape=(C, H, W),
                           data=data, seed=trial.seed, **options)
    if trial.shuffled:
        masks = topo_pai.prune(model, "shuffle", trial.sparsity, input_shape=(C, H, W),
                               seed=trial.seed, masks=masks)
    prune_seconds = time.perf_counter() - t0
    # one trace serves both: the dense topology, and (via with_masks) the pruned one
    dense = topo_pai.from_torch(model, {}, input_shape=(C, H, W))
    row = dict(
        trial_id=trial.trial_id, model=trial.model, dataset=cfg.dataset, method=trial.method,
        shuffled=trial.shuffled, sparsity=trial.sparsity, seed=trial.seed,
        **topology_record(model, masks, (C, H, W), topology=dense),
        dense_flops=dense.effective_flops(),
        accuracy=None, test_loss=None, epochs=0, prune_seconds=round(prune_seconds, 3),
        train_seconds=0.0, device=str(resolve_device(device)),
    )
    if cfg.train is not None:
        res = train(model, train_set, test_set, masks=masks, config=TrainConfig(**cfg.train),
                    device=device, seed=trial.seed, progress=False)
        row.update(accuracy=res.final_accuracy, test_loss=res.final_loss,
                   epochs=len(res.history), train_seconds=round(res.seconds, 3))
    assert set(row) == set(COLUMNS), sorted(set(row) ^ set(COLUMNS))
    if cfg.train is not None:
        row["history"] = res.history  # per-epoch metrics: the store writes them to epochs.jsonl
    for k, v in row.items():  # plain JSON types only
        if isinstance(v, np.generic):
            row[k] = v.item()
    return row


def run_trial_dict(cfg_dict: dict, trial_dict: dict, data_root=None, device="auto") -> dict:
    """:func:`run_trial` over plain dicts: what worker processes and clusters receive."""
    return run_trial(SweepConfig.from_dict(cfg_dict), Trial(**trial_dict), data_root=data_root,
                     device=device)


# ----------------------------------------------------------------- results table
def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "-inf", "inf", "nan": JSON has no literal for them
    return v


def _from_json(k, v):
    if k in ("log10_paths", "accuracy", "test_loss") and isinstance(v, str):
        return float(v)
    return v


class ResultsStore:
    """The results table of one sweep directory (see the module docs)."""

    def __init__(self, out_dir, cfg: SweepConfig):
        self.dir = Path(out_dir)
        self.cfg = cfg
        if self.dir.exists() and not self.dir.is_dir():
            raise SweepConfigMismatch(f"sweep directory {str(self.dir)!r} is a file")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "config.json"
        self.jsonl = self.dir / "results.jsonl"
        want = {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}
        if self.config_path.exists():
            have = json.loads(self.config_path.read_text())
            if have.get("fingerprint") != want["fingerprint"]:
                old, new = have.get("config", {}), want["config"]
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise SweepConfigMismatch(
                    f"sweep directory {str(self.dir)!r} holds results from a different "
                    f"configuration (differs in {diff}); refusing to mix or overwrite them. "
                    "Use a new --out directory, or delete this one to start over")
        else:
            if self.jsonl.exists() or any(self.dir.glob("results.*")):
                raise SweepConfigMismatch(
                    f"sweep directory {str(self.dir)!r} holds results but no config.json; "
                    "refusing to overwrite them. Use a new --out directory")
            self._atomic_write(self.config_path, json.dumps(want, indent=2) + "\n")
        self._rows = self._read()

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def _read(self) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        if not self.jsonl.exists():
            return rows
        for line in self.jsonl.read_text(encoding="utf-8").splitlines():
            try:
                row = {k: _from_json(k, v) for k, v in json.loads(line).items()}
            except json.JSONDecodeError:  # a line cut short by a kill: that trial reruns
                continue
            rows.setdefault(row["trial_id"], row)
        return rows

    @property
    def rows(self) -> list[dict]:
        return sorted(self._rows.values(), key=lambda r: r["trial_id"])

    def done(self) -> set[str]:
        return set(self._rows)

    def add(self, row: dict) -> bool:
        """Append one finished trial; False (and nothing written) if it is already there."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"result row lacks columns {missing}")
        if row["trial_id"] in self._rows:
            return False
        self._append(self.jsonl, {k: _json_safe(row[k]) for k in COLUMNS})
        self._rows[row["trial_id"]] = {k: row[k] for k in COLUMNS}
        if row.get("history"):
            self._append(self.dir / "epochs.jsonl",
                         {"trial_id": row["trial_id"], "history": row["history"]})
        self._export()
        return True

    @staticmethod
    def _append(path: Path, record: dict) -> None:
        torn = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(path, "a", encoding="utf-8") as f:
            if torn:
                f.write("\n")  # end a line cut short by a kill before appending
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record_failure(self, trial: Trial, error: str) -> None:
        with open(self.dir / "failures.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"trial_id": trial.trial_id, "time": time.time(),
                                "error": error}) + "\n")

    def _export(self) -> None:
        import csv
        import io

        rows = self.rows
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
        self._atomic_write(self.dir / "results.csv", buf.getvalue())
        self._atomic_write(self.dir / "results.json", json.dumps(
            [{k: _json_safe(r[k]) for k in COLUMNS} for r in rows], indent=1) + "\n")


# ---------------------------------------------------------------------- engines
def _exit_with_parent(parent: int) -> None:
    # A worker outlives a killed sweep (SIGTERM/SIGKILL skip the pool's shutdown) and would
    # keep training a trial whose result nobody can save: leave as soon as the parent is gone.
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import threading

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import torch
    torch.set_num_threads(threads)


def _run_local(cfg, pending, store, workers, data_root, device, retries, progress):
    failed: dict[str, str] = {}
    bar = _bar(len(pending), progress)
    if workers == 1:
        for trial in pending:
            for attempt in range(retries + 1):
                try:
                    store.add(run_trial(cfg, trial, data_root=data_root, device=device))
                    failed.pop(trial.trial_id, None)
                    break
                except Exception:  # noqa: BLE001 - a trial's error must not stop the sweep
                    failed[trial.trial_id] = traceback.format_exc()
                    store.record_failure(trial, failed[trial.trial_id])
            bar.update(1)
        bar.close()
        return failed
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = list(pending)
    for attempt in range(retries + 1):
        if not todo:
            break
        again = []
        # spawn: a forked child would inherit torch's OpenMP and numba state mid-flight
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
            futures = {pool.submit(run_trial_dict, cfg.to_dict(), asdict(t), data_root,
                                   device): t for t in todo}
            for fut in as_completed(futures):
                trial = futures[fut]
                try:
                    store.add(fut.result())
                    failed.pop(trial.trial_id, None)
                    bar.update(1)
                except BrokenProcessPool:
                    # a worker died (killed, out of memory): its trial and the queued ones rerun
                    failed[trial.trial_id] = "worker process died"
                    again.append(trial)
                except Exception as exc:  # noqa: BLE001
                    failed[trial.trial_id] = "".join(traceback.format_exception(exc))
                    store.record_failure(trial, failed[trial.trial_id])
                    again.append(trial)
        todo = again
    bar.close()
    return failed


def _bar(total, enabled):
    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass
    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc="trials", unit="trial")


def run_sweep(cfg: SweepConfig, out_dir, *, workers: int = 1, engine: str = "local",
              data_root=None, device="auto", retries: int = 1, progress: bool = True,
              scheduler_address: str | None = None, limit: int | None = None,
              order: str = "grid") -> list[dict]:
    """Run every trial of ``cfg`` not yet in ``out_dir``'s table; return all rows.

    Parameters
    ----------
    cfg : SweepConfig
    out_dir : path
        The sweep directory (created; refused if it holds another config's results).
    workers : int
        Local worker processes (``engine="local"``), or local Dask workers when
        ``engine="dask"`` and no ``scheduler_address`` is given.
    engine : {"local", "dask"}
    data_root : path, optional
        Where the dataset files are (see :func:`topo_pai.experiments.data.load_dataset`).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    retries : int
        How often a failed trial is retried within this run.
    scheduler_address : str, optional
        Address of a running Dask scheduler (``engine="dask"``).
    limit : int, optional
        Run at most this many pending trials (the rest wait for a later run).
    order : {"grid", "reverse", "random"}
        The order pending trials are started in: the grid's (models, then
        sparsities, methods, seeds), reversed (e.g. the most extreme
        sparsities first), or a fixed random permutation, so that an
        interrupted sweep has covered the grid evenly. Results do not depend on it.

    Raises
    ------
    SweepConfigMismatch
        ``out_dir`` holds results of a different configuration.
    SweepError
        Some trials failed after their retries; all others are saved.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    cfg.validate_names()
    store = ResultsStore(out_dir, cfg)
    done = store.done()
    pending = [t for t in cfg.trials() if t.trial_id not in done]
    if order == "reverse":
        pending.reverse()
    elif order == "random":
        import random
        random.Random(cfg.fingerprint()).shuffle(pending)
    if limit is not None:
        pending = pending[:limit]
    if pending:
        _datasets(cfg, data_root)  # fail fast (missing dataset) before starting workers
    if not pending:
        failed = {}
    elif engine == "local":
        if cfg.resources:
            warnings.warn(f"resources {cfg.resources} are declared for distributed engines; "
                          "local workers ignore them", stacklevel=2)
        failed = _run_local(cfg, pending, store, workers, data_root, device, retries, progress)
    else:
        from topo_pai.experiments.distributed import run_dask
        failed = run_dask(cfg, pending, store, workers=workers, data_root=data_root,
                          device=device, retries=retries, progress=progress,
                          scheduler_address=scheduler_address)
    if failed:
        first = next(iter(failed.items()))
        raise SweepError(f"{len(failed)} of {len(pending)} trials failed (saved results are "
                         f"kept; rerun to retry them). First: {first[0]}:\n{first[1]}")
    return store.rows


def pending_trials(cfg: SweepConfig, out_dir) -> list[Trial]:
    """The trials of ``cfg`` that ``out_dir`` does not hold yet."""
    done = ResultsStore(out_dir, cfg).done() if Path(out_dir).exists() else set()
    return [t for t in cfg.trials() if t.trial_id not in done]


def rows_to_records(rows: Iterable[dict]) -> list[dict]:
    """Rows with ``-inf``/``nan`` strings turned back into floats (for JSON loaded elsewhere)."""
    return [{k: _from_json(k, v) for k, v in r.items()} for r in rows]
