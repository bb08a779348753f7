"""Model specifications: a zoo name, ``package.module:callable`` or ``path/to/file.py:callable``.

The command line and sweeps name models as strings. :func:`parse_model_spec`
tells the three forms apart and :func:`build_model` builds one:

* a **zoo name** (:func:`~topo_pai.models.available_models`) is built for the input
  shape and class count, with ``model_args`` as its extra options;
* a **callable** (a model class or factory function) is imported and called with
  ``model_args`` as keyword arguments (none by default); the input shape is the
  caller's to give, since a user's model fixes its own.

A zoo model is built for one input shape; asked for another shape than the one a
dataset gives, :func:`check_input_shape` refuses instead of building it anew.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from topo_pai.errors import ModelAttributeError, ModelBuildError

ZOO, MODULE, FILE = "zoo", "module", "file"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model specification: ``kind`` is ``"zoo"``, ``"module"`` or ``"file"``;
    ``target`` the zoo name, module name or file path; ``attr`` the callable's name
    (dotted for a nested attribute)."""

    text: str
    kind: str
    target: str
    attr: str = ""

    @property
    def is_zoo(self) -> bool:
        return self.kind == ZOO


def parse_model_spec(text) -> ModelSpec:
    """Tell a zoo name, ``package.module:callable`` and ``path/to/file.py:callable`` apart.

    The form is read off the text alone (nothing is imported): a ``:`` separates a module
    or file from the callable; a target ending in ``.py`` or holding a path separator is a
    file.

    >>> parse_model_spec("resnet20").kind
    'zoo'
    >>> parse_model_spec("mypkg.nets:Net")
    ModelSpec(text='mypkg.nets:Net', kind='module', target='mypkg.nets', attr='Net')
    >>> parse_model_spec("models/net.py:build").kind
    'file'
    >>> parse_model_spec("net.py")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: model 'net.py' names a file but no callable; write 'net.py:NAME' ...
    """
    if not isinstance(text, str):
        raise TypeError(f"a model must be given as a string, got {type(text).__name__}")
    spec = text.strip()
    if not spec:
        raise ValueError("the model name is empty; give a zoo name (see `topo-pai models`), "
                         "package.module:callable or path/to/file.py:callable")
    target, sep, attr = spec.rpartition(":")
    if len(target) == 1 and target.isalpha():  # "C:\\net.py" without a callable
        target, sep, attr = "", "", spec
    if not sep:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            raise ValueError(f"model {text!r} names a file but no callable; write "
                             f"'{spec}:NAME' with NAME the model class or the function that "
                             "builds it")
        return ModelSpec(text, ZOO, spec)
    if not target or not attr:
        raise ValueError(f"model {text!r}: expected package.module:callable or "
                         "path/to/file.py:callable, with both sides of ':' given")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ValueError(f"model {text!r}: {attr!r} is not a Python name")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ValueError(f"model {text!r}: {target!r} is neither a module name (such as "
                         "mypkg.nets) nor a .py file")
    return ModelSpec(text, FILE if is_file else MODULE, target, attr)


def _import_file(path: Path):
    """Import a .py file as a module of its own, named by its resolved path and its
    content: two files of one name do not collide, repeated builds share one import,
    and a file edited since is imported again (a sweep records the file's SHA-256, so
    its rows must come from that content)."""
    resolved = path.resolve()
    key = hashlib.sha1(str(resolved).encode() + b"\0" + resolved.read_bytes())
    name = "topo_pai_user_" + key.hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"model file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's own folder is importable while it runs, as for `python file.py`.
    folder = str(resolved.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, ImportError):  # keeps its type; names the file that imports
            message = f"model file {str(path)!r} could not import what it needs: {exc}"
            try:
                named = type(exc)(message)
            except Exception:  # noqa: BLE001 - a subclass with other arguments
                named = ImportError(message)
            raise named from exc
        if isinstance(exc, SystemExit):
            raise ModelBuildError(
                f"model file {str(path)!r} called sys.exit({exc.code!r}) while being imported; "
                "put its script part under `if __name__ == '__main__':`") from None
        if isinstance(exc, Exception):
            raise ModelBuildError(f"model file {str(path)!r} raised {type(exc).__name__} while "
                                  f"being imported: {exc}") from exc
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _attribute(module, spec: ModelSpec):
    obj = module
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModelAttributeError(f"model {spec.text!r}: {spec.target!r} has no attribute "
                                      f"{part!r}.{hint}")
        obj = getattr(obj, part)
    return obj


