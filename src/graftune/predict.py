"""Predictions and evaluation with a saved run: labels and probabilities for new inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graftune.artifacts import FineTuned, load_model_folder
from graftune.backbones import ImagePreprocess
from graftune.config import HeadConfig, load_config
from graftune.data.readers import IMAGE_SUFFIXES, _read_text
from graftune.errors import UserError
from graftune.lora import ADAPTER_DIR, attach_adapter
from graftune.pipeline import prepare_backbone
from graftune.rundir import RunDir
from graftune.surgery import FineTuneModel, build_head
from graftune.tasks import get_task


def load_run(run_dir: str | Path, adapter: bool = False) -> FineTuned:
    """The saved model of a run; with `adapter`, the pre-trained body plus the run's LoRA adapter and head."""
    run = RunDir(run_dir).require()
    merged = load_model_folder(run.model)
    if not adapter:
        return merged
    if not (run.model / ADAPTER_DIR).is_dir():
        raise UserError(f"{run.model}: no LoRA adapter here; only runs with strategy lora save one.")
    cfg = load_config(run.config)
    backbone = prepare_backbone(cfg, get_task(cfg.task))
    head = build_head(HeadConfig.model_validate(merged.info["head"]), backbone.feature_dim, len(merged.labels),
                      merged.info["pooling"])
    model = FineTuneModel(backbone.body, merged.info["pooling"], head, merged.info.get("batchnorm", "frozen"))
    attach_adapter(model, run.model)
    model.eval()
    return FineTuned(model, backbone, merged.labels, merged.task, merged.info)


def read_inputs(fine_tuned: FineTuned, files: list[str], texts: list[str]) -> list[tuple[str, str]]:
    """(name, input) pairs: text files are read, image paths are checked, --text values pass through."""
    image_task = isinstance(fine_tuned.backbone.preprocess, ImagePreprocess)
    inputs = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: input file not found.")
        if image_task:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            inputs.append((name, str(path)))
        else:
            inputs.append((name, _read_text(path)))
    if texts and image_task:
        raise UserError("--text is for text models; this run classifies images.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise UserError(f"--text #{i + 1}: empty text.")
        inputs.append((f"text {i + 1}", text))
    if not inputs:
        raise UserError("nothing to predict: give input files or --text.")
    return inputs


@torch.inference_mode()
def predict_inputs(fine_tuned: FineTuned, inputs: list[tuple[str, str]], batch_size: int = 32) -> list[dict[str, Any]]:
    collate = get_task(fine_tuned.task).make_collate(fine_tuned.backbone.preprocess, False)
    fine_tuned.model.eval()
    results = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        batch = collate([(value, 0) for _, value in chunk])
        probs = fine_tuned.model(batch["inputs"]).float().softmax(-1)
        for (name, _), row in zip(chunk, probs.tolist(), strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"input": name, "label": fine_tuned.labels[best],
                            "probabilities": dict(zip(fine_tuned.labels, row, strict=True))})
    return results
