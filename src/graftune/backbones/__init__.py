"""Pre-trained backbones from every source behind one function, and their rebuild from a saved run.

Sources: `hf:ID_OR_DIR`, `timm:NAME`, `torchvision:NAME`, `module:pkg.mod:factory`, `run:DIR`, and the
offline presets `minilm-l6` and `efficientnet-lite0`.

Example:
    >>> backbone = load_backbone("minilm-l6")
    >>> [g.name for g in backbone.groups][:3]
    ['stem', 'model.encoder.layer.0', 'model.encoder.layer.1']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graftune.backbones.base import Backbone, ImagePreprocess, LayerGroup, TextPreprocess
from graftune.backbones.hf import load_hf
from graftune.backbones.module import load_module
from graftune.backbones.presets import PRESETS, load_preset
from graftune.backbones.vision_libs import load_timm, load_torchvision
from graftune.backbones.weights import load_into, read_state_dict
from graftune.errors import UserError

__all__ = ["PRESETS", "SOURCES", "Backbone", "ImagePreprocess", "LayerGroup", "TextPreprocess", "load_backbone",
           "rebuild_backbone"]

SOURCES = ("hf:", "timm:", "torchvision:", "module:", "run:")


def load_backbone(source: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                  replace: str | None = None, cut_at: str | None = None, image_size: int | None = None,
                  trust_remote_code: bool = False) -> Backbone:
    """Load pre-trained weights from any source and return the body without its old head."""
    kind, _, ref = source.partition(":")
    if source in PRESETS:
        backbone = load_preset(source)
    elif kind == "hf" and ref:
        backbone = load_hf(ref, trust_remote_code=trust_remote_code)
    elif kind == "timm" and ref:
        backbone = load_timm(ref, cut_at=cut_at)
    elif kind == "torchvision" and ref:
        backbone = load_torchvision(ref, replace=replace, cut_at=cut_at)
    elif kind == "module" and ref:
        backbone = load_module(ref, weights=weights, kwargs=kwargs, replace=replace, cut_at=cut_at)
    elif kind == "run" and ref:
        backbone = load_run_body(Path(ref))
    else:
        raise UserError(f"unknown model source '{source}'. Use one of {', '.join(s + '...' for s in SOURCES)} "
                        f"or a preset: {', '.join(PRESETS)}.")
    if image_size and isinstance(backbone.preprocess, ImagePreprocess):
        backbone.preprocess.size = image_size
    return backbone


def rebuild_backbone(info: dict[str, Any], folder: Path) -> Backbone:
    """Rebuild a saved run's body architecture (random weights) from its `graftune.json` and files."""
    source: str = info["source"]
    kind, _, ref = source.partition(":")
    surgery: dict[str, Any] = info.get("surgery", {})
    files = folder / "body"
    if kind == "hf" or source == "minilm-l6":
        backbone = load_hf(str(files), pretrained=False, files=files, source=source)
    elif source in PRESETS:
        backbone = load_preset(source, pretrained=False)
    elif kind == "timm":
        backbone = load_timm(ref, pretrained=False, cut_at=surgery.get("cut_at"))
    elif kind == "torchvision":
        backbone = load_torchvision(ref, pretrained=False, replace=surgery.get("replaced"),
                                    cut_at=surgery.get("cut_at"))
    elif kind == "module":
        backbone = load_module(ref, kwargs=info.get("model_kwargs"), replace=surgery.get("replaced"),
                               cut_at=surgery.get("cut_at"), pretrained=False)
    else:
        raise UserError(f"{folder}/graftune.json: unknown source '{source}'.")
    preprocess = info.get("preprocess", {})
    if isinstance(backbone.preprocess, ImagePreprocess) and preprocess.get("kind") == "image":
        backbone.preprocess = ImagePreprocess(size=preprocess["size"], mean=tuple(preprocess["mean"]),
                                              std=tuple(preprocess["std"]), crop_pct=preprocess["crop_pct"])
    elif isinstance(backbone.preprocess, TextPreprocess) and preprocess.get("kind") == "text":
        backbone.preprocess.max_length = preprocess["max_length"]
    return backbone


def read_model_info(folder: Path) -> dict[str, Any]:
    """Read `graftune.json` of a saved model folder, with a clear error when it is not one."""
    path = folder / "graftune.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a graftune model folder (no graftune.json). Give a run directory "
                        "written by `graftune train`.")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def load_run_body(run_dir: Path) -> Backbone:
    """`run:DIR`: the body of a model graftune fine-tuned before, with its fine-tuned weights."""
    if not run_dir.is_dir():
        raise UserError(f"run:{run_dir}: run directory not found.")
    folder = run_dir / "model"
    info = read_model_info(folder)
    backbone = rebuild_backbone(info, folder)
    state = read_state_dict(folder / "model.safetensors")
    body_state = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    load_into(backbone.body, body_state, where=str(folder / "model.safetensors"))
    backbone.surgery = info.get("surgery", {})
    backbone.default_pooling = info.get("pooling", backbone.default_pooling)
    return backbone
