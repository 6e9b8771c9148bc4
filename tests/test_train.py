"""Training end to end on a tiny synthetic data set: it learns, it resumes exactly, and the
command works (its bad-input table is in test_reliability.py)."""
import json
import math
import os
import signal

import numpy as np
import pytest
from synthetic import assert_same_run, write_synthetic_cifar10

from minissc import cli, data
from minissc.checkpoint import load_checkpoint
from minissc.optim import SGD, CosineSchedule, OneCycleSchedule, StepSchedule, make_schedule
from minissc import train as train_module
from minissc.train import TrainConfig, TrainingDiverged, TrainingInterrupted, train
from minissc.nn import Parameter


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_cifar10(str(tmp_path_factory.mktemp("cifar")))


def quick_config(**overrides):
    settings = dict(model="sscresnet20", model_options={"r": 4}, epochs=2, batch_size=25,
                    lr=0.05, schedule="cosine", seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def small_config(**overrides):
    """quick_config on 100 images: 4 steps an epoch, for the tests of stops and resumes."""
    return quick_config(**{"subset": 100, **overrides})


def test_two_epochs_learn_and_write_the_run_folder(data_dir, tmp_path):
    out = str(tmp_path / "run")
    summary = train(quick_config(), out, data_dir, progress=False, download=False)
    assert summary["epochs_completed"] == 2
    assert summary["last_test_acc"] > 0.5, summary  # chance is 0.1
    assert summary["parameters"] > 0 and summary["macs"] > 0
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.npz", "best.npz",
                 "summary.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.csv")) as f:
        assert len(f.read().strip().splitlines()) == 3
    arrays, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["epoch"] == 2 and any(k.startswith("optimizer/") for k in arrays)


def test_interrupted_run_resumes_to_the_same_numbers(data_dir, tmp_path, monkeypatch):
    reference = train(small_config(), str(tmp_path / "a"), data_dir, progress=False,
                      download=False)
    calls = {"n": 0}
    real_batches = data.batches

    def interrupt_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        for step, index in enumerate(real_batches(*args, **kwargs)):
            if calls["n"] == 2 and step == 2:
                raise KeyboardInterrupt
            yield index

    monkeypatch.setattr(data, "batches", interrupt_in_epoch_two)
    out = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(small_config(), out, data_dir, progress=False, download=False)
    monkeypatch.setattr(data, "batches", real_batches)
    resumed = train(small_config(), out, data_dir, resume=True, progress=False, download=False)
    assert_same_run(out, str(tmp_path / "a"))
    assert resumed["last_test_acc"] == reference["last_test_acc"]


def test_existing_run_is_not_overwritten_and_resume_must_match(data_dir, tmp_path):
    out = str(tmp_path / "run")
    train(small_config(epochs=1), out, data_dir, progress=False, download=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(epochs=1), out, data_dir, progress=False, download=False)
    with pytest.raises(ValueError, match="seed: 3 -> 4"):
        train(small_config(epochs=1, seed=4), out, data_dir, resume=True, progress=False,
              download=False)


def test_time_limit_stops_early_with_a_partial_epoch(data_dir, tmp_path):
    summary = train(small_config(epochs=50), str(tmp_path / "run"), data_dir,
                    time_limit_minutes=1e-4, progress=False, download=False)
    assert summary["stopped_by"] == "time limit" and summary["epochs_completed"] == 0
    assert summary["best_test_acc"] is None  # best.npz holds complete epochs only
    assert not os.path.exists(tmp_path / "run" / "best.npz")


