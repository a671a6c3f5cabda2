"""Run the epochs: train, validate, log, keep the best weights, checkpoint, stop early."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn

from graftune.artifacts import save_weights
from graftune.checkpoint import save_checkpoint
from graftune.config import EarlyStopConfig, TrainConfig
from graftune.evaluation import validation_metrics
from graftune.loop import predict_loader, train_one_epoch
from graftune.optim import current_lrs
from graftune.progress import progress_bar
from graftune.rundir import RunDir


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles differently every epoch, but the same way for the same (seed, epoch): resumable."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


@dataclass
class FitState:
    """Loop state saved in every checkpoint."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early}


@dataclass
class Trainee:
    """Everything the epochs need, already prepared by Accelerate."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Any
    train_loader: Any
    val_loader: Any
    sampler: EpochSampler
    loss_fn: nn.Module
    grad_clip: float | None
    trainable_params: int
    trainable_groups: list[str]


def improved(score: float, best: float | None, rule: EarlyStopConfig) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score < best if rule.metric == "val_loss" else score > best


def fit(trainee: Trainee, train_cfg: TrainConfig, run: RunDir, state: FitState, console: Console) -> FitState:
    """Train from `state.epoch + 1` to the last epoch or until validation stops improving."""
    rule = train_cfg.early_stopping
    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        set_seed(train_cfg.seed * 1_000 + epoch)  # augmentation and dropout: same draws on resume
        # Accelerate's loader re-sets the sampler's epoch from its own per-process counter on every
        # iteration; telling the loader keeps shuffles tied to the epoch, so a resumed run matches.
        if hasattr(trainee.train_loader, "set_epoch"):
            trainee.train_loader.set_epoch(epoch)
        trainee.sampler.set_epoch(epoch)
        started = time.perf_counter()
        lrs = current_lrs(trainee.optimizer)
        with progress_bar(train_cfg.progress, f"epoch {epoch}/{train_cfg.epochs}",
                          len(trainee.train_loader) + len(trainee.val_loader)) as advance:
            train_loss = train_one_epoch(trainee.model, trainee.train_loader, trainee.optimizer, trainee.scheduler,
                                         trainee.accelerator, trainee.loss_fn, trainee.grad_clip, advance)
            val = validation_metrics(predict_loader(trainee.model, trainee.val_loader, trainee.accelerator, advance))
        row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lrs, "trainable_params": trainee.trainable_params,
               "trainable_groups": trainee.trainable_groups, "seconds": round(time.perf_counter() - started, 3)}
        state.epoch = epoch
        score = val[rule.metric]
        if improved(score, state.best_score, rule):
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            save_weights(trainee.accelerator.unwrap_model(trainee.model), run.best / "model.safetensors")
        else:
            state.bad_epochs += 1
        state.stopped_early = rule.patience is not None and state.bad_epochs >= rule.patience
        if trainee.accelerator.is_main_process:
            run.append_metrics(row)
            save_checkpoint(run.last, trainee.accelerator.unwrap_model(trainee.model), trainee.optimizer,
                            trainee.scheduler, state.to_json())
        console.print(f"epoch {epoch}/{train_cfg.epochs}  train_loss {train_loss:.4f}  val_loss {val['val_loss']:.4f}  "
                      f"val_accuracy {val['val_accuracy']:.4f}  ({row['seconds']:.0f} s)")
        if state.stopped_early:
            console.print(f"stopping early: {rule.metric} has not improved for {rule.patience} epochs "
                          f"(best {state.best_score:.4f} at epoch {state.best_epoch})")
            break
    return state
