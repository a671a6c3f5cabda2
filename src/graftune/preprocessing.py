"""What a pre-trained model expects as input, as plain data: image size and normalisation, or a tokenizer.

A neutral module: backbones produce these specs, data readers, batching, the feature cache and tasks
consume them, and none of those needs to import another to agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Modality = Literal["image", "text", "video"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImagePreprocess:
    """How the backbone wants its images: resized to `size`, scaled to [0, 1], then normalised."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    frames: int | None = None  # a video model's frames per clip (its position embeddings fix them)

    def to_json(self) -> dict[str, Any]:
        spec = {"kind": "image", "size": self.size, "mean": list(self.mean), "std": list(self.std),
                "crop_pct": self.crop_pct}
        return {**spec, "frames": self.frames} if self.frames else spec


@dataclass
class TextPreprocess:
    """How the backbone wants its texts: its own tokenizer, truncated to `max_length` tokens.

    A freshly loaded backbone sets `max_length` to the most tokens the model can read; a run sets its
    resolved `data.max_length`.
    """

    tokenizer: Any
    max_length: int = 512

    def to_json(self) -> dict[str, Any]:
        return {"kind": "text", "max_length": self.max_length}


Preprocess = ImagePreprocess | TextPreprocess
