"""minissc: super sparse convolution (SSC) networks on the CPU, in NumPy + Numba.

Layers of the package, each importing only the ones before it:
``kernels`` (array maths) -> ``tensor`` (autograd) -> ``functional`` (the ops: the one
bridge from the graph to the kernels) -> ``nn`` (modules) -> ``models`` -> ``train``.
``reference`` is the independent dense-convolution oracle the tests check everything against.
"""
import os

# Thread settings, measured on a 2-core machine; a value the user has set wins.
# - Numba's parallel kernels own the cores; BLAS (only the dense convolutions and the linear
#   layer use it) runs in the calling thread. Two thread pools spinning on the same cores
#   slowed a sscresnet20 training step from 57.6 to 35.8 img/s, resnet20 from 89.8 to 64.6.
#   (Takes effect only if NumPy was not imported before minissc.)
# - Numba's OpenMP threads sleep rather than spin while they wait: with another process busy
#   on one core, spinning made a small resnet20 step 10x slower (0.86 s against 0.085 s).
for _variable, _value in (("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                          ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_variable, _value)

from minissc import functional, models, nn, reference  # noqa: E402
from minissc.nn import manual_seed  # noqa: E402
from minissc.tensor import Tensor, no_grad  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "manual_seed", "functional", "nn", "models", "reference"]
