"""Training and evaluation on CIFAR: the loop behind ``minissc train`` and ``minissc eval``.

A run lives in one folder:
  config.json     the configuration (what `--resume` must match)
  metrics.csv/.json  one row per epoch: lr, train/test loss and accuracy, time, images/s
  checkpoint.npz  model, optimiser and progress after the last complete epoch, or after the
                  step at which Ctrl-C or the time limit stopped the run
  best.npz        the model weights of the complete epoch with the best test accuracy
  summary.json    best and last test accuracy, parameters, MACs, wall time, images/s (and,
                  with train_eval_images, the train accuracy in eval mode after training)

Reproducibility: weights come from ``manual_seed(seed)``; the shuffling and augmentation of
epoch e come from a generator seeded with (seed, e). So an epoch's batches do not depend on
what ran before, and a run resumed from the checkpoint of epoch e continues exactly as an
uninterrupted one would. A checkpoint saved mid-epoch also holds the generator's state and the
epoch's running sums, so a run resumed from it continues exactly too.

Reliability: every setting, the run folder, the data and the checkpoint to resume from are
checked before anything is written. Every file of the run folder is written atomically (see
`minissc.checkpoint`), so a kill at any moment keeps the last good checkpoint. The first
Ctrl-C (SIGINT) stops the run after the current step and saves it (`TrainingInterrupted`); a
second one stops at once, keeping the last checkpoint. A NaN or infinite training or test
loss, or weights that became NaN or infinite, stop the run before they are saved
(`TrainingDiverged`); ``--resume`` may change the learning rate, and only it, to continue
from the last good checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import os
import signal
import threading
import time

import numpy as np
from tqdm import tqdm

from minissc import data, models
from minissc.checkpoint import (CheckpointError, check_writable_folder, load_checkpoint,
                                remove_temporaries, save_checkpoint, split_prefix,
                                write_text_atomically)
from minissc.functional import cross_entropy
from minissc.nn import manual_seed
from minissc.optim import SCHEDULES, SGD, make_schedule
from minissc.summary import summarize
from minissc.tensor import Tensor, no_grad

CHECKPOINT, BEST, SUMMARY, CONFIG = "checkpoint.npz", "best.npz", "summary.json", "config.json"
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
CHANGEABLE_ON_RESUME = ("lr",)  # to continue a diverged run with a lower learning rate


class TrainingDiverged(RuntimeError):
    """The loss, or the weights, became NaN or infinite."""


class InvalidSetting(ValueError):
    """A bad value of a `TrainConfig` field or `train` argument: the message is the field's
    name, then `problem`; the command line names its flag instead (`minissc.cli`)."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after a step; the message says where it was saved."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a run's numbers (the output folder and time limit do not)."""

    model: str = "sscresnet20"
    model_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"r": 1} or {"e": 3}
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    subset: int | None = None        # training images (balanced over the classes)
    test_subset: int | None = None   # test images (the first ones), for quick runs
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSetting(name, f"must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InvalidSetting(name, f"must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise InvalidSetting("lr", "must be > 0, got 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if self.dataset not in data.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of "
                             f"{', '.join(data.DATASETS)}")
        if not 0 <= self.label_smoothing < 1:
            raise InvalidSetting("label_smoothing",
                                 f"must be in [0, 1), got {self.label_smoothing}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidSetting(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidSetting("seed", f"must be an integer >= 0, got {self.seed!r}")

    def validate_warmup(self) -> None:
        """A warm-up the schedule would ignore, or one as long as the run, is refused when a
        run starts; not in `validate`, so that runs saved before this check still resume
        and evaluate."""
        if self.warmup_epochs and self.schedule != "cosine":
            raise InvalidSetting("warmup_epochs", f"({self.warmup_epochs}) applies to the "
                                 f"cosine schedule only, not to {self.schedule!r}")
        if self.warmup_epochs >= self.epochs:
            raise InvalidSetting("warmup_epochs", f"({self.warmup_epochs}) must be shorter "
                                 f"than the run's {self.epochs} epochs")


def build_model(config: TrainConfig, num_classes: int):
    manual_seed(config.seed)
    return models.create(config.model, num_classes=num_classes, **config.model_options)


def load_split(config: TrainConfig, data_dir: str, download: bool = True,
               verify_md5: bool = True):
    """The training and test arrays the run uses (after --subset / --test-subset)."""
    cifar = data.load_cifar(config.dataset, data_dir, download=download, verify_md5=verify_md5)
    train_images, train_labels = cifar.train_images, cifar.train_labels
    if config.subset is not None:
        classes = len(cifar.classes)
        if config.subset % classes or config.subset > len(train_labels):
            raise InvalidSetting("subset", f"must be a multiple of the {classes} classes and "
                                 f"at most {len(train_labels)}, got {config.subset}")
        rng = np.random.default_rng([config.seed, 2**31])
        keep = data.balanced_subset(train_labels, config.subset // classes, rng)
        train_images, train_labels = train_images[keep], train_labels[keep]
    test_images, test_labels = cifar.test_images, cifar.test_labels
    if config.test_subset is not None:
        if config.test_subset > len(test_labels):
            raise InvalidSetting("test_subset", f"must be at most the {len(test_labels)} test "
                                 f"images, got {config.test_subset}")
        test_images, test_labels = test_images[:config.test_subset], test_labels[:config.test_subset]
    return cifar, (train_images, train_labels), (test_images, test_labels)


def evaluate(model, images: np.ndarray, labels: np.ndarray, mean, std,
             batch_size: int = 500) -> tuple[float, float]:
    """(mean loss, accuracy) of the model in eval mode on uint8 images."""
    model.eval()
    total_loss, correct = 0.0, 0
    with no_grad():
        for start in range(0, len(labels), batch_size):
            batch = slice(start, start + batch_size)
            logits = model(Tensor(data.normalize(images[batch], mean, std)))
            total_loss += cross_entropy(logits, labels[batch]).item() * len(labels[batch])
            correct += int((logits.data.argmax(axis=1) == labels[batch]).sum())
    return total_loss / max(len(labels), 1), correct / max(len(labels), 1)


@dataclasses.dataclass
class _EpochProgress:
    """Where a run is inside an epoch: what a mid-epoch checkpoint adds to an epoch one."""

    step: int = 0              # steps of the epoch done
    rng_state: dict | None = None  # the epoch generator's state after them (None: fresh)
    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


class _StopOnFirstSigint:
    """While active (in the main thread), the first Ctrl-C only sets `requested`, so that the
    loop can finish its step and save; a second Ctrl-C raises KeyboardInterrupt at once."""

    def __enter__(self):
        self.requested, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(config: TrainConfig, out_dir: str, data_dir: str = "data", resume: bool = False,
          time_limit_minutes: float | None = None, progress: bool = True,
          download: bool = True, verify_md5: bool = True, train_eval_images: int = 0) -> dict:
    """Train as `config` says, writing the run folder `out_dir`; returns the summary dict.

    With train_eval_images = n > 0, the trained model is also evaluated (eval mode, no
    augmentation) on the first n images of its training set: the summary's `train_eval_acc`
    and `eval_gap` (train_eval_acc - last_test_acc) measure over-fitting better than the
    running accuracy of the last epoch, which saw augmented images and a moving model.

    With time_limit_minutes, the run stops after the step at which its training time passes
    the limit, ending with a partial epoch (evaluated, in the metrics, and saved as Ctrl-C
    saves, so that --resume continues it from the next step; best.npz and the summary's
    best_test_acc count complete epochs only); training time counts as the summary's
    `train_seconds` does (no evaluations, no pauses; a resumed run continues the count).

    Raises before writing anything if a setting, the folder, the data or the checkpoint to
    resume from is bad; `TrainingDiverged` on a NaN or infinite loss; `TrainingInterrupted`
    after saving when Ctrl-C stopped the run (see the module docstring).
    """
    config.validate()
    if time_limit_minutes is not None and not time_limit_minutes > 0:
        raise InvalidSetting("time_limit_minutes", f"must be > 0, got {time_limit_minutes}")
    if isinstance(train_eval_images, bool) or not isinstance(train_eval_images, int) \
            or train_eval_images < 0:
        raise InvalidSetting("train_eval_images",
                             f"must be an integer >= 0, got {train_eval_images!r}")
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    if not (resume and os.path.exists(checkpoint_path)):
        config.validate_warmup()
    _check_run_folder(config, out_dir, resume)
    model = build_model(config, data.DATASETS[config.dataset].num_classes)
    optimizer = SGD(model.parameters(), config.lr, config.momentum, config.weight_decay,
                    config.nesterov)
    _, (train_images, train_labels), (test_images, test_labels) = load_split(
        config, data_dir, download, verify_md5)
    mean, std = data.NORMALIZATION[config.dataset]
    steps_per_epoch = math.ceil(len(train_labels) / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, config.epochs * steps_per_epoch,
                             steps_per_epoch, round(config.warmup_epochs * steps_per_epoch))

    history, start_epoch, train_seconds, lr_changes = [], 0, 0.0, []
    in_epoch, saved_at = _EpochProgress(), None  # saved_at: where the last checkpoint is
    if resume and os.path.exists(checkpoint_path):
        meta = _restore(checkpoint_path, config, model, optimizer)
        history, start_epoch = meta["history"], meta["epoch"]
        train_seconds, lr_changes = meta["train_seconds"], meta.get("lr_changes", [])
        in_epoch = _EpochProgress(**meta.get("in_epoch", {}))
        saved_at = _position(start_epoch, in_epoch.step, steps_per_epoch)
        if meta["config"]["lr"] != config.lr:
            lr_changes.append(dict(step=start_epoch * steps_per_epoch + in_epoch.step,
                                   lr=config.lr, previous_lr=meta["config"]["lr"]))

    os.makedirs(out_dir, exist_ok=True)
    remove_temporaries(out_dir)  # left by a run killed while writing
    write_text_atomically(os.path.join(out_dir, CONFIG),
                          json.dumps(dataclasses.asdict(config), indent=2))

    def save_progress(epoch: int, progress_in_epoch: _EpochProgress) -> None:
        nonlocal saved_at
        meta = dict(config=dataclasses.asdict(config), epoch=epoch, history=history,
                    train_seconds=train_seconds, lr_changes=lr_changes)
        if progress_in_epoch.step:
            meta["in_epoch"] = dataclasses.asdict(progress_in_epoch)
        arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
        save_checkpoint(checkpoint_path, arrays, meta)
        saved_at = _position(epoch, progress_in_epoch.step, steps_per_epoch)

    time_limit_seconds = None if time_limit_minutes is None else 60 * time_limit_minutes
    stopped_by = None
    # NumPy's overflow warnings would only precede the divergence checks' clearer message.
    with _StopOnFirstSigint() as sigint, np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(start_epoch, config.epochs):
            rng = np.random.default_rng([config.seed, epoch])
            order = data.batches(len(train_labels), config.batch_size, rng)  # draws the order
            done = in_epoch
            in_epoch = _EpochProgress()
            if done.rng_state is not None:  # resuming mid-epoch: skip the steps done
                rng.bit_generator.state = done.rng_state
                order = itertools.islice(order, done.step, None)
            seen, correct, loss_sum = done.seen, done.correct, done.loss_sum
            model.train()
            epoch_start = time.perf_counter() - done.seconds
            bar = tqdm(order, total=steps_per_epoch, initial=done.step,
                       desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                       leave=False, unit="batch")
            for step_in_epoch, index in enumerate(bar, start=done.step):
                if sigint.requested:
                    bar.close()
                    save_progress(epoch, _EpochProgress(
                        step_in_epoch, rng.bit_generator.state, seen, correct, loss_sum,
                        time.perf_counter() - epoch_start))
                    raise _interrupted(saved_at, checkpoint_path)
                step = epoch * steps_per_epoch + step_in_epoch
                images = train_images[index]
                if config.augment:
                    images = data.random_crop_flip(images, rng)
                logits = model(Tensor(data.normalize(images, mean, std)))
                loss = cross_entropy(logits, train_labels[index], config.label_smoothing)
                if not np.isfinite(loss.item()):
                    raise TrainingDiverged(_diverged_message(
                        f"the loss is {loss.item()} at "
                        f"{_step_name(epoch, step_in_epoch, steps_per_epoch)}",
                        saved_at, checkpoint_path))
                optimizer.zero_grad()
                loss.backward()
                optimizer.lr = schedule(step)
                optimizer.step()
                seen += len(index)
                loss_sum += loss.item() * len(index)
                correct += int((logits.data.argmax(axis=1) == train_labels[index]).sum())
                elapsed = time.perf_counter() - epoch_start
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / elapsed:.0f}")
                if time_limit_seconds is not None \
                        and train_seconds + elapsed > time_limit_seconds:
                    stopped_by = "time limit"
                    break
            bar.close()
            _check_finite(model, f"at {_step_name(epoch, step_in_epoch, steps_per_epoch)}",
                          saved_at, checkpoint_path)
            epoch_seconds = time.perf_counter() - epoch_start
            steps_done = step_in_epoch + 1
            partial = stopped_by is not None and steps_done < steps_per_epoch
            if stopped_by is not None and not partial and epoch + 1 == config.epochs:
                stopped_by = None  # the limit passed at the run's very last step
            test_loss, test_acc = evaluate(model, test_images, test_labels, mean, std)
            if not np.isfinite(test_loss):  # checked before anything of this epoch is saved
                now = _position(epoch, steps_done, steps_per_epoch) if partial \
                    else _position(epoch + 1, 0, steps_per_epoch)
                raise TrainingDiverged(_diverged_message(f"the test loss is {test_loss} {now}",
                                                         saved_at, checkpoint_path))
            if partial:  # saved as Ctrl-C saves: a resumed run continues from the next step
                save_progress(epoch, _EpochProgress(steps_done, rng.bit_generator.state, seen,
                                                    correct, loss_sum, epoch_seconds))
            train_seconds += epoch_seconds
            row = dict(epoch=epoch + 1, lr=optimizer.lr, train_loss=loss_sum / seen,
                       train_acc=correct / seen, test_loss=test_loss, test_acc=test_acc,
                       epoch_seconds=epoch_seconds, images=seen,
                       images_per_second=seen / epoch_seconds, partial=partial)
            # best.npz and the metrics before the checkpoint: a kill before it redoes the
            # epoch, which writes them again (the same bits, unless the resume changes --lr);
            # a kill after it finds them up to date. A partial epoch's row is in this run's
            # metrics, not in the checkpoint's history.
            if not partial and test_acc >= max((r["test_acc"] for r in history),
                                               default=test_acc):
                save_checkpoint(os.path.join(out_dir, BEST),
                                {f"model/{k}": v for k, v in model.state_dict().items()},
                                dict(config=dataclasses.asdict(config), epoch=epoch + 1,
                                     test_acc=test_acc))
            history.append(row)
            _write_metrics(out_dir, history)
            if not partial:
                save_progress(epoch + 1, _EpochProgress())
            say = tqdm.write if progress else functools.partial(print, flush=True)
            say(f"epoch {epoch + 1}/{config.epochs}{' (partial)' if partial else ''}: train "
                f"loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | test loss "
                f"{test_loss:.4f} acc {test_acc:.4f} | {row['images_per_second']:.0f} img/s")
            if sigint.requested:  # pressed during the evaluation
                raise _interrupted(saved_at, checkpoint_path)
            if stopped_by is not None:
                break

    summary = _summary(config, model, history, train_seconds, stopped_by, time_limit_minutes,
                       len(train_labels), len(test_labels), lr_changes)
    if train_eval_images and history:
        count = min(train_eval_images, len(train_labels))
        _, summary["train_eval_acc"] = evaluate(model, train_images[:count],
                                                train_labels[:count], mean, std)
        summary["train_eval_images"] = count
        summary["eval_gap"] = summary["train_eval_acc"] - summary["last_test_acc"]
    write_text_atomically(os.path.join(out_dir, SUMMARY), json.dumps(summary, indent=2))
    return summary


def _step_name(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> str:
    """A step in words, counting epochs and steps from 1: "epoch 2, step 3 of 20"."""
    return f"epoch {epoch + 1}, step {step_in_epoch + 1} of {steps_per_epoch}"


def _position(epoch: int, steps_done: int, steps_per_epoch: int) -> str:
    """Where a checkpoint is, in words, from the complete epochs and the steps done since."""
    if steps_done == 0:
        return f"after epoch {epoch}" if epoch else "before the first step"
    return f"after {_step_name(epoch, steps_done - 1, steps_per_epoch)}"


def _interrupted(saved_at: str, checkpoint_path: str) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted: saved the run {saved_at} in {checkpoint_path}; "
                               f"continue it with the same command and --resume")


def _diverged_message(what: str, saved_at: str | None, checkpoint_path: str) -> str:
    if saved_at is None:
        return (f"training diverged: {what}. No checkpoint had been saved; start again with a "
                f"lower --lr")
    return (f"training diverged: {what}. The last good checkpoint, {saved_at}, is kept in "
            f"{checkpoint_path}: continue from it with --resume and a lower --lr")


def _check_finite(model, when: str, saved_at: str | None, checkpoint_path: str) -> None:
    """Raise `TrainingDiverged` if a parameter or buffer holds a NaN or an infinity."""
    arrays = itertools.chain(((n, p.data) for n, p in model.named_parameters()),
                             model.named_buffers())
    for name, array in arrays:
        if not np.isfinite(array).all():
            raise TrainingDiverged(_diverged_message(
                f"{name} became NaN or infinite {when}", saved_at, checkpoint_path))


def _differences(stored: dict, config: TrainConfig) -> list[str]:
    """The settings, other than CHANGEABLE_ON_RESUME, in which `config` differs from `stored`."""
    return [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(config).items()
            if stored.get(k) != v and k not in CHANGEABLE_ON_RESUME]


def _check_run_folder(config: TrainConfig, out_dir: str, resume: bool) -> None:
    """Refuse a run folder that cannot be written, that holds another run (without --resume),
    or whose run has other settings (with --resume). Writes nothing."""
    check_writable_folder(out_dir, "--out")
    run_files = (CHECKPOINT, BEST, SUMMARY, CONFIG, METRICS_JSON, METRICS_CSV)
    if not resume and any(os.path.exists(os.path.join(out_dir, f)) for f in run_files):
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it, "
                              f"or choose another --out")
    config_path = os.path.join(out_dir, CONFIG)
    if resume and os.path.exists(config_path):
        try:
            with open(config_path) as f:
                stored = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_path} is corrupt ({error}); delete it to resume from "
                             f"the checkpoint alone, or choose another --out") from None
        differences = _differences(stored, config)
        if differences:
            raise ValueError(f"--resume needs the same settings as the run in {out_dir} "
                             f"(only {', '.join(CHANGEABLE_ON_RESUME)} may change); these "
                             f"differ: {'; '.join(differences)}")


