"""`minissc report`: a results page whose numbers and commands come from real run folders."""
import json
import os
import re
import shlex

import pytest
from synthetic import write_synthetic_cifar10

from minissc import cli, report
from minissc.train import TrainConfig

RUNS = {  # name: extra `minissc train` arguments
    "ssc-r4": ["--r", "4"],
    "ssc-r4-smooth": ["--r", "4", "--seed", "1", "--label-smoothing", "0.1", "--no-augment",
                      "--time-limit", "30"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder with two finished runs (2 epochs on synthetic data) in runs/."""
    base = tmp_path_factory.mktemp("results")
    data_dir = write_synthetic_cifar10(str(tmp_path_factory.mktemp("cifar")))
    for name, extra in RUNS.items():
        assert cli.main(["train", "--model", "sscresnet20", *extra, "--epochs", "2",
                         "--subset", "100", "--batch-size", "50", "--lr", "0.05", "--train-eval", "60",
                         "--data-dir", data_dir, "--no-download", "--no-progress",
                         "--out", str(base / "runs" / name)]) == 0
    return base


def read_run(results, name):
    with open(results / "runs" / name / "summary.json") as f:
        return json.load(f)


def write_spec(results, sections):
    spec = results / "spec.json"
    spec.write_text(json.dumps({"title": "Test results", "sections": sections}))
    return str(spec)


def table_row(page, run_name):
    return next(line for line in page.splitlines() if line.startswith(f"| {run_name} |"))


def test_the_page_shows_every_runs_own_numbers(results, capsys):
    with open(results / "runs" / "ssc-r4" / "metrics.json") as f:
        first_epoch = json.load(f)[0]
    target = first_epoch["test_acc"]  # reached at the end of epoch 1, so the time is known
    spec = write_spec(results, [
        {"title": "Both runs", "runs": ["runs/ssc-r4", "runs/ssc-r4-smooth"], "target": target},
        {"title": "Out of reach", "runs": ["runs/ssc-r4"], "target": 1.01}])
    assert cli.main(["report", spec]) == 0
    page_path = capsys.readouterr().out.strip()
    assert page_path == str(results / "README.md")
    page = (results / "README.md").read_text()
    for name in RUNS:
        summary = read_run(results, name)
        cells = [cell.strip() for cell in table_row(page, name).strip("|").split("|")]
        assert cells[5] == f"{100 * summary['best_test_acc']:.2f}"
        assert cells[6] == f"{100 * summary['last_test_acc']:.2f}"
        assert cells[9] == f"{100 * summary['train_eval_acc']:.2f}"
        assert cells[10] == f"{100 * (summary['train_eval_acc'] - summary['last_test_acc']):+.2f}"
        assert cells[11] == f"{summary['parameters']:,}"
    assert table_row(page, "ssc-r4").endswith(f"| {first_epoch['epoch_seconds'] / 60:.1f} |")
    assert "| not reached |" in page.split("## Out of reach")[1]
    for figure in re.findall(r"\]\((figures/[^)]+)\)", page):
        with open(results / figure, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", figure


def test_the_page_commands_rerun_the_same_configuration(results):
    spec = write_spec(results, [{"title": "Both", "runs": [f"runs/{name}" for name in RUNS]}])
    assert cli.main(["report", spec]) == 0
    page = (results / "README.md").read_text()
    commands = [line for line in page.splitlines() if line.startswith("minissc train ")]
    assert len(commands) == len(RUNS)
    for command, name in zip(commands, RUNS):
        args = cli._parser().parse_args(shlex.split(command)[1:])
        summary = read_run(results, name)
        assert cli.train_config(args) == TrainConfig(**summary["config"])
        assert args.train_eval == summary["train_eval_images"] == 60
        assert args.time_limit == summary["time_limit_minutes"]
        assert os.path.normpath(args.out) == os.path.join("runs", name)


def test_sections_with_one_title_get_figures_of_their_own(results):
    spec = write_spec(results, [{"title": "Small", "runs": ["runs/ssc-r4"]},
                                {"title": "Small", "runs": ["runs/ssc-r4-smooth"]},
                                {"title": "Small 2", "runs": ["runs/ssc-r4"]}])
    assert cli.main(["report", spec]) == 0
    figures = re.findall(r"\]\((figures/[^)]+)\)", (results / "README.md").read_text())
    assert len(figures) == len(set(figures)) == 6, figures


def test_the_command_of_a_run_resumed_with_another_lr_starts_with_the_first_one(results):
    summary = read_run(results, "ssc-r4")
    summary["lr_changes"] = [dict(step=4, lr=0.01, previous_lr=summary["config"]["lr"])]
    summary["config"] = dict(summary["config"], lr=0.01)  # config.json holds the last lr
    command, comment = report.train_command(summary, "runs/ssc-r4").split("  # ")
    args = cli._parser().parse_args(shlex.split(command)[1:])
    assert args.lr == 0.05 and comment == "resumed at step 4 with --lr 0.01"


@pytest.mark.parametrize("spec_text, message", [
    ('{"sections": [{"title": "x", "runs": ["runs/none"]}]}', "is not a finished run folder"),
    ('{"sections": []}', "has no sections"),
    ('{"sections": [', "is not valid JSON"),
])
def test_a_bad_spec_is_one_line_naming_it(results, capsys, spec_text, message):
    spec = results / "bad-spec.json"
    spec.write_text(spec_text)
    assert cli.main(["report", str(spec)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and "Traceback" not in error
