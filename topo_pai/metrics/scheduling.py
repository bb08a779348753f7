"""Work on several threads, largest items first: for per-layer work that releases
the GIL (numba ``nogil`` kernels, BLAS, LAPACK), such as the layer spectra of
:meth:`topo_pai.Topology.metrics`.

:func:`start_largest_first` starts the items on ``numba.get_num_threads() - 1``
background threads and returns a :class:`Pending`, whose ``result()`` has the caller's
thread join them; :func:`map_largest_first` waits at once;
:func:`numba_threads_beside` gives the caller's own numba kernels the threads the
background leaves.
"""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def numba_threads_beside(pending):
    """The calling thread's numba kernels run on the numba threads that ``pending``'s
    background threads leave (at least one) until the block ends: the background work
    and the caller's own parallel kernels then hold no more threads than there are
    numba threads, instead of two on one core (``numba.set_num_threads`` is per
    thread, so the background threads are not affected). Measured on ResNet-50's
    ``metrics()`` with two numba threads: 6-8 % faster than letting the caller's
    kernels take both."""
    import numba

    saved = numba.get_num_threads()
    busy = 0 if pending is None else pending.background
    numba.set_num_threads(max(1, saved - busy))
    try:
        yield
    finally:
        numba.set_num_threads(saved)


class Pending:
    """Results of work started by :func:`start_largest_first`, in the order of its
    items. ``result()`` waits for them; ``close()`` (for a caller that stops early,
    on an error) cancels what has not started and waits for the rest. Either runs
    the ``on_done`` callbacks once."""

    def __init__(self, collect, cancel=None, background: int = 0):
        self._collect = collect  # () -> list: waits for (or computes) every item
        self._cancel = cancel  # () -> None: drops the items not started, waits for the rest
        #: threads working in the background until the results are collected
        self.background = background
        self._callbacks = []
        self._results = None
        self._open = True

    def on_done(self, callback) -> None:
        """Call ``callback()`` once the work is over (collected, failed or closed)."""
        self._callbacks.append(callback)

    def result(self) -> list:
        """The list of results; re-raises the first failure of an item."""
        if self._open:
            try:
                self._results = self._collect()
            finally:
                self._finish()
        if self._results is None:
            raise RuntimeError("these results were closed before they were collected")
        return self._results

    def close(self) -> None:
        """Stop waiting for the results (a no-op once they are collected)."""
        if self._open:
            try:
                if self._cancel is not None:
                    self._cancel()
            finally:
                self._finish()

    def _finish(self) -> None:
        self._open = False
        for callback in self._callbacks:
            callback()


def start_largest_first(fn, items, sizes) -> Pending:
    """:func:`map_largest_first`, started in the background: ``numba.get_num_threads()
    - 1`` threads take the items largest first, and the caller's thread joins them
    at ``.result()`` (taking items not yet started, then waiting for the rest), so the
    work never holds more threads than the numba threads, and the caller's thread
    does not sit idle while the work it waits for is queued. With one thread or one
    item nothing starts, and ``.result()`` computes the list on the caller's thread.
    ``.close()`` leaves the items not yet started and waits for the others.

    >>> start_largest_first(lambda x: -x, [1, 2], sizes=[1, 2]).result()
    [-1, -2]
    """
    import numba

    items = list(items)
    workers = min(numba.get_num_threads(), len(items))
    if workers <= 1:
        return Pending(lambda: [fn(x) for x in items])
    queue = iter(sorted(range(len(items)), key=lambda i: sizes[i], reverse=True))
    lock = threading.Lock()
    results = [None] * len(items)
    failures = {}  # item index -> its exception
    stopped = threading.Event()  # a failure, an interrupt or close(): start nothing more

    def take():
        with lock:
            return None if stopped.is_set() else next(queue, None)

    def work():
        while (i := take()) is not None:
            try:
                results[i] = fn(items[i])
            except BaseException as error:  # noqa: BLE001 (re-raised by result(); stops the others)
                failures[i] = error
                stopped.set()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    for t in threads:
        t.start()

    def join():
        for t in threads:
            t.join()

    def collect():
        try:
            work()
            join()
        except BaseException:  # an interrupt while waiting
            stopped.set()
            raise
        if failures:
            raise failures[min(failures)]
        return results

    def cancel():
        stopped.set()
        join()

    return Pending(collect, cancel, background=len(threads))


def map_largest_first(fn, items, sizes) -> list:
    """``[fn(x) for x in items]``, in order, computed on up to
    ``numba.get_num_threads()`` threads with the largest items (by ``sizes``) started
    first, so that the last ones to finish are short. For work that releases the GIL
    (numba ``nogil`` kernels, BLAS, LAPACK): each item is computed on its own, so the
    results do not depend on the thread count; with one thread (or one item) it is
    a plain loop.

    >>> map_largest_first(lambda x: x * x, [1, 5, 2], sizes=[1, 5, 2])
    [1, 25, 4]
    """
    return start_largest_first(fn, items, sizes).result()
