"""Learning curves of run folders: loss, accuracy and the train-test gap, as one PNG."""
from __future__ import annotations

import json
import os

from matplotlib.figure import Figure  # draws to a file without pyplot: no screen needed, and
                                      # the caller's matplotlib backend is left alone
from matplotlib.ticker import MaxNLocator

from minissc.checkpoint import check_writable_folder


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder: {path} is missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupt ({error}): not a metrics file written by "
                         f"minissc") from None


def run_label(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(run_dir))


def plot_runs(run_dirs: list[str], out_path: str) -> str:
    """Draw train/test loss, train/test accuracy and train - test accuracy per epoch into
    out_path (".png" added when it has no extension); returns the path written. Every point
    has a marker, so that a run of one epoch shows too; a partial epoch (a run stopped by
    Ctrl-C or its time limit) has a hollow one. Integer epochs on the x axis."""
    if os.path.isdir(out_path):
        raise IsADirectoryError(f"--out {out_path} is a folder; give a file name such as "
                                f"{os.path.join(out_path, 'curves.png')}")
    if not os.path.splitext(out_path)[1]:
        out_path += ".png"
    check_writable_folder(os.path.dirname(os.path.abspath(out_path)), "--out")
    figure = curves_figure([(run_label(d), read_metrics(d)) for d in run_dirs])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    figure.savefig(out_path, dpi=110)
    return out_path


def curves_figure(histories: list[tuple[str, list[dict]]]) -> Figure:
    """The figure of `plot_runs` for (label, metrics rows) pairs."""
    figure = Figure(figsize=(15, 4.2))
    loss_ax, acc_ax, gap_ax = figure.subplots(1, 3)
    for index, (label, history) in enumerate(histories):
        color = f"C{index % 10}"
        epochs = [row["epoch"] for row in history]
        partial = [row.get("partial", False) for row in history]

        def curve(ax, values, style, **label_if_any):
            ax.plot(epochs, values, style, color=color, marker="o", markersize=3,
                    **label_if_any)
            ax.plot([e for e, p in zip(epochs, partial) if p],
                    [v for v, p in zip(values, partial) if p], "o", color=color,
                    markersize=6, markerfacecolor="white")

        curve(loss_ax, [r["train_loss"] for r in history], "--", label=f"{label} train")
        curve(loss_ax, [r["test_loss"] for r in history], "-", label=f"{label} test")
        curve(acc_ax, [100 * r["train_acc"] for r in history], "--")
        curve(acc_ax, [100 * r["test_acc"] for r in history], "-")
        curve(gap_ax, [100 * (r["train_acc"] - r["test_acc"]) for r in history], "-",
              label=label)
    loss_ax.set(title="loss (dashed: train, solid: test)", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="accuracy (dashed: train, solid: test)", xlabel="epoch", ylabel="%")
    any_partial = any(row.get("partial") for _, history in histories for row in history)
    gap_ax.set(title="train - test accuracy gap" + (" (hollow: partial epoch)" if any_partial
                                                    else ""),
               xlabel="epoch", ylabel="percentage points")
    gap_ax.axhline(0, color="grey", linewidth=0.8)
    loss_ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax, gap_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    figure.tight_layout()
    return figure
