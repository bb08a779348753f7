"""Experiments built on topo_pai: offline datasets (:mod:`.data`), masked training
(:mod:`.training`), sweeps (:mod:`.sweep`, with :mod:`.schema`, :mod:`.config`,
:mod:`.trial`, :mod:`.store` and :mod:`.executors`), data-free node-path curves
(:mod:`.curves`), paired statistics (:mod:`.stats`) and the plots (:mod:`.plotting`).

Nothing here is imported by the topo_pai core; submodules load on first use.

>>> from topo_pai import experiments
>>> experiments.available_datasets()
['fashion-mnist', 'digits', 'synthetic']
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Dataset": "topo_pai.experiments.data",
    "DatasetNotFoundError": "topo_pai.experiments.data",
    "available_datasets": "topo_pai.experiments.data",
    "load_dataset": "topo_pai.experiments.data",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'topo_pai.experiments' has no attribute {name!r}")
