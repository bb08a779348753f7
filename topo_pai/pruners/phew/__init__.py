"""PHEW: sparse masks from weight-biased random walks, without data.

Patil & Dovrolis, "PHEW: Constructing Sparse Networks that Learn Fast and
Generalize Well without Training Data", ICML 2021.

PHEW builds a mask from scratch: it keeps every connection that a set of random
walks traverses. Walks alternate between *forward* walks, which start at an
input unit and follow out-edges to an output unit, and *backward* walks, which
start at an output unit and follow in-edges to an input unit. The start units
are taken round-robin, so every input and every output unit seeds walks in turn.
A walk leaves a unit along an edge with probability proportional to the edge's
weight ``|w|`` (a conv kernel counts the sum of its ``|w|``), so the walks favour
paths with high weight products: the ones that carry the network's signal at
initialisation. Every connection a walk traverses is kept; a conv connection
(input channel ``i`` to output channel ``o``) keeps one element of the kernel
``w[o, i]``, drawn with probability proportional to its ``|w|``, as the
authors' code does (``kernel_conserved=False``, their default).

What this implementation does
-----------------------------
* **Graph.** The walks run on the channel graph of :meth:`Topology.flows`:
  nodes are the input channels and the output channels (or features) of every
  Linear and Conv layer, and the CSR blocks hold the summed ``|w|`` of every
  kernel. A residual network is a DAG there (a group feeds several layers, a
  layer reads several groups after ``+``), and a walk at a unit chooses among
  *all* its out-edges (in-edges, backward) across every layer that reads it,
  in proportion to weight. The authors' code instead follows the main path and
  takes a 1x1 projection shortcut with probability 1/2 (it never takes an
  identity shortcut); the weighted choice is the paper's biased walk on the
  network's actual graph. A unit whose candidate edges all weigh zero picks
  among them uniformly (as their code does).
* **Elements.** Where an edge of the channel graph stands for several weight
  elements (a conv kernel, or the ``H*W`` features of a channel flattened into
  a Linear), one element among them is drawn in proportion to ``|w|``
  (``element="sample"``, default), or the largest-``|w|`` element not yet kept
  is taken (``element="largest"``). Drawing an element that is already kept
  adds nothing, exactly as re-setting a mask entry in their code.
* **Per-layer budgets.** PHEW walks until a *global* parameter count is
  reached and lets the layer densities emerge; here the caller prescribes
  ``budgets[name]`` per layer. A walk adds to a layer only while the layer is
  below its budget. Once a layer is full its kept set is final, and later walks
  pass through it only along *kept* connections (channel pairs with a kept
  element): they are redirected, in proportion to weight, among those. Walks
  are also steered away from dead ends: a forward walk only steps to units that
  can still reach an output through allowed edges (all edges of open layers,
  kept edges of full layers), a backward walk only to units an input can
  reach. With open layers this changes nothing; it only matters once layers
  are full. Hence every walk completes, and every walk traces a connected
  input-to-output path of kept weights: when the walks meet the budgets, every
  kept weight is effective.
* **Stopping and exact budgets.** Walking stops when every layer is full, when
  no open layer has an edge on an allowed input-to-output path, when a window
  of ``stall_window`` walks kept fewer than ``min_yield * stall_window`` new
  weights (the walks keep re-drawing kept elements, e.g. for a budget close to
  the layer's size), or after ``max_walks`` walks. Layers still below budget are
  then filled deterministically: first the elements of channel pairs that join
  two units already on kept input-to-output paths (so they are effective),
  largest ``|w|`` first; then the other elements, largest ``|w|`` first; ties
  by flat index. Every mask ends with exactly ``budgets[name]`` ones. Layers
  with a budget of 0 or of their full size are settled before the walks.
* **Terminals.** A forward walk ends on reaching a unit of a group that feeds
  the network outputs; a backward walk starts at such a unit and ends at the
  network input.
* **Scheduling.** Walks come in rounds of one forward and one backward walk
  (PHEW alternates them). The two walks of a round run in lockstep, their steps
  interleaved, which overlaps their memory reads; this is only done while
  every open layer has at least two free slots, so no layer can fill while the
  other walk of the round still has to cross it (a walk adds at most one
  element per layer). Near a layer's last slot the walks run one at a time.
  The transition tables are updated between rounds.
* **Randomness.** A walk step draws two uniforms, one for the edge and one for
  the element, from a splitmix64 generator seeded with ``seed``: the masks are
  a deterministic function of the weights, the budgets and the seed, the same
  on every platform. The walk kernels can also replay pre-drawn uniforms,
  which the tests use against a pure-Python reference walk.

Speed
-----
The walks are bound by memory latency (ResNet-18 at 68% sparsity with uniform
budgets takes ~1.5M walks, ~16M steps: 3.5-5 s on a 2-core machine). A unit's
transition distribution is a Walker/Vose alias table over its CSR positions,
so an edge draw is O(1): one 16-byte record holding the threshold and both
candidate edges (the far node and block; the channel pair follows from them). The tables are rebuilt
only for the units whose candidate sets change when a layer fills. The alias
thresholds and the ``|w|`` used to draw elements are stored as float32 (sums
are float64), and the kept flag is the sign bit of that float32, so a step
reads one record and one kernel. The distributions are exact up to float32
rounding. Memory is ~70 bytes per channel edge at rest (~100 while building):
~0.3 GB for ResNet-18, ~5 GB for ResNet-50 at 224x224 (48M channel edges).

A topology that already carries masks restricts PHEW to its unpruned weights.

Layout
------
* :mod:`.geometry`: the channel graph as flat arrays (:class:`~.geometry.Geometry`
  of blocks and layers, :class:`~.geometry.Edges`, :class:`~.geometry.WalkGraph`)
  and the weight elements behind a channel edge;
* :mod:`.alias`: the edge records and the alias tables of the transition
  distributions;
* :mod:`.walks`: the numba kernels (the walks, reachability, table updates,
  the walk loop) and the generator;
* :mod:`.pruner`: the walk state, the final fill, :func:`phew_run` and
  :func:`phew_masks`.
"""

from __future__ import annotations

from topo_pai.pruners.phew.pruner import (ELEMENT_MODES, STOP_REASONS, PhewStats,
                                          check_phew_options, phew_masks, phew_run)
from topo_pai.pruners.phew.walks import PROGRESS_EVERY

__all__ = ["ELEMENT_MODES", "PROGRESS_EVERY", "STOP_REASONS", "PhewStats", "check_phew_options",
           "phew_masks", "phew_run"]
