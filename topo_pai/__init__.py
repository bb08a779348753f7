"""topo_pai: the topology of sparse neural networks.

Turn a torch model and its pruning masks into a layered DAG and ask how many
input-to-output paths survive, and which nodes and weights lie on one.

>>> import topo_pai
>>> sorted(topo_pai.__all__)[:2]
['InputShapeError', 'MaskError']

Heavy dependencies (torch, numba) load on first use, not on import, and importing
topo_pai leaves the environment alone: set ``OMP_WAIT_POLICY=PASSIVE`` yourself before
torch is imported (the ``topo-pai`` command, the demo, the tests and the benchmarks do).
"""

from __future__ import annotations

from topo_pai.errors import (
    InputShapeError,
    MaskError,
    NoPrunableLayerError,
    PathCountTooLarge,
    TopoPaiError,
    TraceError,
    UncoveredWeightsWarning,
    UnsupportedOpError,
)

__version__ = "0.1.0"

_LAZY = {
    "from_torch": "topo_pai.topology",
    "Masks": "topo_pai.masks",
    "Topology": "topo_pai.topology",
    "PathCount": "topo_pai.topology",
    "NodeCounts": "topo_pai.metrics.scaled",
    "Summary": "topo_pai.summary",
    "MetricsTable": "topo_pai.metrics_table",
    "prune": "topo_pai.pruners",
    "available_methods": "topo_pai.pruners",
    "apply_masks": "topo_pai.pruners",
    "remove_masks": "topo_pai.pruners",
    "bake_masks": "topo_pai.pruners",
    "read_masks": "topo_pai.pruners",
    "save_masks": "topo_pai.pruners",
    "load_masks": "topo_pai.pruners",
    "uncovered_weights": "topo_pai.coverage",
    "compact": "topo_pai.compaction",
    "compact_with_report": "topo_pai.compaction",
}

__all__ = [
    "from_torch", "Masks", "Topology", "PathCount", "NodeCounts", "Summary", "MetricsTable",
    "TopoPaiError", "MaskError",
    "InputShapeError", "TraceError", "UnsupportedOpError", "NoPrunableLayerError",
    "PathCountTooLarge", "prune", "available_methods", "apply_masks", "remove_masks",
    "bake_masks", "read_masks", "save_masks", "load_masks", "UncoveredWeightsWarning",
    "uncovered_weights", "compact", "compact_with_report",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'topo_pai' has no attribute {name!r}")