def _restore(path: str, config: TrainConfig, model, optimizer) -> dict:
    """Load a run checkpoint into the model and optimiser after checking that it fits."""
    arrays, meta = load_checkpoint(path)
    stored = meta.get("config")
    if not isinstance(stored, dict) or not {"epoch", "history", "train_seconds"} <= set(meta):
        raise CheckpointError(f"checkpoint {path} holds no training progress (a best.npz, or "
                              f"not a minissc run): it cannot be resumed")
    if stored.get("model") != config.model or stored.get("model_options") != config.model_options:
        raise CheckpointError(f"checkpoint {path} is of model {stored.get('model')} "
                              f"{stored.get('model_options')}, not {config.model} "
                              f"{config.model_options}; resume with its model, or choose "
                              f"another --out")
    differences = _differences(stored, config)
    if differences:
        raise ValueError(f"--resume needs the same settings as checkpoint {path}; these "
                         f"differ: {'; '.join(differences)}")
    _load_state(model, split_prefix(arrays, "model"), path, config)
    _load_state(optimizer, split_prefix(arrays, "optimizer"), path, config)
    return meta


def _load_state(target, state: dict, path: str, config: TrainConfig) -> None:
    """``target.load_state_dict(state)``, with errors naming the checkpoint file."""
    try:
        target.load_state_dict(state)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit {config.model} "
                              f"{config.model_options}: "
                              f"{error.args[0] if error.args else error}") from None


