"""The per-layer table returned by :meth:`topo_pai.Topology.metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from topo_pai.summary import RowTable

#: Keys of every row (``None`` where a key does not apply: the input row has no layer graph,
#: the weighted trio is ``None`` unless weights were given, and every spectral key is ``None``
#: with ``spectra=False``).
COLUMNS = ("name", "kind", "shape", "in_units", "out_units", "params", "unpruned",
           "effective_params", "effective_sparsity", "kernels", "effective_kernels",
           "kept_inputs", "kept_outputs", "min_in_degree", "mean_in_degree", "min_out_degree",
           "mean_out_degree", "mu0", "mu_hat", "spectral_gap", "ramanujan_gap", "weighted_mu0",
           "weighted_mu_hat", "weighted_spectral_gap", "sink_units", "source_units",
           "disconnected_units", "lost_in_edges", "lost_out_edges")
#: Keys of :attr:`MetricsTable.totals`.
TOTALS = ("params", "unpruned", "effective_params", "sparsity", "compression",
          "effective_sparsity", "effective_compression", "kernels", "effective_kernels",
          "effective_nodes", "nodes", "log10_paths", "min_degree", "mean_in_degree",
          "mean_out_degree", "mean_ramanujan_gap", "min_ramanujan_gap", "mean_spectral_gap",
          "mean_weighted_spectral_gap", "sink_units", "source_units", "disconnected_units",
          "lost_in_edges", "lost_out_edges")
_PRINTED = (("layer", "name"), ("kind", "kind"), ("eff. sparsity", "effective_sparsity"),
            ("kernels", "kernels"), ("eff. kernels", "effective_kernels"),
            ("in-deg min", "min_in_degree"), ("in-deg mean", "mean_in_degree"),
            ("out-deg min", "min_out_degree"), ("out-deg mean", "mean_out_degree"),
            ("mu0", "mu0"), ("mu_hat", "mu_hat"), ("Ramanujan gap", "ramanujan_gap"),
            ("w. spectral gap", "weighted_spectral_gap"), ("sink", "sink_units"),
            ("source", "source_units"), ("discon.", "disconnected_units"),
            ("lost in", "lost_in_edges"), ("lost out", "lost_out_edges"))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


@dataclass
class MetricsTable(RowTable):
    """Graph measures of a masked network: rows (one per node group: the input,
    then each layer) and network totals. ``docs/metrics.md`` defines every key.

    Rows hold the keys of :data:`COLUMNS`; totals those of :data:`TOTALS`.
    ``weighted`` says whether weights were given (else the weighted keys are
    ``None``); ``resolution`` is the resolution of the effective counts
    (effective params, sparsity, kernels, nodes and paths). The layer graphs,
    degrees, spectra and unit roles are always those of the channel graph.
    """

    rows: list[dict]
    totals: dict
    resolution: str
    weighted: bool

    def __str__(self) -> str:
        cols = [(h, k) for h, k in _PRINTED
                if self.weighted or not k.startswith("weighted_")]
        cells = [tuple(h for h, _ in cols)] + [tuple(_fmt(r[k]) for _, k in cols)
                                              for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(cols))]
        lines = []
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(row, widths))).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        t = self.totals
        lines += ["", f"totals ({self.resolution} resolution): effective sparsity = "
                  f"{_fmt(t['effective_sparsity'])} (direct {_fmt(t['sparsity'])}), effective "
                  f"compression = {_fmt(t['effective_compression'])}, effective kernels = "
                  f"{t['effective_kernels']}/{t['kernels']}, mean Ramanujan gap = "
                  f"{_fmt(t['mean_ramanujan_gap'])}, sink/source/disconnected units = "
                  f"{t['sink_units']}/{t['source_units']}/{t['disconnected_units']}"]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))
