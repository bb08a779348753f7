"""Pruning at initialisation: one interface, shared thresholding, exact layer budgets.

>>> import topo_pai
>>> from topo_pai.models import resnet20
>>> model = resnet20(width=4)
>>> masks = topo_pai.prune(model, "random", 0.9, input_shape=(3, 32, 32), allocation="erk")
>>> sorted(masks)[:2]
['blocks.0.conv1.weight', 'blocks.0.conv2.weight']

Design (open_lth / jaxpruner style): a method only supplies scores (higher =
keep; ``-inf`` allowed, e.g. SynFlow's log-scores) -- or, for PHEW and shuffle,
masks for given per-layer budgets. :func:`prune` does the rest: validation,
budgets (:mod:`~topo_pai.pruners.allocation`), O(n) thresholding with seeded
tie-breaking (:mod:`~topo_pai.pruners.select`) and, for iterative methods,
rounds on the exponential schedule ``density_t = density ** (t / rounds)``
(weights pruned in a round stay pruned; ``density`` is the final kept count's share,
see :mod:`~topo_pai.pruners.registry`).

Methods (``describe_methods()`` prints their options):

============  =====================================================================
random        uniform random positions; exact counts per layer (default "uniform")
magnitude     ``|w|``
snip          ``|g ⊙ w|`` on data
iter_snip     SNIP re-scored on the pruned net for ``rounds`` rounds (default 100)
grasp         keep high ``w ⊙ Hg`` = remove high ``-w ⊙ Hg`` (temperature 200)
synflow       ``log10 |w ⊙ ∂R/∂w|`` from :meth:`Topology.flows`, ``rounds`` = 100, at
              neuron resolution (published); ``resolution="channel"``: faster variant
phew          random walks (``topo_pai.pruners.phew``), ERK budgets by default
shuffle       the kept positions of ``masks=`` permuted within each layer
============  =====================================================================

Other parts of topo_pai register more (``npb``, ``synflow_widen`` from
:mod:`topo_pai.npb`); :func:`register_method` adds your own.

Mask plumbing: :func:`apply_masks` / :func:`remove_masks` / :func:`bake_masks`
(the only functions that modify a model), :func:`read_masks`,
:func:`save_masks` / :func:`load_masks`.
"""

from topo_pai.pruners.allocation import (
    counts_from_densities,
    erk_densities,
    largest_remainder,
    n_keep,
    uniform_plus_densities,
)
from topo_pai.pruners.api import PruneResult, prune, prune_with_scores
from topo_pai.pruners.io import load_masks, save_masks
from topo_pai.pruners.registry import (
    Method,
    available_methods,
    describe_methods,
    get_method,
    register_method,
)
from topo_pai.pruners.torch_masks import apply_masks, bake_masks, read_masks, remove_masks

__all__ = [
    "prune", "prune_with_scores", "PruneResult", "available_methods", "describe_methods",
    "get_method", "register_method", "Method", "apply_masks", "remove_masks", "bake_masks",
    "read_masks", "save_masks", "load_masks", "erk_densities", "uniform_plus_densities",
    "largest_remainder", "counts_from_densities", "n_keep",
]