def _write_metrics(out_dir: str, history: list[dict]) -> None:
    write_text_atomically(os.path.join(out_dir, METRICS_JSON), json.dumps(history, indent=2))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(os.path.join(out_dir, METRICS_CSV), table.getvalue())


def _summary(config, model, history, train_seconds, stopped_by, time_limit_minutes, train_size,
             test_size, lr_changes) -> dict:
    rows = summarize(model)
    images_trained = sum(r["images"] for r in history)
    last = history[-1] if history else {}
    return dict(
        model=config.model, model_options=config.model_options, dataset=config.dataset,
        parameters=model.num_parameters(), macs=int(sum(r.macs for r in rows)),
        epochs_completed=sum(not r["partial"] for r in history), epochs_planned=config.epochs,
        stopped_by=stopped_by, time_limit_minutes=time_limit_minutes,
        train_images=train_size, test_images=test_size,
        best_test_acc=max((r["test_acc"] for r in history if not r["partial"]), default=None),
        last_test_acc=last.get("test_acc"), last_train_acc=last.get("train_acc"),
        train_test_gap=(last["train_acc"] - last["test_acc"]) if history else None,
        train_seconds=train_seconds,
        images_per_second=images_trained / train_seconds if train_seconds else None,
        config=dataclasses.asdict(config), lr_changes=lr_changes)


def evaluate_checkpoint(path: str, data_dir: str = "data", download: bool = True,
                        verify_md5: bool = True) -> dict:
    """Test loss and accuracy of a checkpoint (checkpoint.npz or best.npz of a run)."""
    arrays, meta = load_checkpoint(path)
    try:
        config = TrainConfig(**meta["config"])
        config.validate()
        model = build_model(config, data.DATASETS[config.dataset].num_classes)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has no valid training configuration "
                              f"({error}): not a minissc run checkpoint, or one of another "
                              f"minissc version") from None
    _load_state(model, split_prefix(arrays, "model"), path, config)
    _, _, (test_images, test_labels) = load_split(config, data_dir, download, verify_md5)
    mean, std = data.NORMALIZATION[config.dataset]
    loss, accuracy = evaluate(model, test_images, test_labels, mean, std)
    return dict(checkpoint=path, model=config.model, epoch=meta.get("epoch"), test_loss=loss,
                test_acc=accuracy, test_images=len(test_labels))
