"""The per-layer table returned by :meth:`topo_pai.Topology.summary`."""

from __future__ import annotations

import math
from dataclasses import dataclass

COLUMNS = ("name", "kind", "shape", "params", "unpruned", "effective_params", "nodes",
           "effective_nodes", "log10_in_paths", "log10_out_paths")
_HEADERS = ("layer", "kind", "shape", "params", "unpruned", "eff. params", "nodes", "eff. nodes",
            "log10 in-paths", "log10 out-paths")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-inf" if v == -math.inf else f"{v:.2f}"
    if isinstance(v, tuple):
        return "x".join(str(s) for s in v)
    return str(v)


@dataclass
class Summary:
    """Rows (one per node group: the input, then each layer) and network totals."""

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
        cells = [_HEADERS] + [tuple(_fmt(r[c]) for c in COLUMNS) for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(COLUMNS))]
        numeric = [False, False, False] + [True] * 7
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
