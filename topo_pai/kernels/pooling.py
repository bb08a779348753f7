"""Sum pooling over explicit windows and its transpose, on flat (C, H, W) arrays.

A window is a CSR row of input rows (``hptr``, ``hidx``) times one of input
columns (``wptr``, ``widx``). A pool op joins each output position to every
input position of its window, so counts cross it as window sums. Reference:
:func:`topo_pai.kernels.reference.pool_forward`.
"""

from __future__ import annotations

import numba

from topo_pai.kernels.options import JIT_OPTIONS


@numba.njit(parallel=True, **JIT_OPTIONS)
def pool_forward(x, C, H, W, out, OH, OW, hptr, hidx, wptr, widx):
    """``out[c, y, z] += sum over window rows hidx[hptr[y]:] x cols widx[wptr[z]:]``."""
    for c in numba.prange(C):
        ibase = c * H * W
        obase = c * OH * OW
        for y in range(OH):
            for z in range(OW):
                acc = 0.0
                for a in range(hptr[y], hptr[y + 1]):
                    row = ibase + hidx[a] * W
                    for b in range(wptr[z], wptr[z + 1]):
                        acc += x[row + widx[b]]
                out[obase + y * OW + z] += acc


@numba.njit(parallel=True, **JIT_OPTIONS)
def pool_backward(gout, C, H, W, gin, OH, OW, hptr, hidx, wptr, widx):
    """Transpose of :func:`pool_forward` (parallel over channels)."""
    for c in numba.prange(C):
        ibase = c * H * W
        obase = c * OH * OW
        for y in range(OH):
            for z in range(OW):
                g = gout[obase + y * OW + z]
                if g == 0.0:
                    continue
                for a in range(hptr[y], hptr[y + 1]):
                    row = ibase + hidx[a] * W
                    for b in range(wptr[z], wptr[z + 1]):
                        gin[row + widx[b]] += g
