"""Tasks: what a task reads, how its batches are made. One small module per task, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from graftune.backbones.base import Modality, Preprocess
from graftune.errors import UserError
from graftune.tasks import image_classification, text_classification

Batch = dict[str, Any]  # {"inputs": {name: tensor}, "labels": tensor}
Collate = Callable[[list[tuple[str, int]]], Batch]


@dataclass(frozen=True)
class Task:
    name: str
    modality: Modality
    # (preprocess, augment) -> collate function turning [(input, label index)] into a batch
    make_collate: Callable[[Preprocess, bool], Collate]


TASKS: dict[str, Task] = {
    "image-classification": Task("image-classification", "image", image_classification.make_collate),
    "text-classification": Task("text-classification", "text", text_classification.make_collate),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'. Tasks: {', '.join(TASKS)}.")
    return TASKS[name]


def labels_tensor(items: list[tuple[str, int]]) -> torch.Tensor:
    return torch.tensor([label for _, label in items], dtype=torch.long)
