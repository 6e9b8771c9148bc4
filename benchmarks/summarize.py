#!/usr/bin/env python
"""Every saved benchmark run against the issue's targets, one row per run, as a Markdown table.

    python benchmarks/summarize.py [FILE.json ...]      # default: benchmarks/results/full-*.json
    python benchmarks/summarize.py --across Intel       # medians of the runs on one CPU kind
    python benchmarks/summarize.py --issue-machine      # each run's VM against the issue's figures

Each row is one JSON file written by `run.py`: its commit, the CPU it ran on, the machine-speed
probes at its start (runs before 2026-12-02n have none), PyTorch's sscresnet20 r=1 training
rate (how fast the machine was for the other side of the ratios), the share of the VM's CPU
time its host took (steal) while each side timed r=1's training steps (runs before
2026-12-03d have none), then every target's value as `run.py` judged it, in bold where it
missed. The last column counts the misses. Nothing is recomputed: the values are the ones
the run saved.

`--issue-machine` reads each run against the machine the issue was written on. The issue gives
PyTorch's training rates there (about 580 img/s for resnet20, 220 for shiftresnet20 e=3, 19
for sscresnet20 r=1); each row gives PyTorch's rates in the run as a share of those, and
minissc's r=1 rate scaled by them: minissc's r=1 rate over PyTorch's resnet20 (or e=3) rate in
the same run, times the issue's 580 (or 220). That is an extrapolation, not a measurement: it
assumes minissc's r=1 step and PyTorch's dense steps speed up together from one machine to
another, which the saved runs can support (the ratio's spread over them) but not prove.
"""
from __future__ import annotations

import argparse
import json
import statistics
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

# PyTorch's training images/s on the issue's machine, as the issue states them ("about")
ISSUE_TORCH_RATES = {"resnet20": 580.0, "shiftresnet20 e=3": 220.0, "sscresnet20 r=1": 19.0}


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


def r1_steal(results: dict) -> str:
    """'minissc's steal, torch's' over r=1's timed training steps, or '-'."""
    network = benchmark._network(results, "sscresnet20", {"r": 1}) or {}
    shares = [benchmark.cpu_use(network.get(side, {})).get("steal")
              for side in ("minissc", "torch")]
    if all(share is None for share in shares):
        return "-"
    return ", ".join("-" if share is None else f"{100 * share:.0f}%" for share in shares)


def cpu_label(meta: dict) -> str:
    """The run's CPU name, without "(R)" and " Processor"."""
    return meta.get("cpu", "?").replace("(R)", "").replace(" Processor", "")


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
    lines = ["| run | commit | CPU | probes at start | torch r=1 img/s | r=1 steal (minissc, "
             "torch) | " + " | ".join(headers) + " | missed |",
             "|---" * (len(headers) + 7) + "|"]
    for path, results in runs:
        meta, targets = results["meta"], results["targets"]
        if [header(target) for target in targets] != headers:
            raise SystemExit(f"{path}: its targets differ from the last file's")
        missed = sum(target["status"] == "MISS" for target in targets)
        lines.append(f"| {path.stem.removeprefix('full-')} | {meta.get('git_commit', '?')[:7]} "
                     f"| {cpu_label(meta)} | {probes(meta)} | {torch_r1_rate(results)} | "
                     f"{r1_steal(results)} | "
                     + " | ".join(cell(target) for target in targets) + f" | {missed} |")
    return "\n".join(lines)


def spread(values: list[float], unit: str = "") -> str:
    """'median (lowest-highest)', to three significant figures."""
    low, median, high = (f"{v:.3g}" for v in (min(values), statistics.median(values),
                                              max(values)))
    return f"{median}{unit} ({low}-{high}{unit})"