def resolve_callable(spec: ModelSpec):
    """Import the callable a ``module`` or ``file`` spec names."""
    if spec.kind == FILE:
        path = Path(spec.target)
        if not path.is_file():
            raise FileNotFoundError(f"model {spec.text!r}: file {spec.target!r} does not exist")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(spec.target)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"model {spec.text!r}: cannot import module {spec.target!r} ({exc}); is its "
                "package installed or on PYTHONPATH? A file is given as path/to/file.py:NAME"
            ) from None
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's module failed, not topo_pai
            raise ModelBuildError(f"model {spec.text!r}: module {spec.target!r} raised "
                                  f"{type(exc).__name__} while being imported: {exc}") from exc
    fn = _attribute(module, spec)
    if not callable(fn):
        raise TypeError(f"model {spec.text!r}: {spec.attr!r} is a {type(fn).__name__}, not a "
                        "class or function that builds the model")
    return fn


def check_model_spec(text) -> ModelSpec:
    """Parse ``text`` and check what can be checked without building: a zoo name is known
    (with a did-you-mean), a file exists."""
    from topo_pai.models.registry import MODELS

    spec = parse_model_spec(text)
    if spec.is_zoo:
        MODELS.entry(spec.target)
    elif spec.kind == FILE and not Path(spec.target).is_file():
        raise FileNotFoundError(f"model {spec.text!r}: file {spec.target!r} does not exist")
    return spec


def model_identity(text) -> str:
    """What two spellings of one model share: a zoo model's registered name (the registry
    resolves ``"LeNet-5"`` and ``"lenet5"`` alike), a file's resolved path with its
    callable, or a module callable's text. Checks ``text`` as :func:`check_model_spec`.

    >>> model_identity("LeNet-5") == model_identity("lenet5") == "lenet5"
    True
    """
    from topo_pai.models.registry import MODELS

    spec = check_model_spec(text)
    if spec.is_zoo:
        return MODELS.canonical(spec.target)
    if spec.kind == FILE:
        return f"{Path(spec.target).resolve()}:{spec.attr}"
    return spec.text


#: The arguments of a zoo model that its input shape and class count give (``--input-shape``,
#: ``--num-classes``, a dataset), never its model arguments.
ZOO_SHAPE_ARGS = ("in_channels", "num_classes", "input_size")


def check_model_args(spec: ModelSpec, model_args, fn=None) -> dict:
    """``model_args`` (a dict or None) as a new dict, checked as far as it can be without
    building the model: string names and, for a zoo model, only its own options (none of
    :data:`ZOO_SHAPE_ARGS`); with ``fn`` (a callable's :func:`resolve_callable`), that its
    signature takes them."""
    if not isinstance(model_args, (dict, type(None))):
        raise TypeError(f"model {spec.text!r}: its arguments must be a dict of keyword "
                        f"arguments (e.g. {{\"width\": 8}}), got {type(model_args).__name__} "
                        f"{model_args!r}")
    args = dict(model_args or {})
    bad = [k for k in args if not isinstance(k, str)]
    if bad:
        raise TypeError(f"model arguments must have string names, got {bad}")
    if spec.is_zoo:
        from topo_pai.models.registry import check_model_options
        given = [k for k in ZOO_SHAPE_ARGS if k in args]
        if given:
            raise ValueError(f"zoo model {spec.text!r}: {', '.join(given)} is set by the input "
                             "shape and class count, not by the model arguments; give "
                             "--input-shape C,H,W and --num-classes (or --dataset; in a sweep, "
                             "its dataset and input_shape) instead")
        check_model_options(spec.target, args)
    elif fn is not None:
        import inspect
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            given = ", ".join(sorted(args)) or "no arguments"
            raise TypeError(f"model {spec.text!r} cannot be called with {given}: {exc}; pass "
                            "its arguments (--model-args on the command line, model_kwargs in "
                            "a sweep configuration)") from None
        except ValueError:  # no signature to read (a builtin): the call will tell
            pass
    return args


