"""Argument checks shared by the model constructors.

Every constructor validates its arguments up front so that a bad
``in_channels``, ``num_classes``, ``width`` or ``input_size`` fails with a
message naming the parameter, not deep inside ``nn.Conv2d`` or at the first
forward pass.
"""

from __future__ import annotations

import numbers


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``.

    >>> check_positive_int("num_classes", 10)
    10
    >>> check_positive_int("num_classes", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_classes must be a positive int, got 0
    """
    # bool is an Integral but True/False as a channel count is always a bug
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_width(value, name: str = "width") -> float:
    """Return a width multiplier as a positive finite float.

    >>> check_width(0.5)
    0.5
    >>> check_width(-1)
    Traceback (most recent call last):
    ...
    ValueError: width must be a positive number (a multiplier of the layer widths, e.g. 0.25 or 1.0), got -1
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a positive number (a multiplier of the layer widths, "
                         f"e.g. 0.25 or 1.0), got {value!r}")
    return float(value)


def scaled(base: int, width: float) -> int:
    """``base * width`` rounded, but at least one unit so no layer vanishes.

    >>> scaled(64, 0.125), scaled(6, 0.01)
    (8, 1)
    """
    return max(1, round(base * width))


def check_input_size(input_size, minimum: int = 1, model: str = "this model") -> tuple[int, int]:
    """Normalise ``input_size`` (int or ``(H, W)``) to a ``(H, W)`` tuple.

    Parameters
    ----------
    input_size : int or tuple of two ints
        Spatial size of the input images; an int means a square ``(n, n)``.
    minimum : int
        Smallest admissible height and width.
    model : str
        Model name used in the error message.

    Raises
    ------
    ValueError
        If ``input_size`` is not a positive int or pair of them, or is smaller
        than ``minimum`` in either dimension.

    Examples
    --------
    >>> check_input_size(28)
    (28, 28)
    >>> check_input_size((32, 16), minimum=16)
    (32, 16)
    >>> check_input_size(8, minimum=16, model="vgg11")
    Traceback (most recent call last):
    ...
    ValueError: input_size=8 is too small for vgg11: height and width must be at least 16
    """
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        size = (int(input_size), int(input_size))
    else:
        try:
            items = tuple(input_size)
        except TypeError:
            items = None
        if (items is None or len(items) != 2
                or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items)):
            raise ValueError(f"input_size must be an int or a pair of ints (height, width), "
                             f"got {input_size!r}")
        size = (int(items[0]), int(items[1]))
    if min(size) < 1:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    if min(size) < minimum:
        raise ValueError(f"input_size={input_size!r} is too small for {model}: height and width "
                         f"must be at least {minimum}")
    return size
