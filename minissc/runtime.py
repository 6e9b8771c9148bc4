"""Process-wide settings that make minissc fast on a small CPU, applied when it is imported.

Each was measured on a 2-core machine (sscresnet20, r = 1, batch 128), and each can be
turned off; a value the user has already set always wins.

- BLAS runs in one thread per call (OPENBLAS_NUM_THREADS / MKL_NUM_THREADS = 1): Numba's
  parallel kernels own the cores, and the dense convolutions split their batch over threads
  themselves (`minissc.kernels.dense`). Two thread pools spinning on the same cores slowed a
  training step from 57.6 to 35.8 img/s. Like any BLAS variable this only takes effect if
  minissc is imported before NumPy.
- Numba's OpenMP threads sleep rather than spin while they wait (OMP_WAIT_POLICY=PASSIVE):
  with another process busy on one core, spinning made a small resnet20 step 10x slower.
- glibc keeps freed memory for reuse (`keep_freed_memory`). A training step allocates and
  frees the same large activations every time; by default glibc hands each array over 32 MB
  back to the kernel when it is freed, and the next step pays a page fault for every 4 KB of
  the new one. Serving them from the heap raised a training step from 54.6 to 81.1 img/s,
  with the same peak RSS (2.88 GB). Set MINISSC_KEEP_FREED_MEMORY=0 to leave malloc as is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_THREAD_DEFAULTS = (("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                    ("OMP_WAIT_POLICY", "PASSIVE"))

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def set_thread_defaults() -> None:
    """Set the thread variables above unless the user has set them."""
    for variable, value in _THREAD_DEFAULTS:
        os.environ.setdefault(variable, value)


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from its heap and to keep what is freed (up to
    2 GB above the top of the heap) for the next allocation. Returns whether it was applied:
    False off Linux/glibc or when MINISSC_KEEP_FREED_MEMORY=0."""
    if os.environ.get("MINISSC_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