def check_input_shape(spec: ModelSpec, requested, dataset_shape) -> tuple[int, ...] | None:
    """The input shape to build and trace ``spec`` for.

    ``requested`` is the shape asked for (``--input-shape`` or a sweep's ``input_shape``),
    ``dataset_shape`` the dataset's (or None). A zoo model is built for one of them; when
    both are given and differ, the zoo model is refused rather than built anew for the
    dataset. A callable model fixes its own input, so it is traced at the dataset's shape,
    which must then equal ``requested`` if both are given.
    """
    req = None if requested is None else tuple(int(v) for v in requested)
    data = None if dataset_shape is None else tuple(int(v) for v in dataset_shape)
    if req is not None and data is not None and req != data:
        what = "zoo model" if spec.is_zoo else "model"
        raise ValueError(
            f"{what} {spec.text!r} is asked for input shape {_fmt(req)} but the dataset gives "
            f"{_fmt(data)}; drop the input shape to use the dataset's, or pick a dataset of "
            f"that shape (a model is not rebuilt silently for another input)")
    shape = data if data is not None else req
    if shape is None and not spec.is_zoo:
        raise ValueError(f"model {spec.text!r} is a user's callable, whose input shape topo_pai "
                         "cannot know; give --input-shape C,H,W (or input_shape in a sweep, or "
                         "a dataset)")
    return shape


def _fmt(shape) -> str:
    return "x".join(str(s) for s in shape)


def build_model(text, *, input_shape=None, num_classes: int = 10, model_args=None):
    """Build the model ``text`` names; return ``(model, spec)``.

    Parameters
    ----------
    text : str
        A zoo name, ``package.module:callable`` or ``path/to/file.py:callable``.
    input_shape : tuple of int, optional
        ``(C, H, W)`` (or ``(C, L)``, ``(F,)``); a zoo model is built for it (default
        ``(3, 32, 32)``); a callable ignores it.
    num_classes : int
        Classes of a zoo model; a callable ignores it.
    model_args : dict, optional
        Keyword arguments: a zoo model's options (:func:`model_options`), or the
        callable's arguments.

    Raises
    ------
    ValueError, TypeError, ImportError, FileNotFoundError, AttributeError
        A bad specification, naming it and saying how to fix it.
    """
    import torch

    from topo_pai.models.registry import get_model

    spec = parse_model_spec(text)
    args = check_model_args(spec, model_args)
    if spec.is_zoo:
        shape = tuple(input_shape) if input_shape is not None else (3, 32, 32)
        if len(shape) != 3:
            raise ValueError(f"zoo model {spec.text!r} takes a C,H,W input shape, got "
                             f"{_fmt(shape)}")
        model = get_model(spec.target, in_channels=shape[0], num_classes=num_classes,
                          input_size=shape[1:], **args)
        return model, spec
    fn = resolve_callable(spec)
    try:  # arguments that bind: a TypeError from the call is then the model code's own
        inspect.signature(fn).bind(**args)
        binds = True
    except (TypeError, ValueError):  # ValueError: no signature to read
        binds = False
    try:
        model = fn(**args)
    except TypeError as exc:
        if binds:
            raise ModelBuildError(f"model {spec.text!r} raised TypeError while being built: "
                                  f"{exc}") from exc
        given = ", ".join(sorted(args)) or "no arguments"
        raise TypeError(f"model {spec.text!r} could not be called with {given}: {exc}; pass "
                        "its arguments as JSON with --model-args (model_args in Python)") from None
    except Exception as exc:  # noqa: BLE001 - the user's code failed, not topo_pai
        raise ModelBuildError(f"model {spec.text!r} raised {type(exc).__name__} while being "
                              f"built: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model {spec.text!r} returned an object of type {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model, spec


__all__ = ["ModelSpec", "ZOO_SHAPE_ARGS", "parse_model_spec", "check_model_spec",
           "model_identity", "check_model_args", "check_input_shape",
           "resolve_callable", "build_model"]
