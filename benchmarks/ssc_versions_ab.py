"""A/B of the SSC kernels of this checkout against those of an earlier commit, in one process.

This VM's speed drifts by tens of percent within minutes, so two runs of `run.py` compare
badly. This script loads `minissc/kernels/ssc.py` as it was at `--against` (a git revision)
beside the current one and times the two call by call, alternating, on sscresnet20's (r=1)
SSC layer shapes (the first layers of its modules: 9 outputs per group, the group kernels;
the second: one output per group, shuffled, some with stride 2); it reports each side's
median and the median of the per-round ratios new / old, which drift cancels out of. `--network` also times whole
training steps of sscresnet20, swapping `ssc_forward` / `ssc_backward` between the versions
step by step. The old file runs on the current `minissc.kernels` helpers, so it must call
them as they are now: revisions before b639910 (which gave `copy_shifted_plane` a column
index) fail to compile here. Run it on an otherwise idle machine:

    python benchmarks/ssc_versions_ab.py --against 1c11bb2 [--norm] [--network] [--rounds 25]
"""
import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import minissc  # noqa: F401  (before NumPy: single-threaded BLAS, see minissc.runtime)
import numpy as np

import minissc.functional as F
from minissc import Tensor, models, optim
from minissc.kernels import ssc

SHAPES = [  # channels, side, outputs, stride: sscresnet20's (r=1) SSC1 and SSC2 layers
    (576, 8, 576, 1), (144, 32, 144, 1), (288, 16, 288, 1),
    (576, 8, 64, 1), (144, 32, 16, 1), (288, 16, 32, 1), (288, 32, 32, 2), (576, 16, 64, 2)]
SWAPPED = ("ssc_forward", "ssc_backward")


def load_version(revision: str, directory: Path):
    """minissc/kernels/ssc.py at `revision`, imported as a module of its own."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{revision}:minissc/kernels/ssc.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    path = directory / "ssc_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ssc_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alternate(calls: dict, rounds: int) -> dict:
    """Seconds of each call per round, the calls run one after the other in every round."""
    for call in calls.values():
        call()  # compile or load from the cache
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def report(label: str, times: dict) -> None:
    old, new = np.array(times["old"]), np.array(times["new"])
    print(f"{label:34s} old {1e3 * np.median(old):7.2f} ms  new {1e3 * np.median(new):7.2f} ms"
          f"  new / old {np.median(new / old):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="git revision of the old kernels")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--norm", action="store_true", help="layers with an input norm")
    parser.add_argument("--network", action="store_true", help="also whole training steps")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        old = load_version(args.against, Path(directory))
        versions = {"old": old, "new": ssc}
        rng = np.random.default_rng(0)
        for channels, side, outputs, stride in SHAPES:
            x = rng.standard_normal((128, channels, side, side), dtype=np.float32)
            weight = rng.standard_normal((outputs, 9), dtype=np.float32) / np.float32(3)
            out_side = ssc.output_size(side, stride)
            grad_y = rng.standard_normal((128, outputs, out_side, out_side), dtype=np.float32)
            shuffle = 1 if outputs == channels else channels // 9  # SSC2 reads shuffled
            norm = None
            if args.norm:
                norm = tuple(rng.uniform(0.5, 1.5, channels).astype(np.float32) - offset
                             for offset in (1.0, 0.0, 1.0))  # mean, scale, bias
            label = (f"ssc {channels}->{outputs} {side}x{side} s{stride}"
                     + (" norm" if norm else ""))
            report(label + " fwd", alternate(
                {name: lambda m=m: m.ssc_forward(x, weight, 3, stride, shuffle, norm)
                 for name, m in versions.items()}, args.rounds))
            report(label + " bwd", alternate(
                {name: lambda m=m: m.ssc_backward(x, weight, grad_y, 3, stride, shuffle, norm)
                 for name, m in versions.items()}, args.rounds))
        if args.network:
            for r in (1, 2):
                report(f"sscresnet20 r={r} training step", alternate(
                    network_steps(versions, r), max(4, args.rounds // 3)))
    return 0


def network_steps(versions: dict, r: int) -> dict:
    """A training step of sscresnet20 per version, each with that version's SSC kernels."""
    model = models.create("sscresnet20", r=r)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, 128)
    current = {name: getattr(ssc, name) for name in SWAPPED}

    def step(version):
        for name in SWAPPED:
            setattr(ssc, name, current[name] if version is ssc else getattr(version, name))
        try:
            optimizer.zero_grad()
            F.cross_entropy(model(Tensor(images)), labels).backward()
            optimizer.step()
        finally:
            for name in SWAPPED:
                setattr(ssc, name, current[name])

    return {name: lambda v=version: step(v) for name, version in versions.items()}


if __name__ == "__main__":
    sys.exit(main())
