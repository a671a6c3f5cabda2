"""Which examples share a batch: shuffled training batches, optionally of similar lengths, and
length-sorted batches for passes that need no shuffling.

Texts are padded to the longest one in their batch, so a batch that mixes a 60-token headline with a
512-token article spends most of its compute on padding. Grouping by length (as transformers'
`group_by_length` does) removes most of that padding: the training examples are shuffled, cut into
chunks of `GROUP` batches, each chunk is sorted by length and cut into batches, and the order of all
batches is shuffled. Every epoch still sees every example once, in new company and a new order.

With `weights` (a balanced sampler: each example weighted by 1 / the size of its class), an epoch draws as
many examples as there are, with replacement, in proportion to their weights, so every class is seen
about equally often; rare examples come several times an epoch, common ones may not come at all.

Everything is a function of (seed, epoch), so a resumed run draws the same batches. A training batch
never holds a single example (BatchNorm cannot train on one): a last batch of one joins the batch
before it.

`train.batch_size` is the global batch: with several processes, each takes its share of every batch
(`for_process`), so a run draws the same batches on one process as on many.

Example:
    >>> batches = ShuffledBatches(16, seed=0, lengths=token_lengths(texts, preprocess))
    >>> batches.set_epoch(3)
    >>> loader = DataLoader(items, batch_sampler=batches, collate_fn=collate)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from graftune.preprocessing import TextPreprocess

GROUP = 16  # batches per sorted chunk: larger packs tighter, smaller keeps batch company more random


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled batches of indices, new every epoch but the same for the same (seed, epoch).

    Without `lengths` it is a plain shuffle cut into batches. With `lengths` (tokens per example),
    each batch holds examples of similar length.
    """

    def __init__(self, batch_size: int, seed: int, size: int | None = None,
                 lengths: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> None:
        if lengths is None and size is None:
            raise ValueError("give the number of examples (size) or their lengths")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.lengths = list(lengths) if lengths is not None else None
        self.size = len(self.lengths) if self.lengths is not None else int(size or 0)
        self.weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None
        self.process, self.processes = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def for_process(self, index: int, count: int) -> None:
        """Yield process `index`'s share (every `count`-th example) of each global batch."""
        self.process, self.processes = index, count

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield batch[self.process::self.processes] if self.processes > 1 else batch

    def _global_batches(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        if self.lengths is None:
            yield from _join_single(_cut(order, self.batch_size), self.batch_size)
            return
        lengths = self.lengths
        batches = _join_single([batch for chunk in _cut(order, self.batch_size * GROUP)
                                for batch in _cut(sorted(chunk, key=lambda i: -lengths[i]), self.batch_size)],
                               self.batch_size)
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def __len__(self) -> int:
        # Chunks hold a whole number of batches, so grouping changes which examples share a batch, not how
        # many batches there are.
        batches = -(-self.size // self.batch_size)
        single = self.batch_size > 1 and batches > 1 and self.size % self.batch_size == 1
        return batches - 1 if single else batches


class FixedBatches(list[list[int]]):
    """Batches decided in advance; `batch_size` tells Accelerate how to shard them over processes."""

    drop_last = False

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        super().__init__(batches)
        self.batch_size = batch_size


def sorted_batches(lengths: Sequence[int] | None, batch_size: int, size: int = 0) -> FixedBatches:
    """Batches from the longest example to the shortest: least padding for a pass that needs no
    shuffling (validation, test, feature extraction). Without lengths, `size` examples in order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if lengths is not None else list(range(size))
    return FixedBatches(_cut(order, batch_size), batch_size)


def token_lengths(texts: Sequence[str], preprocess: TextPreprocess) -> list[int]:
    """Tokens per text after truncation, as the collate function will produce them."""
    if not texts:
        return []
    encoded = preprocess.tokenizer(list(texts), truncation=True, max_length=preprocess.max_length)
    return [len(ids) for ids in encoded["input_ids"]]


def _cut(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _join_single(batches: list[list[int]], size: int) -> list[list[int]]:
    """The batches, with a last batch of one example joined to the one before it (unless every batch is
    meant to hold one)."""
    if size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches
