"""Optimizer parameter groups, optimizer and schedule.

One optimizer group per layer group and decay kind, so every layer group can have its own learning
rate and the metrics show each. Norm weights and biases get no weight decay (they are not
over-parameterised the way weight matrices are; as in BERT and nanoGPT). The optimizer only ever holds
trainable parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from graftune.backbones.base import LayerGroup


def parameter_groups(model: nn.Module, groups: list[LayerGroup], body_lr: float | Mapping[str, float],
                     head_lr: float, weight_decay: float, body_weight_decay: float | None = None
                     ) -> list[dict[str, Any]]:
    """AdamW groups: each trainable layer group split into decay / no-decay, plus the head.

    `body_lr` is one rate for the whole body or a rate per layer-group name (discriminative rates).
    `body_weight_decay` overrides the decay of the body (0 when L2-SP or EWC pull it elsewhere).
    """
    named = dict(model.named_parameters())
    rates = body_lr if isinstance(body_lr, Mapping) else {g.name: body_lr for g in groups}
    fallback = min(rates.values(), default=head_lr)  # parameters outside every group move least
    sections = [(g.name, [f"body.{p}" for p in g.params], rates[g.name]) for g in groups]
    grouped = {p for _, params, _ in sections for p in params}
    leftovers = [n for n in named if n.startswith("body.") and n not in grouped]
    if leftovers:
        sections.append(("body.other", leftovers, fallback))
    sections.append(("head", [n for n in named if not n.startswith("body.")], head_lr))
    result = []
    for name, params, lr in sections:
        trainable = [(n, named[n]) for n in params if named[n].requires_grad]
        decay = [p for n, p in trainable if not _no_decay(n, p)]
        no_decay = [p for n, p in trainable if _no_decay(n, p)]
        if decay:
            section_decay = weight_decay if name == "head" or body_weight_decay is None else body_weight_decay
            result.append({"name": name, "params": decay, "lr": lr, "weight_decay": section_decay})
        if no_decay:
            result.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return result


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower()


def build_optimizer(param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.999), eps=1e-8)


def grow_optimizer(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Enter a new stage: set every held group to its new rate and add the newly trainable parameters.

    Parameters already held keep their Adam moments; new ones join their layer group's optimizer group,
    or a new group when their layer group trains for the first time.
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_name = {group.get("name"): group for group in optimizer.param_groups}
    for group in groups:
        fresh = [p for p in group["params"] if id(p) not in held]
        existing = by_name.get(group["name"])
        if existing is None:
            if fresh:
                optimizer.add_param_group({**group, "params": fresh})
            continue
        existing["lr"] = group["lr"]
        existing["params"].extend(fresh)


def build_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule over `total_steps` that starts from each group's current rate (see `lr_multiplier`)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # a new stage restarts its schedule from the stage's rates
    total, warmup = max(1, total_steps), round(total_steps * warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(kind, step, total, warmup))


def lr_multiplier(kind: str, step: int, total: int, warmup: int) -> float:
    """The factor on the base rate at `step` of `total`: a pure function, so a resumed run matches.

    cosine / linear / constant: linear warmup from 0, then cosine or linear decay to 0, or flat (as in
    Transformers). one-cycle: fastai's cosine rise from base/25 to base over the warmup, then cosine
    decay to ~0. slanted-triangular: ULMFiT's short linear rise, long linear fall, ratio 32 (cut_frac
    is the warmup ratio).
    """
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    if kind == "one-cycle":
        if step < warmup:
            return _cosine_between(1 / 25, 1.0, step / warmup)
        return _cosine_between(1.0, 1 / 25e4, progress)
    if kind == "slanted-triangular":
        ratio, cut = 32, max(1, warmup)
        rise = step / cut if step < cut else 1 - (step - cut) / max(1, total - cut)
        return (1 + max(0.0, rise) * (ratio - 1)) / ratio
    if step < warmup:
        return step / max(1, warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1 - progress
    return 1.0


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * fraction))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate of every optimizer group, by group name, for metrics.jsonl."""
    return {group.get("name", str(i)): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}
