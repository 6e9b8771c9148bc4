"""The tutorials run end to end in quick mode and write their figures.

Each tutorial runs as a script in a subprocess, the way a reader runs it, with
MINISSC_TUTORIAL_QUICK=1 (small data, few repeats), from an empty working directory, with
MINISSC_DATA pointing at an empty folder (so tutorial 2 takes its synthetic-image fallback and
tutorial 6 its synthetic data set, whether or not CIFAR-10 is on the machine) and
MINISSC_FIGURES_DIR pointing into tmp_path (so the committed figures in tutorials/figures/ are
left alone). TMPDIR points into tmp_path too, so the temporary run folders of tutorial 6 go
away with it.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
EXPECTED_FIGURES = {
    "01_ssc_kernel.py": ["01_dense_vs_ssc_kernel.png", "01_layer_costs.png"],
    "02_shift_pointwise.py": ["02_shift_directions.png", "02_ssc_sobel.png"],
    "03_backward.py": ["03_gradcheck_errors.png"],
    "04_kernels.py": ["04_fusion.png"],
    "05_ssc_nets.py": ["05_shuffle_wiring.png", "05_zoo_costs.png"],
    "06_training.py": ["06_curves.png", "06_gap.png"],
}


def test_every_tutorial_is_tested():
    assert sorted(path.name for path in TUTORIALS.glob("[0-9][0-9]_*.py")) == \
        sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_tutorial_is_a_percent_notebook(name):
    """Cells start with '# %%'; every line of a markdown cell is a comment (jupytext percent)."""
    lines = (TUTORIALS / name).read_text().splitlines()
    cell_starts = [i for i, line in enumerate(lines) if line.startswith("# %%")]
    assert len(cell_starts) >= 4
    markdown = [i for i in cell_starts if re.fullmatch(r"# %% \[markdown\]", lines[i])]
    assert markdown, "no markdown cell"
    for start in markdown:
        end = next((i for i in cell_starts if i > start), len(lines))
        for line in lines[start + 1:end]:
            assert line == "" or line.startswith("#"), f"{name}: markdown line {line!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_tutorial_runs_in_quick_mode(name, tmp_path):
    figures, no_data, work, temp = (tmp_path / part for part in ("figures", "no-cifar", "cwd",
                                                                  "tmp"))
    for folder in (no_data, work, temp):
        folder.mkdir()
    env = dict(os.environ, MINISSC_TUTORIAL_QUICK="1", MPLBACKEND="Agg",
               MINISSC_DATA=str(no_data), MINISSC_FIGURES_DIR=str(figures), TMPDIR=str(temp))
    result = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for figure in EXPECTED_FIGURES[name]:
        path = figures / figure
        assert path.is_file(), f"{name} did not write {figure}:\n{output[-2000:]}"
        assert 5_000 < path.stat().st_size < 400_000, (figure, path.stat().st_size)
    assert not list(work.iterdir()), "a tutorial wrote into the working directory"
    if name.startswith(("02_", "06_")):
        assert "SYNTHETIC" in output or "synthetic" in output
