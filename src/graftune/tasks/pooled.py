"""What classification, regression and multi-label share: the body, a pooling neck and a new head of
`head_outputs` numbers per input; predictions batched through that model; test rows in the split's order."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from graftune.backbones.base import Backbone
from graftune.config import Config
from graftune.data.readers import Example
from graftune.errors import UserError
from graftune.grafted import GraftedModel
from graftune.loop import Evaluation
from graftune.preprocessing import Preprocess
from graftune.tasks.base import Task
from graftune.tasks.heads import Pooling, build_head

TEXT_KEPT = 2000  # characters of a test text kept in test_predictions.jsonl


class PooledHead(Task):
    """A task whose model pools the body's features and puts a new head of `head_outputs` numbers on them."""

    @property
    @abstractmethod
    def head_outputs(self) -> int:
        """How many numbers the head gives per input (classes, labels, 1 for a value)."""

    @classmethod
    def resolve(cls, cfg: Config, backbone: Backbone) -> Config:
        """`head.pooling: auto` becomes the pooling the backbone was pre-trained with."""
        pooling = backbone.default_pooling if cfg.head.pooling == "auto" else cfg.head.pooling
        if pooling == "avgmax" and backbone.feature_rank == 2:
            raise UserError(f"head.pooling=avgmax: {backbone.source} already gives one vector per example; "
                            "use head.pooling=none (or cut earlier with head.cut_at).")
        return cfg.updated({"head.pooling": pooling})

    def build_model(self, backbone: Backbone) -> GraftedModel:
        head_cfg = self.settings.head
        head = build_head(head_cfg, backbone.feature_dim, self.head_outputs, head_cfg.pooling)
        return GraftedModel(backbone.body, head, Pooling(head_cfg.pooling), self.settings.freeze.batchnorm)

    @torch.inference_mode()
    def outputs(self, model: torch.nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(name, input, the head's fp32 outputs) per input, in batches of `batch_size`."""
        encode = self.encoder(preprocess)
        model.eval()
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            yield from ((name, value, row) for (name, value), row in
                        zip(chunk, model(encode([value for _, value in chunk])).float(), strict=True))


def in_split_order(evaluation: Evaluation, examples: list[Example], outputs: np.ndarray,
                   row: Callable[[Example, Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test example, in the split's order: `row(example, its outputs)`, placed by the item index
    indexed test batches carry (length-sorted text batches and several processes reorder the outputs)."""
    rows: list[dict[str, Any] | None] = [None] * len(examples)
    for index, values in zip(evaluation.outputs.get("index", np.arange(len(outputs))), outputs, strict=True):
        rows[int(index)] = row(examples[int(index)], values)
    return [r for r in rows if r is not None]
