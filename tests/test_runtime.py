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
