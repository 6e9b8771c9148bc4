"""What every tutorial shares: quick mode, where figures go, and how they are saved.

MINISSC_TUTORIAL_QUICK=1 shrinks data and epochs; MINISSC_FIGURES_DIR overrides the figure
folder (a quick run writes to the temp directory, never over the committed figures).
"""
import os
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

QUICK = os.environ.get("MINISSC_TUTORIAL_QUICK") == "1"
if os.environ.get("MINISSC_FIGURES_DIR"):
    FIGURES = Path(os.environ["MINISSC_FIGURES_DIR"])
elif QUICK:
    FIGURES = Path(tempfile.gettempdir()) / "minissc-tutorial-figures"
else:
    FIGURES = Path(__file__).resolve().parent / "figures"
FIGURES.mkdir(parents=True, exist_ok=True)


def save(figure, name):
    path = FIGURES / name
    figure.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}")
    if "ipykernel" not in sys.modules:
        plt.close(figure)
