"""A results page from run folders: `minissc report SPEC.json` writes tables and figures.

The spec (JSON) names the runs and how to group them; everything on the page that is a number
comes from the runs' own files (``summary.json``, which also holds the configuration, and
``metrics.json``), so the page can be rebuilt at any time and never holds a retyped result:

    {"title": "...",
     "preamble": "intro.md",                     (optional markdown files, relative to the spec,
     "sections": [                                copied onto the page as they are)
        {"title": "Equal budget", "runs": ["runs/resnet20", ...],
         "target": 0.88,                         (optional: time to this test accuracy)
         "notes": "equal-budget.md"}]}

For each section the page gets a table (accuracy, train-test gap, parameters, MACs, wall
time, images/s, the time to the target), the command that reruns each run, and two figures:
learning curves per epoch (`minissc.plots.plot_runs`) and test accuracy against wall time.
The page is ``README.md`` beside the spec, the figures go to ``figures/`` there.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re

from matplotlib.figure import Figure

from minissc.plots import plot_runs, read_metrics, run_label
from minissc.train import TrainConfig


@dataclasses.dataclass
class Run:
    """What the page shows of one run folder."""

    name: str
    summary: dict
    history: list[dict]  # metrics.json: one dict per epoch

    @property
    def elapsed_minutes(self) -> list[float]:
        """Training wall time at the end of each epoch, in minutes."""
        total, elapsed = 0.0, []
        for row in self.history:
            total += row["epoch_seconds"]
            elapsed.append(total / 60)
        return elapsed

    def minutes_to(self, accuracy: float) -> float | None:
        """Training minutes until the test accuracy first reached `accuracy`, or None."""
        for minutes, row in zip(self.elapsed_minutes, self.history):
            if row["test_acc"] >= accuracy:
                return minutes
        return None


def load_run(run_dir: str) -> Run:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a finished run folder: {path} is missing")
    with open(path) as f:
        summary = json.load(f)
    return Run(run_label(run_dir), summary, read_metrics(run_dir))


def train_command(summary: dict, out: str) -> str:
    """The `minissc train` command line that reruns the run of this summary.json (flags whose
    value is the default are left out). A run resumed with another --lr starts with its
    first learning rate, and a comment after the command lists the resumes."""
    lr_changes = summary.get("lr_changes") or []
    config = dict(summary["config"])
    if lr_changes:
        config["lr"] = lr_changes[0]["previous_lr"]
    defaults = dataclasses.asdict(TrainConfig())
    words = ["minissc", "train", "--model", config["model"]]
    for option, value in sorted(config.get("model_options", {}).items()):
        words += [f"--{option}", str(value)]
    for name, value in config.items():
        if name in ("model", "model_options") or value == defaults.get(name):
            continue
        if name == "augment":
            words.append("--no-augment")
        elif isinstance(value, bool):
            words.append(f"--{name.replace('_', '-')}")
        else:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if summary.get("train_eval_images"):
        words += ["--train-eval", str(summary["train_eval_images"])]
    if summary.get("time_limit_minutes"):
        words += ["--time-limit", f"{summary['time_limit_minutes']:g}"]
    resumes = "; ".join(f"resumed at step {change['step']} with --lr {change['lr']:g}"
                        for change in lr_changes)
    return " ".join(words + ["--out", out]) + (f"  # {resumes}" if resumes else "")


def _options(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(summary.get("model_options", {}).items()))


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _points(value) -> str:
    """A difference of two accuracies, in percentage points."""
    return "–" if value is None else f"{100 * value:+.2f}"


def results_table(runs: list[Run], target: float | None = None) -> str:
    """A markdown table, one row per run, every number read from its summary and metrics.

    "train % (last epoch)" is the running accuracy of the last epoch (augmented images, a
    moving model); "train % (eval)" is measured after training, in eval mode and without
    augmentation (runs trained with --train-eval), and the gaps are train - test.
    """
    header = ["run", "model", "options", "train images", "epochs", "best test %",
              "final test %", "train % (last epoch)", "gap", "train % (eval)", "gap (eval)",
              "parameters", "MACs (M)", "train time (min)", "img/s"]
    if target is not None:
        header.append(f"min to {100 * target:g}%")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        s = run.summary
        cells = [run.name, s["model"], _options(s) or "–", f"{s['train_images']:,}",
                 f"{s['epochs_completed']}", _percent(s["best_test_acc"]),
                 _percent(s["last_test_acc"]), _percent(s.get("last_train_acc")),
                 _points(s.get("train_test_gap")), _percent(s.get("train_eval_acc")),
                 _points(s.get("eval_gap")), f"{s['parameters']:,}",
                 f"{s['macs'] / 1e6:.1f}", f"{s['train_seconds'] / 60:.1f}",
                 f"{s['images_per_second']:.0f}"]
        if target is not None:
            minutes = run.minutes_to(target)
            cells.append("not reached" if minutes is None else f"{minutes:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy_against_time(runs: list[Run], out_path: str,
                               target: float | None = None) -> str:
    """Test accuracy at the end of each epoch against training wall time, one line per run."""
    figure = Figure(figsize=(7, 4.2))
    ax = figure.subplots()
    for run in runs:
        ax.plot(run.elapsed_minutes, [100 * row["test_acc"] for row in run.history],
                marker="o", markersize=3, label=run.name)
    if target is not None:
        ax.axhline(100 * target, color="grey", linestyle="--", linewidth=0.8,
                   label=f"target {100 * target:g}%")
    ax.set(xlabel="training wall time (min)", ylabel="test accuracy (%)",
           title="test accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    return out_path


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _unique_slug(title: str, used: set) -> str:
    """The title's slug, with -2, -3, ... added while an earlier section has it: sections
    titled alike get figures of their own. Adds it to `used`."""
    slug = base = _slug(title)
    for number in itertools.count(2):
        if slug not in used:
            break
        slug = f"{base}-{number}"
    used.add(slug)
    return slug


def _read_text(base: str, relative: str | None) -> str:
    if not relative:
        return ""
    with open(os.path.join(base, relative)) as f:
        return f.read().strip() + "\n\n"


def write_report(spec_path: str) -> str:
    """Write README.md and figures/ beside the spec (see the module docstring); returns the
    page's path."""
    with open(spec_path) as f:
        try:
            spec = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{spec_path} is not valid JSON ({error})") from None
    base = os.path.dirname(os.path.abspath(spec_path))
    if not spec.get("sections"):
        raise ValueError(f"{spec_path} has no sections: nothing to report")
    figures = os.path.join(base, "figures")
    os.makedirs(figures, exist_ok=True)
    page = [f"# {spec.get('title', 'Results')}\n\n",
            f"<!-- written by `minissc report {os.path.basename(spec_path)}`: edit the spec "
            f"and the notes files, not this page -->\n\n",
            _read_text(base, spec.get("preamble"))]
    used_slugs = set()
    for section in spec["sections"]:
        run_dirs = [os.path.join(base, d) for d in section["runs"]]
        runs = [load_run(d) for d in run_dirs]
        target = section.get("target")
        slug = _unique_slug(section["title"], used_slugs)
        curves = plot_runs(run_dirs, os.path.join(figures, f"{slug}-curves.png"))
        timeline = plot_accuracy_against_time(runs, os.path.join(figures, f"{slug}-time.png"),
                                              target)
        commands = "\n".join(train_command(run.summary, d)
                             for run, d in zip(runs, section["runs"]))
        page += [f"## {section['title']}\n\n", _read_text(base, section.get("notes")),
                 results_table(runs, target), "\n\n",
                 f"![learning curves](figures/{os.path.basename(curves)})\n\n",
                 f"![test accuracy against time](figures/{os.path.basename(timeline)})\n\n",
                 "Commands (the data set from `--data-dir`, default ./data):\n\n```\n",
                 commands, "\n```\n\n"]
    out_path = os.path.join(base, "README.md")
    with open(out_path, "w") as f:
        f.write("".join(page))
    return out_path
