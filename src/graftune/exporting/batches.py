"""What an export is traced on and checked with: tensors in the model's own input format.

The check batch is the first examples of the run's recorded test split (RUN/data_splits.json, read from
the run's data as it is now), encoded as `graftune evaluate` and `predict` encode them (the task's
encoder: its tokenizer, or resize, crop and normalise). When that split cannot be read (the data moved)
or is empty, a synthetic batch from the preprocessing stands in (fixed texts, or seeded random pixels),
and the export records why. The trace example is always synthetic, of another batch size (and for text
another length) than the check batch, so the check also shows that the dynamic axes hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from graftune.artifacts import FineTuned, recorded_test_split
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess, TextPreprocess

CHECK_EXAMPLES = 8  # examples of the test split in the check batch
TEXTS = ("A short text.", "Another, somewhat longer text, with more words in it than the first one has.",
         "The third text of the batch.", "And a fourth.")
OUTPUT = "logits"


@dataclass
class Inputs:
    """A batch as the model takes it, and where it came from."""

    tensors: dict[str, torch.Tensor]
    texts: list[str] | None  # the texts the tensors encode, for exports that tokenize for themselves
    source: str  # the test split, or why a synthetic batch stands in

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def examples(self) -> int:
        return len(next(iter(self.tensors.values())))

    def ordered(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors.values())


class Graph(nn.Module):
    """The model called with its inputs as positional tensors, in `names` order: what tracers and exporters
    take, since a GraftedModel takes one dict of named tensors."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.model(dict(zip(self.names, tensors, strict=True)))
        return output


def check_inputs(run_dir: str | Path, fine_tuned: FineTuned) -> Inputs:
    """The first examples of the run's test split, or a synthetic batch (saying why) when it cannot be read."""
    try:
        examples = recorded_test_split(run_dir, fine_tuned)
        reason = "the run's test split is empty"
    except UserError as err:
        examples, reason = [], f"the run's test split cannot be read: {err}"
    if not examples:
        return synthetic_inputs(fine_tuned, 3, f"synthetic ({reason})")
    chosen = [e.input for e in examples[:CHECK_EXAMPLES]]
    tensors = fine_tuned.task.encoder(fine_tuned.preprocess)(chosen)
    texts = chosen if isinstance(fine_tuned.preprocess, TextPreprocess) else None
    return Inputs(dict(tensors), texts, f"the first {len(chosen)} examples of the run's test split")


def synthetic_inputs(fine_tuned: FineTuned, batch: int, source: str = "synthetic") -> Inputs:
    """`batch` fixed texts through the tokenizer, or seeded random pixels of the model's input shape."""
    preprocess = fine_tuned.preprocess
    if isinstance(preprocess, TextPreprocess):
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
        return Inputs(dict(fine_tuned.task.encoder(preprocess)(texts)), texts, source)
    return Inputs({"pixel_values": torch.randn(batch, *image_shape(fine_tuned),
                                               generator=torch.Generator().manual_seed(0))}, None, source)


def image_shape(fine_tuned: FineTuned) -> tuple[int, ...]:
    """One example's pixels, as the task shapes them: (3, size, size), or (frames, 3, size, size) for clips."""
    preprocess = fine_tuned.preprocess
    assert isinstance(preprocess, ImagePreprocess)
    return fine_tuned.task.example_shape(preprocess)


def dynamic_axes(fine_tuned: FineTuned, inputs: Inputs) -> dict[str, dict[int, str]]:
    """The axes that may change from call to call: the batch, and for text the sequence length."""
    text = isinstance(fine_tuned.preprocess, TextPreprocess)
    return {name: {0: "batch", 1: "sequence"} if text else {0: "batch"} for name in inputs.names}


@torch.inference_mode()
def reference(fine_tuned: FineTuned, inputs: Inputs) -> torch.Tensor:
    """The run's own model (fp32, eval mode) on the batch: what every export is compared with."""
    fine_tuned.model.eval()
    output: torch.Tensor = fine_tuned.model(inputs.tensors)
    return output.float()
