"""NPB (Node-Path Balancing) pruning at initialisation.

* :mod:`topo_pai.npb.solver` - the exact, closed-form per-layer solver
  (``solve_layer``), its evaluator and the per-layer normalisers.
* :mod:`topo_pai.npb.milp` - the same per-layer problem as a MILP for HiGHS
  (``solve_layer_milp``), used to cross-check the exact solver.

See ``docs/npb_solver.md`` for the problem statement and the optimality proof.
"""
