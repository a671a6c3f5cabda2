"""Image classification: image files in, one label out."""

from __future__ import annotations

from typing import Any

import torch

from graftune.backbones.base import ImagePreprocess, Preprocess
from graftune.data.images import image_tensor


def make_collate(preprocess: Preprocess, augment: bool) -> Any:
    assert isinstance(preprocess, ImagePreprocess), "image task needs an image backbone"

    def collate(items: list[tuple[str, int]]) -> dict[str, Any]:
        pixels = torch.stack([image_tensor(path, preprocess, augment) for path, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"inputs": {"pixel_values": pixels}, "labels": labels}

    return collate
