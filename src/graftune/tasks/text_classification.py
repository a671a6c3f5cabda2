"""Text classification: texts in (one .txt per example in class folders, or a CSV/JSONL column), one label
out. Batches are padded to their longest text only."""

from __future__ import annotations

from graftune.tasks.classification import Classification


class TextClassification(Classification):
    name = "text-classification"
    modality = "text"
