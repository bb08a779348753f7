"""The progress bar of the executors (tqdm when it is installed and wanted)."""

from __future__ import annotations


def progress_bar(total: int, enabled: bool):
    """A bar over ``total`` trials, or an object with the same no-op methods."""
    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass
    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc="trials", unit="trial")
