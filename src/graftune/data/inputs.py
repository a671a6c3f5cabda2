"""Inputs to the tensors a body takes: `pixel_values` for images, `input_ids` and `attention_mask` for texts.

Tasks build their batches on these; so do the Fisher estimate of EWC and `graftune predict`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graftune.data.images import image_tensor
from graftune.preprocessing import Preprocess, TextPreprocess

EncodeInputs = Callable[[list[str]], dict[str, torch.Tensor]]


def input_encoder(preprocess: Preprocess, augment: bool = False) -> EncodeInputs:
    """Image paths to normalised pixels (random crops and flips with `augment`), or texts to token ids padded
    to the longest text of the batch and truncated at the preprocess's `max_length`."""
    if isinstance(preprocess, TextPreprocess):
        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            tokens = preprocess.tokenizer(texts, truncation=True, max_length=preprocess.max_length,
                                          padding="longest", return_tensors="pt")
            return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

        return tokenize

    def pixels(paths: list[str]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([image_tensor(path, preprocess, augment) for path in paths])}

    return pixels
