"""Compute kernels on plain NumPy arrays: no Tensor, no autograd, no argument checking.

Each fast kernel (Numba) has a plain NumPy twin named ``<name>_reference`` that reads like
the maths in its docstring; the tests hold the two equal. ``minissc.functional`` is the only
module that calls these from the autograd graph.
"""
