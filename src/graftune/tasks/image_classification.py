"""Image classification: image files in (class folders, or a CSV/JSONL of paths), one label out."""

from __future__ import annotations

from graftune.tasks.classification import Classification


class ImageClassification(Classification):
    name = "image-classification"
    modality = "image"
