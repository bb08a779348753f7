"""The per-layer table returned by :meth:`topo_pai.Topology.summary`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

COLUMNS = ("name", "kind", "shape", "in_shape", "out_shape", "params", "unpruned", "density",
           "effective_params", "macs", "effective_macs", "nodes", "effective_nodes",
           "log10_in_paths", "log10_out_paths", "fan_in_median", "fan_in_max", "fan_out_median",
           "fan_out_max")
# Printed columns: (header, record keys); a fan pair prints as "median/max".
_PRINTED = (("layer", ("name",)), ("kind", ("kind",)), ("shape", ("shape",)),
            ("in -> out", ("in_shape", "out_shape")), ("params", ("params",)),
            ("unpruned", ("unpruned",)), ("density", ("density",)),
            ("MACs", ("macs",)), ("eff. MACs", ("effective_macs",)),
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
    if keys == ("density",):
        return "-" if row["density"] is None else f"{row['density']:.2%}"
    if keys == ("in_shape", "out_shape"):
        return f"{_fmt(row['in_shape'])} -> {_fmt(row['out_shape'])}" if row["in_shape"] \
            else _fmt(row["out_shape"])
    if len(keys) == 1:
        return _fmt(row[keys[0]])
    if row[keys[0]] is None:  # the input row has no fan statistics
        return "-"
    return "/".join(f"{row[k]:g}" for k in keys)  # medians are whole or half units


class RowTable:
    """A table held as ``rows`` (one dict per row): length, iteration and indexing
    read the rows. Shared by :class:`Summary` and ``MetricsTable``."""

    rows: list[dict]

    def to_records(self) -> list[dict]:
        """The rows as a list of plain dicts (e.g. for ``pandas.DataFrame``)."""
        return [dict(r) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@dataclass
class Summary(RowTable):
    """Rows (one per node group: the input, then each layer) and network totals.

    Columns (:data:`COLUMNS`): ``shape`` (the weight's), ``in_shape`` and
    ``out_shape`` (one sample's input and output of the layer; the input row has
    ``in_shape`` None), ``params``, ``unpruned`` and ``density`` (their ratio;
    None on the input row), ``effective_params``, ``macs`` (multiply-accumulates
    of the dense layer: weight elements x output positions) and
    ``effective_macs`` (effective weights x output positions, as
    :meth:`~topo_pai.Topology.effective_flops`), ``nodes`` and
    ``effective_nodes``, ``log10_in_paths`` and ``log10_out_paths`` (``-inf``:
    no path), and the fan statistics below.

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

    def to_dataframe(self):
        """The rows as a ``pandas.DataFrame`` indexed by layer name (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Summary.to_dataframe needs pandas (pip install pandas); "
                              "to_records() gives the same rows as plain dicts") from None
        return pd.DataFrame.from_records(self.to_records(), columns=COLUMNS).set_index("name")

    def to_json(self, indent: int | None = 1) -> str:
        """Strict JSON ``{"resolution", "rows", "totals"}``: tuples as lists, and
        non-finite numbers as the strings ``"-inf"``, ``"inf"``, ``"nan"`` (``-inf``
        log10 paths: no path), as in a sweep's results.json."""
        return json.dumps(_strict({"resolution": self.resolution, "rows": self.rows,
                                   "totals": self.totals}), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """The printed table as a GitHub-flavoured markdown table, then the totals line."""
        cells = [[_cell(r, keys) for _, keys in _PRINTED] for r in self.rows]
        head = [h for h, _ in _PRINTED]
        align = ["---" if j < 4 else "---:" for j in range(len(head))]
        lines = ["| " + " | ".join(row) + " |" for row in [head, align] + cells]
        return "\n".join(lines) + "\n\n" + self._totals_line()

    def __str__(self) -> str:
        cells = [tuple(h for h, _ in _PRINTED)] + [
            tuple(_cell(r, keys) for _, keys in _PRINTED) for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(_PRINTED))]
        numeric = [False, False, False, False] + [True] * (len(_PRINTED) - 4)
        lines = []
        for k, row in enumerate(cells):
            lines.append("  ".join(c.rjust(w) if numeric[j] else c.ljust(w)
                                   for j, (c, w) in enumerate(zip(row, widths))).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(self._totals_line())
        return "\n".join(lines)

    def _totals_line(self) -> str:
        t = self.totals
        return (f"totals ({self.resolution} resolution): log10 paths = {_fmt(t['log10_paths'])}, "
                f"effective nodes = {t['effective_nodes']}/{t['nodes']}, "
                f"effective params = {t['effective_params']}/{t['unpruned']} unpruned "
                f"of {t['params']}, effective MACs = {t['effective_macs']:,} of "
                f"{t['macs']:,} dense")

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def _strict(value):
    """``value`` with tuples as lists and non-finite floats as strings (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
