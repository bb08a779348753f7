"""The intermediate representation that every resolution works from.

``trace`` turns a torch model into a :class:`Program`: a list of :class:`Op` in
topological order over *values* (per-sample tensors, batch dimension dropped).
Only ops whose topology is known appear; unary elementwise ops (activations,
normalisation, dropout) are aliases and leave no op behind.

Node groups are the network input and the output of every prunable layer; the
paths of the paper run between their units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Layer:
    """One call of a prunable ``Linear`` or ``Conv`` module.

    Convolutions are normalised to two spatial dimensions (a 1-d conv has
    height 1), so ``stride``, ``pad`` (left/top padding) and ``dilation`` are
    pairs. ``weight_shape`` is the parameter's true shape.
    """

    group: int  # index of the node group this layer outputs (0 is the input)
    name: str  # module path, e.g. "layer1.0.conv1"
    param: str  # parameter name, e.g. "layer1.0.conv1.weight"
    kind: str  # "Linear", "Conv1d" or "Conv2d"
    fx_node: str
    weight_shape: tuple[int, ...]
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def kernel_hw(self) -> tuple[int, int]:
        if self.kind == "Linear":
            return (1, 1)
        if self.kind == "Conv1d":
            return (1, self.weight_shape[2])
        return (self.weight_shape[2], self.weight_shape[3])

    @property
    def kernel_volume(self) -> int:
        kh, kw = self.kernel_hw
        return kh * kw

    @property
    def out_per_group(self) -> int:
        """Output units (channels, or features) per group."""
        return self.weight_shape[0] // self.groups

    def input_units(self) -> np.ndarray:
        """The input unit (channel, or feature) each kernel reads: an ``(O, per_group)``
        int array whose entry ``(o, i)`` is ``(o // out_per_group) * per_group + i``,
        as a grouped conv reads input ``i`` of the group of output ``o``."""
        O, per_group = self.weight_shape[:2]
        return (np.arange(O) // self.out_per_group)[:, None] * per_group + np.arange(per_group)


@dataclass(frozen=True)
class Op:
    """One structural op. ``kind`` is one of ``input``, ``layer``, ``pool``,
    ``reduce``, ``add``, ``cat``, ``reshape``, ``scale``; ``attrs`` holds what it needs:

    * ``layer``: ``layer`` (index into ``Program.layers``);
    * ``pool``: ``windows`` (per spatial axis, a CSR pair ``(ptr, idx)`` listing
      the input positions of each output position);
    * ``reduce``: ``axes`` (per-sample axes summed over);
    * ``cat``: ``axis`` (per-sample axis);
    * ``scale``: ``factor`` (float64 array that broadcasts against the per-sample
      shape: a product by constants; a unit whose factor is zero is removed, and
      weighted flows through a unit are multiplied by ``|factor|``).
    """

    kind: str
    fx_node: str
    inputs: tuple[int, ...]
    output: int
    attrs: dict = field(default_factory=dict)


@dataclass
class Program:
    values: list[tuple[int, ...]]  # per-sample shape of every value
    ops: list[Op]
    layers: list[Layer]
    outputs: list[int]  # values that are network outputs
    unused_params: dict[str, tuple[int, ...]]  # prunable weights not on the traced graph

    @cached_property
    def layer_ops(self) -> dict[int, Op]:
        """The ``layer`` op of every layer index (built once; looked up per layer often)."""
        return {op.attrs["layer"]: op for op in self.ops if op.kind == "layer"}

    @property
    def group_values(self) -> list[int]:
        """Value id of every node group: the input, then each layer's output."""
        return [self.ops[0].output] + [self.layer_ops[i].output
                                       for i in range(len(self.layers))]


#: The largest ``|w|`` or ``|c|`` weighted flows take. A layer multiplies mantissas of up
#: to 2**64 by its weights and sums them over its fan-in before it rescales, so weights past
#: about ``2**(1024 - 64 - log2(fan-in))`` overflow float64; 2**900 (8.5e270) leaves room
#: for fan-ins up to 2**60.
MAX_FLOW_WEIGHT = 2.0 ** 900


def check_flow_factors(program: Program) -> None:
    """Refuse a product by a constant above :data:`MAX_FLOW_WEIGHT` in magnitude, naming
    its fx node: weighted flows multiply by ``|c|`` (counts only read whether it is 0)."""
    for op in program.ops:
        if op.kind == "scale":
            peak = float(np.abs(op.attrs["factor"]).max(initial=0.0))
            if peak > MAX_FLOW_WEIGHT:
                raise ValueError(f"fx node {op.fx_node!r} multiplies by a constant of magnitude "
                                 f"{peak:.3g}, above the {MAX_FLOW_WEIGHT:.3g} that weighted "
                                 "flows can scale without overflow; path counts and "
                                 "reachability are fine, flows need a smaller constant")


def unit_factors(factor: np.ndarray, shape: tuple[int, ...], weighted: bool,
                 fx_node: str = "") -> np.ndarray:
    """Per-unit factors of a ``scale`` op at channel resolution (units: ``shape[0]``).

    A channel is kept when its factor is non-zero at some position (counts: 1.0,
    removed: 0.0). With ``weighted``, the factor is ``|factor|``, which must then
    be the same at every position where it is non-zero; otherwise the op has no
    channel-resolution flow and a ``ValueError`` naming ``fx_node`` is raised.
    """
    f = np.abs(np.asarray(factor, dtype=np.float64))
    f = f.reshape((1,) * (len(shape) - f.ndim) + f.shape)
    rest = tuple(range(1, f.ndim))
    hi = f.max(axis=rest) if rest else f
    if not weighted:
        out = (hi > 0).astype(np.float64)
    else:
        lo = np.where(f > 0, f, np.inf).min(axis=rest) if rest else f
        if np.any((hi > 0) & (lo != hi)):
            raise ValueError(
                f"the constant factor at fx node '{fx_node}' has different non-zero magnitudes "
                "within one channel, so it has no channel-resolution flow; use "
                "resolution='neuron'")
        out = hi
    return np.ascontiguousarray(np.broadcast_to(out, (shape[0],)))


def spatial3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """View a per-sample (C,), (C, L) or (C, H, W) shape as (C, H, W)."""
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    if len(shape) == 3:
        return tuple(shape)  # type: ignore[return-value]
    raise ValueError(f"only 1-d and 2-d spatial tensors are supported, got per-sample shape {shape}")


def windows_csr(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pack a list of index arrays into CSR ``(ptr, idx)`` (int64)."""
    ptr = np.zeros(len(windows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(w) for w in windows])
    idx = np.concatenate(windows).astype(np.int64) if windows else np.zeros(0, np.int64)
    return ptr, idx
