"""End to end in .venv-vision: torchvision's MobileNetV2 with its real ImageNet weights file (no download),
fine-tuned through the CLI on real Fashion-MNIST PNGs in class folders; a timm network from random weights."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.cli import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.vision]


@pytest.fixture(scope="module")
def fashion_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training and 10 test images per class (300 and 100), real Fashion-MNIST as PNG class folders."""
    return helpers.fashion_folders(tmp_path_factory.mktemp("fashion300"), 30, 10)


def test_torchvision_mobilenet_v2_from_its_imagenet_file_learns_fashion(fashion_300: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached: the weights are the file's
    weights = helpers.mobilenet_v2_weights()
    original = torch.load(weights, map_location="cpu", weights_only=True)
    out = tmp_path / "run"
    code, output = run_cli("train", "--task", "image-classification", "--model", "torchvision:mobilenet_v2",
                           "--set", f"model.weights={weights}", "--data", fashion_300, "--out", out,
                           "--freeze", "14", "--epochs", "2", "--lr", "1e-3", "--set", "data.image_size=64",
                           "--set", "train.batch_size=32", "--set", "data.augment=false")
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())["test"]
    assert results["examples"] == 100 and len(results["labels"]) == 10
    assert results["accuracy"] > 0.5, results  # chance is 0.1
    tuned = load_file(str(out / "model" / "model.safetensors"))
    # The stem and features.1-13 are frozen: still exactly the ImageNet file's, BatchNorm statistics included.
    for name in ("features.0.0.weight", "features.0.1.running_mean", "features.4.conv.1.1.running_var",
                 "features.13.conv.0.0.weight", "features.13.conv.2.weight"):
        assert torch.equal(tuned[f"body.model.{name}"], original[name]), name
    # The top (features.14-18) trained away from them.
    assert not torch.equal(tuned["body.model.features.14.conv.0.0.weight"], original["features.14.conv.0.0.weight"])
    assert not torch.equal(tuned["body.model.features.18.0.weight"], original["features.18.0.weight"])
    assert not torch.equal(tuned["body.model.features.18.1.running_mean"], original["features.18.1.running_mean"])
    code, output = run_cli("evaluate", out, "--data", fashion_300 / "test", "--json")  # rebuilt without a download
    assert code == 0, output
    assert json.loads(output)["accuracy"] == pytest.approx(results["accuracy"])


def test_timm_with_random_weights_trains_and_its_run_rebuilds(fashion_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = run_cli("train", "--task", "image-classification", "--model", "timm:mobilenetv3_small_050",
                           "--set", "model.kwargs.pretrained=false", "--data", fashion_folder, "--out", out,
                           "--epochs", "1", "--set", "data.image_size=32", "--set", "train.batch_size=32")
    assert code == 0, output  # no hub: HF_HUB_OFFLINE (conftest.py) fails any download at once
    results = json.loads((out / "results.json").read_text())["test"]
    assert results["examples"] == 60
    info = json.loads((out / "model" / "graftune.json").read_text())
    assert info["source"] == "timm:mobilenetv3_small_050" and info["build_kwargs"] == {}
    code, output = run_cli("evaluate", out, "--data", fashion_folder / "test", "--json")
    assert code == 0, output
    assert json.loads(output)["accuracy"] == pytest.approx(results["accuracy"])
