"""The one definition of a trial's result row: its id, its columns and their types.

Sweeps write these rows (:mod:`~topo_pai.experiments.store`), node-path curves
produce them without training (:mod:`~topo_pai.experiments.curves`), and
:mod:`~topo_pai.experiments.plotting` reads them back from CSV or JSON. The
column order is part of the on-disk format: a sweep resumed from an older
results directory must write the same files.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Suffix of a method name whose masks are shuffled within each layer.
SHUFFLE_SUFFIX = "+shuffle"

#: What identifies a trial.
KEY_COLUMNS = ("trial_id", "model", "dataset", "method", "shuffled", "sparsity", "seed")
#: The topology of a trial's masks (:func:`topo_pai.experiments.curves.topology_record`).
TOPOLOGY_COLUMNS = ("effective_nodes", "n_nodes", "log10_paths", "effective_params",
                    "unpruned_params", "total_params", "flops")
#: Columns of one node-path curve row (nothing is trained, so ``accuracy`` is None).
RESULT_COLUMNS = KEY_COLUMNS + TOPOLOGY_COLUMNS + ("accuracy",)
#: Columns of every sweep row, in the order of the results files. ``cpu_capability`` is
#: the SIMD level of torch's CPU kernels in the trial's process
#: (``torch.backends.cpu.get_cpu_capability()``: ``"AVX2"``, ``"AVX512"``, ...): float32
#: sums round differently at each level, so masks from data (SNIP's gradients) and
#: trained accuracies reproduce bit for bit only at the same level (README, "Reproducible
#: trials").
COLUMNS = KEY_COLUMNS + TOPOLOGY_COLUMNS + (
    "dense_flops", "accuracy", "test_loss", "val_accuracy", "val_loss", "epochs",
    "prune_seconds", "train_seconds", "device", "threads", "cpu_capability",
)
#: Network totals of ``Topology.metrics`` added to sweep rows (``docs/metrics.md``).
METRIC_COLUMNS = (
    "effective_sparsity", "effective_compression", "kernels", "effective_kernels",
    "min_degree", "mean_in_degree", "mean_out_degree", "mean_ramanujan_gap",
    "min_ramanujan_gap", "mean_spectral_gap", "mean_weighted_spectral_gap", "sink_units",
    "source_units", "disconnected_units", "lost_in_edges", "lost_out_edges",
)
#: The columns of :data:`METRIC_COLUMNS` that need the spectra (an eigenproblem per layer):
#: empty (None) in the rows of a sweep with ``metrics = "cheap"``.
SPECTRAL_COLUMNS = ("mean_ramanujan_gap", "min_ramanujan_gap", "mean_spectral_gap",
                    "mean_weighted_spectral_gap")
#: Columns whose non-finite values the JSON files hold as strings (``"-inf"``, ``"nan"``)
#: and that are read back as floats.
NONFINITE_COLUMNS = ("log10_paths", "accuracy", "test_loss") + METRIC_COLUMNS

#: Column types when a table is read back from text (CSV) by the plots.
BOOL_COLUMNS = {"shuffled"}
INT_COLUMNS = {"seed", "effective_nodes", "n_nodes", "effective_params", "unpruned_params",
               "total_params", "flops", "dense_flops", "epochs", "threads", "kernels",
               "effective_kernels", "sink_units", "source_units", "disconnected_units"}
FLOAT_COLUMNS = {"sparsity", "log10_paths", "accuracy", "test_loss", "val_accuracy",
                 "val_loss", "prune_seconds", "train_seconds"} | (set(METRIC_COLUMNS)
                                                                  - INT_COLUMNS)


def table_columns(rows: Iterable[dict]) -> tuple[str, ...]:
    """:data:`COLUMNS`, then the measure columns when the rows carry them."""
    rows = list(rows)
    return COLUMNS + tuple(c for c in METRIC_COLUMNS if any(c in r for r in rows))


def format_sparsity(sparsity: float) -> str:
    """The shortest text that reads back as exactly ``sparsity`` (``repr``), with
    whole numbers and ``-0.0`` written as ints: distinct sparsities never share a text.

    >>> format_sparsity(0.99), format_sparsity(0.0), format_sparsity(0.1234567)
    ('0.99', '0', '0.1234567')
    """
    x = float(sparsity)
    return str(int(x)) if x.is_integer() else repr(x)


def trial_id(model: str, method: str, shuffled: bool, sparsity: float, seed: int) -> str:
    """The id of one trial, shared by sweeps and curves:
    ``model/method[+shuffle]/s<sparsity>/seed<seed>``.

    >>> trial_id("lenet5", "snip", True, 0.99, 1)
    'lenet5/snip+shuffle/s0.99/seed1'
    """
    tag = f"{method}{SHUFFLE_SUFFIX}" if shuffled else method
    return f"{model}/{tag}/s{format_sparsity(sparsity)}/seed{seed}"

