"""The per-layer table returned by :meth:`topo_pai.Topology.summary`."""

from __future__ import annotations

import math
from dataclasses import dataclass

COLUMNS = ("name", "kind", "shape", "params", "unpruned", "effective_params", "nodes",
           "effective_nodes", "log10_in_paths", "log10_out_paths", "fan_in_median", "fan_in_max",
           "fan_out_median", "fan_out_max")
# Printed columns: (header, record keys); a fan pair prints as "median/max".
_PRINTED = (("layer", ("name",)), ("kind", ("kind",)), ("shape", ("shape",)),
            ("params", ("params",)), ("unpruned", ("unpruned",)),
            ("eff. params", ("effective_params",)), ("nodes", ("nodes",)),
            ("eff. nodes", ("effective_nodes",)), ("log10 in-paths", ("log10_in_paths",)),
            ("log10 out-paths", ("log10_out_paths",)),
            ("fan-in med/max", ("fan_in_median", "fan_in_max")),
            ("fan-out med/max", ("fan_out_median", "fan_out_max")))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-inf" if v == -math.inf else f"{v:.2f}"
    if isinstance(v, tuple):
        return "x".join(str(s) for s in v)
    return str(v)


def _cell(row: dict, keys) -> str:
    if len(keys) == 1:
        return _fmt(row[keys[0]])
    if row[keys[0]] is None:  # the input row has no fan statistics
        return "-"
    return "/".join(f"{row[k]:g}" for k in keys)  # medians are whole or half units


@dataclass
class Summary:
    """Rows (one per node group: the input, then each layer) and network totals.

    The fan columns (``fan_in_median``, ``fan_in_max``, ``fan_out_median``,
    ``fan_out_max``; ``None`` on the input row) are the degree statistics of
    :func:`topo_pai.metrics.degrees.fan_stats`: median and maximum fan-in of
    the layer's kept output units and fan-out of its kept input units, at
    channel resolution in kernel-count multiplicity (every kept weight element
    is one edge), whatever the table's resolution.
    """

    rows: list[dict]
    totals: dict
    resolution: str

    def to_records(self) -> list[dict]:
        """The rows as a list of plain dicts (e.g. for ``pandas.DataFrame``)."""
        return [dict(r) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __str__(self) -> str:
        cells = [tuple(h for h, _ in _PRINTED)] + [
            tuple(_cell(r, keys) for _, keys in _PRINTED) for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(_PRINTED))]
        numeric = [False, False, False] + [True] * (len(_PRINTED) - 3)
        lines = []
        for k, row in enumerate(cells):
            lines.append("  ".join(c.rjust(w) if numeric[j] else c.ljust(w)
                                   for j, (c, w) in enumerate(zip(row, widths))).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        t = self.totals
        lines.append("")
        lines.append(
            f"totals ({self.resolution} resolution): log10 paths = {_fmt(t['log10_paths'])}, "
            f"effective nodes = {t['effective_nodes']}/{t['nodes']}, "
            f"effective params = {t['effective_params']}/{t['unpruned']} unpruned "
            f"of {t['params']}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))
