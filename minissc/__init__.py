"""minissc: super sparse convolution (SSC) networks on the CPU, in NumPy + Numba.

Layers of the package, each importing only the ones before it:
``kernels`` (array maths) -> ``tensor`` (autograd) -> ``functional`` (the ops: the one
bridge from the graph to the kernels) -> ``nn`` (modules) -> ``models`` -> ``train``.
``reference`` is the independent dense-convolution oracle the tests check everything against.
"""
import os

# Numba's parallel kernels own the cores; BLAS (only the dense convolutions and the linear
# layer use it) runs in the calling thread. Two thread pools spinning on the same cores
# slowed a training step of sscresnet20 from 57.6 to 35.8 img/s on a 2-core machine, resnet20
# from 89.8 to 64.6. This takes effect only if NumPy was not imported before minissc; an
# OPENBLAS_NUM_THREADS set by the user wins.
for _variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from minissc import functional, models, nn, reference  # noqa: E402
from minissc.nn import manual_seed  # noqa: E402
from minissc.tensor import Tensor, no_grad  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "manual_seed", "functional", "nn", "models", "reference"]
