"""Numba kernels (``propagate``) and their pure-numpy references (``reference``).

The kernels work on flat float64 arrays and CSR index arrays of either int32 or
int64 (numba compiles one specialisation per dtype). They never use
``fastmath``: path counts rely on exact IEEE behaviour of zeros and infinities.
"""
