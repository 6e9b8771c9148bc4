"""minissc: super sparse convolution (SSC) networks on the CPU, in NumPy + Numba.

Layers of the package, each importing only the ones before it:
``kernels`` (array maths) -> ``tensor`` (autograd) -> ``functional`` (the ops: the one
bridge from the graph to the kernels) -> ``nn`` (modules) -> ``models`` -> ``train``.
``reference`` is the independent dense-convolution oracle the tests check everything against.
"""
from minissc import runtime

runtime.set_thread_defaults()  # before NumPy and Numba start their thread pools
runtime.keep_freed_memory()

from minissc import functional, models, nn, reference  # noqa: E402
from minissc.nn import manual_seed  # noqa: E402
from minissc.tensor import Tensor, no_grad  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "manual_seed", "functional", "nn", "models", "reference"]