def test_a_run_stopped_by_the_time_limit_resumes_to_the_same_numbers(data_dir, tmp_path):
    """The time limit saves the partial epoch as Ctrl-C does: --resume continues from the
    next step, not from the start of the epoch, and ends where an uninterrupted run ends."""
    train(small_config(), str(tmp_path / "a"), data_dir, progress=False, download=False)
    out = str(tmp_path / "b")
    stopped = train(small_config(), out, data_dir, time_limit_minutes=1e-4, progress=False,
                    download=False)  # the limit passes at the first step
    assert stopped["stopped_by"] == "time limit"
    _, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["epoch"] == 0 and meta["in_epoch"]["step"] == 1 and meta["history"] == []
    train(small_config(), out, data_dir, resume=True, progress=False, download=False)
    assert_same_run(out, str(tmp_path / "a"))


def test_a_resumed_partial_epoch_stopped_again_by_the_limit_still_ends_the_same(data_dir,
                                                                              tmp_path):
    """The resumed run counts the partial epoch's time, so the same limit stops it again
    after one step; that second partial save must continue as exactly as the first."""
    train(small_config(), str(tmp_path / "a"), data_dir, progress=False, download=False)
    out = str(tmp_path / "b")
    for steps_done in (1, 2):
        stopped = train(small_config(), out, data_dir, resume=True, time_limit_minutes=1e-4,
                        progress=False, download=False)
        assert stopped["stopped_by"] == "time limit" and stopped["epochs_completed"] == 0
        _, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
        assert meta["epoch"] == 0 and meta["in_epoch"]["step"] == steps_done
        with open(os.path.join(out, "metrics.json")) as f:
            rows = json.load(f)
        assert len(rows) == 1 and rows[0]["partial"]  # this stop's row only
        assert rows[0]["images"] == steps_done * small_config().batch_size
    train(small_config(), out, data_dir, resume=True, progress=False, download=False)
    assert_same_run(out, str(tmp_path / "a"))


