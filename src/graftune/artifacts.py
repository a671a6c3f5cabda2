"""The saved model folder (RUN/model/) and loading it back for evaluate, predict and `run:` sources.

    model/model.safetensors   weights of body + head
    model/graftune.json       task, labels, source, surgery, pooling, head, preprocessing, provenance
    model/body/               files the architecture needs to rebuild offline (HF config, tokenizer)
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graftune.backbones import Backbone, read_model_info, rebuild_backbone
from graftune.config import Config, HeadConfig
from graftune.surgery import FineTuneModel, build_head

FORMAT_VERSION = 1


def save_weights(model: nn.Module, path: Path) -> None:
    """Write a state dict as safetensors; tensors that share memory are written as copies."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        state[name] = tensor.detach().clone().contiguous() if pointer in seen else tensor.detach().contiguous()
        seen.add(pointer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)), strict=True)


def save_model_folder(folder: Path, model: FineTuneModel, backbone: Backbone, labels: list[str], cfg: Config,
                      parent: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "model.safetensors")
    if backbone.save_files is not None:
        backbone.save_files(folder / "body")
    info = {
        "format": FORMAT_VERSION,
        "task": cfg.task,
        "labels": labels,
        "source": backbone.source,
        "model_kwargs": cfg.model.kwargs,
        "surgery": backbone.surgery,
        "pooling": model.pool.kind,
        "head": cfg.head.model_dump(mode="json"),
        "batchnorm": model.batchnorm_policy,
        "preprocess": backbone.preprocess.to_json(),
        "provenance": {"started_from": parent or backbone.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "graftune": _version(), "torch": torch.__version__, "python": platform.python_version()},
    }
    (folder / "graftune.json").write_text(json.dumps(info, indent=2))


@dataclass
class FineTuned:
    """A fine-tuned model loaded from a run, ready to evaluate or predict."""

    model: FineTuneModel
    backbone: Backbone
    labels: list[str]
    task: str
    info: dict[str, Any]


def load_model_folder(folder: Path) -> FineTuned:
    info = read_model_info(folder)
    backbone = rebuild_backbone(info, folder)
    head = build_head(HeadConfig.model_validate(info["head"]), backbone.feature_dim, len(info["labels"]),
                      info["pooling"])
    model = FineTuneModel(backbone.body, info["pooling"], head, info.get("batchnorm", "frozen"))
    load_weights(model, folder / "model.safetensors")
    model.eval()
    return FineTuned(model, backbone, list(info["labels"]), info["task"], info)


def _version() -> str:
    from graftune import __version__

    return __version__
