"""The DataLoaders of a run: shuffled training batches (length-grouped for text) and length-sorted
evaluation batches, over a task's items and collate function."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from graftune.preprocessing import Preprocess
from graftune.sampling import FixedBatches, sorted_batches
from graftune.tasks.base import Collate, Item, Task


def eval_batches(task: Task, items: list[Item], preprocess: Preprocess, batch_size: int) -> FixedBatches:
    """Batches for passes that need no shuffling; texts come longest first, so a batch holds texts of
    similar length and little padding."""
    return sorted_batches(task.lengths(items, preprocess), batch_size, len(items))


def local_loader(loader: DataLoader[Any], accelerator: Any) -> Any:
    """A training loader whose batch sampler already gives this process its share (sampling.ShuffledBatches):
    placed on the device, and tracked for gradient accumulation, without Accelerate sharding it again."""
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(loader, device=accelerator.device, num_processes=1, process_index=0,
                               put_on_device=True)


def eval_loader(items: list[Item], collate: Collate, batches: FixedBatches, num_workers: int = 0,
                indexed: bool = False) -> DataLoader[Any]:
    """Unshuffled, unaugmented batches for validation, test and `graftune evaluate`; `indexed` batches also
    carry each item's index (`batch["index"]`), so an evaluation can say which output is which example."""
    if indexed:
        return DataLoader(list(enumerate(items)), batch_sampler=batches,  # type: ignore[arg-type]
                          collate_fn=_with_index(collate), num_workers=num_workers)
    return DataLoader(items, batch_sampler=batches, collate_fn=collate,  # type: ignore[arg-type]
                      num_workers=num_workers)


def _with_index(collate: Collate) -> Any:
    def indexed(pairs: list[tuple[int, Item]]) -> dict[str, Any]:
        return {**collate([item for _, item in pairs]), "index": torch.tensor([i for i, _ in pairs])}

    return indexed
