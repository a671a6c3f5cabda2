"""Optimizer parameter groups, optimizer and schedule.

One optimizer group per layer group and decay kind, so every layer group can have its own learning
rate and the metrics show each. Norm weights and biases get no weight decay (they are not
over-parameterised the way weight matrices are; as in BERT and nanoGPT). The optimizer only ever holds
trainable parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graftune.backbones.base import LayerGroup


def parameter_groups(model: nn.Module, groups: list[LayerGroup], body_lr: float, head_lr: float,
                     weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: each trainable layer group split into decay / no-decay, plus the head."""
    named = dict(model.named_parameters())
    sections = [(g.name, [f"body.{p}" for p in g.params], body_lr) for g in groups]
    grouped = {p for _, params, _ in sections for p in params}
    leftovers = [n for n in named if n.startswith("body.") and n not in grouped]
    if leftovers:
        sections.append(("body.other", leftovers, body_lr))
    sections.append(("head", [n for n in named if not n.startswith("body.")], head_lr))
    result = []
    for name, params, lr in sections:
        trainable = [(n, named[n]) for n in params if named[n].requires_grad]
        decay = [p for n, p in trainable if not _no_decay(n, p)]
        no_decay = [p for n, p in trainable if _no_decay(n, p)]
        if decay:
            result.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            result.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return result


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower()


def build_optimizer(param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.999), eps=1e-8)


def build_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   warmup_ratio: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup then cosine / linear decay / constant, from transformers' schedule functions."""
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[kind]
    warmup = round(total_steps * warmup_ratio)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(1, total_steps))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate of every optimizer group, by group name, for metrics.jsonl."""
    return {group.get("name", str(i)): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}
