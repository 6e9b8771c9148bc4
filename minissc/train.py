"""Training and evaluation on CIFAR: the loop behind ``minissc train`` and ``minissc eval``.

A run lives in one folder:
  config.json     the configuration (what `--resume` must match)
  metrics.csv/.json  one row per epoch: lr, train/test loss and accuracy, time, images/s
  checkpoint.npz  model, optimiser and progress after the last complete epoch
  best.npz        the model weights of the epoch with the best test accuracy
  summary.json    best and last test accuracy, parameters, MACs, wall time, images/s

Reproducibility: weights come from ``manual_seed(seed)``; the shuffling and augmentation of
epoch e come from a generator seeded with (seed, e). So an epoch's batches do not depend on
what ran before, and a run resumed from the checkpoint of epoch e continues exactly as an
uninterrupted one would.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

from minissc import data, models
from minissc.checkpoint import load_checkpoint, save_checkpoint, split_prefix
from minissc.functional import cross_entropy
from minissc.nn import manual_seed
from minissc.optim import SCHEDULES, SGD, make_schedule
from minissc.summary import summarize
from minissc.tensor import Tensor, no_grad

CHECKPOINT, BEST, SUMMARY, CONFIG = "checkpoint.npz", "best.npz", "summary.json", "config.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
            raise ValueError(f"subset must be a multiple of the {classes} classes and at most "
                             f"{len(train_labels)}, got {config.subset}")
        rng = np.random.default_rng([config.seed, 2**31])
        keep = data.balanced_subset(train_labels, config.subset // classes, rng)
        train_images, train_labels = train_images[keep], train_labels[keep]
    test_images, test_labels = cifar.test_images, cifar.test_labels
    if config.test_subset is not None:
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


def train(config: TrainConfig, out_dir: str, data_dir: str = "data", resume: bool = False,
          time_limit_minutes: float | None = None, progress: bool = True,
          download: bool = True, verify_md5: bool = True) -> dict:
    """Train as `config` says, writing the run folder `out_dir`; returns the summary dict."""
    config.validate()
    if time_limit_minutes is not None and not time_limit_minutes > 0:
        raise ValueError(f"time limit must be > 0 minutes, got {time_limit_minutes}")
    _prepare_run_folder(config, out_dir, resume)
    cifar, (train_images, train_labels), (test_images, test_labels) = load_split(
        config, data_dir, download, verify_md5)
    mean, std = data.NORMALIZATION[config.dataset]
    model = build_model(config, len(cifar.classes))
    optimizer = SGD(model.parameters(), config.lr, config.momentum, config.weight_decay,
                    config.nesterov)
    steps_per_epoch = math.ceil(len(train_labels) / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, config.epochs * steps_per_epoch,
                             steps_per_epoch, round(config.warmup_epochs * steps_per_epoch))

    history, start_epoch, train_seconds = [], 0, 0.0
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    if resume and os.path.exists(checkpoint_path):
        arrays, meta = load_checkpoint(checkpoint_path)
        _check_same_model(meta, config, checkpoint_path)
        model.load_state_dict(split_prefix(arrays, "model"))
        optimizer.load_state_dict(split_prefix(arrays, "optimizer"))
        history, start_epoch, train_seconds = meta["history"], meta["epoch"], meta["train_seconds"]

    deadline = None if time_limit_minutes is None else time.time() + 60 * time_limit_minutes
    stopped_by = None
    for epoch in range(start_epoch, config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        model.train()
        seen, correct, loss_sum, epoch_start = 0, 0, 0.0, time.perf_counter()
        order = data.batches(len(train_labels), config.batch_size, rng)
        bar = tqdm(order, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for step_in_epoch, index in enumerate(bar):
            step = epoch * steps_per_epoch + step_in_epoch
            images = train_images[index]
            if config.augment:
                images = data.random_crop_flip(images, rng)
            logits = model(Tensor(data.normalize(images, mean, std)))
            loss = cross_entropy(logits, train_labels[index], config.label_smoothing)
            if not np.isfinite(loss.item()):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {step} (epoch {epoch + 1}); lower --lr. "
                    f"The last good checkpoint (end of epoch {epoch}) is kept: "
                    f"{'resume with --resume' if epoch else 'no epoch had finished'}")
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
            if deadline is not None and time.time() > deadline:
                stopped_by = "time limit"
                break
        bar.close()
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        test_loss, test_acc = evaluate(model, test_images, test_labels, mean, std)
        row = dict(epoch=epoch + 1, lr=optimizer.lr, train_loss=loss_sum / seen,
                   train_acc=correct / seen, test_loss=test_loss, test_acc=test_acc,
                   epoch_seconds=epoch_seconds, images=seen,
                   images_per_second=seen / epoch_seconds,
                   partial=stopped_by is not None)
        history.append(row)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
                       f"acc {row['train_acc']:.4f} | test loss {test_loss:.4f} acc "
                       f"{test_acc:.4f} | {row['images_per_second']:.0f} img/s")
        _write_metrics(out_dir, history)
        if stopped_by is None:
            meta = dict(config=dataclasses.asdict(config), epoch=epoch + 1, history=history,
                        train_seconds=train_seconds)
            arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
            arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
            save_checkpoint(checkpoint_path, arrays, meta)
        if test_acc >= max(r["test_acc"] for r in history):
            save_checkpoint(os.path.join(out_dir, BEST),
                            {f"model/{k}": v for k, v in model.state_dict().items()},
                            dict(config=dataclasses.asdict(config), epoch=epoch + 1,
                                 test_acc=test_acc))
        if stopped_by is not None:
            break

    summary = _summary(config, model, history, train_seconds, stopped_by,
                       len(train_labels), len(test_labels))
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _prepare_run_folder(config: TrainConfig, out_dir: str, resume: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, CONFIG)
    if os.path.exists(os.path.join(out_dir, CHECKPOINT)) and not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it, "
                              f"or choose another --out")
    if resume and os.path.exists(config_path):
        with open(config_path) as f:
            stored = json.load(f)
        differences = [f"{k}: {stored.get(k)!r} -> {v!r}"
                       for k, v in dataclasses.asdict(config).items() if stored.get(k) != v]
        if differences:
            raise ValueError(f"--resume needs the same settings as the run in {out_dir}; "
                             f"these differ: {'; '.join(differences)}")
    with open(config_path, "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)


def _check_same_model(meta: dict, config: TrainConfig, path: str) -> None:
    stored = meta.get("config", {})
    if stored.get("model") != config.model or stored.get("model_options") != config.model_options:
        raise ValueError(f"checkpoint {path} is of model {stored.get('model')} "
                         f"{stored.get('model_options')}, not {config.model} {config.model_options}")


def _write_metrics(out_dir: str, history: list[dict]) -> None:
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(history, f, indent=2)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _summary(config, model, history, train_seconds, stopped_by, train_size, test_size) -> dict:
    rows = summarize(model)
    images_trained = sum(r["images"] for r in history)
    last = history[-1] if history else {}
    return dict(
        model=config.model, model_options=config.model_options, dataset=config.dataset,
        parameters=model.num_parameters(), macs=int(sum(r.macs for r in rows)),
        epochs_completed=sum(not r["partial"] for r in history), epochs_planned=config.epochs,
        stopped_by=stopped_by, train_images=train_size, test_images=test_size,
        best_test_acc=max((r["test_acc"] for r in history), default=None),
        last_test_acc=last.get("test_acc"), last_train_acc=last.get("train_acc"),
        train_test_gap=(last["train_acc"] - last["test_acc"]) if history else None,
        train_seconds=train_seconds,
        images_per_second=images_trained / train_seconds if train_seconds else None,
        config=dataclasses.asdict(config))


def evaluate_checkpoint(path: str, data_dir: str = "data", download: bool = True,
                        verify_md5: bool = True) -> dict:
    """Test loss and accuracy of a checkpoint (checkpoint.npz or best.npz of a run)."""
    arrays, meta = load_checkpoint(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no training configuration: not a minissc run checkpoint")
    config = TrainConfig(**meta["config"])
    cifar, _, (test_images, test_labels) = load_split(config, data_dir, download, verify_md5)
    model = build_model(config, len(cifar.classes))
    model.load_state_dict(split_prefix(arrays, "model"))
    mean, std = data.NORMALIZATION[config.dataset]
    loss, accuracy = evaluate(model, test_images, test_labels, mean, std)
    return dict(checkpoint=path, model=config.model, epoch=meta.get("epoch"), test_loss=loss,
                test_acc=accuracy, test_images=len(test_labels))
