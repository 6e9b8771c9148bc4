"""Run the ``minissc`` command with one fault injected (used by tests/test_reliability.py).

    python fault_driver.py FAULT MINISSC_ARGUMENTS...

FAULT is one of
  sigkill-at-update:K   the process SIGKILLs itself when its K-th optimiser update (counted
                        from 1 in this process) is about to start: a kill in mid-epoch
  sigkill-in-save:N     it SIGKILLs itself while writing its N-th training checkpoint, once
                        half of the temporary file is on disk: a kill during a checkpoint write
  pause-at-update:K     at its K-th update it creates the file $FAULT_MARKER and waits until
                        that file is gone, so that a test can send a signal at a known step

The hooks wrap `SGD.step` and `numpy.savez` in this process only; they change no numbers, and
the library has no test hooks.
"""
import io
import os
import signal
import sys
import time

import numpy as np

from minissc import cli
from minissc.optim import SGD


def at_update(number, action):
    """Call `action()` when the `number`-th SGD update of this process is about to start."""
    real_step, count = SGD.step, [0]

    def step(self):
        count[0] += 1
        if count[0] == number:
            action()
        real_step(self)

    SGD.step = step


def kill_in_save(number):
    """SIGKILL this process halfway through writing its `number`-th training checkpoint."""
    real_savez, count = np.savez, [0]

    def savez(file, **arrays):
        if any(name.startswith("optimizer/") for name in arrays):  # not best.npz
            count[0] += 1
            if count[0] == number:
                buffer = io.BytesIO()
                real_savez(buffer, **arrays)
                file.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
                file.flush()
                os.fsync(file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        real_savez(file, **arrays)

    np.savez = savez


def pause():
    marker = os.environ["FAULT_MARKER"]
    open(marker, "w").close()
    while os.path.exists(marker):
        time.sleep(0.01)


def main(fault, argv):
    kind, _, number = fault.partition(":")
    if kind == "sigkill-at-update":
        at_update(int(number), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif kind == "sigkill-in-save":
        kill_in_save(int(number))
    elif kind == "pause-at-update":
        at_update(int(number), pause)
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
