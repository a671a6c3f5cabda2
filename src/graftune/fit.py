"""Run the epochs: train, validate, log, keep the best weights, checkpoint, stop early."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn

from graftune.checkpoint import Checkpoints, FitState, LoopState
from graftune.config import TrainConfig
from graftune.faults import reached
from graftune.features import EpochLoaders
from graftune.loop import Evaluation, StepFn, evaluate, train_one_epoch
from graftune.optim import current_lrs
from graftune.probe import ExactProbe
from graftune.progress import progress_bar
from graftune.sampling import ShuffledBatches
from graftune.staging import StageSwitch
from graftune.strategies import Stage

EpochHook = Callable[[int, dict[str, Any]], None]


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
    accelerator: Any
    loop: LoopState  # where the run is and the current stage's schedule: checkpointed with the model
    loaders: EpochLoaders  # live, or cached body encodings while only the head trains
    batches: ShuffledBatches  # the training batches of every epoch, cached or live
    step: StepFn  # the task's loss of a batch
    validation_metrics: Callable[[Evaluation], dict[str, float]]
    grad_clip: float | None
    switch: StageSwitch
    steps_per_epoch: int
    checkpoints: Checkpoints
    rows: list[dict[str, Any]]  # metrics.jsonl so far: committed with every checkpoint
    penalty: Callable[[], torch.Tensor] | None = None
    probe: ExactProbe | None = None  # solves head-only stages on cached features instead of epochs of SGD
    # Called with (epoch, metrics row) once the epoch's checkpoint is committed; it may raise to stop the run,
    # which then resumes from that checkpoint (graftune tune prunes trials through it).
    on_epoch: EpochHook | None = None


def improved(score: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score < best if mode == "min" else score > best


def tracked(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row as tracker scalars: losses, metrics, seconds, and each group's rate as lr/NAME."""
    scalars = {key: float(value) for key, value in row.items() if key not in ("epoch", "stage_index")
               and isinstance(value, int | float) and not isinstance(value, bool)}
    scalars.update({f"lr/{name}": float(rate) for name, rate in row.get("lr", {}).items()})
    return scalars


def stage_over(stage: Stage, state: FitState) -> bool:
    """The stage has had its epochs, or validation has plateaued in a stage that ends on a plateau."""
    done = state.epoch - state.stage_start + 1
    if stage.epochs is not None and done >= stage.epochs:
        return True
    return stage.plateau_patience is not None and state.bad_epochs >= stage.plateau_patience


def fit(trainee: Trainee, train_cfg: TrainConfig, monitor: Monitor, console: Console) -> FitState:
    """Train from the epoch after `trainee.loop.fit.epoch`, walking the strategy's stages, until the last
    epoch or an early stop; every epoch ends with its checkpoint committed."""
    state = trainee.loop.fit
    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        row = _epoch(trainee, train_cfg, epoch)
        score = row[monitor.metric]
        better = improved(score, state.best_score, monitor.mode)
        state.epoch = epoch
        if better:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        stage = trainee.switch.stages[state.stage]
        last_stage = state.stage == len(trainee.switch.stages) - 1
        solved = row.get("solver") == "exact"  # another epoch could only move the head off its optimum
        if not last_stage and epoch < train_cfg.epochs and (solved or stage_over(stage, state)):
            _next_stage(trainee, state)
            reached("stage", epoch)
        state.converged = last_stage and solved
        state.stopped_early = last_stage and monitor.patience is not None and state.bad_epochs >= monitor.patience
        trainee.rows.append(row)
        trainee.checkpoints.commit(trainee.accelerator, epoch, trainee.rows, best=better)
        trainee.accelerator.log(tracked(row), step=epoch)  # train.log_with's trackers; nothing without them
        shown = "" if monitor.metric == "val_loss" else f"  {monitor.metric} {score:.4f}"
        console.print(f"epoch {epoch}/{train_cfg.epochs} [{row['stage']}]  train_loss {row['train_loss']:.4f}  "
                      f"val_loss {row['val_loss']:.4f}{shown}  ({row['seconds']:.0f} s)",
                      markup=False, highlight=False)  # "[full]" is the stage's name, not Rich markup
        if trainee.on_epoch is not None:
            trainee.on_epoch(epoch, row)
        if state.converged:
            console.print(f"the head is solved exactly (L2 {row['probe_l2']:.0e} chosen on validation): no further "
                          "epoch can improve it")
            break
        if state.stopped_early:
            console.print(f"stopping early: {monitor.metric} has not improved for {monitor.patience} epochs "
                          f"(best {state.best_score:.4f} at epoch {state.best_epoch})")
            break
    return state


