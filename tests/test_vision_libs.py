"""timm: and torchvision: sources with local weights files, random weights and clear errors when weights need a
download. Marked `vision`: they run in .venv-vision (scripts/vision-env.sh) and skip where the libraries are not."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from safetensors.torch import load_file, save_file

import graftune
from graftune.backbones import load_backbone
from graftune.errors import UserError

pytestmark = pytest.mark.vision


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download: only files given count


def reference_mobilenet_v2() -> torch.nn.Module:
    """torchvision's MobileNetV2 with the ImageNet file loaded strictly, the way torchvision itself would."""
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(helpers.mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    return model.eval()


def test_torchvision_weights_file_is_torchvisions_imagenet_model() -> None:
    backbone = load_backbone("torchvision:mobilenet_v2", weights=str(helpers.mobilenet_v2_weights()))
    reference = reference_mobilenet_v2()
    assert backbone.source == "torchvision:mobilenet_v2" and backbone.surgery == {"replaced": "classifier.1"}
    assert backbone.build_kwargs == {}
    mine = backbone.body.state_dict()
    theirs = {f"model.{k}": v for k, v in reference.state_dict().items() if not k.startswith("classifier.1.")}
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    backbone.body.eval()
    with torch.no_grad():
        features = backbone.body(pixel_values=pixels)
        expected = reference.features(pixels).mean((2, 3))  # torchvision's pooled features before its classifier
    assert features.shape == (2, 1280) == expected.shape
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_torchvision_default_weights_need_a_download_and_the_error_says_what_to_do() -> None:
    with pytest.raises(UserError) as info:
        load_backbone("torchvision:mobilenet_v2")
    message = str(info.value)
    assert "torchvision:mobilenet_v2" in message and "download.pytorch.org" in message
    assert "model.weights: PATH" in message and "model.kwargs: {weights: null}" in message


def test_torchvision_kwargs_build_the_architecture_and_are_recorded() -> None:
    backbone = load_backbone("torchvision:mobilenet_v2", kwargs={"weights": None, "width_mult": 0.5})
    assert backbone.body.model.features[0][0].out_channels == 16  # 32 at width 1.0
    assert backbone.build_kwargs == {"width_mult": 0.5}  # the rebuild adds weights=None itself


def test_torchvision_weights_in_two_places_is_an_error() -> None:
    with pytest.raises(UserError, match=r"model\.kwargs\.weights and model\.weights"):
        load_backbone("torchvision:mobilenet_v2", weights=str(helpers.mobilenet_v2_weights()),
                      kwargs={"weights": "IMAGENET1K_V1"})


def test_torchvision_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    with pytest.raises(UserError, match=f"{re.escape(str(path))}: weights do not match the model"):
        load_backbone("torchvision:mobilenet_v2", weights=str(path))


def test_torchvision_bad_kwargs_and_names_are_user_errors() -> None:
    with pytest.raises(UserError, match="torchvision:mobilenet_v9: torchvision has no such model"):
        load_backbone("torchvision:mobilenet_v9", kwargs={"weights": None})
    with pytest.raises(UserError, match=r"model\.kwargs .*colour"):
        load_backbone("torchvision:mobilenet_v2", kwargs={"weights": None, "colour": "red"})


def test_timm_pretrained_weights_need_the_hub_and_the_error_says_what_to_do() -> None:
    with pytest.raises(UserError) as info:
        load_backbone("timm:resnet18")
    message = str(info.value)
    assert "timm:resnet18" in message and "Hugging Face hub" in message
    assert "model.weights: PATH" in message and "model.kwargs: {pretrained: false}" in message


def test_timm_weights_file_loads_strictly(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.1)  # differs from any fresh initialisation
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    backbone = load_backbone("timm:resnet18", weights=str(path))
    mine = backbone.body.state_dict()
    theirs = {f"model.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    with pytest.raises(UserError, match=r"model\.kwargs\.pretrained and model\.weights"):
        load_backbone("timm:resnet18", weights=str(path), kwargs={"pretrained": True})


def test_timm_vit_built_for_another_size_gets_that_size_and_cls_pooling() -> None:
    backbone = load_backbone("timm:vit_tiny_patch16_224", kwargs={"pretrained": False, "img_size": 32})
    assert backbone.preprocess.size == 32  # timm's data config would say 224, which this model cannot take
    assert backbone.default_pooling == "cls" and backbone.feature_rank == 3
    assert backbone.build_kwargs == {"img_size": 32}


def test_timm_bad_kwargs_and_names_are_user_errors() -> None:
    with pytest.raises(UserError, match="timm:resnet_nope: timm has no such model"):
        load_backbone("timm:resnet_nope", kwargs={"pretrained": False})
    with pytest.raises(UserError, match=r"model\.kwargs .*colour"):
        load_backbone("timm:resnet18", kwargs={"pretrained": False, "colour": "red"})


@pytest.mark.parametrize(("source", "kwargs", "recorded"),
                         [("timm:mobilenetv3_small_050", {"pretrained": False, "drop_rate": 0.2}, {"drop_rate": 0.2}),
                          ("torchvision:mobilenet_v2", {"weights": None, "width_mult": 0.35}, {"width_mult": 0.35})])
def test_a_saved_run_rebuilds_with_its_kwargs_and_no_download(tmp_path: Path, source: str, kwargs: dict[str, Any],
                                                              recorded: dict[str, Any]) -> None:
    backbone = load_backbone(source, kwargs=kwargs)
    with torch.no_grad():
        for param in backbone.body.parameters():
            param.add_(0.01)  # "fine-tuned": not what a fresh build would draw
    run = helpers.save_untrained_run(tmp_path, backbone, ["red", "green", "blue"], source)
    info = json.loads((run / "model" / "graftune.json").read_text())
    assert info["source"] == source and info["build_kwargs"] == recorded
    loaded = graftune.load(run)  # the architecture from its kwargs (width 0.35: other shapes), then the run's weights
    saved, state = load_file(str(run / "model" / "model.safetensors")), loaded.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    if source.startswith("timm:"):
        assert loaded.model.body.model.drop_rate == 0.2
    body = load_backbone(f"run:{run}").body.state_dict()  # task B starts from this body
    assert all(torch.equal(body[k], backbone.body.state_dict()[k]) for k in body)
    image = helpers.write_colour_folders(tmp_path / "images", per_class=1) / "red" / "0.png"
    assert graftune.predict(run, files=[str(image)])[0]["label"] in ("red", "green", "blue")
