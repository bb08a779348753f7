"""Graph measures as sweep columns, and a finished trial's masks rebuilt without training.

:func:`metric_columns` turns :meth:`topo_pai.Topology.metrics` totals into the
flat columns a sweep row carries when its configuration sets ``metrics = true``
(:data:`METRIC_COLUMNS`; the spectral gaps cost an eigenproblem per layer, so they
are opt-in). The weighted spectral gap is taken on ``|w|`` of the model's
weights as pruned, i.e. at initialisation.

:func:`rebuild_trial` re-runs a trial's initialisation and pruning (seeded as
:func:`topo_pai.experiments.sweep.run_trial` seeds them) so that the measures of
trials whose masks were not saved can be computed afterwards; callers should
check the rebuilt masks against the row's recorded topology
(:func:`matches_row`), since a method changed since the sweep ran prunes
differently.
"""

from __future__ import annotations

import math

#: Network totals of ``Topology.metrics`` added to sweep rows (``docs/metrics.md``).
METRIC_COLUMNS = (
    "effective_sparsity", "effective_compression", "kernels", "effective_kernels",
    "min_degree", "mean_in_degree", "mean_out_degree", "mean_ramanujan_gap",
    "min_ramanujan_gap", "mean_spectral_gap", "mean_weighted_spectral_gap", "sink_units",
    "source_units", "disconnected_units", "lost_in_edges", "lost_out_edges",
)


def metric_columns(model, masks, input_shape, *, topology=None) -> dict:
    """:data:`METRIC_COLUMNS` of ``model`` pruned by ``masks`` (channel resolution, weights
    ``|w|`` of the model's current weights). ``topology``: a Topology of the same model
    (any masks) to reuse its trace."""
    import topo_pai

    topo = (topology.with_masks(masks) if topology is not None
            else topo_pai.from_torch(model, masks, input_shape=input_shape))
    params = dict(model.named_parameters())
    weights = {layer.param: params[layer.param].detach().abs() for layer in topo.layers
               if layer.param in params}
    totals = topo.metrics(weights=weights).totals
    return {c: totals[c] for c in METRIC_COLUMNS}


def rebuild_trial(cfg, trial, *, data_root=None):
    """``(model, masks, input_shape)`` of ``trial`` as :func:`run_trial` builds and prunes
    them (same seeds, data subset and thread settings), without training."""
    from topo_pai.experiments.sweep import _datasets, build_and_prune, trial_threads

    with trial_threads(cfg.threads):
        train_set = _datasets(cfg, data_root)[0]
        model, masks, input_shape, _ = build_and_prune(cfg, trial, train_set)
    return model, masks, input_shape


def matches_row(topology, row: dict, *, rel: float = 1e-9) -> bool:
    """Whether ``topology`` (the rebuilt masks) has the effective nodes, effective params
    and log10 paths that ``row`` recorded."""
    log10 = topology.count_paths("channel").log10
    rec = float(row["log10_paths"])
    same_paths = (log10 == rec if math.isinf(rec) or math.isinf(log10)
                  else math.isclose(log10, rec, rel_tol=rel, abs_tol=1e-9))
    return (same_paths and topology.effective_nodes("channel") == int(row["effective_nodes"])
            and topology.effective_params("channel") == int(row["effective_params"]))
