"""Reliability: bad input gets one clear line and damages nothing; runs killed, interrupted or
diverged resume to the same bits as an uninterrupted run; numerical edges are defined.

The interruption tests run the real command in subprocesses, through tests/fault_driver.py
where a fault must strike at a known step. Untrusted files (a malicious pickle, a checkpoint
holding a pickled object) are rows of the bad-input table; test_data.py has the archive ones.
"""
import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import RunsCommand, assert_same_run, write_synthetic_cifar10

from minissc import cli, data, models, nn
from minissc.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minissc.functional import cross_entropy
from minissc.optim import SGD
from minissc.tensor import Tensor
from minissc.train import TrainConfig, TrainingDiverged, train

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
SSC_R4 = ("--model", "sscresnet20", "--r", "4")
# 100 training images in batches of 20: 5 steps per epoch, 3 epochs, a few seconds a run.
RUN_SETTINGS = ("--epochs", "3", "--batch-size", "20", "--subset", "100", "--test-subset", "50",
                "--lr", "0.05", "--schedule", "cosine", "--seed", "3", "--no-download",
                "--no-progress")


def train_argv(data_dir, out, *extra, model=SSC_R4):
    """The reference run's command line; options in `extra` override its settings."""
    return ["train", *model, *RUN_SETTINGS, "--data-dir", str(data_dir), "--out", str(out),
            *extra]


def command_environment(**extra):
    """One thread for every pool, so that all the runs compared bit for bit compute alike."""
    environment = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
                       OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    environment.pop("MINISSC_DEBUG", None)
    return environment


