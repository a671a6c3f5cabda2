"""Token sequences for language models: documents packed into blocks, prompt/completion pairs, and the
batches they make (inputs, attention, positions, and the next-token targets of every position).

A sequence says which document each token belongs to (`segments`) and from which token on the model must
learn to write (`learn_from`). In a batch, position t's target is token t + 1 when that token is in the
same document and at or past `learn_from`, else ignored; the attention lets a token see the earlier
tokens of its own document only, and position ids restart at every document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sequence:
    input_ids: list[int]
    segments: list[int]  # the document of each token, numbered within the sequence
    learn_from: int = 1  # the first token the model is taught to write (1: every token after the first)


def pack_documents(documents: list[list[int]], block_size: int) -> list[Sequence]:
    """Tokenized documents (each ending in its end-of-text token), packed in order into blocks of
    `block_size` tokens; a document longer than what a block has left goes on in the next block."""
    blocks: list[Sequence] = []
    ids: list[int] = []
    segments: list[int] = []
    for document in documents:
        position = 0
        while position < len(document):
            piece = document[position:position + block_size - len(ids)]
            segment = segments[-1] + 1 if segments else 0
            ids += piece
            segments += [segment] * len(piece)
            position += len(piece)
            if len(ids) == block_size:
                blocks.append(Sequence(ids, segments))
                ids, segments = [], []
    if len(ids) > 1:  # one token alone has nothing to predict
        blocks.append(Sequence(ids, segments))
    return blocks


def pair_sequence(prompt: list[int], completion: list[int], block_size: int) -> Sequence | None:
    """A prompt followed by its completion, cut to `block_size`; None when the prompt leaves no room."""
    if len(prompt) >= block_size:
        return None
    ids = (prompt + completion)[:block_size]
    return Sequence(ids, [0] * len(ids), learn_from=len(prompt))


def collate_sequences(sequences: list[Sequence], pad_id: int, ignore: int) -> dict[str, Any]:
    """A batch padded to its longest sequence: 2D attention when every sequence is one document, else a
    (B, 1, T, T) block-diagonal causal mask with position ids that restart per document."""
    length = max(len(s.input_ids) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    segments = torch.full((len(sequences), length), -1, dtype=torch.long)
    targets = torch.full((len(sequences), length), ignore, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        size = len(sequence.input_ids)
        ids[row, :size] = torch.tensor(sequence.input_ids)
        segments[row, :size] = torch.tensor(sequence.segments)
        following = torch.arange(1, size)
        learn = (following >= sequence.learn_from) & (segments[row, 1:size] == segments[row, :size - 1])
        targets[row, :size - 1] = torch.where(learn, ids[row, 1:size], torch.tensor(ignore))
    real = segments >= 0
    if all(len(set(s.segments)) == 1 for s in sequences):
        inputs = {"input_ids": ids, "attention_mask": real.long()}
    else:
        inputs = {"input_ids": ids, "attention_mask": _block_causal(segments),
                  "position_ids": _positions(segments)}
    return {"inputs": inputs, "targets": targets}


def _block_causal(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T): token i sees token j when j <= i in the same document. Padding sees itself only, so
    that no row is empty (an empty row makes attention NaN)."""
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    causal = torch.ones(segments.shape[1], segments.shape[1], dtype=torch.bool).tril()
    real = (segments >= 0).unsqueeze(2) & (segments >= 0).unsqueeze(1)
    mask = same & causal & real
    mask |= torch.eye(segments.shape[1], dtype=torch.bool)
    return mask.unsqueeze(1)


def _positions(segments: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 with every document."""
    steps = torch.arange(segments.shape[1]).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    # each position minus where its document began: the latest start at or before it (a running maximum)
    return steps - torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values
