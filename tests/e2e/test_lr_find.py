"""End to end on real weights and data: `graftune lr-find` on minilm-l6 and a BBC News subset, through the CLI.

A linear probe keeps it short (the body runs once, for the feature cache, and three dozen steps train the
head); tests/test_lr_find.py tests stages that train the body on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


def test_lr_find_writes_the_curve_and_picks_a_rate_in_the_range(bbc_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "news.yaml"
    config.write_text(yaml.safe_dump({"task": "text-classification", "model": {"source": "minilm-l6"},
                                      "data": {"train": str(bbc_folder), "max_length": 64},
                                      "freeze": {"body": "all"}, "strategy": {"probe": "sgd"},
                                      "train": {"batch_size": 8, "progress": False}}))
    out = tmp_path / "lr"
    code, output = run_cli("lr-find", config, "--out", out, "--start", "1e-5", "--end", "10", "--steps", "36")
    assert code == 0, output

    found = json.loads((out / "lr_find.json").read_text())
    assert found["stage"] == "linear-probe" and found["rule"] == "valley" and found["base_lr"] == 1e-2
    assert 1e-5 <= found["lr"] <= 10 and found["lr"] == found["suggestions"]["valley"]
    assert set(found["suggestions"]) == {"valley", "minimum/10", "steepest"}
    assert found["steps_run"] == len(found["rates"]) == len(found["losses"]) == len(found["smoothed"]) <= 36
    assert found["rates"][0] == pytest.approx(1e-5)
    assert Image.open(out / "lr_find.png").size[0] > 100
    assert f"--set optim.lr={found['lr']:.3g}" in output

    code, output = run_cli("lr-find", config, "--out", out, "--steps", "5")
    assert code == 2 and "not empty" in output  # the first curve is kept
