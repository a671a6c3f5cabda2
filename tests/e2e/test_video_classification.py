"""End to end on real weights and real video files: efficientnet-lite0 on generated motion clips.

The clips come in reversed pairs (shrink clip i is grow clip i played backwards) and have exactly K
frames, so a model that averages frames sees the same input for both clips of a pair and must score 0.5;
a temporal head must read the order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graftune.data.motion_clips import write_motion_clips
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e
FRAMES = 8


@pytest.fixture(scope="module")
def motion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("motion")
    for split, count, seed in (("train", 16, 0), ("val", 5, 1), ("test", 6, 2)):
        write_motion_clips(root / split, per_class=count, frames=FRAMES, size=64, seed=seed, classes=("grow", "shrink"))
    return root


def train(motion: Path, out: Path, *extra: str) -> dict[str, float]:
    code, output = run_cli("train", "--task", "video-classification", "--model", "efficientnet-lite0",
                           "--data", motion / "train", "--data", f"val={motion / 'val'}",
                           "--data", f"test={motion / 'test'}", "--out", out, "--set", "data.image_size=64",
                           "--set", f"video.frames={FRAMES}", "--set", "train.batch_size=8", *extra)
    assert code == 0, output
    return json.loads((out / "results.json").read_text())["test"]


def test_a_temporal_head_reads_motion_that_mean_pooling_cannot(motion: Path, tmp_path: Path) -> None:
    common = ("--freeze", "all", "--epochs", "25", "--set", "train.early_stopping.patience=null",
              "--set", "optim.lr=3e-3")
    mean = train(motion, tmp_path / "mean", *common, "--set", "video.temporal=mean")
    conv = train(motion, tmp_path / "conv", *common)  # video.temporal auto: conv
    assert mean["accuracy"] == pytest.approx(0.5, abs=0.1), mean
    assert conv["accuracy"] >= 0.8, conv
    settings = (tmp_path / "conv" / "config.yaml").read_text()
    assert "temporal: conv" in settings  # auto is recorded resolved

    clip = next((motion / "test" / "shrink").glob("*.mp4"))
    code, output = run_cli("predict", tmp_path / "conv", clip, "--json")
    assert code == 0, output
    prediction = json.loads(output.strip().splitlines()[-1])
    assert set(prediction["probabilities"]) == {"shrink", "grow"}
    code, output = run_cli("evaluate", tmp_path / "conv", "--data", motion / "test", "--json")
    assert code == 0, output
    assert json.loads(output[output.index("{"):])["accuracy"] == pytest.approx(conv["accuracy"])


def test_an_inflated_network_trains_and_loads_back(motion: Path, tmp_path: Path) -> None:
    out = tmp_path / "i3d"
    result = train(motion, out, "--strategy", "full", "--epochs", "1", "--set", "video.inflate=3",
                   "--set", "video.temporal=mean", "--set", "video.sampling=segments")
    assert result["examples"] == 12
    clip = next((motion / "test" / "grow").glob("*.mp4"))
    code, output = run_cli("predict", out, clip, "--json")
    assert code == 0, output  # the model folder rebuilds the inflated body before loading its 3D kernels
