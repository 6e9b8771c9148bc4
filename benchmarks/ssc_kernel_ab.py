"""A/B of the two stride-1 SSC kernel pairs (flat and group) on sscresnet20's first-SSC-layer
shapes, through the autograd op the models use, in alternating rounds.

`minissc.kernels.ssc` picks the group kernels when a group has at least
GROUP_KERNEL_MIN_OUTPUTS outputs; this script forces one pair or the other and prints the
median forward and forward + backward milliseconds of each round, so that the threshold can be
re-checked on another machine. Run it on an otherwise idle machine:

    python benchmarks/ssc_kernel_ab.py [--rounds 3] [--out ab.json]
"""
import argparse
import json
import sys
from pathlib import Path

import minissc  # noqa: F401  (before NumPy: single-threaded BLAS, see minissc.runtime)
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (the benchmark's layer closures and arrays)

from minissc.kernels import ssc  # noqa: E402

SHAPES = [(576, 8), (576, 16), (288, 16), (144, 32)]  # channels, side: 9 outputs per group
KERNELS = {"flat": np.iinfo(np.int64).max, "group": 1}


def median_ms(function, repeats=10):
    return 1000 * float(np.median(run.call_seconds(function, repeats)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    results, saved = [], ssc.GROUP_KERNEL_MIN_OUTPUTS
    print(f"{'layer':24s}{'kernels':>8s}  forward / forward + backward ms, one pair per round")
    try:
        for channels, side in SHAPES:
            spec = dict(kind="ssc", input_shape=(128, channels, side, side),
                        output_shape=(128, channels, side, side), out_channels=channels,
                        group_size=9, kernel_size=3, stride=1, groups=channels // 9,
                        shuffle_groups=1)
            x, weight, upstream = run._layer_arrays(spec, 0)
            forward, backward = run._minissc_layer(spec, x, weight)
            rounds = {name: [] for name in KERNELS}
            for _ in range(args.rounds):
                for name, threshold in KERNELS.items():
                    ssc.GROUP_KERNEL_MIN_OUTPUTS = threshold
                    rounds[name].append((median_ms(forward),
                                         median_ms(lambda: backward(forward(), upstream))))
            label = f"ssc {channels}->{channels} {side}x{side}"
            for name, times in rounds.items():
                cells = "  ".join(f"{f:5.1f} / {t:5.1f}" for f, t in times)
                print(f"{label:24s}{name:>8s}  {cells}")
                results.append(dict(layer=label, kernels=name, forward_ms=[f for f, _ in times],
                                    forward_backward_ms=[t for _, t in times]))
    finally:
        ssc.GROUP_KERNEL_MIN_OUTPUTS = saved
    if args.out:
        args.out.write_text(json.dumps(dict(meta=run.machine_info(2, None), results=results),
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
