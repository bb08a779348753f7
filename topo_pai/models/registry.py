"""A string registry of the reference architectures.

``get_model("conv4", in_channels=1, num_classes=10, input_size=28, width=0.25)``
builds any model from its name, so experiment configs and command lines can
name architectures as plain strings.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from topo_pai.models.convnet import conv2, conv4, conv6
from topo_pai.models.lenet import lenet5, lenet_300_100
from topo_pai.models.resnet import resnet18, resnet20, resnet32, resnet50, resnet56
from topo_pai.models.vgg import vgg11, vgg16, vgg19
from topo_pai.registry import Registry, params_from_signature, squash

_COMMON = ("in_channels", "num_classes", "input_size")

#: The reference architectures, by name (case, ``-`` and ``_`` ignored on lookup); each
#: entry's params are the builder's own options (``width``, ``batch_norm``).
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", key=squash)
for _fn in (lenet_300_100, lenet5, conv2, conv4, conv6, resnet20, resnet32, resnet56, resnet18,
            resnet50, vgg11, vgg16, vgg19):
    MODELS.register(_fn.__name__, _fn, params=params_from_signature(_fn, _COMMON),
                    summary=(_fn.__doc__ or "").strip().split("\n")[0])


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`, in registry order.

    >>> available_models()[:3]
    ['lenet_300_100', 'lenet5', 'conv2']
    """
    return MODELS.names()


def model_options(name: str) -> list[str]:
    """Extra keyword arguments ``name`` accepts besides in_channels/num_classes/input_size.

    >>> model_options("conv4"), model_options("vgg16")
    (['width'], ['batch_norm'])
    """
    return _entry(name).option_names()


def check_model_options(name: str, kwargs) -> object:
    """Refuse keyword arguments that model ``name`` does not take (a TypeError naming them
    and listing its options); return its registry entry. Builds nothing."""
    entry = _entry(name)
    options = entry.option_names()
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "no extra options"
        raise TypeError(f"get_model({name!r}) got unexpected keyword argument(s) "
                        f"{', '.join(map(repr, unknown))}; {entry.name} accepts "
                        f"in_channels, num_classes, input_size and: {accepted}")
    return entry


def _entry(name: str):
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    return MODELS.entry(name)


def get_model(name: str, *, in_channels: int = 3, num_classes: int = 10, input_size=32,
              **kwargs) -> nn.Module:
    """Build a reference model by name.

    Parameters
    ----------
    name : str
        One of :func:`available_models`; case, ``-`` and ``_`` are ignored
        (``"LeNet-300-100"``, ``"LeNet-5"``).
    in_channels, num_classes : int
        Input channels and number of classes.
    input_size : int or (int, int)
        Spatial input size. It fixes the first fc layer of the LeNets and
        Conv-N nets; ResNets and VGGs (global average pool) only check that it
        is large enough.
    **kwargs
        Model-specific options, see :func:`model_options` (``width`` for the
        LeNets, Conv-N and CIFAR ResNets, ``batch_norm`` for the VGGs).

    Returns
    -------
    torch.nn.Module
        A freshly initialised model (torch's default initialisation; seed
        with ``torch.manual_seed`` for reproducibility).

    Raises
    ------
    ValueError
        Unknown name (with the list of names and a close match), or a bad
        argument value.
    TypeError
        A keyword argument the model does not accept.

    Examples
    --------
    >>> import torch
    >>> net = get_model("LeNet-5", in_channels=1, input_size=28)
    >>> net(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 10])
    >>> get_model("resnt20")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'resnt20'. Did you mean 'resnet20'? Available models: lenet_300_100, ...
    """
    entry = check_model_options(name, kwargs)
    return entry.value(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                       **kwargs)
