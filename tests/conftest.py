"""Shared pytest configuration for the topo_pai test-suite.

``OMP_WAIT_POLICY`` must be set before anything imports torch (or numba's
OpenMP layer): with the default ACTIVE policy, idle OpenMP threads spin and
make the numba ``parallel=True`` kernels and torch fight for the cores.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hypothesis import HealthCheck, settings  # noqa: E402

# numba compiles a kernel specialisation on first call (int32 and int64 index
# arrays each), which can take seconds: no per-example deadline.
settings.register_profile(
    "topo_pai",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.load_profile("topo_pai")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bigmem: needs about 2.5 GiB of RAM in a child process (deselect with "
                   "-m 'not bigmem')")
