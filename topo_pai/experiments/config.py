"""A sweep's configuration: the grid of trials and the recipe that runs each one.

:class:`SweepConfig` is what decides a trial's result; a sweep directory stores
it (``config.json``) and refuses another one. Its :meth:`~SweepConfig.fingerprint`
and :meth:`~SweepConfig.same_as` ignore the order of the grid's lists and the
fields added later while they hold their defaults, so that directories written
by older versions resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from topo_pai.checks import check_int, check_seed
from topo_pai.experiments.schema import SHUFFLE_SUFFIX, trial_id

#: The method name of a sweep's unpruned reference trials (``SweepConfig.dense``).
DENSE = "dense"
#: Keys of an arm that are not options of its method.
ARM_KEYS = ("method", "rescale")
#: Fields added after sweeps were first stored, with their defaults: a field at its default
#: is left out of the recipe, so that configurations from before it keep their fingerprint.
LATER_FIELDS = {"input_shape": None, "arms": {}, "seeds_for": {}, "dense": False,
                "val_size": None, "metrics": "off"}
#: What ``SweepConfig.metrics`` records: nothing, the O(non-zeros) measures (the spectral
#: columns left empty), or every measure. ``false`` and ``true`` (its values before the
#: modes) mean ``"off"`` and ``"all"``.
METRICS_MODES = ("off", "cheap", "all")
#: The lists of a SweepConfig that span the grid: their order does not change the trials.
GRID_FIELDS = ("models", "methods", "sparsities", "seeds", "shuffled")


class SameModelTwice(ValueError):
    """A sweep's models name one model under two spellings (``"lenet5"``, ``"LeNet-5"``).
    Refused for a new sweep; a directory that already holds such a configuration's results
    resumes with a warning (its trials ran under both ids)."""


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


def _metrics_mode(value) -> str:
    """``value`` of ``SweepConfig.metrics`` as one of :data:`METRICS_MODES`."""
    if isinstance(value, bool):
        return "all" if value else "off"
    if isinstance(value, str) and value in METRICS_MODES:
        return value
    raise ValueError(f"sweep metrics must be one of {', '.join(map(repr, METRICS_MODES))} "
                     f"(or true for 'all', false for 'off'), got {value!r}")


@dataclass(frozen=True)
class SweepConfig:
    """The grid and recipe of a sweep; everything that decides a trial's result.

    Parameters
    ----------
    models : list of str
        Names from :func:`topo_pai.models.available_models`, built for the
        dataset's input shape and class count, or ``package.module:callable`` /
        ``path/to/file.py:callable`` (a user's model, called with its
        ``model_kwargs``; see :mod:`topo_pai.models.spec`). Each model once: two
        spellings the registry resolves to one model (``"lenet5"``, ``"LeNet-5"``)
        are refused by :meth:`validate_names`. Trial ids keep the spelling given.
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
        The input shape the models are meant for, ``[C, H, W]``; the synthetic
        data are generated at it, and a sweep whose dataset's files give another
        shape is refused (models are not rebuilt silently for the dataset). None:
        the dataset's.
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
    metrics : {"off", "cheap", "all"} or bool
        Also record the graph measures of :data:`~topo_pai.experiments.schema.
        METRIC_COLUMNS` (``Topology.metrics`` totals at initialisation, channel
        resolution) as columns of every row. ``"all"`` (or ``True``): every measure,
        the spectra included (an eigenproblem per layer, so opt-in); ``"cheap"``:
        the O(non-zeros) measures only (``spectra=False``), the columns of
        :data:`~topo_pai.experiments.schema.SPECTRAL_COLUMNS` then empty (None);
        ``"off"`` (or ``False``, the default): none. Stored as the mode's name.
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
    metrics: str = "off"

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
        for s in self.seeds:
            check_seed("sweep seeds", s)
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
        set_(self, "metrics", _metrics_mode(self.metrics))
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
            from topo_pai.pruners import available_methods
            if name in available_methods() and spec["method"] != name:
                raise ValueError(f"sweep arm name {name!r} is a registered method, but the arm "
                                 f"runs {spec['method']!r}: its trials would be recorded and "
                                 f"plotted as {name!r}. Give the arm a name of its own (e.g. "
                                 f"'{spec['method']}_{name}')")
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
        checked of each method and arm (its options' names and values) without a model
        (imports torch). Two spellings of one model (``"lenet5"``, ``"LeNet-5"``) are
        refused last, with :class:`SameModelTwice`."""
        from topo_pai.experiments.data import available_datasets
        from topo_pai.models.spec import model_identity
        from topo_pai.pruners import available_methods, get_method
        from topo_pai.pruners.api import check_options
        spellings: dict[str, list[str]] = {}
        for model in self.models:  # the registry's own resolution, before any trial id is used
            spellings.setdefault(model_identity(model), []).append(model)
        known_methods = available_methods()
        for kind, names, known in (("method", [m for m in self.methods if m not in self.arms],
                                    known_methods + list(self.arms)),
                                   ("dataset", (self.dataset,), available_datasets())):
            for n in names:
                if n not in known:
                    from topo_pai.checks import did_you_mean
                    raise ValueError(f"unknown {kind} {n!r};{did_you_mean(n, known)} available: "
                                     f"{', '.join(known)}")
        # every arm, also one not (yet) in methods: it is part of the stored configuration
        for name in [*self.methods, *(a for a in self.arms if a not in self.methods)]:
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
            if method in known_methods and get_method(method).budgets_from_option is not None:
                raise ValueError(f"sweep {where}: method {method!r} reworks given masks, which "
                                 "a sweep has none to give; list the methods whose masks to "
                                 "rework in shuffled (--shuffled on the command line)")
            try:
                check_options(method, **options)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"sweep {where}: {exc}") from None
        for identity, names in spellings.items():
            if len(names) > 1:
                raise SameModelTwice(
                    f"sweep models {' and '.join(map(repr, names))} name the same model "
                    f"({identity!r}), which would run twice under two trial ids; keep one "
                    "spelling")

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
        if "models" not in d:
            raise ValueError("sweep configuration has no 'models'; give the list of models, "
                             "e.g. models = [\"lenet5\"] (and methods, sparsities, ...)")
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
        recipe = {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS
                  and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        if recipe.get("metrics") == "all":
            # as stored before metrics took a mode (``true``): those sweeps keep their
            # fingerprint, and with it the order of --order random
            recipe["metrics"] = True
        return recipe

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

