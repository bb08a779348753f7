"""Sliding-window geometry of convolutions and pools along one spatial dimension:
how many output positions there are, and which input positions each one reads.

Kept apart from the tracer because it is plain arithmetic on sizes, checked
against torch's own output shapes in the tests, and needs no torch.
"""

from __future__ import annotations

import numpy as np

from topo_pai.graph.ir import windows_csr


def conv_out_size(size: int, k: int, s: int, p_total: int, d: int, ceil_mode: bool = False,
                  p_left: int | None = None) -> int:
    """Output length of a window of ``k`` taps, stride ``s``, dilation ``d`` and
    ``p_total`` padding in all over an input of length ``size`` (torch's rule; with
    ``ceil_mode`` a last window must start inside the input or its left padding).

    >>> conv_out_size(32, 3, 1, 2, 1)
    32
    >>> conv_out_size(5, 2, 2, 0, 1), conv_out_size(5, 2, 2, 0, 1, ceil_mode=True, p_left=0)
    (2, 3)
    """
    span = size + p_total - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + (p_left if p_left is not None else p_total // 2):
            out -= 1
    else:
        out = span // s + 1
    return out


def pool_windows(size: int, out: int, k: int, s: int, p: int, d: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The input positions of each of ``out`` pool windows, clipped to the input (padding
    reads nothing), as a CSR ``(ptr, idx)``.

    >>> ptr, idx = pool_windows(4, 2, 3, 2, 1, 1)
    >>> [idx[ptr[i]:ptr[i + 1]].tolist() for i in range(2)]
    [[0, 1], [1, 2, 3]]
    """
    wins = []
    for y in range(out):
        pos = y * s - p + d * np.arange(k)
        wins.append(pos[(pos >= 0) & (pos < size)])
    return windows_csr(wins)


def adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """The input positions of each of ``out`` adaptive-pool windows (torch's
    ``floor(i * size / out)`` to ``ceil((i + 1) * size / out)``; they overlap when
    ``out`` does not divide ``size``), as a CSR ``(ptr, idx)``.

    >>> ptr, idx = adaptive_windows(5, 3)
    >>> [idx[ptr[i]:ptr[i + 1]].tolist() for i in range(3)]
    [[0, 1], [1, 2, 3], [3, 4]]
    """
    wins = []
    for y in range(out):
        start = (y * size) // out
        end = -(-((y + 1) * size) // out)
        wins.append(np.arange(start, end))
    return windows_csr(wins)


__all__ = ["adaptive_windows", "conv_out_size", "pool_windows"]
