"""`hf:ID_OR_DIR`: Transformers encoders for text and images, from a local folder or the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess, TextPreprocess


class HFTextBody(nn.Module):
    """A Transformers text encoder returning its last hidden states (B, T, D)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def load_hf(where: str, *, pretrained: bool = True, trust_remote_code: bool = False,
            source: str | None = None) -> Backbone:
    """Load a Transformers encoder from a folder or hub id; `pretrained=False` builds it from its config
    alone (a saved run's `body/` files, whose weights come from the run)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
        if pretrained:
            model = AutoModel.from_pretrained(where, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"hf:{where}: cannot load this model ({str(err).splitlines()[0]}). Give a local folder "
                        "with config.json and weights, or a hub id while online.") from None
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # the new head pools the hidden states itself; the old pooler is dead compute
    is_image = hasattr(config, "image_size") or hasattr(config, "num_channels")
    body: nn.Module
    preprocess: ImagePreprocess | TextPreprocess
    if is_image:
        body = ImageBody(model, output="last_hidden_state")
        preprocess = _image_preprocess(where, int(getattr(config, "image_size", 224)))
    else:
        body, preprocess = HFTextBody(model), _text_preprocess(where, trust_remote_code)
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality="image" if is_image else "text", default_pooling="cls",
                        source=source or f"hf:{where}", save_files=_saver(model, preprocess, where))
    backbone.default_pooling = _default_pooling(Path(where), backbone.probe())
    return backbone


def _text_preprocess(where: str, trust_remote_code: bool) -> TextPreprocess:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # decoder-only tokenizers: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    # Tokenizers without a known limit report a huge sentinel; 512 is BERT's, the common case.
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
    return TextPreprocess(tokenizer=tokenizer, max_length=int(limit))


def _image_preprocess(where: str, config_size: int) -> ImagePreprocess:
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError, ImportError):
        return ImagePreprocess(size=config_size)  # no processor file: the model config knows its size
    size: Any = getattr(processor, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") or 224 if isinstance(size, dict) else int(size)
    mean = tuple(getattr(processor, "image_mean", None) or ImagePreprocess().mean)
    std = tuple(getattr(processor, "image_std", None) or ImagePreprocess().std)
    return ImagePreprocess(size=int(side), mean=mean, std=std)


def _default_pooling(folder: Path, backbone: Backbone) -> str:
    """The pooling the encoder was trained with: sentence-transformers says so in 1_Pooling/config.json."""
    pooling_file = folder / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        modes = json.loads(pooling_file.read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_max_tokens"):
            return "max"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    if backbone.modality == "image":
        return "avg" if backbone.feature_rank == 4 else "cls"
    return "cls"


def _saver(model: nn.Module, preprocess: TextPreprocess | ImagePreprocess, where: str) -> Any:
    def save(folder: Path) -> None:
        model.config.save_pretrained(folder)  # type: ignore[union-attr, operator]
        if isinstance(preprocess, TextPreprocess):
            preprocess.tokenizer.save_pretrained(folder)
        else:
            try:
                from transformers import AutoImageProcessor

                AutoImageProcessor.from_pretrained(where).save_pretrained(folder)
            except (OSError, ValueError):
                pass  # no processor: the run keeps size/mean/std in graftune.json anyway

    return save


def rebuild_hf(ref: str, info: dict[str, Any], folder: Path) -> Backbone:
    """A saved run's encoder from the config and tokenizer it wrote to `body/`; the run holds the weights."""
    return load_hf(str(folder / "body"), pretrained=False, source=info["source"])
