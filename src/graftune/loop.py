"""One training epoch and one evaluation pass. No config reading and no freezing decisions here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

Progress = Callable[[], None]


@dataclass
class Predictions:
    """Outputs of one pass over a labelled loader; probabilities are (N, classes), not raw logits."""

    loss: float
    labels: np.ndarray
    probs: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def train_one_epoch(model: nn.Module, loader: Iterable[dict[str, Any]], optimizer: torch.optim.Optimizer,
                    scheduler: Any, accelerator: Any, loss_fn: nn.Module, grad_clip: float | None,
                    progress: Progress | None = None, penalty: Callable[[], torch.Tensor] | None = None) -> float:
    """Train over the loader once; return the mean training loss (without the `penalty` term).

    Labels may be class indices or soft targets (mixup, cutmix). `penalty()` is added to the loss
    (L2-SP, EWC). The scheduler steps once per optimizer step.
    """
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        with accelerator.accumulate(model):
            logits = model(batch["inputs"])
            loss = loss_fn(logits, batch["labels"])
            accelerator.backward(loss + penalty() if penalty is not None else loss)
            if grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(batch["labels"])
        count += len(batch["labels"])
        if progress:
            progress()
    return total / max(1, count)


@torch.inference_mode()
def predict_loader(model: nn.Module, loader: Iterable[dict[str, Any]], accelerator: Any,
                   progress: Progress | None = None) -> Predictions:
    """Evaluate under inference mode, keeping class probabilities per example and the summed loss."""
    model.eval()
    loss_sum, count = 0.0, 0
    probs, labels = [], []
    for batch in loader:
        logits = model(batch["inputs"]).float()
        loss = nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        batch_probs, batch_labels = accelerator.gather_for_metrics((logits.softmax(-1), batch["labels"]))
        loss_sum += float(accelerator.reduce(loss, reduction="sum"))
        count += len(batch_labels)
        probs.append(batch_probs.cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
        if progress:
            progress()
    return Predictions(loss=loss_sum / max(1, count), labels=np.concatenate(labels) if labels else np.zeros(0),
                       probs=np.concatenate(probs) if probs else np.zeros((0, 0)))
