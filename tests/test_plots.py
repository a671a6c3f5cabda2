"""Plots draw whatever the user's labels and metric names are."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graftune.plots import confusion_matrix_plot, learning_curves, lr_find_plot


@pytest.mark.parametrize("labels", [["$x$", r"$\frac$"], ["$$", "\\"], ["a_b^c{", "50%"], ["$5 deals", "café"]])
def test_labels_that_matplotlib_reads_as_math(labels: list[str], tmp_path: Path) -> None:
    confusion_matrix_plot([[3, 1], [0, 4]], labels, tmp_path / "cm.png")
    assert Image.open(tmp_path / "cm.png").size[0] > 100


def test_learning_curves_of_any_metric(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_mae": 0.5 / e} for e in (1, 2, 3)]
    learning_curves(rows, "val_mae", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_range_test_curve_that_ends_in_nan(tmp_path: Path) -> None:
    rates = [1e-5 * 10 ** (i / 4) for i in range(12)]
    losses = [2.0, 1.9, 1.7, 1.4, 1.0, 0.8, 0.9, 1.5, 4.0, 30.0, float("inf"), float("nan")]
    lr_find_plot(rates, losses, losses, {"valley": 3e-4, "minimum/10": 1e-5, "steepest": 1e-4}, "valley",
                 "Range test, stage $full", tmp_path / "lr.png")
    assert Image.open(tmp_path / "lr.png").size[0] > 100