def minissc_command(argv, fault=None):
    """Run ``python -m minissc`` (or the fault driver) in a subprocess."""
    prefix = [sys.executable, str(DRIVER), fault] if fault else [sys.executable, "-m", "minissc"]
    return subprocess.run(prefix + [str(arg) for arg in argv], env=command_environment(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A synthetic data folder and a complete, uninterrupted run of the reference command."""
    root = tmp_path_factory.mktemp("reliability")
    write_synthetic_cifar10(str(root / "data"))
    finished = minissc_command(train_argv(root / "data", root / "run"))
    assert finished.returncode == 0, finished.stderr
    return root


@pytest.fixture
def workspace(template, tmp_path):
    """A private copy of the template, for a test to break things in."""
    return Path(shutil.copytree(template, tmp_path / "ws"))


# ------------------------------------------------------------------------------------------
# 1. Bad input: one line, a non-zero status, nothing written
# ------------------------------------------------------------------------------------------


def reference_config(ws):
    return json.loads((ws / "run" / "config.json").read_text())


def write_binary_archive(ws):
    """The synthetic data as cifar-10-binary.tar.gz in ws/archive (not the official md5)."""
    archive = ws / "archive" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ws / "data" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return archive


def truncated_archive(ws):
    archive = write_binary_archive(ws)
    archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    return (train_argv(archive.parent, ws / "new", "--no-verify"),
            [str(archive), "not a readable .tar.gz archive (truncated or corrupt"])


def archive_with_wrong_md5(ws):
    archive = write_binary_archive(ws)
    return (train_argv(archive.parent, ws / "new"),
            [str(archive), "but the official cifar-10-binary.tar.gz has md5", "--no-verify"])


def incomplete_data_folder(ws):
    shutil.copytree(ws / "data", ws / "incomplete")
    (ws / "incomplete" / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    return (train_argv(ws / "incomplete", ws / "new"),
            [str(ws / "incomplete" / "cifar-10-batches-bin"), "lacks data_batch_3.bin"])


def malicious_data_pickle(ws):
    """A python-layout folder whose first batch runs a command when unpickled naively; if it
    ran, the marker file would appear in the workspace and the snapshot would differ."""
    folder = ws / "hostile" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"")
    payload = {"data": RunsCommand(f"touch {ws / 'payload-ran'}"), "labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload))
    return (train_argv(ws / "hostile", ws / "new"),
            [str(folder / "data_batch_1"), f"refused global {os.system.__module__}.system"])


def eval_argv(ws, checkpoint):
    return ["eval", str(checkpoint), "--data-dir", str(ws / "data"), "--no-download"]


def truncated_checkpoint(ws):
    path = ws / "truncated.npz"
    path.write_bytes((ws / "run" / "checkpoint.npz").read_bytes()[:50_000])
    return eval_argv(ws, path), [str(path), "is truncated, corrupt or not a minissc checkpoint"]


def corrupted_checkpoint(ws):
    raw = bytearray((ws / "run" / "checkpoint.npz").read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    path = ws / "corrupted.npz"
    path.write_bytes(bytes(raw))
    return eval_argv(ws, path), [str(path), "Bad CRC-32"]


def npy_file(ws):
    np.save(ws / "weights.npy", np.zeros(3, np.float32))
    return eval_argv(ws, ws / "weights.npy"), [str(ws / "weights.npy"), "is not an .npz archive"]


def npz_without_metadata(ws):
    np.savez(ws / "plain.npz", weight=np.zeros(3, np.float32))
    return eval_argv(ws, ws / "plain.npz"), [str(ws / "plain.npz"), "has no metadata"]


def npz_with_a_pickled_object(ws):
    """np.savez pickles object arrays; loading this with pickles allowed would run a command."""
    payload = np.array([RunsCommand(f"touch {ws / 'payload-ran'}")], dtype=object)
    np.savez(ws / "evil.npz", payload=payload)
    return (eval_argv(ws, ws / "evil.npz"),
            [str(ws / "evil.npz"), "Object arrays cannot be loaded when allow_pickle=False"])


def checkpoint_that_does_not_fit(ws):
    path = str(ws / "misfit.npz")
    save_checkpoint(path, {"model/conv1.weight": np.zeros((16, 3, 3, 3), np.float32)},
                    dict(config=reference_config(ws), epoch=1))
    return eval_argv(ws, path), [path, "does not fit sscresnet20 {'r': 4}", "missing"]


def checkpoint_of_a_future_version(ws):
    path = str(ws / "future.npz")
    save_checkpoint(path, {}, dict(config=dict(reference_config(ws), new_setting=1), epoch=1))
    return eval_argv(ws, path), [path, "has no valid training configuration", "new_setting"]


def resume_from(ws, replace_checkpoint):
    """--resume the reference run after `replace_checkpoint(path)` changed its checkpoint."""
    replace_checkpoint(ws / "run" / "checkpoint.npz")
    return train_argv(ws / "data", ws / "run", "--resume")


def checkpoint_of_another_model(ws):
    model = models.create("shiftresnet20", e=1)
    config = dict(reference_config(ws), model="shiftresnet20", model_options={"e": 1})
    argv = resume_from(ws, lambda path: save_checkpoint(
        str(path), {f"model/{k}": v for k, v in model.state_dict().items()},
        dict(config=config, epoch=1, history=[], train_seconds=0.0)))
    return argv, [str(ws / "run" / "checkpoint.npz"),
                  "is of model shiftresnet20 {'e': 1}, not sscresnet20 {'r': 4}"]


def truncated_checkpoint_to_resume(ws):
    argv = resume_from(ws, lambda path: path.write_bytes(path.read_bytes()[:1000]))
    return argv, [str(ws / "run" / "checkpoint.npz"), "is truncated, corrupt"]


def weights_only_checkpoint_to_resume(ws):
    argv = resume_from(ws, lambda path: shutil.copy(ws / "run" / "best.npz", path))
    return argv, [str(ws / "run" / "checkpoint.npz"), "holds no training progress"]


def corrupt_run_config(ws):
    (ws / "run" / "config.json").write_text('{"model": ')
    return (train_argv(ws / "data", ws / "run", "--resume"),
            [str(ws / "run" / "config.json"), "is corrupt"])


def corrupt_metrics(ws):
    (ws / "run" / "metrics.json").write_text("[{")
    return ["plot", str(ws / "run")], [str(ws / "run" / "metrics.json"), "is corrupt"]


def new_run(ws, *extra, model=SSC_R4):
    return train_argv(ws / "data", ws / "new", *extra, model=model)


def unwritable_out(ws):
    (ws / "locked").mkdir(mode=0o500)
    return new_run(ws) + ["--out", str(ws / "locked" / "run")], [str(ws / "locked"),
                                                                 "cannot write into"]


def run_without_checkpoint(ws):
    """A folder with the config and metrics of a run but no checkpoint.npz (killed before its
    first one, or written by hand): another run must not overwrite it silently."""
    (ws / "killed").mkdir()
    for name in ("config.json", "metrics.json"):
        (ws / "killed" / name).write_bytes((ws / "run" / name).read_bytes())
    return train_argv(ws / "data", ws / "killed"), [f"{ws / 'killed'} already holds a run"]


def case(name, build, status=1):
    marks = ()
    if build is unwritable_out:  # root writes through any permission bits
        marks = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
    return pytest.param(build, status, id=name, marks=marks)


# Each build(ws) prepares the workspace and returns (argv, fragments the one line must hold).
BAD_INPUT = [
    # settings
    case("unknown model", lambda ws: (
        new_run(ws, "--model", "sscresnt20"),
        ["unknown model 'sscresnt20'", "Did you mean 'sscresnet20'"])),
    case("option the model lacks", lambda ws: (new_run(ws, "--model", "resnet20"),
                                               ["resnet20 does not take 'r'"])),
    case("impossible r", lambda ws: (new_run(ws, "--r", "3"),
                                     ["r must be one of (1, 2, 4), got 3"])),
    case("impossible e", lambda ws: (new_run(ws, model=("--model", "shiftresnet20", "--e", "2")),
                                     ["e must be one of (1, 3, 6, 9), got 2"])),
    case("zero epochs", lambda ws: (new_run(ws, "--epochs", "0"),
                                    ["--epochs must be a positive integer, got 0"])),
    case("negative epochs", lambda ws: (new_run(ws, "--epochs", "-2"),
                                        ["--epochs must be a positive integer, got -2"])),
    case("fractional epochs", lambda ws: (new_run(ws, "--epochs", "2.5"),
                                          ["argument --epochs: invalid int value: '2.5'"]), 2),
    case("zero batch size", lambda ws: (new_run(ws, "--batch-size", "0"),
                                        ["--batch-size must be a positive integer, got 0"])),
    case("negative batch size", lambda ws: (new_run(ws, "--batch-size", "-5"),
                                            ["--batch-size must be a positive integer, got -5"])),
    case("zero lr", lambda ws: (new_run(ws, "--lr", "0"), ["--lr must be > 0, got 0"])),
    case("negative lr", lambda ws: (new_run(ws, "--lr", "-0.1"),
                                    ["--lr must be a finite number >= 0, got -0.1"])),
    case("nan lr", lambda ws: (new_run(ws, "--lr", "nan"), ["--lr must be a finite number >= 0"])),
    case("infinite lr", lambda ws: (new_run(ws, "--lr", "inf"), ["--lr must be a finite number"])),
    case("negative momentum", lambda ws: (new_run(ws, "--momentum", "-0.9"),
                                          ["--momentum must be a finite number >= 0, got -0.9"])),
    case("nesterov without momentum", lambda ws: (new_run(ws, "--nesterov", "--momentum", "0"),
                                                  ["nesterov=True needs momentum > 0"])),
    case("label smoothing 1", lambda ws: (new_run(ws, "--label-smoothing", "1"),
                                          ["--label-smoothing must be in [0, 1), got 1.0"])),
    case("negative seed", lambda ws: (new_run(ws, "--seed", "-1"),
                                      ["--seed must be an integer >= 0, got -1"])),
    case("subset not a multiple of the classes", lambda ws: (
        new_run(ws, "--subset", "15"), ["--subset must be a multiple of the 10 classes", "got 15"])),
    case("subset larger than the data", lambda ws: (new_run(ws, "--subset", "1000"),
                                                    ["at most 500, got 1000"])),
    case("zero test subset", lambda ws: (new_run(ws, "--test-subset", "0"),
                                         ["--test-subset must be a positive integer, got 0"])),
    case("test subset larger than the test set", lambda ws: (
        new_run(ws, "--test-subset", "101"),
        ["--test-subset must be at most the 100 test images, got 101"])),
    case("warm-up for a schedule without one", lambda ws: (
        new_run(ws, "--schedule", "step", "--warmup-epochs", "1"),
        ["--warmup-epochs (1.0) applies to the cosine schedule only, not to 'step'"])),
    case("warm-up as long as the run", lambda ws: (
        new_run(ws, "--warmup-epochs", "3"),
        ["--warmup-epochs (3.0) must be shorter than the run's 3 epochs"])),
    case("zero time limit", lambda ws: (new_run(ws, "--time-limit", "0"),
                                        ["--time-limit must be > 0, got 0.0"])),
    case("negative train-eval count", lambda ws: (new_run(ws, "--train-eval", "-5"),
                                                  ["--train-eval must be an integer >= 0, got -5"])),
    case("unknown schedule", lambda ws: (new_run(ws, "--schedule", "linear"),
                                         ["argument --schedule: invalid choice: 'linear'"]), 2),
    case("unknown dataset", lambda ws: (new_run(ws, "--dataset", "cifar1000"),
                                        ["argument --dataset: invalid choice: 'cifar1000'"]), 2),
    case("unknown option", lambda ws: (new_run(ws, "--learning-rate", "0.1"),
                                       ["unrecognized arguments: --learning-rate 0.1"]), 2),
    case("no run folder", lambda ws: (["train"], ["the following arguments are required: --out"]),
         2),
    # data
    case("data folder without the files", lambda ws: (
        train_argv(ws / "run", ws / "new"),
        [f"CIFAR-10 not found in {ws / 'run'}", "cifar-10-python.tar.gz (md5"])),
    case("data folder that is a file", lambda ws: (
        train_argv(ws / "run" / "metrics.csv", ws / "new"),
        [str(ws / "run" / "metrics.csv"), "is a file, not a folder"])),
    case("data folder missing a batch", incomplete_data_folder),
    case("truncated archive", truncated_archive),
    case("archive with a wrong md5", archive_with_wrong_md5),
    case("malicious pickle in the data", malicious_data_pickle),
    # checkpoints
    case("missing checkpoint", lambda ws: (eval_argv(ws, ws / "run" / "nope.npz"),
                                           [str(ws / "run" / "nope.npz"), "does not exist"])),
    case("checkpoint that is a folder", lambda ws: (eval_argv(ws, ws / "run"),
                                                    [str(ws / "run"), "is a folder"])),
    case("truncated checkpoint", truncated_checkpoint),
    case("corrupted checkpoint", corrupted_checkpoint),
    case("text file as checkpoint", lambda ws: (
        eval_argv(ws, ws / "run" / "metrics.json"),
        [str(ws / "run" / "metrics.json"), "is not an .npz archive"])),
    case("npy file as checkpoint", npy_file),
    case("npz without metadata", npz_without_metadata),
    case("checkpoint with a pickled object", npz_with_a_pickled_object),
    case("checkpoint whose arrays do not fit", checkpoint_that_does_not_fit),
    case("checkpoint with unknown settings", checkpoint_of_a_future_version),
    # resuming and the run folder
    case("resume from another model's checkpoint", checkpoint_of_another_model),
    case("resume from a truncated checkpoint", truncated_checkpoint_to_resume),
    case("resume from weights only", weights_only_checkpoint_to_resume),
    case("resume with other settings", lambda ws: (
        train_argv(ws / "data", ws / "run", "--resume", "--seed", "4"),
        ["--resume needs the same settings", "seed: 3 -> 4"])),
    case("resume with a corrupt config.json", corrupt_run_config),
    case("existing run without --resume", lambda ws: (
        train_argv(ws / "data", ws / "run"),
        [f"{ws / 'run'} already holds a run; pass --resume"])),
    case("run folder of a run killed before its first checkpoint", run_without_checkpoint),
    case("empty run folder name", lambda ws: (new_run(ws)[:-1] + [""],
                                              ["--out must name a folder, got an empty string"])),
    case("run folder under a file", lambda ws: (
        train_argv(ws / "data", ws / "run" / "metrics.csv" / "new"),
        [str(ws / "run" / "metrics.csv"), "is a file, not a folder", "choose another --out"])),
    case("run folder that is a file", lambda ws: (
        train_argv(ws / "data", ws / "run" / "summary.json"),
        [str(ws / "run" / "summary.json"), "is a file, not a folder"])),
    case("unwritable run folder", unwritable_out),
    # plot and summary
    case("plot a missing run", lambda ws: (["plot", str(ws / "nothing")],
                                           [str(ws / "nothing"), "is not a run folder"])),
    case("plot a corrupt metrics.json", corrupt_metrics),
    case("plot into a folder", lambda ws: (["plot", str(ws / "run"), "--out", str(ws / "run")],
                                           [f"--out {ws / 'run'} is a folder"])),
    case("plot into a path under a file", lambda ws: (
        ["plot", str(ws / "run"), "--out", str(ws / "run" / "metrics.csv" / "curves.png")],
        [str(ws / "run" / "metrics.csv"), "is a file, not a folder"])),
    case("summary of an unknown model", lambda ws: (["summary", "sscresnet21"],
                                                    ["unknown model 'sscresnet21'"])),
    case("summary with an impossible r", lambda ws: (["summary", "sscresnet20", "--r", "3"],
                                                     ["r must be one of (1, 2, 4), got 3"])),
    case("summary with one class", lambda ws: (["summary", "resnet20", "--num-classes", "1"],
                                               ["num_classes must be >= 2, got 1"])),
]


def snapshot(root):
    """Every file under root with its bytes."""
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def run_cli(argv, capsys):
    """cli.main in this process: (exit status, stderr)."""
    try:
        status = cli.main([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse
        status = exit.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("build, status", BAD_INPUT)
def test_bad_input_gets_one_line_and_damages_nothing(build, status, workspace, capsys):
    argv, fragments = build(workspace)
    before = snapshot(workspace)
    actual_status, err = run_cli(argv, capsys)
    assert actual_status == status, err
    assert len(err.splitlines()) == 1 and err.startswith("minissc"), err
    assert "Traceback" not in err and "internal error" not in err
    for fragment in fragments:
        assert fragment in err
    assert snapshot(workspace) == before  # nothing changed, nothing new


def test_the_bad_input_table_is_large_enough():
    assert len(BAD_INPUT) >= 30


def test_a_real_process_prints_the_one_line_too(workspace):
    argv, fragments = truncated_checkpoint(workspace)
    result = minissc_command(argv)
    assert result.returncode == 1 and result.stderr.startswith("minissc: error: checkpoint ")
    assert len(result.stderr.splitlines()) == 1 and all(f in result.stderr for f in fragments)


# The library's API: errors that name the argument. (The ops' own table is in
# test_functional.py, the models' in test_models.py.)
IMAGES = np.zeros((2, 3, 8, 8), np.uint8)
API_BAD_CALLS = [
    ("SSC layer, channels not divisible by the group", lambda: nn.SSCConv2d(16, 18),
     ValueError, r"in_channels \(16\) must be divisible by group_size \(9\)"),
    ("SSC layer, outputs not divisible by the groups", lambda: nn.SSCConv2d(18, 3),
     ValueError, r"out_channels \(3\) must be divisible by the number of groups"),
    ("SSC layer, even kernel", lambda: nn.SSCConv2d(18, 18, kernel_size=2),
     ValueError, "kernel_size must be odd"),
    ("conv layer, zero stride", lambda: nn.Conv2d(3, 16, 3, stride=0),
     ValueError, "stride must be >= 1, got 0"),
    ("batch norm without features", lambda: nn.BatchNorm2d(0),
     ValueError, "num_features must be >= 1, got 0"),
    ("channels-last images into a model",
     lambda: models.resnet20()(np.zeros((2, 32, 32, 3), np.float32)),
     ValueError, r"C = 3 channels, got shape \(2, 32, 32, 3\)"),
    ("uint8 images into a model", lambda: models.resnet20()(np.zeros((2, 3, 32, 32), np.uint8)),
     TypeError, "x has dtype uint8"),
    ("weights of another model",
     lambda: models.resnet20().load_state_dict(models.sscresnet20(r=4).state_dict()),
     KeyError, "state_dict does not fit CifarResNet"),
    ("normalize, wrong channel count", lambda: data.normalize(np.zeros((2, 4, 8, 8), np.uint8)),
     ValueError, r"C = 3 channels .* got shape \(2, 4, 8, 8\)"),
    ("crop, one image without the batch axis",
     lambda: data.random_crop_flip(IMAGES[0], np.random.default_rng(0)),
     ValueError, r"\(N, C, H, W\), got shape \(3, 8, 8\)"),
    ("crop, negative padding",
     lambda: data.random_crop_flip(IMAGES, np.random.default_rng(0), padding=-1),
     ValueError, "padding must be an integer >= 0, got -1"),
    ("config, epochs True", lambda: TrainConfig(epochs=True).validate(),
     ValueError, "^epochs must be a positive integer, got True"),
    ("config, batch size 0", lambda: TrainConfig(batch_size=0).validate(),
     ValueError, "^batch_size must be a positive integer, got 0"),  # the CLI says --batch-size
    ("config, unknown dataset", lambda: TrainConfig(dataset="mnist").validate(),
     ValueError, "unknown dataset 'mnist'"),
    ("optimiser without parameters", lambda: SGD([]), ValueError, "empty parameter list"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in API_BAD_CALLS],
                         ids=[c[0] for c in API_BAD_CALLS])
def test_bad_api_call_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("arrays, meta, error, message", [
    ({"weights": np.array([object()])}, {}, TypeError, "'weights' holds Python objects"),
    ({"weights": np.zeros(2)}, {"mean": np.zeros(2)}, TypeError, "not JSON serializable"),
], ids=["object array", "meta not JSON"])
def test_a_refused_save_leaves_the_old_checkpoint(tmp_path, arrays, meta, error, message):
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, {"weights": np.ones(2)}, {"epoch": 1})
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message):
        save_checkpoint(path, arrays, meta)
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        save_checkpoint(str(tmp_path / "missing" / "checkpoint.npz"), {}, {})
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_saved_file_has_the_permissions_the_umask_gives(tmp_path, umask):
    """Written through a private temporary file, but readable as any file the user writes."""
    previous = os.umask(umask)
    try:
        save_checkpoint(str(tmp_path / "checkpoint.npz"), {"weights": np.ones(2)}, {})
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "checkpoint.npz").st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------
# 2. Killed and interrupted runs resume to the same bits
# ------------------------------------------------------------------------------------------


def temporaries(run):
    return glob.glob(str(run / ".tmp-*"))


def test_sigkill_at_any_point_then_resume_gives_the_same_bits(template, tmp_path):
    run = tmp_path / "run"
    argv = train_argv(template / "data", run)

    # Killed at step 3 of epoch 1: nothing to resume from yet.
    assert minissc_command(argv, "sigkill-at-update:3").returncode == -signal.SIGKILL
    assert not (run / "checkpoint.npz").exists()

    # Resumed (it starts afresh), then killed while writing the checkpoint of epoch 2:
    # the one of epoch 1 is intact, the half-written temporary file is left beside it.
    assert minissc_command(argv + ["--resume"], "sigkill-in-save:2").returncode == -signal.SIGKILL
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["epoch"] == 1
    [half_written] = temporaries(run)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(half_written)
    epoch_one = (run / "checkpoint.npz").read_bytes()

    # Resumed, then killed at step 3 of epoch 2: the leftover is gone, epoch 1 is still kept.
    assert minissc_command(argv + ["--resume"], "sigkill-at-update:3").returncode == -signal.SIGKILL
    assert temporaries(run) == []
    assert (run / "checkpoint.npz").read_bytes() == epoch_one

    finished = minissc_command(argv + ["--resume"])
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run, template / "run")


def test_ctrl_c_saves_the_step_and_resume_gives_the_same_bits(template, tmp_path):
    """SIGINT from outside at a known moment: the driver pauses inside step 3 of epoch 2 (the
    8th update) until the signal has been sent."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    argv = train_argv(template / "data", run)
    process = subprocess.Popen([sys.executable, str(DRIVER), "pause-at-update:8", *argv],
                               env=command_environment(FAULT_MARKER=str(marker)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    marker.unlink()
    _, err = process.communicate(timeout=240)

    assert process.returncode == 130
    assert err.splitlines() == [
        f"minissc: interrupted: saved the run after epoch 2, step 3 of 5 in "
        f"{run / 'checkpoint.npz'}; continue it with the same command and --resume"]
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["epoch"] == 1 and meta["in_epoch"]["step"] == 3
    finished = minissc_command(argv + ["--resume"])
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run, template / "run")


def train_in_process(template, out, monkeypatch, at_update):
    """train() on the reference settings here, calling `at_update(number, sgd)` before every
    optimiser update."""
    real_step, count = SGD.step, [0]

    def step(self):
        count[0] += 1
        at_update(count[0], self)
        real_step(self)

    monkeypatch.setattr(SGD, "step", step)
    config = TrainConfig(model="sscresnet20", model_options={"r": 4}, epochs=3, batch_size=20,
                         subset=100, test_subset=50, lr=0.05, schedule="cosine", seed=3)
    return train(config, str(out), str(template / "data"), progress=False, download=False)


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(template, tmp_path,
                                                                  monkeypatch):
    def press_ctrl_c_twice(number, sgd):
        if number == 7:
            os.kill(os.getpid(), signal.SIGINT)  # the loop would stop after this step...
            os.kill(os.getpid(), signal.SIGINT)  # ...but the second one stops it here

    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in background
    with pytest.raises(KeyboardInterrupt) as interrupt:
        train_in_process(template, tmp_path / "run", monkeypatch, press_ctrl_c_twice)
    assert type(interrupt.value) is KeyboardInterrupt  # not TrainingInterrupted: no save
    _, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["epoch"] == 1 and "in_epoch" not in meta
    assert temporaries(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGINT) is handler_before  # train() put it back


# ------------------------------------------------------------------------------------------
# 3. Divergence
# ------------------------------------------------------------------------------------------


def test_weights_that_became_nan_are_never_saved(template, tmp_path, monkeypatch):
    """A last update of epoch 2 that leaves a NaN in the weights: the loss never sees it, the
    end-of-epoch check does, before anything of that epoch is written."""
    def poison_the_last_update_of_epoch_two(number, sgd):
        if number == 10:
            sgd.parameters[-1].grad = np.full_like(sgd.parameters[-1].grad, np.nan)

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"fc.bias became NaN or infinite at epoch 2, "
                       r"step 5 of 5. The last good checkpoint, after epoch 1, is kept in "):
        train_in_process(template, run, monkeypatch, poison_the_last_update_of_epoch_two)
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["epoch"] == 1
    assert [row["epoch"] for row in json.loads((run / "metrics.json").read_text())] == [1]


def test_divergence_names_the_step_keeps_the_checkpoint_and_resume_recovers(template, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    argv = train_argv(template / "data", run)

    # A learning rate that overflows the weights: stopped at once, nothing saved.
    diverged = minissc_command(argv + ["--lr", "1e30"])
    assert diverged.returncode == 1
    assert diverged.stderr.startswith("minissc: error: training diverged: ")
    assert "at epoch 1, step 2 of 5" in diverged.stderr
    assert "No checkpoint had been saved; start again with a lower --lr" in diverged.stderr
    assert len(diverged.stderr.splitlines()) == 1
    assert not (run / "checkpoint.npz").exists() and not (run / "metrics.json").exists()

    # --resume may lower the learning rate. Killed in epoch 2, it has saved epoch 1.
    assert minissc_command(argv + ["--resume"], "sigkill-at-update:6").returncode == -signal.SIGKILL
    epoch_one = (run / "checkpoint.npz").read_bytes()

    # From there, diverged again: the message names the step and the kept checkpoint.
    status, err = run_cli(argv + ["--resume", "--lr", "1e30"], capsys)
    assert status == 1 and len(err.splitlines()) == 1
    assert "training diverged: " in err and "at epoch 2, step 2 of 5" in err
    assert (f"The last good checkpoint, after epoch 1, is kept in {run / 'checkpoint.npz'}: "
            f"continue from it with --resume and a lower --lr") in err
    assert (run / "checkpoint.npz").read_bytes() == epoch_one

    # Back at the first learning rate, the run ends exactly as the uninterrupted one.
    finished = minissc_command(argv + ["--resume"])
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run, template / "run")


# ------------------------------------------------------------------------------------------
# 5. Numerical edges
# ------------------------------------------------------------------------------------------


def test_batch_norm_with_one_value_per_channel():
    layer = nn.BatchNorm2d(4)
    x = Tensor(np.full((1, 4, 1, 1), 3.0, np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(x)  # training mode: no variance to estimate
    layer.running_mean[:], layer.running_var[:] = 1.0, 4.0
    np.testing.assert_allclose(layer.eval()(x).data, (3 - 1) / np.sqrt(4 + 1e-5), rtol=1e-6)


def test_batch_norm_of_a_constant_channel_is_zero_with_finite_gradients():
    layer = nn.BatchNorm2d(3)
    x = Tensor(np.zeros((2, 3, 4, 4), np.float32), requires_grad=True)
    y = layer(x)
    y.backward(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32))
    assert np.array_equal(y.data, np.zeros_like(y.data))
    for gradient in (x.grad, layer.weight.grad, layer.bias.grad):
        assert np.isfinite(gradient).all()


@pytest.mark.parametrize("label, expected_loss", [(0, 0.0), (1, 2e30)])
def test_cross_entropy_of_huge_logits_is_finite(label, expected_loss):
    logits = Tensor(np.array([[1e30, -1e30, 0.0]], np.float32), requires_grad=True)
    loss = cross_entropy(logits, np.array([label]))
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6, abs=1e-30)
    expected_grad = np.array([[1.0, 0.0, 0.0]], np.float32)
    expected_grad[0, label] -= 1
    np.testing.assert_array_equal(logits.grad, expected_grad)


def test_cross_entropy_at_the_float32_limit_is_zero_for_the_right_class():
    logits = np.array([[3e38, -3e38, 0.0]], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert cross_entropy(logits, np.array([0])).item() == 0.0


@pytest.mark.parametrize("name, options", [("sscresnet20", {"r": 4}), ("shiftresnet20", {"e": 1}),
                                           ("resnet20", {})])
def test_all_zero_images_give_finite_outputs_and_gradients(name, options):
    model = models.create(name, **options)
    for images in (np.zeros((2, 3, 32, 32), np.float32), data.normalize(IMAGES)):
        logits = model(Tensor(images))
        loss = cross_entropy(logits, np.array([0, 1]))
        model.zero_grad()
        loss.backward()
        assert np.isfinite(logits.data).all() and np.isfinite(loss.item())
        for parameter_name, parameter in model.named_parameters():
            assert np.isfinite(parameter.grad).all(), parameter_name
