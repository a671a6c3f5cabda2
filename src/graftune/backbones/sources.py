"""One registry of the places pre-trained models come from, each with its load and its rebuild from a run.

A source loads pre-trained weights (`load`) and, for a model graftune saved, rebuilds the same
architecture without them (`rebuild`: the run's own weights are loaded on top). Sources are named by a
prefix (`hf:ID_OR_DIR`, `timm:NAME`, `torchvision:NAME`, `module:pkg.mod:factory`, `run:DIR`) or are a
preset name alone (`minilm-l6`, `efficientnet-lite0`).

Example:
    >>> backbone = load_backbone("minilm-l6")
    >>> [g.name for g in backbone.groups][:3]
    ['stem', 'model.encoder.layer.0', 'model.encoder.layer.1']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftune.backbones.base import Backbone
from graftune.backbones.hf import load_hf, rebuild_hf
from graftune.backbones.module import load_module, rebuild_module
from graftune.backbones.presets import load_efficientnet_lite0, load_minilm, rebuild_efficientnet_lite0
from graftune.backbones.vision_libs import load_timm, load_torchvision, rebuild_timm, rebuild_torchvision
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess
from graftune.weights import load_into, read_state_dict

MODEL_FORMAT = 2  # of RUN/model/graftune.json; 2: the run's resolved settings and the task's schema


@dataclass(frozen=True)
class LoadOptions:
    """What a user may say about loading, besides the source itself (config keys model.* and head.*)."""

    weights: str | None = None
    kwargs: dict[str, Any] | None = None
    replace: str | None = None
    cut_at: str | None = None
    image_size: int | None = None
    trust_remote_code: bool = False


Rebuild = Callable[[str, dict[str, Any], Path], Backbone]  # (ref, graftune.json, model folder) -> architecture


@dataclass(frozen=True)
class Source:
    load: Callable[[str, LoadOptions], Backbone]
    rebuild: Rebuild | None  # None: nothing to rebuild from (a run records the source it started from)


def load_run_body(ref: str, _options: LoadOptions | None = None) -> Backbone:
    """`run:DIR`: the body of a model graftune fine-tuned before, with its fine-tuned weights."""
    run_dir = Path(ref)
    if not run_dir.is_dir():
        raise UserError(f"run:{run_dir}: run directory not found.")
    folder = run_dir / "model"
    info = read_model_info(folder)
    backbone = rebuild_backbone(info, folder)
    state = read_state_dict(folder / "model.safetensors")
    body_state = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    load_into(backbone.body, body_state, where=str(folder / "model.safetensors"))
    backbone.default_pooling = info["settings"]["head"]["pooling"]  # the pooling the body was tuned with
    return backbone


SOURCES: dict[str, Source] = {
    "hf": Source(lambda ref, o: load_hf(ref, trust_remote_code=o.trust_remote_code), rebuild_hf),
    "timm": Source(lambda ref, o: load_timm(ref, cut_at=o.cut_at), rebuild_timm),
    "torchvision": Source(lambda ref, o: load_torchvision(ref, replace=o.replace, cut_at=o.cut_at),
                          rebuild_torchvision),
    "module": Source(lambda ref, o: load_module(ref, weights=o.weights, kwargs=o.kwargs, replace=o.replace,
                                                cut_at=o.cut_at, image_size=o.image_size or 224), rebuild_module),
    "run": Source(load_run_body, None),
}
PRESETS: dict[str, Source] = {
    "minilm-l6": Source(lambda ref, o: load_minilm(), rebuild_hf),
    "efficientnet-lite0": Source(lambda ref, o: load_efficientnet_lite0(), rebuild_efficientnet_lite0),
}


def find_source(spec: str) -> tuple[Source, str]:
    """The source a model spec names, and the reference to give it."""
    if spec in PRESETS:
        return PRESETS[spec], spec
    prefix, _, ref = spec.partition(":")
    if prefix in SOURCES and ref:
        return SOURCES[prefix], ref
    raise UserError(f"unknown model source '{spec}'. Use one of {', '.join(p + ':...' for p in SOURCES)} "
                    f"or a preset: {', '.join(PRESETS)}.")


def load_backbone(spec: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                  replace: str | None = None, cut_at: str | None = None, image_size: int | None = None,
                  trust_remote_code: bool = False) -> Backbone:
    """Load pre-trained weights from any source and return the body without its old head."""
    source, ref = find_source(spec)
    backbone = source.load(ref, LoadOptions(weights, kwargs, replace, cut_at, image_size, trust_remote_code))
    if image_size and isinstance(backbone.preprocess, ImagePreprocess):
        backbone.preprocess.size = image_size
    return backbone


def rebuild_backbone(info: dict[str, Any], folder: Path) -> Backbone:
    """Rebuild a saved model's body architecture (random weights) from its `graftune.json` and files."""
    source, ref = find_source(info["source"])
    if source.rebuild is None:
        raise UserError(f"{folder}/graftune.json: source '{info['source']}' cannot be rebuilt.")
    backbone = source.rebuild(ref, info, folder)
    backbone.surgery, backbone.build_kwargs = info.get("surgery", {}), info.get("build_kwargs", {})
    saved = info["preprocess"]
    if isinstance(backbone.preprocess, ImagePreprocess) and saved.get("kind") == "image":
        backbone.preprocess = ImagePreprocess(size=saved["size"], mean=tuple(saved["mean"]), std=tuple(saved["std"]),
                                              crop_pct=saved["crop_pct"])
    return backbone


def read_model_info(folder: Path) -> dict[str, Any]:
    """Read `graftune.json` of a saved model folder, with a clear error when it is not one."""
    path = folder / "graftune.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a graftune model folder (no graftune.json). Give a run directory "
                        "written by `graftune train`.")
    info: dict[str, Any] = json.loads(path.read_text())
    if info.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: written in model format {info.get('format')}; this graftune reads format "
                        f"{MODEL_FORMAT}. Train the model again with this version.")
    return info
