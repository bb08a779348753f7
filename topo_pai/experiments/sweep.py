"""Resumable sweeps: models x methods x sparsities x seeds (x shuffled), one row per trial.

A sweep directory holds

* ``config.json``: the :class:`SweepConfig` that created it. A later run must
  ask for the same set of trials with the same recipe (the order of the grid's
  lists does not matter); another configuration is refused
  (:class:`SweepConfigMismatch`), never mixed in or overwritten.
* ``results.jsonl``: the single source of truth, one JSON line per finished
  trial, appended and fsync'ed as each trial finishes. A killed sweep loses
  only the trials still running; the next run skips every trial in the table.
  Should a trial id appear twice, the first row counts (with a warning); a line
  cut short by a kill is ignored and its trial runs again.
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

Trials run in this process (``workers=1``), in parallel local worker processes
(``workers>1``), or on a Dask cluster (``engine="dask"``, see
:mod:`topo_pai.experiments.distributed`). A trial's result does not depend on
which: each trial runs with ``SweepConfig.threads`` intra-op threads (torch and
numba) and torch's deterministic algorithms, and its row records ``threads``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from topo_pai.checks import check_int
from topo_pai.errors import TopoPaiError
from topo_pai.experiments.curves import SHUFFLE_SUFFIX, format_sparsity, trial_id
from topo_pai.experiments.trial_metrics import METRIC_COLUMNS

COLUMNS = (
    "trial_id", "model", "dataset", "method", "shuffled", "sparsity", "seed",
    "effective_nodes", "n_nodes", "log10_paths", "effective_params", "unpruned_params",
    "total_params", "flops", "dense_flops", "accuracy", "test_loss", "val_accuracy",
    "val_loss", "epochs", "prune_seconds", "train_seconds", "device", "threads",
)
#: The method name of a sweep's unpruned reference trials (``SweepConfig.dense``).
DENSE = "dense"
#: Keys of an arm that are not options of its method.
ARM_KEYS = ("method", "rescale")
ENGINES = ("local", "dask")
ORDERS = ("grid", "reverse", "random")
#: Fields added after sweeps were first stored, with their defaults: a field at its default
#: is left out of the recipe, so that configurations from before it keep their fingerprint.
LATER_FIELDS = {"input_shape": None, "arms": {}, "seeds_for": {}, "dense": False,
                "val_size": None, "metrics": False}
#: The lists of a SweepConfig that span the grid: their order does not change the trials.
GRID_FIELDS = ("models", "methods", "sparsities", "seeds", "shuffled")
#: Test hook, inert unless set: ``"<point>:<n>"`` makes this process SIGKILL itself the
#: n-th time it reaches ``point`` of :meth:`ResultsStore.add` (see ``_crash_point``).
CRASH_ENV = "TOPO_PAI_TEST_CRASH_AT"


class SweepConfigMismatch(TopoPaiError, ValueError):
    """The sweep directory holds results of a different configuration."""


class SweepLocked(TopoPaiError, RuntimeError):
    """Another sweep is running on the same directory."""


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
        """``model/method[+shuffle]/s<sparsity>/seed<seed>``; the sparsity is written
        exactly (``repr``), so distinct trials never share an id."""
        return trial_id(self.model, self.method, self.shuffled, self.sparsity, self.seed)


def _tuple(name, value, kind) -> tuple:
    if isinstance(value, (str, int, float)):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"sweep {name} must be a list, got {value!r}") from None
    for v in out:
        if not isinstance(v, kind) or isinstance(v, bool):
            what = "number" if isinstance(kind, tuple) else kind.__name__
            raise ValueError(f"sweep {name} must hold {what} values, got {v!r}")
    return out


@dataclass(frozen=True)
class SweepConfig:
    """The grid and recipe of a sweep; everything that decides a trial's result.

    Parameters
    ----------
    models : list of str
        Names from :func:`topo_pai.models.available_models`, built for the
        dataset's input shape and class count, or ``package.module:callable`` /
        ``path/to/file.py:callable`` (a user's model, called with its
        ``model_kwargs``; see :mod:`topo_pai.models.spec`).
    dataset : str
        From :func:`topo_pai.experiments.data.available_datasets`.
    methods : list of str
        From :func:`topo_pai.available_methods`, or names of ``arms``.
    sparsities : list of float
        Fractions in ``[0, 1)``.
    seeds : list of int
        Seeds initialisation, pruning, shuffling and training.
    seeds_for : dict
        ``{method or "method+shuffle" or "dense": [seeds]}``: a subset of
        ``seeds`` for that arm (e.g. fewer seeds for secondary baselines).
    shuffled : list of str
        Methods (a subset of ``methods``) whose masks are also shuffled within
        each layer (``topo_pai.prune(..., "shuffle", masks=...)``).
    model_kwargs : dict
        ``{model name: {kwarg: value}}``, e.g. ``{"conv6": {"width": 0.5}}``.
    input_shape : list of int or None
        The input shape the models are meant for, ``[C, H, W]``; a sweep whose
        dataset gives another shape is refused (models are not rebuilt silently
        for the dataset). None: the dataset's.
    method_options : dict
        ``{method: {option: value}}`` passed to :func:`topo_pai.prune`.
    arms : dict
        Named variants of a method, usable in ``methods``:
        ``{name: {"method": registered method, option: value, ...}}``, e.g.
        ``{"random_erk": {"method": "random", "allocation": "erk"}}``. Every key
        but ``method`` and ``rescale`` is an option of :func:`topo_pai.prune`.
        ``"rescale": true`` multiplies each unit's kept weights after pruning
        so that it keeps its dense pre-activation variance
        (:func:`~topo_pai.experiments.training.rescale_kept_weights`), a control
        that separates a mask's topology from signal collapse.
    dense : bool
        Also train the unpruned model once per model and seed (method
        ``"dense"``, sparsity 0), the reference every arm is compared with.
    val_size : int or None
        Hold out this many training images (stratified, seed 0, after
        ``train_limit``) as a validation split: each epoch is evaluated on it,
        the test set only once, after the last epoch (columns ``val_accuracy``,
        ``val_loss``; ``accuracy`` stays the test accuracy).
    train : dict or None
        :class:`~topo_pai.experiments.training.TrainConfig` fields; None only
        measures the topology (accuracy stays empty).
    train_limit, test_limit : int or None
        Use a seeded subset of the training / test split.
    prune_samples : int
        Training samples given to the data-dependent pruners (one batch).
    resources : dict
        What one trial needs on a distributed engine, e.g. ``{"GPU": 1}``.
    metrics : bool
        Also record the graph measures of :data:`~topo_pai.experiments.trial_metrics.
        METRIC_COLUMNS` (``Topology.metrics`` totals; one sparse SVD per layer, so
        opt-in) as columns of every row.
    threads : int
        Intra-op threads (torch and numba) of every trial, whatever the engine
        and number of workers, so that a trial's result does not depend on them
        (float reductions split over more threads add in another order). Default
        1: on CPUs, run trials side by side (``workers``) rather than threaded.

    Two configurations are the same when they ask for the same set of trials
    with the same recipe: the order of ``models``, ``methods``, ``sparsities``,
    ``seeds`` and ``shuffled`` does not matter (:meth:`same_as`).

    Examples
    --------
    >>> cfg = SweepConfig(models=["lenet5"], methods=["random", "random_erk"],
    ...                   arms={"random_erk": {"method": "random", "allocation": "erk"}},
    ...                   seeds=[0, 1], seeds_for={"random": [0]}, dense=True)
    >>> [t.trial_id for t in cfg.trials()]  # doctest: +NORMALIZE_WHITESPACE
    ['lenet5/dense/s0/seed0', 'lenet5/dense/s0/seed1', 'lenet5/random/s0.9/seed0',
     'lenet5/random_erk/s0.9/seed0', 'lenet5/random_erk/s0.9/seed1']
    >>> cfg.arm("random_erk")
    ('random', {'allocation': 'erk'}, False)
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
    threads: int = 1
    input_shape: tuple[int, ...] | None = None
    arms: dict = field(default_factory=dict)
    seeds_for: dict = field(default_factory=dict)
    dense: bool = False
    val_size: int | None = None
    metrics: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "models", _tuple("models", self.models, str))
        set_(self, "methods", _tuple("methods", self.methods, str))
        set_(self, "shuffled", _tuple("shuffled", self.shuffled, str))
        set_(self, "seeds", _tuple("seeds", self.seeds, int))
        # + 0.0 turns -0.0 into 0.0: one sparsity, one trial id
        set_(self, "sparsities", tuple(float(s) + 0.0 for s in _tuple("sparsities",
                                                                        self.sparsities,
                                                                        (int, float))))
        if self.input_shape is not None:
            set_(self, "input_shape", _tuple("input_shape", self.input_shape, int))
            if not 1 <= len(self.input_shape) <= 3 or min(self.input_shape) < 1:
                raise ValueError(f"sweep input_shape must be 1 to 3 positive ints such as "
                                 f"[3, 32, 32], got {list(self.input_shape)}")
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
        for name in ("model_kwargs", "method_options", "resources", "arms", "seeds_for"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"sweep {name} must be a dict, got {getattr(self, name)!r}")
        self._check_arms()
        bad = {k: v for k, v in self.resources.items()
               if not isinstance(k, str) or isinstance(v, bool)
               or not isinstance(v, (int, float)) or not 0 < v < math.inf}
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
        for name in ("train_limit", "test_limit", "val_size"):
            if getattr(self, name) is not None:
                check_int(f"sweep {name}", getattr(self, name), minimum=1,
                          hint="or None for the whole split")
        check_int("sweep prune_samples", self.prune_samples, minimum=1)
        if not isinstance(self.metrics, bool):
            raise ValueError(f"sweep metrics must be true or false, got {self.metrics!r}")
        check_int("sweep threads", self.threads, minimum=1,
                  hint="intra-op threads of each trial (1 is fastest side by side)")
        ids: dict[str, Trial] = {}
        for t in self.trials():
            other = ids.setdefault(t.trial_id, t)
            if other != t:  # e.g. a method registered under the name "snip+shuffle"
                raise ValueError(f"sweep trials {other} and {t} share the id {t.trial_id!r}, "
                                 "so one would be skipped as done; rename a model or method")

    def _check_arms(self) -> None:
        from topo_pai.checks import check_bool
        set_ = object.__setattr__
        set_(self, "dense", check_bool("sweep dense", self.dense))
        arms = {}
        for name, spec in self.arms.items():
            if not isinstance(name, str) or not name or "/" in name or "+" in name:
                raise ValueError(f"sweep arm name {name!r} must be a non-empty string without "
                                 "'/' or '+' (they separate the parts of a trial id)")
            if name == DENSE:
                raise ValueError(f"sweep arm name {DENSE!r} is reserved for the unpruned "
                                 "reference; set dense = true instead")
            if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
                raise ValueError(f"sweep arms[{name!r}] must be a table with a 'method' (a "
                                 f"registered method) and its options, got {spec!r}")
            if name in self.method_options:
                raise ValueError(f"sweep method_options[{name!r}]: give an arm's options in "
                                 f"arms[{name!r}] itself")
            spec = dict(spec)
            spec["rescale"] = check_bool(f"sweep arms[{name!r}].rescale",
                                         spec.get("rescale", False))
            arms[name] = spec
        set_(self, "arms", arms)
        if DENSE in self.methods:
            raise ValueError(f"sweep methods: {DENSE!r} is not a pruning method; set "
                             "dense = true to train the unpruned reference")
        names = set(self.methods) | {m + SHUFFLE_SUFFIX for m in self.shuffled}
        if self.dense:
            names.add(DENSE)
        seeds_for = {}
        for name, seeds in self.seeds_for.items():
            if name not in names:
                raise ValueError(f"sweep seeds_for names {name!r}, which is not an arm of the "
                                 f"grid (one of {sorted(names)})")
            seeds = _tuple(f"seeds_for[{name!r}]", seeds, int)
            extra = [s for s in seeds if s not in self.seeds]
            if extra or not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"sweep seeds_for[{name!r}] must be distinct values from seeds "
                                 f"{list(self.seeds)}, got {list(seeds)}")
            seeds_for[name] = seeds
        set_(self, "seeds_for", seeds_for)

    def arm(self, name: str) -> tuple[str, dict, bool]:
        """``(registered method, options for topo_pai.prune, rescale)`` of a name in
        ``methods``: an arm's definition, or a plain method with its ``method_options``."""
        if name in self.arms:
            spec = self.arms[name]
            options = {k: v for k, v in spec.items() if k not in ARM_KEYS}
            return spec["method"], options, bool(spec.get("rescale", False))
        return name, dict(self.method_options.get(name, {})), False

    def validate_names(self) -> None:
        """Check model, method and dataset names against the registries, and what can be
        checked of each method's options without a model (imports torch)."""
        from topo_pai.experiments.data import available_datasets
        from topo_pai.models.spec import check_model_spec
        from topo_pai.pruners import available_methods
        from topo_pai.pruners.api import check_options
        for model in self.models:
            check_model_spec(model)
        known_methods = available_methods()
        for kind, names, known in (("method", [m for m in self.methods if m not in self.arms],
                                    known_methods),
                                   ("dataset", (self.dataset,), available_datasets())):
            for n in names:
                if n not in known:
                    from topo_pai.checks import did_you_mean
                    raise ValueError(f"unknown {kind} {n!r};{did_you_mean(n, known)} available: "
                                     f"{', '.join(known)}")
        for name in self.methods:
            if not isinstance(self.method_options.get(name, {}), dict):
                raise ValueError(f"sweep method_options[{name!r}] must be a dict of options, "
                                 f"got {self.method_options[name]!r}")
            method, options, _ = self.arm(name)
            where = f"arms[{name!r}]" if name in self.arms else f"method_options for {name!r}"
            if name in self.arms and method not in known_methods:
                from topo_pai.checks import did_you_mean
                raise ValueError(f"sweep {where}: unknown method {method!r};"
                                 f"{did_you_mean(method, known_methods)} available: "
                                 f"{', '.join(known_methods)}")
            try:
                check_options(method, **options)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"sweep {where}: {exc}") from None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a sweep configuration must be a table of keys (models, methods, "
                             f"sparsities, ...), got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            from topo_pai.checks import did_you_mean
            raise ValueError(f"sweep configuration has unknown keys {unknown};"
                             f"{did_you_mean(unknown[0], known)} known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path) -> "SweepConfig":
        """Read a ``.json`` or ``.toml`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep configuration file {str(path)!r} does not exist")
        if path.suffix not in (".toml", ".json"):
            raise ValueError(f"sweep configuration {str(path)!r} must be .json or .toml")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".toml":
                from topo_pai.compat import toml_loads
                data = toml_loads(text)
            else:
                data = json.loads(text)
            return cls.from_dict(data)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"sweep configuration file {str(path)!r}: {exc}") from None

    def _recipe(self) -> dict:
        """Everything but the grid's lists: how each trial is run."""
        return {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS
                and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}

    def same_as(self, other: "SweepConfig") -> bool:
        """Whether ``other`` asks for the same set of trials with the same recipe.

        >>> a = SweepConfig(models=("lenet5",), sparsities=(0.9, 0.99))
        >>> a.same_as(SweepConfig(models=("lenet5",), sparsities=(0.99, 0.9)))
        True
        >>> a.same_as(SweepConfig(models=("lenet5",), sparsities=(0.9,)))
        False
        """
        return (self._recipe() == other._recipe()
                and {t.trial_id for t in self.trials()} == {t.trial_id for t in other.trials()})

    def differences(self, other: "SweepConfig") -> list[str]:
        """Names of the fields in which ``other`` is another configuration."""
        mine, theirs = self.to_dict(), other.to_dict()
        out = []
        for k in mine:
            a, b = mine[k], theirs.get(k)
            if k in GRID_FIELDS:
                a, b = sorted(map(str, a)), sorted(map(str, b or ()))
            if a != b:
                out.append(k)
        return out

    def fingerprint(self) -> str:
        """A hash of the configuration, equal for configurations that are :meth:`same_as`."""
        blob = json.dumps({"recipe": self._recipe(),
                           "trials": sorted(t.trial_id for t in self.trials())},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def trials(self) -> list[Trial]:
        out = []
        for model in self.models:
            if self.dense:
                out += [Trial(model, DENSE, False, 0.0, seed)
                        for seed in self.seeds_for.get(DENSE, self.seeds)]
            for s in self.sparsities:
                for method in self.methods:
                    for shuffled in ((False, True) if method in self.shuffled else (False,)):
                        name = method + SHUFFLE_SUFFIX if shuffled else method
                        for seed in self.seeds_for.get(name, self.seeds):
                            out.append(Trial(model, method, shuffled, s, seed))
        return out


# --------------------------------------------------------------------- one trial
def _datasets(cfg: SweepConfig, data_root):
    from topo_pai.experiments.data import load_dataset
    # limit= selects before converting to float (the same samples as Dataset.subset)
    train = load_dataset(cfg.dataset, "train", root=data_root, limit=cfg.train_limit, seed=0)
    test = load_dataset(cfg.dataset, "test", root=data_root, limit=cfg.test_limit, seed=0)
    val = None
    if cfg.val_size is not None:
        if cfg.val_size >= len(train):
            raise ValueError(f"sweep val_size={cfg.val_size} leaves no training images (the "
                             f"training split has {len(train)}); lower it or raise train_limit")
        train, val = train.split_off(cfg.val_size, seed=0)
    return train, val, test


@contextlib.contextmanager
def trial_threads(threads: int):
    """Run the body with ``threads`` intra-op threads in torch and numba and torch's
    deterministic algorithms (where an op has one; others warn); restore the settings after.

    Float reductions split over another number of threads add in another order, so
    without this a trial's metrics would depend on how many workers share the machine.
    """
    import numba
    import torch

    threads = check_int("threads", threads, minimum=1)
    # cuBLAS is deterministic only with a fixed workspace; read when CUDA starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.get_num_threads(), numba.get_num_threads(),
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def run_trial(cfg: SweepConfig, trial: Trial, *, data_root=None, device="auto") -> dict:
    """Build, prune, measure and (if ``cfg.train``) train one trial; return its row.

    The trial runs under :func:`trial_threads` with ``cfg.threads``."""
    with trial_threads(cfg.threads):
        return _run_trial(cfg, trial, data_root=data_root, device=device)


def build_and_prune(cfg: SweepConfig, trial: Trial, train_set):
    """Build ``trial``'s model and its masks exactly as a sweep does (seeded initial weights,
    the arm's method and options, the seeded data batch, the shuffle): ``(model, masks,
    input_shape, rescale)``, where ``rescale`` says whether the arm scales the kept weights
    before training. Shared by :func:`run_trial` and the rebuild of finished trials."""
    import torch

    import topo_pai
    from topo_pai.experiments.training import seed_everything
    from topo_pai.models.spec import build_model, check_input_shape, check_model_spec
    from topo_pai.pruners import get_method

    C, H, W = check_input_shape(check_model_spec(trial.model), cfg.input_shape,
                                train_set.input_shape)
    seed_everything(trial.seed)
    model, _ = build_model(trial.model, input_shape=(C, H, W), num_classes=train_set.num_classes,
                           model_args=cfg.model_kwargs.get(trial.model, {}))
    if trial.method == DENSE:
        return model, {}, (C, H, W), False
    method, options, rescale = cfg.arm(trial.method)
    data = None
    if get_method(method).needs_data:
        gen = torch.Generator().manual_seed(trial.seed)
        idx = torch.randperm(len(train_set), generator=gen)[:cfg.prune_samples]
        data = (train_set.x[idx], train_set.y[idx])
    masks = topo_pai.prune(model, method, trial.sparsity, input_shape=(C, H, W), data=data,
                           seed=trial.seed, **options)
    if trial.shuffled:
        masks = topo_pai.prune(model, "shuffle", trial.sparsity, input_shape=(C, H, W),
                               seed=trial.seed, masks=masks)
    return model, masks, (C, H, W), rescale


def _run_trial(cfg: SweepConfig, trial: Trial, *, data_root, device) -> dict:
    import numpy as np
    import torch

    import topo_pai
    from topo_pai.experiments.curves import topology_record
    from topo_pai.experiments.training import (TrainConfig, rescale_kept_weights, resolve_device,
                                               train)

    train_set, val_set, test_set = _datasets(cfg, data_root)
    t0 = time.perf_counter()
    model, masks, (C, H, W), rescale = build_and_prune(cfg, trial, train_set)
    prune_seconds = time.perf_counter() - t0
    # one trace serves both: the dense topology, and (via with_masks) the pruned one
    dense = topo_pai.from_torch(model, {}, input_shape=(C, H, W))
    row = dict(
        trial_id=trial.trial_id, model=trial.model, dataset=cfg.dataset, method=trial.method,
        shuffled=trial.shuffled, sparsity=trial.sparsity, seed=trial.seed,
        **topology_record(model, masks, (C, H, W), topology=dense),
        dense_flops=dense.effective_flops(),
        accuracy=None, test_loss=None, val_accuracy=None, val_loss=None, epochs=0,
        prune_seconds=round(prune_seconds, 3),
        train_seconds=0.0, device=str(resolve_device(device)), threads=cfg.threads,
    )
    extra = _metric_columns(cfg, model, masks, (C, H, W), dense)
    if rescale:
        rescale_kept_weights(model, masks)
    if cfg.train is not None:
        res = train(model, train_set, test_set, val_set=val_set, masks=masks,
                    config=TrainConfig(**cfg.train), device=device, seed=trial.seed,
                    progress=False)
        row.update(accuracy=res.final_accuracy, test_loss=res.final_loss,
                   val_accuracy=res.final_val_accuracy, val_loss=res.final_val_loss,
                   epochs=len(res.history), train_seconds=round(res.seconds, 3))
    assert set(row) == set(COLUMNS), sorted(set(row) ^ set(COLUMNS))
    row.update(extra)
    if cfg.train is not None:
        row["history"] = res.history  # per-epoch metrics: the store writes them to epochs.jsonl
    for k, v in row.items():  # plain JSON types only
        if isinstance(v, np.generic):
            row[k] = v.item()
    return row


def check_models(cfg: SweepConfig, data_root=None) -> None:
    """Before any trial: every model can be imported, and ``cfg.input_shape`` (if given)
    is the dataset's (a model is refused, not rebuilt silently for another input)."""
    from topo_pai.experiments.data import load_dataset
    from topo_pai.models.spec import check_input_shape, check_model_spec, resolve_callable

    shape = load_dataset(cfg.dataset, "train", root=data_root, limit=1, seed=0).input_shape
    for model in cfg.models:
        spec = check_model_spec(model)
        check_input_shape(spec, cfg.input_shape, shape)
        if not spec.is_zoo:
            resolve_callable(spec)


def _metric_columns(cfg: SweepConfig, model, masks, input_shape, topology) -> dict:
    """The opt-in graph-measure columns of a row (``cfg.metrics``), at initialisation."""
    if not cfg.metrics:
        return {}
    from topo_pai.experiments.trial_metrics import metric_columns
    return metric_columns(model, masks, input_shape, topology=topology)


def _table_columns(rows) -> tuple[str, ...]:
    """:data:`COLUMNS`, then the measure columns when the rows carry them."""
    return COLUMNS + tuple(c for c in METRIC_COLUMNS if any(c in r for r in rows))


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
    if (k in ("log10_paths", "accuracy", "test_loss") or k in METRIC_COLUMNS) \
            and isinstance(v, str):
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


def _check_same_config(directory: Path, cfg: SweepConfig) -> bool:
    """Raise unless ``directory`` is empty of results or holds ``cfg``'s; True if it has
    a config.json."""
    config_path = directory / "config.json"
    if config_path.exists():
        have = _read_stored_config(config_path)
        if not have.same_as(cfg):
            raise SweepConfigMismatch(
                f"sweep directory {str(directory)!r} holds results from a different "
                f"configuration (differs in {have.differences(cfg)}); refusing to mix or "
                "overwrite them. Use a new --out directory, or delete this one to start over")
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
            _check_same_config(self.dir, cfg)  # before the lock file is made; again under it
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _DirectoryLock(self.dir / "sweep.lock")
        try:
            self.config_path = self.dir / "config.json"
            self.jsonl = self.dir / "results.jsonl"
            self.epochs = self.dir / "epochs.jsonl"
            if not _check_same_config(self.dir, cfg):
                _atomic_write(self.config_path, json.dumps(
                    {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}, indent=2) + "\n")
            self._rows = read_results(self.jsonl)
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
        if row.get("history"):
            _append(self.epochs, {"trial_id": row["trial_id"], "history": row["history"]})
        _crash_point("before-row")
        keys = _table_columns([row])
        _append(self.jsonl, {k: _json_safe(row[k]) for k in keys})
        self._rows[row["trial_id"]] = {k: row[k] for k in keys}
        _crash_point("after-row")
        self.export()
        return True

    def record_failure(self, trial: Trial, error: str) -> None:
        _append(self.dir / "failures.jsonl",
                {"trial_id": trial.trial_id, "time": time.time(), "error": error})

    def export(self) -> None:
        """Rewrite ``results.csv`` and ``results.json`` from the table (sorted by trial id)."""
        import csv
        import io

        rows = self.rows
        columns = _table_columns(rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
        _atomic_write(self.dir / "results.csv", buf.getvalue())
        _crash_point("between-exports")
        _atomic_write(self.dir / "results.json", json.dumps(
            [{k: _json_safe(r.get(k)) for k in columns} for r in rows], indent=1) + "\n")


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
    torch.set_num_threads(threads)  # each trial sets it again (trial_threads)


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

    threads = cfg.threads
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
    SweepLocked
        Another sweep is running on ``out_dir``.
    SweepError
        Some trials failed after their retries; all others are saved.

    Notes
    -----
    The run holds ``out_dir``'s lock throughout and exports ``results.csv`` and
    ``results.json`` from ``results.jsonl`` when it ends, whether trials ran,
    failed or none was pending.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_int("workers", workers, minimum=1)
    check_int("retries", retries, minimum=0)
    if limit is not None:
        check_int("limit", limit, minimum=0, hint="or None for every pending trial")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    cfg.validate_names()
    check_models(cfg, data_root)
    with ResultsStore(out_dir, cfg) as store:
        try:
            failed, n_run = _run_pending(cfg, store, workers=workers, engine=engine,
                                         data_root=data_root, device=device, retries=retries,
                                         progress=progress, scheduler_address=scheduler_address,
                                         limit=limit, order=order)
        finally:
            store.export()
        if failed:
            tid, error = next(iter(failed.items()))
            lines = error.strip().splitlines() or ["(no message)"]
            raise SweepError(f"{len(failed)} of {n_run} trials failed; the finished ones are "
                             f"saved, rerun to retry the others. First: {tid}: {lines[-1]} "
                             f"(full errors in {str(store.dir / 'failures.jsonl')!r})")
        return store.rows


def _run_pending(cfg, store, *, workers, engine, data_root, device, retries, progress,
                 scheduler_address, limit, order) -> tuple[dict[str, str], int]:
    done = store.done()
    pending = [t for t in cfg.trials() if t.trial_id not in done]
    if order == "reverse":
        pending.reverse()
    elif order == "random":
        import random
        random.Random(cfg.fingerprint()).shuffle(pending)
    if limit is not None:
        pending = pending[:limit]
    if not pending:
        return {}, 0
    _datasets(cfg, data_root)  # fail fast (missing dataset) before starting workers
    if engine == "local":
        if cfg.resources:
            warnings.warn(f"resources {cfg.resources} are declared for distributed engines; "
                          "local workers ignore them", stacklevel=3)
        failed = _run_local(cfg, pending, store, workers, data_root, device, retries, progress)
    else:
        from topo_pai.experiments.distributed import run_dask
        failed = run_dask(cfg, pending, store, workers=workers, data_root=data_root,
                          device=device, retries=retries, progress=progress,
                          scheduler_address=scheduler_address)
    return failed, len(pending)


def pending_trials(cfg: SweepConfig, out_dir) -> list[Trial]:
    """The trials of ``cfg`` that ``out_dir`` does not hold yet (reads only: no lock, and
    nothing is created or written).

    Raises
    ------
    SweepConfigMismatch
        ``out_dir`` is a file, or holds results of a different configuration.
    """
    directory = Path(out_dir)
    done: set[str] = set()
    if directory.exists():
        if not directory.is_dir():
            raise SweepConfigMismatch(f"sweep directory {str(directory)!r} is a file; pass a "
                                      "directory (it is created if missing)")
        _check_same_config(directory, cfg)
        done = set(read_results(directory / "results.jsonl", warn=False))
    return [t for t in cfg.trials() if t.trial_id not in done]


def rows_to_records(rows: Iterable[dict]) -> list[dict]:
    """Rows with ``-inf``/``nan`` strings turned back into floats (for JSON loaded elsewhere)."""
    return [{k: _from_json(k, v) for k, v in r.items()} for r in rows]
