"""Plots draw whatever the user's labels and metric names are."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graftune.plots import confusion_matrix_plot, learning_curves


@pytest.mark.parametrize("labels", [["$x$", r"$\frac$"], ["$$", "\\"], ["a_b^c{", "50%"], ["$5 deals", "café"]])
def test_labels_that_matplotlib_reads_as_math(labels: list[str], tmp_path: Path) -> None:
    confusion_matrix_plot([[3, 1], [0, 4]], labels, tmp_path / "cm.png")
    assert Image.open(tmp_path / "cm.png").size[0] > 100


def test_learning_curves_of_any_metric(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_mae": 0.5 / e} for e in (1, 2, 3)]
    learning_curves(rows, "val_mae", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
