"""The backbone contract every source fulfils, the one image-body wrapper, and the generic rule for layer groups.

A backbone is a pre-trained body with its old head removed. It tells graftune:
- `body(**inputs) -> features`: a (B, C, H, W) feature map, (B, T, D) token states or (B, D) vectors;
- `feature_dim`, `feature_rank`: the width of those features (channels, hidden size) and their
  number of dimensions, both learned by `probe()` from one small batch;
- `groups`: its parameters in depth order, stem first, so "freeze the first K groups" means the
  same for a CNN, a vision transformer and a text encoder;
- `preprocess`: what inputs the pre-trained model expects (image size, mean, std; tokenizer);
- `default_pooling`: the pooling its pre-training used (mean for sentence-transformers, avg for CNNs);
- `surgery` and `build_kwargs`: what rebuilds exactly this architecture from its source, without weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from graftune.preprocessing import ImagePreprocess, Modality, Preprocess


class ImageBody(nn.Module):
    """Any image model called the way every body is, `body(pixel_values=...)`.

    `method` names the model's function that computes features (`forward`, timm's `forward_features`,
    EfficientNet's `extract_features`); `output` names the attribute of its result that holds them
    (Transformers' `last_hidden_state`).
    """

    def __init__(self, model: nn.Module, method: str = "forward", output: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.output = output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        result = getattr(self.model, self.method)(pixel_values)
        return getattr(result, self.output) if self.output else result


@dataclass
class LayerGroup:
    """A slice of the body in depth order: the unit of freezing and of layer-wise learning rates."""

    name: str
    params: list[str]


@dataclass
class Backbone:
    """A pre-trained body ready for a new head (see the module docstring for the contract)."""

    body: nn.Module
    feature_dim: int
    groups: list[LayerGroup]
    preprocess: Preprocess
    modality: Modality
    default_pooling: str
    source: str
    # Writes what is needed to rebuild the architecture without the original source (HF config,
    # tokenizer files) into a folder; `None` when the source spec alone is enough.
    save_files: Callable[[Path], None] | None = None
    # Whatever the source did to the original model (the classifier it removed, the layer it cut
    # at), so a saved run rebuilds exactly the same body.
    surgery: dict[str, Any] = field(default_factory=dict)
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # kwargs it was built with (module:, timm:, torchvision)
    # Where a `module:` factory's code came from: {"path": import root, "file": ..., "sha256": ...}.
    code: dict[str, str] | None = None
    produces: Literal["features", "logits"] = "features"  # logits: a language model with its LM head
    # The submodule LoRA wraps, so that the saved adapter loads with PEFT on the original model; None: the body.
    peft_target: str | None = None
    feature_rank: int = 0  # dimensions of the body's output: 4 (maps), 3 (token states) or 2 (vectors)

    def probe(self) -> Backbone:
        """Run one small batch through the body, once, to learn its output width and rank."""
        was_training = self.body.training
        self.body.eval()
        with torch.inference_mode():
            out = self.body(**self.example_inputs())
        self.body.train(was_training)
        self.feature_rank = out.dim()
        self.feature_dim = int(out.shape[1] if out.dim() in (2, 4) else out.shape[-1])
        return self

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        """A small batch in the body's input format, for shape probes and contract tests."""
        if isinstance(self.preprocess, ImagePreprocess):
            size, frames = self.preprocess.size, self.preprocess.frames
            shape = (batch, frames, 3, size, size) if frames else (batch, 3, size, size)
            return {"pixel_values": torch.randn(*shape)}
        texts = ["a short example", "another one"]
        tokens = self.preprocess.tokenizer([texts[i % 2] for i in range(batch)], return_tensors="pt", padding=True)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def generic_groups(body: nn.Module) -> list[LayerGroup]:
    """Split any module into depth-ordered layer groups: stem, repeated blocks, tail.

    The blocks are the run of consecutive sibling modules of one class (transformer layers, ResNet
    stages, EfficientNet blocks) that covers the most parameters. Everything registered before the
    first block is the stem, everything after the last block is the tail. Without such a run, each
    top-level child holding parameters is a group.
    """
    names = [n for n, p in body.named_parameters()]
    if not names:
        return []
    run = _largest_block_run(body)
    if run is None:
        return _children_groups(body)
    prefixes = [f"{name}." for name in run]
    block_params: list[list[str]] = [[n for n in names if n.startswith(prefix)] for prefix in prefixes]
    first = names.index(block_params[0][0])
    last = names.index(block_params[-1][-1])
    inside = {n for block in block_params for n in block}
    groups = []
    stem = [n for n in names[:first] if n not in inside]
    if stem:
        groups.append(LayerGroup("stem", stem))
    groups += [LayerGroup(name, params) for name, params in zip(run, block_params, strict=True)]
    tail = [n for n in names[last + 1:] if n not in inside]
    if tail:
        groups.append(LayerGroup("tail", tail))
    return groups


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _largest_block_run(body: nn.Module) -> list[str] | None:
    best: tuple[int, int, list[str]] | None = None
    for parent_name, parent in body.named_modules():
        children = [(n, c) for n, c in parent.named_children() if _param_count(c) > 0]
        run: list[tuple[str, nn.Module]] = []
        for name, child in [*children, ("", None)]:
            if child is not None and run and type(child) is type(run[-1][1]) and _is_composite(child):
                run.append((name, child))
                continue
            if len(run) >= 2:
                covered = sum(_param_count(c) for _, c in run)
                full = [f"{parent_name}.{n}" if parent_name else n for n, _ in run]
                if best is None or (covered, len(run)) > (best[0], best[1]):
                    best = (covered, len(run), full)
            run = [(name, child)] if child is not None and _is_composite(child) else []
    return best[2] if best else None


def _is_composite(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def _children_groups(body: nn.Module) -> list[LayerGroup]:
    groups = []
    for name, child in body.named_children():
        params = [f"{name}.{n}" for n, _ in child.named_parameters()]
        if params:
            groups.append(LayerGroup(name, params))
    direct = [n for n, _ in body.named_parameters(recurse=False)]
    if direct:
        groups.insert(0, LayerGroup("stem", direct))
    return groups
