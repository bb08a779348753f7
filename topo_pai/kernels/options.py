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

#: Passes over at least this many elements run in :data:`PARALLEL_CHUNKS` slices on
#: numba's threads, shorter ones on the calling thread: waking the threads costs about
#: 0.1 ms with torch loaded, more than a serial pass over ~200k elements takes (measured
#: on 2 cores). Used by the mask intake, the conv layers' element lists and the pruners'
#: threshold; read at call time.
PARALLEL_MIN_ELEMENTS = 1 << 18
#: Slices of such a pass: a few per thread, so that a slow thread is waited on less.
PARALLEL_CHUNKS = 16
