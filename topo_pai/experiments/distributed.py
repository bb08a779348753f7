"""Kept as a public import path (``from topo_pai.experiments.distributed import
local_cluster``): the Dask executor lives in :mod:`topo_pai.experiments.executors.dask`."""

from topo_pai.experiments.executors.dask import (INSTALL_HINT, WORKER_ENV, ClusterResourceError,
                                                 check_resources, local_cluster, run_dask)

__all__ = ["INSTALL_HINT", "WORKER_ENV", "ClusterResourceError", "check_resources",
           "local_cluster", "run_dask"]
