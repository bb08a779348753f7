"""Counting and reachability engines.

* ``scaled``: overflow-free counts (float64 mantissas with a power-of-two
  exponent per node group or value);
* ``channel``: the channel graph as CSR blocks between node groups;
* ``neuron``: the spatially unrolled graph, propagated op by op without
  materialising per-position edges;
* ``exact``: arbitrary-precision Python-int counts at either resolution.
"""
