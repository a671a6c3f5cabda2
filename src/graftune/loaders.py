"""The DataLoaders of a run: shuffled training batches (length-grouped for text) and length-sorted
evaluation batches, over a task's items and collate function."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from graftune.preprocessing import Preprocess, TextPreprocess
from graftune.sampling import FixedBatches, sorted_batches, token_lengths
from graftune.tasks.base import Collate, Item


def input_lengths(items: list[Item], preprocess: Preprocess) -> list[int] | None:
    """Tokens per text (for batching by length); None for images, which all have one size."""
    return token_lengths([x for x, _ in items], preprocess) if isinstance(preprocess, TextPreprocess) else None


def eval_batches(items: list[Item], preprocess: Preprocess, batch_size: int) -> FixedBatches:
    """Batches for passes that need no shuffling; texts come longest first, so a batch holds texts of
    similar length and little padding."""
    return sorted_batches(input_lengths(items, preprocess), batch_size, len(items))


def eval_loader(items: list[Item], collate: Collate, preprocess: Preprocess, batch_size: int, num_workers: int = 0,
                batches: FixedBatches | None = None) -> DataLoader[Any]:
    """Unshuffled, unaugmented batches for validation, test and `graftune evaluate`."""
    batches = batches if batches is not None else eval_batches(items, preprocess, batch_size)
    return DataLoader(items, batch_sampler=batches, collate_fn=collate,  # type: ignore[arg-type]
                      num_workers=num_workers)
