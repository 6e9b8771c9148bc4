"""A/B of the SSC kernels of this checkout against those of an earlier commit, in one process.

This VM's speed drifts by tens of percent within minutes, so two runs of `run.py` compare
badly. This script loads the kernels of `minissc/kernels` (the shared helpers, `norm.py` and
`ssc.py`) as they were at `--against` (a git revision), as a package of their own beside the
current ones, and times the two call by call, alternating, on sscresnet20's (r=1) SSC layer
shapes (the first layers of its modules: 9 outputs per group, the group kernels; the second:
one output per group, shuffled, some with stride 2). It reports each side's median and the
median of the per-round ratios new / old, which drift cancels out of. `--network` also times
whole training steps of sscresnet20, swapping `ssc_forward` / `ssc_backward` between the
versions step by step. `--pair layers` times the current code's sscresnet20 training steps
with an SSC module's two layers as one op (`minissc.nn.ssc_pair`) against the two separate
calls (the 1x1 convolution in front called on its own in both); `--pair conv` the op with the
convolution folded in against the convolution, then the op. `--steps-against` times whole
training steps of this checkout against those of another revision (a git worktree), each in
fresh processes, alternating: for changes outside the SSC kernels; `--steps-model` picks the
model (sscresnet20 at r = 1 and 2 by default, resnet20, shiftresnet20 at e = 3).
Run it on an otherwise idle machine:

    python benchmarks/ssc_versions_ab.py --against 1c11bb2 [--norm] [--network] [--rounds 25]
    python benchmarks/ssc_versions_ab.py --pair {layers,conv}
    python benchmarks/ssc_versions_ab.py --steps-against e776f6e [--rounds 24]
    python benchmarks/ssc_versions_ab.py --steps-against e776f6e --steps-model resnet20
"""
import argparse
import importlib.util
import os
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

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (the benchmark's timing loop)

SHAPES = [  # channels, side, outputs, stride: sscresnet20's (r=1) SSC1 and SSC2 layers
    (576, 8, 576, 1), (144, 32, 144, 1), (288, 16, 288, 1),
    (576, 8, 64, 1), (144, 32, 16, 1), (288, 16, 32, 1), (288, 32, 32, 2), (576, 16, 64, 2)]
# what --network takes from each version: the pair op (`minissc.functional`) also builds the
# version's NextLayerInputGrad, which only that version's ssc_backward recognises
SWAPPED = ("ssc_forward", "ssc_backward", "folds_next_layer", "NextLayerInputGrad")
STEP_MODELS = {"sscresnet20": [{"r": 1}, {"r": 2}], "resnet20": [{}],
               "shiftresnet20": [{"e": 3}]}  # the models of --steps-model, with their widths


OLD_PACKAGE = "kernels_at_revision"
OLD_FILES = ("__init__.py", "norm.py", "ssc.py")


def load_version(revision: str, directory: Path):
    """minissc/kernels/ssc.py at `revision`, imported with the helpers it was written for: the
    revision's `__init__.py`, `norm.py` and `ssc.py` copied into a package of their own (their
    imports of `minissc.kernels` pointed at it)."""
    root = Path(__file__).resolve().parent.parent
    package = directory / OLD_PACKAGE
    package.mkdir()
    for name in OLD_FILES:
        source = subprocess.run(["git", "show", f"{revision}:minissc/kernels/{name}"],
                                cwd=root, check=True, capture_output=True, text=True).stdout
        (package / name).write_text(source.replace("minissc.kernels", OLD_PACKAGE))
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(f"{OLD_PACKAGE}.ssc")
    finally:
        sys.path.remove(str(directory))


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


def compare_steps(revision: str, rounds: int, model: str, steps: int = 8) -> None:
    """Training steps of `model` (at each width of STEP_MODELS) of this checkout against those
    of `revision` (a git worktree of it), each side in a fresh process per round, alternating;
    reports each side's median of the rounds' median step and the median ratio new / old.
    For changes beyond the SSC kernels, which `--network` swaps within one process."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as directory:
        old_tree = Path(directory) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), revision],
                       cwd=root, check=True)
        try:
            for options in STEP_MODELS[model]:
                width = " ".join(f"{key}={value}" for key, value in options.items())
                times = {"old": [], "new": []}
                for _ in range(rounds):
                    for name, tree in (("old", old_tree), ("new", root)):
                        times[name].append(1e-3 * float(subprocess.run(
                            [sys.executable, __file__, "--worker-steps", model, width,
                             str(steps)],
                            env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                            capture_output=True, text=True).stdout.split()[-1]))
                report(" ".join(filter(None, (model, width, "step, fresh processes"))), times)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=root,
                           check=True)


def report(label: str, times: dict) -> None:
    old, new = np.array(times["old"]), np.array(times["new"])
    print(f"{label:34s} old {1e3 * np.median(old):7.2f} ms  new {1e3 * np.median(new):7.2f} ms"
          f"  new / old {np.median(new / old):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="git revision of the old kernels")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--norm", action="store_true", help="layers with an input norm")
    parser.add_argument("--network", action="store_true", help="also whole training steps")
    parser.add_argument("--pair", choices=("layers", "conv"),
                        help="training steps with and without the SSC pair op (layers), or "
                             "with and without the 1x1 convolution folded into it (conv)")
    parser.add_argument("--steps-against", metavar="REVISION",
                        help="whole training steps of this checkout against REVISION's, in "
                             "fresh processes, alternating")
    parser.add_argument("--steps-model", choices=sorted(STEP_MODELS), default="sscresnet20",
                        help="the model of --steps-against (default sscresnet20)")
    parser.add_argument("--worker-steps", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_steps:
        model, width, steps = args.worker_steps  # width: "r=1", "e=3" or ""
        options = {key: int(value) for key, value in (item.split("=") for item in width.split())}
        step = training_step(model, **options)
        print(1e3 * np.median(run.call_seconds(step, int(steps), untimed=2)))
        return 0
    if not (args.against or args.pair or args.steps_against):
        parser.error("give --against REVISION, --pair, --steps-against REVISION, or several")
    if args.steps_against:
        compare_steps(args.steps_against, max(2, args.rounds // 8), args.steps_model)
    if args.against:
        compare_kernels(args)
    if args.pair:
        for r in (1, 2):
            old = "two ops" if args.pair == "layers" else "conv, then the pair"
            report(f"sscresnet20 r={r} step, old = {old}, new = pair", alternate(
                pair_steps(r, args.pair), max(4, args.rounds // 3)))
    return 0


def compare_kernels(args):
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


def training_step(model_name: str = "sscresnet20", **options):
    """step(): one SGD step of the model (sscresnet20 by default, with its options, e.g.
    r=1) on a fixed random batch of 128."""
    model = models.create(model_name, **options)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, 128)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(Tensor(images)), labels).backward()
        optimizer.step()
    return step


def pair_steps(r: int, fold: str) -> dict:
    """The training step with an SSC module's layers folded one step less ("old") and as they
    are ("new"), for fold "layers": its two SSC layers called separately against the pair op
    (the 1x1 convolution in front called on its own in both), for fold "conv": the
    convolution called before the pair op against the op with the convolution folded in."""
    step, pair = training_step(r=r), models.ssc_pair

    def two_calls(x, bn1, ssc1, bn2, ssc2, conv):
        return ssc2(ssc1(conv(x), input_norm=bn1), input_norm=bn2)

    def conv_then_pair(x, bn1, ssc1, bn2, ssc2, conv):
        return pair(conv(x), bn1, ssc1, bn2, ssc2)

    def step_with(ssc_pair):
        models.ssc_pair = ssc_pair
        try:
            step()
        finally:
            models.ssc_pair = pair
    old, new = (two_calls, conv_then_pair) if fold == "layers" else (conv_then_pair, pair)
    return {"old": lambda: step_with(old), "new": lambda: step_with(new)}


def network_steps(versions: dict, r: int) -> dict:
    """A training step of sscresnet20 per version, each with that version's SSC kernels."""
    step = training_step(r=r)
    current = {name: getattr(ssc, name) for name in SWAPPED}

    def step_with(version):
        for name in SWAPPED:
            setattr(ssc, name, current[name] if version is ssc else getattr(version, name))
        try:
            step()
        finally:
            for name in SWAPPED:
                setattr(ssc, name, current[name])

    return {name: lambda v=version: step_with(v) for name, version in versions.items()}


if __name__ == "__main__":
    sys.exit(main())
