"""`hf:ID_OR_DIR`: Transformers models, from a local folder, a GGUF file or the hub: text and image encoders,
and causal language models (with their LM head) for the tasks that generate text.

`hf:path/to/model.gguf` loads a GGUF file through Transformers' `gguf_file`, dequantized to fp32 so that it
trains; the loaded model saves like any other.
"""

from __future__ import annotations

import dataclasses
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


class HFCausalLMBody(nn.Module):
    """A Transformers causal language model returning next-token logits (B, T, vocabulary).

    `attention_mask` may be (B, T), or (B, 1, T, T) for packed sequences whose documents must not see each
    other; `position_ids` then restart at every document.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


def load_hf(where: str, *, pretrained: bool = True, trust_remote_code: bool = False, source: str | None = None,
            lm: bool = False) -> Backbone:
    """Load a Transformers encoder (or, with `lm`, a causal language model with its LM head) from a folder,
    a .gguf file or a hub id; `pretrained=False` builds it from its config alone (a saved run's `body/`
    files, whose weights come from the run)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    folder, options = _location(where, trust_remote_code)
    auto: Any = AutoModelForCausalLM if lm else AutoModel
    try:
        config = AutoConfig.from_pretrained(folder, **options)
        if lm and not is_causal_lm(config):
            raise UserError(f"hf:{where}: a {type(config).__name__.removesuffix('Config')} encoder, not a causal "
                            "language model (its checkpoint has no LM head to generate with). Choose a decoder "
                            "such as smollm2-135m, GPT-2, Llama or Qwen.")
        model = auto.from_pretrained(folder, dtype=torch.float32, **options) if pretrained else \
            auto.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"hf:{where}: cannot load this model ({str(err).splitlines()[0]}). Give a local folder "
                        "with config.json and weights, a .gguf file, or a hub id while online.") from None
    if "gguf_file" in options:  # dequantized on load: plain fp32 weights from here on, which save normally
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if not lm and getattr(model, "pooler", None) is not None:
        model.pooler = None  # the new head pools the hidden states itself; the old pooler is dead compute
    is_image = not lm and (hasattr(config, "image_size") or hasattr(config, "num_channels"))
    frames = getattr(config, "num_frames", None) if is_image else None  # VideoMAE, ViViT, TimeSformer
    body: nn.Module
    preprocess: ImagePreprocess | TextPreprocess
    if is_image:
        body = ImageBody(model, output="last_hidden_state")
        preprocess = dataclasses.replace(_image_preprocess(folder, int(getattr(config, "image_size", 224))),
                                         frames=int(frames) if frames else None)
    else:
        body = HFCausalLMBody(model) if lm else HFTextBody(model)
        preprocess = _text_preprocess(folder, options, getattr(config, "max_position_embeddings", None))
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality=("video" if frames else "image") if is_image else "text", default_pooling="cls",
                        source=source or f"hf:{where}", save_files=_saver(model, preprocess, folder),
                        produces="logits" if lm else "features", peft_target="model")
    backbone.default_pooling = _default_pooling(Path(folder), backbone.probe())
    return backbone


def is_causal_lm(config: Any) -> bool:
    """Whether a Transformers config describes a model trained to predict the next token with an LM head:
    its architectures say so, or (configs without them, as GGUF files give) its model type is a decoder's,
    one Transformers maps to a causal LM and not to a masked one (BERT has both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None)
    if architectures:
        return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _location(where: str, trust_remote_code: bool) -> tuple[str, dict[str, Any]]:
    """The folder (or hub id) to load from, and the keyword arguments that say how."""
    options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    path = Path(where)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"hf:{where}: GGUF file not found.")
        return str(path.parent), {**options, "gguf_file": path.name}
    return where, options


def _text_preprocess(where: str, options: dict[str, Any], positions: int | None) -> TextPreprocess:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, **options)
    if tokenizer.pad_token is None:  # decoder-only tokenizers: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    # Tokenizers without a known limit report a huge sentinel; then the model's positions, or BERT's 512.
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else (positions or 512)
    return TextPreprocess(tokenizer=tokenizer, max_length=int(min(limit, positions or limit)))


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
    if backbone.modality == "video":
        return "mean"  # VideoMAE and its kind average their tokens; they have no class token
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
    """A saved run's model from the config and tokenizer it wrote to `body/`; the run holds the weights."""
    return load_hf(str(folder / "body"), pretrained=False, source=info["source"],
                   lm=info.get("produces") == "logits")
