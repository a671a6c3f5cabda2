"""Plots draw whatever the user's labels and metric names are."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graftune.plots import confusion_matrix_png, learning_curves_png, lr_find_png


@pytest.mark.parametrize("labels", [["$x$", r"$\frac$"], ["$$", "\\"], ["a_b^c{", "50%"], ["$5 deals", "café"]])
def test_labels_that_matplotlib_reads_as_math(labels: list[str], tmp_path: Path) -> None:
    (tmp_path / "cm.png").write_bytes(confusion_matrix_png([[3, 1], [0, 4]], labels))
    assert Image.open(tmp_path / "cm.png").size[0] > 100


def test_learning_curves_of_any_metric(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_mae": 0.5 / e} for e in (1, 2, 3)]
    (tmp_path / "curves.png").write_bytes(learning_curves_png(rows, "val_mae"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_range_test_curve_that_ends_in_nan(tmp_path: Path) -> None:
    rates = [1e-5 * 10 ** (i / 4) for i in range(12)]
    losses = [2.0, 1.9, 1.7, 1.4, 1.0, 0.8, 0.9, 1.5, 4.0, 30.0, float("inf"), float("nan")]
    (tmp_path / "lr.png").write_bytes(lr_find_png(rates, losses, losses, {"valley": 3e-4, "minimum/10": 1e-5,
                                                                          "steepest": 1e-4}, "valley",
                                                  "Range test, stage $full"))
    assert Image.open(tmp_path / "lr.png").size[0] > 100
