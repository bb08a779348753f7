"""Fan-in and fan-out of a layer's units, to make degenerate masks visible.

Degrees are taken at channel resolution in *kernel-count multiplicity*: every
kept weight element is one edge. So the fan-in of an output unit (a channel, or
a feature of a Linear) is the number of kept elements in its row of the weight,
and the fan-out of an input unit is the number of kept elements reading it,
summed over the output channels of its group and over kernel positions. A
Linear layer's input units are its own input features (a flattened map's
features count separately, as NPB's per-feature path masses do).

The statistics run over the *kept* units of each side, those with at least one
kept weight; a side with none reports 0.
"""

from __future__ import annotations

import numpy as np

FAN_FIELDS = ("fan_in_median", "fan_in_max", "fan_out_median", "fan_out_max")


def fan_counts(mask, groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(fan_in, fan_out)`` int64 arrays of a weight mask of shape
    ``(C_out, C_in / groups, *kernel)``: per output unit and per input unit.

    >>> m = np.array([[1, 1, 0], [1, 0, 0]])           # Linear 3 -> 2
    >>> [a.tolist() for a in fan_counts(m)]
    [[2, 1], [2, 1, 0]]
    >>> m = np.ones((4, 1, 3, 3))                       # depthwise 3x3 conv, 4 channels
    >>> [a.tolist() for a in fan_counts(m, groups=4)]
    [[9, 9, 9, 9], [9, 9, 9, 9]]
    """
    m = np.asarray(mask)
    c_out, per_group = m.shape[:2]
    kernels = (m.reshape(c_out, per_group, -1) != 0).sum(axis=2, dtype=np.int64)
    fan_in = kernels.sum(axis=1)
    fan_out = kernels.reshape(groups, c_out // groups, per_group).sum(axis=1).reshape(-1)
    return fan_in, fan_out


def fan_stats(mask, groups: int = 1) -> dict:
    """Median and maximum fan-in and fan-out of the kept units (see module docstring).

    >>> fan_stats(np.array([[1, 1, 0, 0], [1, 0, 0, 0]]))
    {'fan_in_median': 1.5, 'fan_in_max': 2, 'fan_out_median': 1.5, 'fan_out_max': 2}
    """
    fan_in, fan_out = fan_counts(mask, groups)
    out = {}
    for side, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        kept = fan[fan > 0]
        out[f"{side}_median"] = float(np.median(kept)) if kept.size else 0.0
        out[f"{side}_max"] = int(kept.max()) if kept.size else 0
    return out
