"""One training epoch and one evaluation pass over any task. No config reading and no freezing decisions here.

The task's `step(model, batch, train)` computes a batch's loss and the outputs its metrics need; this
module only runs steps, sums losses and gathers outputs across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

Progress = Callable[[], None]
Batch = dict[str, Any]  # {"inputs": {name: tensor}, "targets": what the task's loss compares with}


@dataclass
class Step:
    """One batch through a task's step: the loss, a mean over `count` examples (or tokens), and the
    per-example outputs the task's metrics need (first dimension: the batch)."""

    loss: torch.Tensor
    count: int
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


StepFn = Callable[[nn.Module, Batch, bool], Step]  # (model, batch, train) -> Step


@dataclass
class Evaluation:
    """A whole pass over a loader: the mean loss and every example's outputs, in loader order."""

    loss: float
    count: int
    outputs: dict[str, np.ndarray]


def train_one_epoch(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer, scheduler: Any,
                    accelerator: Any, step: StepFn, grad_clip: float | None, progress: Progress | None = None,
                    penalty: Callable[[], torch.Tensor] | None = None) -> float:
    """Train over the loader once; return the mean training loss (without the `penalty` term).

    `penalty()` is added to the loss (L2-SP, EWC). The scheduler steps once per optimizer step.
    """
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        with accelerator.accumulate(model):
            result = step(model, batch, True)
            # Several processes each hold a share of the batch, and DDP averages their gradients: weighting
            # each share's mean by its share of the examples (tokens) makes that the mean of the whole batch.
            loss = result.loss * _share(result.count, accelerator)
            accelerator.backward(loss + penalty() if penalty is not None else loss)
            if grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(result.loss.detach()) * result.count
        count += result.count
        if progress:
            progress()
    if accelerator.num_processes > 1:  # the mean over every process's examples
        summed = accelerator.reduce(torch.tensor([total, float(count)], device=accelerator.device), "sum")
        return float(summed[0]) / max(1.0, float(summed[1]))
    return total / max(1, count)


def _share(count: int, accelerator: Any) -> float:
    """This process's examples (or tokens) as a share of the average process's in this step; 1 alone."""
    if accelerator.num_processes == 1:
        return 1.0
    everyone = float(accelerator.reduce(torch.tensor(float(count), device=accelerator.device), "sum"))
    return count * accelerator.num_processes / max(everyone, 1.0)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[Batch], step: StepFn, accelerator: Any,
             progress: Progress | None = None) -> Evaluation:
    """Evaluate under inference mode: the summed loss and the outputs of every example, gathered from
    every process (Accelerate drops the duplicates that pad the last batch); with batches that carry an
    `index` (loaders.eval_loader with indexed=True), the outputs hold each row's item index as `index`."""
    model.eval()
    loss_sum, count = 0.0, 0.0
    gathered: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        result = step(model, batch, False)
        summed = result.loss.detach().float() * result.count
        loss_sum += float(accelerator.reduce(summed, reduction="sum"))
        count += float(accelerator.reduce(torch.tensor(float(result.count), device=summed.device), reduction="sum"))
        # Indexed batches (loaders.eval_loader) say which example each output row is: with several processes
        # the gathered rows interleave their shares, so the loader's order alone does not say it.
        outputs = {**result.outputs, "index": batch["index"]} if "index" in batch else result.outputs
        if outputs:
            for name, value in accelerator.gather_for_metrics(outputs).items():
                gathered.setdefault(name, []).append(value.cpu().numpy())
        if progress:
            progress()
    outputs = {name: np.concatenate(parts) for name, parts in gathered.items()}
    return Evaluation(loss=loss_sum / max(1.0, count), count=int(count), outputs=outputs)
