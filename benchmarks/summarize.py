#!/usr/bin/env python
"""Every saved benchmark run against the issue's targets, one row per run, as a Markdown table.

    python benchmarks/summarize.py [FILE.json ...]      # default: benchmarks/results/full-*.json

Each row is one JSON file written by `run.py`: its commit, the CPU it ran on, the machine-speed
probes at its start (runs before 2026-12-02n have none), PyTorch's sscresnet20 r=1 training
rate (how fast the machine was for the other side of the ratios), then every target's value
as `run.py` judged it, in bold where it missed. The last column counts the misses. Nothing is
recomputed: the values are the ones the run saved.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import run as benchmark  # the targets' passing ranges and the network lookup, as run.py has them

RESULTS = Path(__file__).resolve().parent / "results"
SHORT_NAMES = {  # run.py's target names, shortened for a column header
    "SSC layer fwd+bwd vs torch, every sscresnet20 shape (worst)": "SSC layer, worst shape",
    "sscresnet20 r=1 training vs torch": "r=1 vs torch",
    "shiftresnet20 e=3 training vs torch": "e=3 vs torch",
    "resnet20 training vs torch": "resnet20 vs torch",
    "sscresnet20 r=1 training images/s": "r=1 training",
    "training-step peak memory / torch's (worst model)": "memory / torch",
    "warm Numba cache: process start -> first training step (end of the first step minus a "
    "steady step)": "warm start",
}


def header(target: dict) -> str:
    """'r=1 training >= 200 img/s': the short name and what passes."""
    return f"{SHORT_NAMES.get(target['target'], target['target'])} " \
        f"{benchmark.passing_range(target)}"


def cell(target: dict) -> str:
    """The value (ratios and seconds to two decimals, images/s to one), in bold if the run
    missed the target."""
    value = target["value"]
    if value is None:
        return "n/a"
    text = {"x": f"{value:.2f}x", "s": f"{value:.2f} s"}.get(target["unit"], f"{value:.1f}")
    return f"**{text}**" if target["status"] == "MISS" else text


def torch_r1_rate(results: dict) -> str:
    torch = (benchmark._network(results, "sscresnet20", {"r": 1}) or {}).get("torch")
    return f"{torch['train_images_per_s']:.1f}" if torch else "-"


def probes(meta: dict) -> str:
    speed = meta.get("speed_at_start")
    if not speed:
        return "-"
    return f"{speed['copy_gb_per_s']:.1f} GB/s, {speed['matmul_gflop_per_s']:.0f} GFLOP/s"


def table(paths: list[Path]) -> str:
    runs = [(path, json.loads(path.read_text())) for path in paths]
    runs = [(path, results) for path, results in runs if results.get("targets")]
    if not runs:
        raise SystemExit("no benchmark results with targets among the files given")
    headers = [header(target) for target in runs[-1][1]["targets"]]
    lines = ["| run | commit | CPU | probes at start | torch r=1 img/s | " + " | ".join(headers)
             + " | missed |",
             "|---" * (len(headers) + 6) + "|"]
    for path, results in runs:
        meta, targets = results["meta"], results["targets"]
        if [header(target) for target in targets] != headers:
            raise SystemExit(f"{path}: its targets differ from the last file's")
        missed = sum(target["status"] == "MISS" for target in targets)
        cpu = meta.get("cpu", "?").replace("(R)", "").replace(" Processor", "")
        lines.append(f"| {path.stem.removeprefix('full-')} | {meta.get('git_commit', '?')[:7]} "
                     f"| {cpu} | {probes(meta)} | {torch_r1_rate(results)} | "
                     + " | ".join(cell(target) for target in targets) + f" | {missed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="run.py JSON files (default: benchmarks/results/full-*.json)")
    args = parser.parse_args(argv)
    print(table(args.files or sorted(RESULTS.glob("full-*.json"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
