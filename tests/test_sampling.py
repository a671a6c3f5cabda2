"""Training batches (shuffled, optionally grouped by length) and length-sorted evaluation batches."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from graftune.sampling import GROUP, ShuffledBatches, sorted_batches, token_lengths


def batches_of(sampler: ShuffledBatches, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def lengths(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 512) for _ in range(count)]


def test_plain_batches_are_deterministic_per_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return list(itertools.chain(*batches_of(ShuffledBatches(8, seed, size=50), epoch)))

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3)
    assert order(1, 2) != order(2, 2)
    assert sorted(order(1, 2)) == list(range(50))
    sampler = ShuffledBatches(8, 0, size=50)
    assert len(sampler) == 7 == len(list(sampler))
    assert [len(b) for b in sampler] == [8] * 6 + [2]


def test_a_resumed_run_draws_the_same_batches() -> None:
    sampler = ShuffledBatches(4, seed=7, lengths=lengths(40))
    first, second = batches_of(sampler, 1), batches_of(sampler, 2)
    resumed = ShuffledBatches(4, seed=7, lengths=lengths(40))  # a new process after a crash
    assert batches_of(resumed, 2) == second != first


def test_grouped_batches_cover_every_example_once_and_cut_padding() -> None:
    sizes = lengths(1000)
    sampler = ShuffledBatches(16, seed=0, lengths=sizes)
    for epoch in (1, 2):
        batches = batches_of(sampler, epoch)
        assert sorted(itertools.chain(*batches)) == list(range(1000))
        assert len(batches) == len(sampler)

    def padded(batches: list[list[int]]) -> int:  # tokens computed when padding to the batch's longest text
        return sum(max(sizes[i] for i in batch) * len(batch) for batch in batches)

    grouped = padded(batches_of(sampler, 1))
    plain = padded(batches_of(ShuffledBatches(16, seed=0, size=1000), 1))
    assert grouped < 0.6 * plain
    assert grouped < 1.1 * sum(sizes)  # almost no padding left


def test_grouped_batches_are_reshuffled_every_epoch() -> None:
    sampler = ShuffledBatches(8, seed=0, lengths=lengths(8 * GROUP * 3))
    one, two = batches_of(sampler, 1), batches_of(sampler, 2)
    assert one != two
    # batch order is shuffled: the longest batch is not always first
    firsts = {max(lengths(8 * GROUP * 3)[i] for i in batches_of(sampler, e)[0]) for e in range(1, 6)}
    assert len(firsts) > 1
    # and so is the company: neighbours in length do not always share a batch
    pairs = [{frozenset(b[i:i + 2]) for b in batches_of(sampler, e) for i in range(len(b) - 1)} for e in (1, 2)]
    assert pairs[0] != pairs[1]


def test_sorted_batches_go_from_longest_to_shortest() -> None:
    sizes = [3, 9, 1, 7, 5]
    batches = sorted_batches(sizes, 2)
    assert list(batches) == [[1, 3], [4, 0], [2]]
    assert batches.batch_size == 2 and not batches.drop_last
    assert list(sorted_batches(None, 2, size=3)) == [[0, 1], [2]]


def test_token_lengths_count_tokens_after_truncation(tmp_path: Path) -> None:
    import helpers
    from transformers import AutoTokenizer

    from graftune.preprocessing import TextPreprocess

    folder = helpers.write_tiny_bert(tmp_path / "bert")
    preprocess = TextPreprocess(AutoTokenizer.from_pretrained(str(folder)), max_length=8)
    sizes = token_lengths(["short text", "a much longer text that goes on and on and on and on"], preprocess)
    assert sizes[0] == 4  # [CLS] short text [SEP]
    assert sizes[1] == 8
    assert token_lengths([], preprocess) == []


@pytest.mark.parametrize(("size", "batch", "grouped"), [(9, 4, False), (33, 2, True), (65, 4, True), (17, 16, False)])
def test_no_training_batch_holds_a_single_example(size: int, batch: int, grouped: bool) -> None:
    lengths = [i % 7 for i in range(size)] if grouped else None
    batches = ShuffledBatches(batch, seed=1, size=size, lengths=lengths)
    for epoch in range(3):
        batches.set_epoch(epoch)
        drawn = list(batches)
        assert min(len(b) for b in drawn) > 1 and len(drawn) == len(batches)
        assert sorted(i for b in drawn for i in b) == list(range(size))  # nobody dropped
    assert [len(b) for b in ShuffledBatches(1, seed=0, size=3)] == [1, 1, 1]  # asked for one per batch