def _epoch(trainee: Trainee, train_cfg: TrainConfig, epoch: int) -> dict[str, Any]:
    """Train and validate one epoch; return its metrics row."""
    set_seed(train_cfg.seed * 1_000 + epoch)  # augmentation and dropout: same draws on resume
    started = time.perf_counter()
    state, stage = trainee.loop.fit, trainee.switch.stages[trainee.loop.fit.stage]
    feed = trainee.loaders.for_epoch()
    fed = time.perf_counter()  # the feature cache may have run the body just now
    # Accelerate's loader re-sets the sampler's epoch from its own per-process counter on every
    # iteration; telling the loader keeps shuffles tied to the epoch, so a resumed run matches.
    if hasattr(feed.train, "set_epoch"):
        feed.train.set_epoch(epoch)
    trainee.batches.set_epoch(epoch)
    row: dict[str, Any] = {"epoch": epoch, "stage": stage.name, "stage_index": state.stage,
                           **trainee.switch.describe(), "cached_features": feed.cached}
    with progress_bar(train_cfg.progress, f"epoch {epoch}/{train_cfg.epochs} ({stage.name})",
                      len(feed.train) + len(feed.val)) as advance:
        batches = {"seen": 0}

        def progress() -> None:
            advance()
            batches["seen"] += 1
            if batches["seen"] == 1:
                reached("train", epoch)

        probe = trainee.probe
        cached = feed.cached_train if probe is not None and stage.train == "head" else None
        if probe is not None and cached is not None:
            reached("train", epoch)  # the solve is this epoch's training (a kill point, as a first batch is)
            train_loss, solved = probe.solve(trainee.model, cached.features, cached.targets, feed.val)
            row.update(solved)
        else:
            train_loss = train_one_epoch(trainee.model, feed.train, trainee.optimizer, trainee.loop.scheduler,
                                         trainee.accelerator, trainee.step, trainee.grad_clip, progress,
                                         trainee.penalty)
        trained = time.perf_counter() - fed
        val = trainee.validation_metrics(evaluate(trainee.model, feed.val, trainee.step, trainee.accelerator,
                                                  advance))
    row.update({"train_loss": train_loss, "lr": current_lrs(trainee.optimizer), **val,
                "feed_seconds": round(fed - started, 3), "train_seconds": round(trained, 3),
                "seconds": round(time.perf_counter() - started, 3)})
    return row


def _next_stage(trainee: Trainee, state: FitState) -> None:
    """Enter the next stage before the checkpoint is written, so a resume starts inside it."""
    state.stage += 1
    state.stage_start = state.epoch + 1
    state.bad_epochs = 0  # newly unfrozen layers get their own patience
    optimizer = trainee.optimizer.optimizer
    trainee.switch.enter(state.stage, optimizer)
    accelerator = trainee.accelerator
    if accelerator.num_processes > 1:  # DDP registers gradient hooks only for trainable parameters
        wrapped = trainee.model
        trainee.model = accelerator.prepare_model(accelerator.unwrap_model(wrapped))
        # Accelerate checkpoints every model it prepared; the old wrapper is no longer the run's model.
        accelerator._models = [m for m in accelerator._models if m is not wrapped]
    trainee.loop.scheduler = trainee.switch.schedule(state.stage, optimizer, state.stage_start,
                                                     trainee.steps_per_epoch)
