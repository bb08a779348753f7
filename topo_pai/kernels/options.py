"""The options every numba kernel of :mod:`topo_pai.kernels` compiles with.

``cache=True`` stores the machine code next to the source
(``__pycache__/*.nbi``, ``*.nbc``), where ``make install`` puts it once
(:mod:`topo_pai.warmup`); it stays valid because kernels take their arrays as
arguments, never from globals. ``nogil`` lets callers run kernels in threads.
There is no ``fastmath``: path counts rely on exact IEEE behaviour of zeros and
infinities, and sums run in a fixed order.
"""

from __future__ import annotations

JIT_OPTIONS = dict(nogil=True, cache=True)