class _ClockOfOneSecondACall:
    """A stand-in for the `time` module whose perf_counter advances 1 s at every call: the
    training loop reads it once per step, so its time limit passes at a chosen step."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_a_limit_that_passes_at_an_epochs_last_step_saves_a_complete_epoch(
        data_dir, tmp_path, monkeypatch):
    """Epoch 1 has 4 steps; at its last step the clock reads 4 s since the epoch began,
    past a 3.5 s limit. The epoch is complete: saved as one (best.npz too), its row not
    partial, and --resume starts epoch 2 and ends as an uninterrupted run."""
    train(small_config(), str(tmp_path / "a"), data_dir, progress=False, download=False)
    out = str(tmp_path / "b")
    monkeypatch.setattr(train_module, "time", _ClockOfOneSecondACall())
    stopped = train(small_config(), out, data_dir, time_limit_minutes=3.5 / 60,
                    progress=False, download=False)
    assert stopped["stopped_by"] == "time limit" and stopped["epochs_completed"] == 1
    _, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["epoch"] == 1 and "in_epoch" not in meta
    assert load_checkpoint(os.path.join(out, "best.npz"))[1]["epoch"] == 1
    with open(os.path.join(out, "metrics.json")) as f:
        assert [row["partial"] for row in json.load(f)] == [False]
    monkeypatch.undo()
    train(small_config(), out, data_dir, resume=True, progress=False, download=False)
    assert_same_run(out, str(tmp_path / "a"))


def test_a_kill_right_after_an_epochs_checkpoint_leaves_best_npz_up_to_date(
        data_dir, tmp_path, monkeypatch):
    """best.npz and the metrics are written before the epoch's checkpoint, so a kill right
    after the checkpoint finds them up to date (written after, they stayed an epoch behind
    for good, since the resumed run does not redo that epoch). Every epoch ties for the best
    here, so each one rewrites best.npz."""
    real_evaluate, real_save = train_module.evaluate, train_module.save_checkpoint
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *args, **kwargs: (real_evaluate(*args, **kwargs)[0], 0.5))
    train(small_config(), str(tmp_path / "a"), data_dir, progress=False, download=False)
    out = str(tmp_path / "b")

    def killed_after_the_checkpoint_of_epoch_two(path, arrays, meta):
        real_save(path, arrays, meta)
        if path.endswith("checkpoint.npz") and meta["epoch"] == 2:
            raise KeyboardInterrupt  # as a kill would stop the run there
    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_the_checkpoint_of_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(), out, data_dir, progress=False, download=False)
    assert load_checkpoint(os.path.join(out, "best.npz"))[1]["epoch"] == 2
    assert_same_run(out, str(tmp_path / "a"))


@pytest.mark.parametrize("time_limit, when", [(None, "after epoch 1"),
                                              (1e-4, "after epoch 1, step 1 of 4")])
def test_a_nan_test_loss_stops_the_run_before_it_is_saved(data_dir, tmp_path, monkeypatch,
                                                          time_limit, when):
    """Also when the time limit stops a partial epoch, which is saved after its evaluation."""
    monkeypatch.setattr(train_module, "evaluate", lambda *args, **kwargs: (float("nan"), 0.1))
    out = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=f"the test loss is nan {when}. "
                                               "No checkpoint had been saved"):
        train(small_config(), out, data_dir, progress=False, download=False,
              time_limit_minutes=time_limit)
    assert not os.path.exists(os.path.join(out, "checkpoint.npz"))


def test_ctrl_c_during_an_evaluation_stops_after_it_with_the_epoch_saved(data_dir, tmp_path,
                                                                       monkeypatch):
    real_evaluate = train_module.evaluate

    def evaluate_then_ctrl_c(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the run's handler only notes it
        return result
    monkeypatch.setattr(train_module, "evaluate", evaluate_then_ctrl_c)
    out = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="saved the run after epoch 1"):  # the last
        train(small_config(epochs=1), out, data_dir, progress=False, download=False)
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["epoch"] == 1
    assert not os.path.exists(os.path.join(out, "summary.json"))  # --resume writes it
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    summary = train(small_config(epochs=1), out, data_dir, resume=True, progress=False,
                    download=False)
    assert summary["epochs_completed"] == 1


def test_epoch_lines_are_printed_without_the_progress_bar(data_dir, tmp_path, capsys):
    train(small_config(epochs=1), str(tmp_path / "run"), data_dir, progress=False,
          download=False)
    assert capsys.readouterr().out.startswith("epoch 1/1: train loss ")


def test_time_limit_counts_the_training_time_before_a_resume(data_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    real_batches = data.batches

    def interrupt_epoch_two(*args, **kwargs):
        if interrupt_epoch_two.epochs_started == 1:
            raise KeyboardInterrupt
        interrupt_epoch_two.epochs_started += 1
        yield from real_batches(*args, **kwargs)
    interrupt_epoch_two.epochs_started = 0

    monkeypatch.setattr(data, "batches", interrupt_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(), out, data_dir, progress=False, download=False)
    monkeypatch.setattr(data, "batches", real_batches)
    _, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["epoch"] == 1
    # The limit is the time epoch 1 took: the resumed run has used it up after one step.
    resumed = train(small_config(), out, data_dir, resume=True, progress=False, download=False,
                    time_limit_minutes=meta["train_seconds"] / 60)
    assert resumed["stopped_by"] == "time limit" and resumed["epochs_completed"] == 1
    with open(os.path.join(out, "metrics.json")) as f:
        last_row = json.load(f)[-1]
    assert last_row["partial"] and last_row["images"] == small_config().batch_size


# -- optimiser and schedules ---------------------------------------------------------------------

def test_sgd_matches_the_pytorch_update_rule():
    p = Parameter(np.array([1.0, -2.0]))
    optimizer = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    velocity, value = np.zeros(2), p.data.copy()
    for grad in ([0.5, 0.5], [-1.0, 2.0]):
        p.grad = np.array(grad)
        optimizer.step()
        g = np.array(grad) + 0.01 * value
        velocity = 0.9 * velocity + g
        value = value - 0.1 * (g + 0.9 * velocity)
        np.testing.assert_allclose(p.data, value)


def test_schedule_values_at_known_steps():
    step = StepSchedule(0.1, total_steps=164 * 391, steps_per_epoch=391)
    assert step(0) == 0.1 and step(81 * 391 - 1) == 0.1
    assert math.isclose(step(81 * 391), 0.01) and math.isclose(step(122 * 391), 0.001)
    cosine = CosineSchedule(0.1, total_steps=100, warmup_steps=10)
    assert math.isclose(cosine(0), 0.01) and math.isclose(cosine(9), 0.1)
    assert math.isclose(cosine(55), 0.05) and math.isclose(cosine(100), 0.0, abs_tol=1e-12)
    cycle = OneCycleSchedule(0.1, total_steps=100)
    assert math.isclose(cycle(0), 0.004) and math.isclose(cycle(29), 0.1)
    assert math.isclose(cycle(99), 0.004 / 1e4) and cycle(50) < 0.1
    assert make_schedule("constant", 0.3, 10, 5)(7) == 0.3
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", 0.1, 10, 5)


def test_a_partial_epoch_is_drawn_hollow():
    from minissc.plots import curves_figure
    row = dict(train_loss=1.0, test_loss=1.1, train_acc=0.5, test_acc=0.4)
    history = [dict(row, epoch=1, partial=False), dict(row, epoch=2, partial=True)]
    figure = curves_figure([("run", history)])
    for ax in figure.axes:
        hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
        assert hollow and all(list(line.get_xdata()) == [2] for line in hollow)
    assert "hollow: partial epoch" in figure.axes[2].get_title()
    complete = curves_figure([("run", history[:1])])
    assert "hollow" not in complete.axes[2].get_title()
    assert all(len(line.get_xdata()) == 0 for ax in complete.axes for line in ax.get_lines()
               if line.get_markerfacecolor() == "white")


@pytest.mark.parametrize("epochs", [1, 2, 7])
def test_the_epoch_axis_has_whole_epochs_only(epochs):
    from minissc.plots import curves_figure
    row = dict(train_loss=1.0, test_loss=1.1, train_acc=0.5, test_acc=0.4, partial=False)
    figure = curves_figure([("run", [dict(row, epoch=e) for e in range(1, epochs + 1)])])
    for ax in figure.axes:
        low, high = ax.get_xlim()
        shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert shown and all(tick == int(tick) for tick in shown), shown


# -- the command line ---------------------------------------------------------------------------

def test_cli_says_how_to_continue_a_run_the_time_limit_stopped(data_dir, tmp_path, capsys):
    argv = ["train", "--r", "4", "--epochs", "2", "--subset", "100", "--batch-size", "25",
            "--data-dir", data_dir, "--out", str(tmp_path / "run"), "--no-download",
            "--no-progress"]
    assert cli.main(argv + ["--time-limit", "1e-4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "stopped by --time-limit 0.0001 with 0 of 2 epochs complete: continue with the same "
        "command, --resume and a longer --time-limit (it counts the training time before a "
        "resume too) or none")
    assert cli.main(argv + ["--resume"]) == 0
    assert "stopped by" not in capsys.readouterr().out


def test_cli_train_plot_eval_and_summary(data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--model", "sscresnet20", "--r", "4", "--epochs", "1",
                     "--batch-size", "50", "--data-dir", data_dir, "--out", out,
                     "--no-download", "--no-progress"]) == 0
    assert "best test accuracy" in capsys.readouterr().out
    assert cli.main(["plot", out]) == 0
    assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000
    capsys.readouterr()
    assert cli.main(["plot", out, "--out", os.path.join(out, "named")]) == 0  # .png added
    assert capsys.readouterr().out.strip() == os.path.join(out, "named.png")
    assert os.path.getsize(os.path.join(out, "named.png")) > 10_000
    assert cli.main(["eval", os.path.join(out, "best.npz"), "--data-dir", data_dir,
                     "--no-download"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert cli.main(["summary", "resnet20"]) == 0
    assert "272,474" in capsys.readouterr().out
