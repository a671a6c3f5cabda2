"""Text classification: texts in, one label out. Batches are padded to their longest text only."""

from __future__ import annotations

from typing import Any

import torch

from graftune.backbones.base import Preprocess, TextPreprocess


def make_collate(preprocess: Preprocess, augment: bool) -> Any:
    assert isinstance(preprocess, TextPreprocess), "text task needs a text backbone"

    def collate(items: list[tuple[str, int]]) -> dict[str, Any]:
        tokens = preprocess.tokenizer([text for text, _ in items], truncation=True, max_length=preprocess.max_length,
                                      padding="longest", return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"inputs": inputs, "labels": labels}

    return collate
