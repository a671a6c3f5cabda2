"""Entering a stage of a strategy: freeze what it does not train, grow the optimizer, restart the schedule.

Resuming replays the stage entries up to the saved stage, so the optimizer has the same groups in the
same order as when the checkpoint was written, then loads its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from graftune.backbones.base import LayerGroup
from graftune.freezing import apply_freeze, trainable_groups
from graftune.grafted import GraftedModel, parameter_summary
from graftune.optim import build_optimizer, build_schedule, grow_optimizer, parameter_groups
from graftune.strategies import Stage, eligible_groups, stage_trainable


@dataclass
class StageSwitch:
    """Applies stages to one model: the only place where a stage becomes requires_grad and rates."""

    model: GraftedModel
    groups: list[LayerGroup]
    stages: list[Stage]
    never: set[str]  # body parameters frozen in every stage (freeze.body)
    batchnorm: str
    weight_decay: float
    body_weight_decay: float | None
    total_epochs: int

    def enter(self, index: int, optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        """Freeze for stage `index` and return the optimizer holding exactly its trainable parameters."""
        stage = self.stages[index]
        body = self.model.body
        trainable = stage_trainable(stage, self.groups, body, self.never, self.batchnorm)
        apply_freeze(body, {name for name, _ in body.named_parameters()} - trainable)
        param_groups = parameter_groups(self.model, self.groups, self.group_lrs(stage), stage.head_lr,
                                        self.weight_decay, self.body_weight_decay)
        if optimizer is None:
            return build_optimizer(param_groups)
        grow_optimizer(optimizer, param_groups)
        return optimizer

    def group_lrs(self, stage: Stage) -> dict[str, float]:
        """Discriminative rates count only the groups that can train, so the top trainable group gets the
        stage's `lr` wherever freeze.body holds groups back; the others (frozen but for affine-only
        BatchNorm) get the lowest rate."""
        rates = stage.group_lrs([g.name for g in eligible_groups(self.groups, self.never)])
        lowest = min(rates.values(), default=stage.lr)
        return {g.name: rates.get(g.name, lowest) for g in self.groups}

    def replay(self, index: int) -> torch.optim.Optimizer:
        """The optimizer as it was after entering stages 0..index in turn (for resume)."""
        optimizer = self.enter(0, None)
        for later in range(1, index + 1):
            self.enter(later, optimizer)
        return optimizer

    def schedule(self, index: int, optimizer: torch.optim.Optimizer, first_epoch: int,
                 steps_per_epoch: int) -> Any:
        stage = self.stages[index]
        left = self.total_epochs - first_epoch + 1
        epochs = min(stage.epochs, left) if stage.epochs is not None else left
        return build_schedule(optimizer, stage.schedule, epochs * steps_per_epoch, stage.warmup_ratio)

    def head_only(self) -> bool:
        """Only the head trains now, and the body computes the same features every epoch (nothing in it
        trains and no BatchNorm updates its statistics): the feature cache may stand in for it."""
        return self.batchnorm != "train" and not any(p.requires_grad for p in self.model.body.parameters())

    def describe(self) -> dict[str, Any]:
        """What metrics.jsonl records about the stage now applied."""
        return {"trainable_params": parameter_summary(self.model)["trainable"],
                "trainable_groups": trainable_groups(self.groups, self.model.body)}
