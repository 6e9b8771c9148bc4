"""The ``minissc`` command: train, eval, plot, report, summary.

Whatever goes wrong prints one line on stderr and no traceback (set MINISSC_DEBUG=1 to see
the traceback anyway). Exit status: 0 done; 1 an error a user can fix (a bad setting, a
missing or broken file, a checkpoint of another model, a diverged run), ``minissc: error:
...``; 2 a command line that does not parse, ``minissc train: error: ...``; 130 interrupted
by Ctrl-C, with where the run was saved and how to continue it.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_DATA_DIR = os.environ.get("MINISSC_DATA", "data")


class _OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse prints the usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="minissc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model of the zoo on CIFAR")
    train.add_argument("--model", default="sscresnet20", help="zoo name (see `minissc summary`)")
    train.add_argument("--r", type=int, help="SSC module: outputs per SSC2 group (1, 2, 4)")
    train.add_argument("--e", type=int, help="Shift-Net module: expansion (1, 3, 6, 9)")
    train.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    train.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help="folder with the CIFAR archive or its extracted folder "
                            "(default: $MINISSC_DATA or ./data)")
    train.add_argument("--no-download", action="store_true",
                       help="never download the data set; fail if it is not in --data-dir")
    train.add_argument("--no-verify", action="store_true",
                       help="accept a local archive whose md5 differs from the official one")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    train.add_argument("--schedule", default="onecycle",
                       choices=("onecycle", "cosine", "step", "constant"))
    train.add_argument("--warmup-epochs", type=float, default=0.0, help="cosine warm-up length")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--nesterov", action="store_true")
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    train.add_argument("--subset", type=int, help="train on N images, balanced over classes")
    train.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="run folder (metrics, checkpoints, summary)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint (the settings must "
                            "be the same, except --lr; without a checkpoint it starts afresh)")
    train.add_argument("--time-limit", type=float, metavar="MINUTES",
                       help="stop after this many minutes of training, saved to resume (per-epoch "
                            "evaluations are not counted; a resumed run continues the count, so "
                            "give it a larger limit)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--train-eval", type=int, default=0, metavar="N",
                       help="after training, also measure accuracy in eval mode on the first N "
                            "training images (summary.json: train_eval_acc, eval_gap)")

    evaluate = commands.add_parser("eval", help="test accuracy of a checkpoint")
    evaluate.add_argument("checkpoint", help="a run's checkpoint.npz or best.npz")
    evaluate.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    evaluate.add_argument("--no-download", action="store_true")
    evaluate.add_argument("--no-verify", action="store_true")

    plot = commands.add_parser("plot", help="learning curves of run folders, as a PNG")
    plot.add_argument("runs", nargs="+", help="run folders")
    plot.add_argument("--out", help="PNG path (default: curves.png in the first run folder)")

    report = commands.add_parser("report", help="a results page (tables, figures, commands) "
                                                "from run folders, as a spec file lists them")
    report.add_argument("spec", help="JSON spec; README.md and figures/ are written beside it "
                                     "(see minissc.report)")

    summary = commands.add_parser("summary", help="per-layer shapes, parameters and MACs")
    summary.add_argument("model")
    summary.add_argument("--num-classes", type=int, default=10)
    summary.add_argument("--r", type=int)
    summary.add_argument("--e", type=int)
    return parser


def _model_options(args) -> dict:
    return {name: getattr(args, name) for name in ("r", "e") if getattr(args, name) is not None}


def train_config(args):
    """The TrainConfig of parsed `minissc train` arguments."""
    from minissc.train import TrainConfig
    return TrainConfig(
        model=args.model, model_options=_model_options(args), dataset=args.dataset,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        augment=not args.no_augment, subset=args.subset, test_subset=args.test_subset,
        seed=args.seed)


def _run(args) -> None:
    if args.command == "train":
        from minissc.train import train
        summary = train(train_config(args), args.out, args.data_dir, resume=args.resume,
                        time_limit_minutes=args.time_limit, progress=not args.no_progress,
                        download=not args.no_download, verify_md5=not args.no_verify,
                        train_eval_images=args.train_eval)
        best = summary["best_test_acc"]
        print(f"{summary['model']}: best test accuracy "
              f"{'(no complete epoch)' if best is None else f'{100 * best:.2f}%'}, "
              f"last {100 * summary['last_test_acc']:.2f}% after {summary['epochs_completed']} "
              f"complete epoch(s), {summary['images_per_second']:.0f} img/s "
              f"({summary['train_seconds'] / 60:.1f} min); run folder {args.out}")
        if summary["stopped_by"] == "time limit":
            print(f"stopped by --time-limit {args.time_limit:g} with "
                  f"{summary['epochs_completed']} of {summary['epochs_planned']} epochs "
                  f"complete: continue with the same command, --resume and a longer "
                  f"--time-limit (it counts the training time before a resume too) or none")
    elif args.command == "eval":
        from minissc.train import evaluate_checkpoint
        result = evaluate_checkpoint(args.checkpoint, args.data_dir, not args.no_download,
                                     not args.no_verify)
        print(f"{result['model']} (epoch {result['epoch']}): test accuracy "
              f"{100 * result['test_acc']:.2f}%, loss {result['test_loss']:.4f} on "
              f"{result['test_images']} images")
    elif args.command == "plot":
        from minissc.plots import plot_runs
        out = args.out or os.path.join(args.runs[0], "curves.png")
        print(plot_runs(args.runs, out))
    elif args.command == "report":
        from minissc.report import write_report
        print(write_report(args.spec))
    elif args.command == "summary":
        from minissc.summary import summary_text
        print(summary_text(args.model, num_classes=args.num_classes, **_model_options(args)))


# `minissc train`'s flag for each train() setting whose flag is not its name with dashes
FLAGS = {"time_limit_minutes": "--time-limit", "train_eval_images": "--train-eval"}


def _flag(setting: str) -> str:
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _stdout_is_closed() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    return False


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from minissc.train import InvalidSetting, TrainingDiverged, TrainingInterrupted
    try:
        _run(args)
    except TrainingInterrupted as interrupt:
        print(f"minissc: {_one_line(interrupt)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if os.environ.get("MINISSC_DEBUG"):
            raise
        print("minissc: interrupted; a run keeps its last checkpoint: continue it with the "
              "same command and --resume", file=sys.stderr)
        return 130
    except BrokenPipeError as error:
        if not _stdout_is_closed():  # another pipe: an error like any other
            print(f"minissc: error: {_one_line(error)}", file=sys.stderr)
            return 1
        # e.g. `minissc summary ... | head`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit flush
        return 1
    except (ValueError, TypeError, KeyError, OSError, TrainingDiverged) as error:
        if os.environ.get("MINISSC_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, InvalidSetting) and args.command == "train":  # the flag typed
            message = f"{_flag(error.setting)} {error.problem}"
        print(f"minissc: error: {_one_line(message)}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line, and how to see more
        if os.environ.get("MINISSC_DEBUG"):
            raise
        print(f"minissc: internal error: {type(error).__name__}: {_one_line(error)} (a bug; "
              f"MINISSC_DEBUG=1 shows the traceback, please report it)", file=sys.stderr)
        return 1
    return 0