def across_runs(paths: list[Path], cpu: str) -> str:
    """The training rates, SSC layer speed-ups and target counts of the runs whose CPU name
    contains `cpu`, as medians and ranges over those runs (the README's Speed section)."""
    runs = [json.loads(path.read_text()) for path in paths]
    runs = [r for r in runs if cpu in r["meta"].get("cpu", "") and r.get("targets")]
    if not runs:
        raise SystemExit(f"no benchmark results with targets on a CPU named like {cpu!r}")
    lines = [f"{len(runs)} runs on {cpu}: training images/s, median (lowest-highest)", "",
             "| model | minissc | PyTorch | ratio | PyTorch, freed memory kept | ratio |",
             "|---|---|---|---|---|---|"]
    for name, options in benchmark.NETWORK_MODELS:
        networks = [benchmark._network(r, name, options) for r in runs]

        def rate(side):
            return spread([n[side]["train_images_per_s"] for n in networks])
        lines.append(f"| {networks[0]['label']} | {rate('minissc')} | {rate('torch')} | "
                     f"{spread([n['train_speedup'] for n in networks], 'x')} | "
                     f"{rate('torch_kept')} | "
                     f"{spread([n['train_speedup_vs_torch_kept'] for n in networks], 'x')} |")
    lines += ["", "| SSC layer of sscresnet20 | vs PyTorch | vs PyTorch, freed memory kept |",
              "|---|---|---|"]
    layers = {}
    for r in runs:
        for layer in r["layers"]:
            if layer["kind"] == "ssc" and any(u.startswith("sscresnet20") for u in layer["uses"]):
                layers.setdefault(layer["label"], []).append(layer)
    for label, timings in layers.items():
        lines.append(f"| {label} | {spread([t['speedup_vs_torch'] for t in timings], 'x')} | "
                     f"{spread([t['speedup_vs_torch_kept'] for t in timings], 'x')} |")
    lines += ["", "| target | runs that met it |", "|---|---|"]
    for index, target in enumerate(runs[-1]["targets"]):
        met = sum(r["targets"][index]["status"] == "PASS" for r in runs)
        lines.append(f"| {header(target)} | {met} of {len(runs)} |")
    return "\n".join(lines)


def issue_machine(paths: list[Path]) -> str:
    """Each run's PyTorch rates against the issue's (`ISSUE_TORCH_RATES`), and minissc's r=1
    rate scaled to the issue's machine by PyTorch's resnet20 and e=3 rates (see above)."""
    runs = [(path, json.loads(path.read_text())) for path in paths]
    runs = [(path, {n["label"]: n for n in results.get("networks", [])}, results["meta"])
            for path, results in runs]
    runs = [(path, networks, meta) for path, networks, meta in runs
            if all(networks.get(label, {}).get("torch") for label in ISSUE_TORCH_RATES)]
    if not runs:
        raise SystemExit("no benchmark results with PyTorch's rates for "
                         + ", ".join(ISSUE_TORCH_RATES))
    dense, shift, r1 = ISSUE_TORCH_RATES  # the three models' labels
    lines = ["| run | CPU | " + " | ".join(f"PyTorch {label}: img/s, share of the issue's "
                                          f"{rate:.0f}" for label, rate in
                                          ISSUE_TORCH_RATES.items())
             + " | minissc r=1 img/s | scaled by resnet20 | scaled by e=3 | "
             "scaled, vs the issue's PyTorch r=1 |", "|---" * 9 + "|"]
    scaled = {dense: [], shift: []}
    for path, networks, meta in runs:
        torch = {label: networks[label]["torch"]["train_images_per_s"]
                 for label in ISSUE_TORCH_RATES}
        minissc = networks[r1]["minissc"]["train_images_per_s"]
        for label in scaled:
            scaled[label].append(minissc / torch[label] * ISSUE_TORCH_RATES[label])
        lines.append(f"| {path.stem.removeprefix('full-')} | {cpu_label(meta)} | "
                     + " | ".join(f"{torch[label]:.1f} ({torch[label] / rate:.2f})"
                                  for label, rate in ISSUE_TORCH_RATES.items())
                     + f" | {minissc:.1f} | {scaled[dense][-1]:.0f} | {scaled[shift][-1]:.0f} | "
                     f"{min(scaled[dense][-1], scaled[shift][-1]) / ISSUE_TORCH_RATES[r1]:.1f}x"
                     " |")
    lines += ["", f"{len(runs)} runs; minissc's r=1 img/s scaled to the issue's machine, median "
              f"(lowest-highest): by PyTorch's resnet20 {spread(scaled[dense])}, by its e=3 "
              f"{spread(scaled[shift])}. The last column takes the lower of the two."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="run.py JSON files (default: benchmarks/results/full-*.json)")
    parser.add_argument("--across", metavar="CPU",
                        help="medians and ranges over the runs on a CPU whose name contains CPU")
    parser.add_argument("--issue-machine", action="store_true",
                        help="each run's PyTorch rates against the issue's, and minissc's r=1 "
                             "rate scaled by them")
    args = parser.parse_args(argv)
    paths = args.files or sorted(RESULTS.glob("full-*.json"))
    if args.issue_machine:
        print(issue_machine(paths))
    else:
        print(across_runs(paths, args.across) if args.across else table(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
