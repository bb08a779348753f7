"""Numba kernels, one module per concern, and their pure-numpy references.

* ``options``: the numba options every kernel compiles with (``cache=True``, no
  ``fastmath``);
* ``intake``: a mask's validating copy to 0/1 uint8, with its counts;
* ``multiplicity``: a layer's multiplicity matrix as CSR (``matvec``: products with
  it, as CSR or as dense per-kernel counts);
* ``vectors``: scale statistics, joint positivity and sums of whole count vectors;
* ``sorting``: a stable counting sort (``group_by``);
* ``pooling``: sum pooling over explicit windows and its transpose;
* ``elements``, ``planes``: conv element lists and the sparse convs over them on the
  phase-plane layout; ``complement``: dense convs by their complement;
* ``gram``: the Lanczos steps of the layer spectra;
* ``reference``: the pure-numpy twins the tests compare the kernels against.

The kernels work on flat float64 arrays and CSR index arrays of either int32 or
int64 (numba compiles one specialisation per dtype). They take their arrays as
arguments, never from globals, so that ``cache=True`` stays valid. Spatial tensors
are flat ``float64`` arrays in (C, H, W) order; 1-d convolutions and pools use
``H = 1``. Kernels *accumulate* into their output (``out += ...``) so that several
incoming blocks or branches can be summed without temporaries, except where an
``init`` flag or the docstring says they write it: writing a fresh output saves a
separate zeroing pass. They never use ``fastmath``: path counts rely on exact IEEE
behaviour of zeros and infinities.
"""
