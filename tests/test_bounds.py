"""The kernel tests again with Numba's bounds checking on.

Numba does not check indices by default: a kernel that writes past an array's end corrupts
the heap silently, and the crash (if any) comes later, elsewhere. NUMBA_BOUNDSCHECK=1 makes
every out-of-bounds index an IndexError. It must be set before Numba compiles, so the kernel
tests run in a child process with their own, empty cache. Slow (everything compiles afresh):
`pytest -m slow tests/test_bounds.py`.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
KERNEL_TESTS = ["test_ssc_kernels.py", "test_norm_dense_kernels.py", "test_functional.py"]


@pytest.mark.slow
def test_kernels_stay_in_bounds(tmp_path):
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *[str(TESTS / name) for name in KERNEL_TESTS]],
        env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
