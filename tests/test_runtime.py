"""`minissc.runtime`: the process settings applied on import, and their off switches."""
import platform
import sys

import pytest

from minissc import runtime


def test_thread_defaults_never_override_the_user(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    runtime.set_thread_defaults()
    assert runtime.os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_keeping_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINISSC_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_keeping_freed_memory_applies_on_glibc(monkeypatch):
    monkeypatch.delenv("MINISSC_KEEP_FREED_MEMORY", raising=False)
    assert runtime.keep_freed_memory() is True


def test_wide_vectors_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINISSC_WIDE_VECTORS", "0")
    assert runtime.prefer_wide_vectors() is False


def test_wide_vectors_never_override_the_user(monkeypatch):
    monkeypatch.delenv("MINISSC_WIDE_VECTORS", raising=False)
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2")
    assert runtime.prefer_wide_vectors() is False
    assert runtime.os.environ["NUMBA_CPU_FEATURES"] == "+avx2"


def test_wide_vectors_come_too_late_once_numba_is_imported(monkeypatch):
    import numba  # noqa: F401  (imported by minissc already; Numba has read its settings)
    monkeypatch.delenv("MINISSC_WIDE_VECTORS", raising=False)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    assert runtime.prefer_wide_vectors() is False
    assert "NUMBA_CPU_FEATURES" not in runtime.os.environ


def test_a_new_process_compiles_for_512_bit_vectors_exactly_on_avx512_cpus():
    import subprocess

    import llvmlite.binding as llvm
    environment = {k: v for k, v in runtime.os.environ.items()
                   if k not in ("NUMBA_CPU_FEATURES", "MINISSC_WIDE_VECTORS")}
    features = subprocess.run(
        [sys.executable, "-c", "import minissc, numba; print(numba.config.CPU_FEATURES)"],
        env=environment, check=True, capture_output=True, text=True).stdout.strip()
    wide = llvm.get_host_cpu_features().get("avx512f", False)
    assert features.endswith(",-prefer-256-bit") == wide
