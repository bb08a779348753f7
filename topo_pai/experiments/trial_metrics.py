"""Graph measures as sweep columns, and a finished trial's masks rebuilt without training.

Kept as a public import path (docs/metrics.md and user scripts import from it);
the code lives in :mod:`topo_pai.experiments.trial` and the columns in
:mod:`topo_pai.experiments.schema`.
"""

from topo_pai.experiments.schema import METRIC_COLUMNS
from topo_pai.experiments.trial import matches_row, metric_columns, rebuild_trial

__all__ = ["METRIC_COLUMNS", "matches_row", "metric_columns", "rebuild_trial"]
