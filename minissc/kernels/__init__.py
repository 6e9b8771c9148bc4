"""Compute kernels on plain NumPy arrays: no Tensor, no autograd, no argument checking.

Each fast kernel (Numba) has a plain NumPy twin named ``<name>_reference`` that reads like
the maths in its docstring; the tests hold the two equal. ``minissc.functional`` is the only
module that calls these from the autograd graph.
"""


def planes(array):
    """View an (N, C, H, W) array as (N, C, H * W): one flat row per (n, c) plane."""
    return array.reshape(array.shape[0], array.shape[1], array.shape[2] * array.shape[3])
