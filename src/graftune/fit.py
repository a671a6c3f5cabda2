"""Run the epochs: train, validate, log, keep the best weights, checkpoint, stop early."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn

from graftune.checkpoint import save_checkpoint
from graftune.config import TrainConfig
from graftune.features import EpochLoaders
from graftune.loop import Evaluation, StepFn, evaluate, train_one_epoch
from graftune.optim import current_lrs
from graftune.progress import progress_bar
from graftune.rundir import RunDir
from graftune.sampling import ShuffledBatches
from graftune.staging import StageSwitch
from graftune.strategies import Stage


@dataclass
class FitState:
    """Loop state saved in every checkpoint, including where the run is in its strategy."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float | None = None
    bad_epochs: int = 0  # epochs without improvement in the current stage
    stopped_early: bool = False
    stage: int = 0
    stage_start: int = 1  # first epoch of the current stage

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks the best epoch and stops early, and which way is better."""

    metric: str
    mode: Literal["max", "min"]
    patience: int | None  # epochs without improvement before stopping; None: never


@dataclass
class Trainee:
    """Everything the epochs need, already prepared by Accelerate."""

    model: nn.Module
    optimizer: Any  # Accelerate's wrapper; `.optimizer` is the torch optimizer that stages grow
    scheduler: Any
    accelerator: Any
    loaders: EpochLoaders  # live, or cached body encodings while only the head trains
    batches: ShuffledBatches  # the training batches of every epoch, cached or live
    step: StepFn  # the task's loss of a batch
    validation_metrics: Callable[[Evaluation], dict[str, float]]
    grad_clip: float | None
    switch: StageSwitch
    steps_per_epoch: int
    penalty: Callable[[], torch.Tensor] | None = None


def improved(score: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score < best if mode == "min" else score > best


def stage_over(stage: Stage, state: FitState) -> bool:
    """The stage has had its epochs, or validation has plateaued in a stage that ends on a plateau."""
    done = state.epoch - state.stage_start + 1
    if stage.epochs is not None and done >= stage.epochs:
        return True
    return stage.plateau_patience is not None and state.bad_epochs >= stage.plateau_patience


def fit(trainee: Trainee, train_cfg: TrainConfig, monitor: Monitor, run: RunDir, state: FitState,
        console: Console) -> FitState:
    """Train from `state.epoch + 1`, walking the strategy's stages, until the last epoch or early stop."""
    stages = trainee.switch.stages
    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        set_seed(train_cfg.seed * 1_000 + epoch)  # augmentation and dropout: same draws on resume
        started = time.perf_counter()
        feed = trainee.loaders.for_epoch()
        train_loader, val_loader = feed.train, feed.val
        # Accelerate's loader re-sets the sampler's epoch from its own per-process counter on every
        # iteration; telling the loader keeps shuffles tied to the epoch, so a resumed run matches.
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        trainee.batches.set_epoch(epoch)
        stage = stages[state.stage]
        row: dict[str, Any] = {"epoch": epoch, "stage": stage.name, "stage_index": state.stage,
                               **trainee.switch.describe(), "cached_features": feed.cached}
        with progress_bar(train_cfg.progress, f"epoch {epoch}/{train_cfg.epochs} ({stage.name})",
                          len(train_loader) + len(val_loader)) as advance:
            train_loss = train_one_epoch(trainee.model, train_loader, trainee.optimizer, trainee.scheduler,
                                         trainee.accelerator, trainee.step, trainee.grad_clip, advance,
                                         trainee.penalty)
            val = trainee.validation_metrics(evaluate(trainee.model, val_loader, trainee.step, trainee.accelerator,
                                                      advance))
        row.update({"train_loss": train_loss, "lr": current_lrs(trainee.optimizer), **val,
                    "seconds": round(time.perf_counter() - started, 3)})
        state.epoch = epoch
        score = val[monitor.metric]
        better = improved(score, state.best_score, monitor.mode)
        if better:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        last_stage = state.stage == len(stages) - 1
        if not last_stage and epoch < train_cfg.epochs and stage_over(stage, state):
            _next_stage(trainee, state)
        state.stopped_early = last_stage and monitor.patience is not None and state.bad_epochs >= monitor.patience
        if trainee.accelerator.is_main_process:
            run.append_metrics(row)
            save_checkpoint(run.last, trainee.accelerator.unwrap_model(trainee.model), trainee.optimizer,
                            trainee.scheduler, state.to_json(), best=run.best if better else None)
        shown = "" if monitor.metric == "val_loss" else f"  {monitor.metric} {score:.4f}"
        console.print(f"epoch {epoch}/{train_cfg.epochs} [{row['stage']}]  train_loss {train_loss:.4f}  "
                      f"val_loss {val['val_loss']:.4f}{shown}  ({row['seconds']:.0f} s)")
        if state.stopped_early:
            console.print(f"stopping early: {monitor.metric} has not improved for {monitor.patience} epochs "
                          f"(best {state.best_score:.4f} at epoch {state.best_epoch})")
            break
    return state


def _next_stage(trainee: Trainee, state: FitState) -> None:
    """Enter the next stage before the checkpoint is written, so a resume starts inside it."""
    state.stage += 1
    state.stage_start = state.epoch + 1
    state.bad_epochs = 0  # newly unfrozen layers get their own patience
    optimizer = trainee.optimizer.optimizer
    trainee.switch.enter(state.stage, optimizer)
    if trainee.accelerator.num_processes > 1:  # DDP registers gradient hooks only for trainable parameters
        trainee.model = trainee.accelerator.prepare_model(trainee.accelerator.unwrap_model(trainee.model))
    trainee.scheduler = trainee.switch.schedule(state.stage, optimizer, state.stage_start, trainee.steps_per_epoch)
