"""What the benchmarks share: the environment, the machine's description, the
stopwatch, the run's load and wall-time line, and where results are written.

Import it before torch: it sets ``OMP_WAIT_POLICY=PASSIVE`` (an actively spinning
OpenMP pool steals one of the two shared cores from numba) and puts this
checkout's ``topo_pai`` first on ``sys.path``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datetime  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def usable_cpus() -> int | None:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def machine_info() -> list[str]:
    """Markdown bullets: the date, the machine, the versions and the CPU settings."""
    import numba
    import numpy as np
    import torch

    import topo_pai

    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: `{platform.platform()}` / `{platform.machine()}` / {cpu_name()}",
        (f"- python {platform.python_version()}, torch {torch.__version__}, "
         f"numba {numba.__version__}, numpy {np.__version__}, topo_pai {topo_pai.__version__}"),
        (f"- CPUs: os.cpu_count()={os.cpu_count()}, usable={usable_cpus()}, "
         f"torch threads={torch.get_num_threads()}, "
         f"numba threads={numba.config.NUMBA_NUM_THREADS}, "
         f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"),
    ]


def stopwatch(fn):
    """``(seconds, result)`` of one call of ``fn()``, by wall clock."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class RunClock:
    """The wall time and the load average of a benchmark run since it was made."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.load_start = os.getloadavg()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def load_line(self, note: str = "Other jobs share the cores.") -> str:
        """One sentence for a table's foot: load at start and end, total wall time."""
        start = tuple(round(x, 2) for x in self.load_start)
        end = tuple(round(x, 2) for x in os.getloadavg())
        return (f"Load average (1 / 5 / 15 min) at start: {start}; at end: {end}; total wall "
                f"time {self.elapsed():.0f} s. {note}")


def results_path(name: str, quick: bool, out: str | None = None) -> Path:
    """``out`` if given, else ``benchmarks/results_<name>[_quick].md``."""
    if out:
        return Path(out)
    return HERE / (f"results_{name}_quick.md" if quick else f"results_{name}.md")


def write_results(path: Path, lines: list[str], echo: bool = False) -> None:
    """Write the markdown ``lines`` to ``path`` (and to stdout if ``echo``), and say so
    on stderr."""
    text = "\n".join(lines) + "\n"
    if echo:
        print(text)
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr, flush=True)
