"""Regularization toward what the model knew (L2-SP, EWC) and against overfitting (mixup, cutmix).

L2-SP (Li et al. 2018): alpha/2 * ||w - w0||^2 on the body, toward its pre-trained weights w0, plus
beta/2 * ||w||^2 on the new head. EWC (Kirkpatrick et al. 2017): lambda/2 * sum F_i (w_i - w0_i)^2,
where F is the diagonal Fisher information on inputs of the original task (`--retain`). The original
task's head is usually gone, so the Fisher is that of the body's pooled features under a unit
Gaussian observation model, estimated with random projections; it is scaled to mean 1, so `ewc`
and `l2sp` strengths are comparable. Weight decay toward zero is turned off for an anchored body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from graftune.config import Config, RegularizeConfig
from graftune.errors import UserError
from graftune.grafted import GraftedModel

BODY_FROZEN = ("linear-probe", "lora")  # strategies whose body weights never move


def check(cfg: Config, strategy: str, modality: str, measures_forgetting: bool = False) -> None:
    """Refuse regularization that would silently do nothing. `measures_forgetting`: the task scores
    regularize.retain before and after, so it is used without EWC too."""
    reg = cfg.regularize
    if (reg.l2sp or reg.ewc) and strategy in BODY_FROZEN:
        raise UserError(f"regularize.l2sp / regularize.ewc: strategy {strategy} never changes the body's "
                        "weights, so there is nothing to pull back. Use them with a strategy that trains the body.")
    if reg.ewc and not reg.retain:
        raise UserError("regularize.ewc needs inputs of the original task: give --retain PATH "
                        "(or regularize.retain).")
    if reg.retain and not reg.ewc and not measures_forgetting:
        raise UserError("regularize.retain is only used by EWC: set regularize.ewc (for example --ewc 1.0).")
    if (reg.mixup or reg.cutmix) and modality != "image":
        raise UserError("regularize.mixup / regularize.cutmix mix images; this task's inputs are text.")


def anchored(reg: RegularizeConfig) -> bool:
    return bool(reg.l2sp or reg.ewc)


class AnchorPenalty:
    """L2-SP / EWC penalty, a function of the current weights; call it for the term to add to the loss."""

    def __init__(self, model: GraftedModel, reg: RegularizeConfig,
                 fisher: dict[str, torch.Tensor] | None = None) -> None:
        self.reg = reg
        self.body = [(name, param, param.detach().clone()) for name, param in model.body.named_parameters()]
        self.head = list(model.head.parameters())
        self.fisher = fisher or {}

    def __call__(self) -> torch.Tensor:
        total = self.head[0].new_zeros(())
        for name, param, anchor in self.body:
            if not param.requires_grad:
                continue  # a frozen weight is still at its anchor
            squared = (param - anchor).pow(2)
            if self.reg.l2sp:
                total = total + self.reg.l2sp / 2 * squared.sum()
            if self.reg.ewc and name in self.fisher:
                total = total + self.reg.ewc / 2 * (self.fisher[name] * squared).sum()
        if self.reg.l2sp and self.reg.l2sp_head:
            total = total + self.reg.l2sp_head / 2 * sum(p.pow(2).sum() for p in self.head)
        return total

    def distance(self) -> float:
        """Euclidean distance of the body from its anchors (for tests and reports)."""
        return float(sum(float((p.detach() - a).pow(2).sum()) for _, p, a in self.body) ** 0.5)


def fisher_diagonal(model: GraftedModel, batches: Iterable[dict[str, torch.Tensor]],
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the body's encodings on retained inputs, scaled to mean 1.

    `batches` are input dicts, as the body takes them.

    For features f(x) under N(f(x), I), F = E_x[sum_k (df_k/dw)^2]. With a random sign vector e per
    example, E[(d(e . f(x))/dw)^2] is exactly that; summing e_i . f(x_i) over a batch keeps the estimate
    unbiased because the cross terms have mean zero.
    """
    generator = torch.Generator().manual_seed(seed)
    params = {name: p for name, p in model.body.named_parameters()}
    was_training, grads_wanted = model.training, {n: p.requires_grad for n, p in params.items()}
    for param in params.values():
        param.requires_grad_(True)
    model.eval()
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    count, device = 0, next(iter(params.values())).device
    for inputs in batches:
        model.zero_grad(set_to_none=True)
        features = model.encode({key: value.to(device) for key, value in inputs.items()})
        signs = torch.randint(0, 2, features.shape, generator=generator).to(features) * 2 - 1
        (features * signs).sum().backward()
        for name, param in params.items():
            if param.grad is not None:
                totals[name] += param.grad.detach().pow(2)
        count += features.shape[0]
    model.zero_grad(set_to_none=True)
    for name, param in params.items():
        param.requires_grad_(grads_wanted[name])
    model.train(was_training)
    if count == 0:
        raise UserError("regularize.retain: no inputs to estimate the Fisher information from.")
    mean = sum(float(t.sum()) for t in totals.values()) / sum(t.numel() for t in totals.values()) / count
    return {name: t / count / max(mean, 1e-30) for name, t in totals.items()}


def mixing_collate(collate: Callable[[list[tuple[str, int]]], dict[str, Any]], num_classes: int,
                   mixup: float, cutmix: float) -> Callable[[list[tuple[str, int]]], dict[str, Any]]:
    """Wrap an image collate: each batch is mixed (mixup or cutmix, one at random when both are on).

    Labels become soft targets (N, classes). Randomness comes from torch's generator, which every epoch
    reseeds, so a resumed run mixes the same way.
    """

    def collate_mixed(items: list[tuple[str, int]]) -> dict[str, Any]:
        batch = collate(items)
        pixels, labels = batch["inputs"]["pixel_values"], batch["targets"]
        targets = nn.functional.one_hot(labels, num_classes).float()
        use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
        alpha = cutmix if use_cutmix else mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        order = torch.randperm(len(labels))
        if use_cutmix:
            pixels, lam = _cut_and_paste(pixels, order, lam)
        else:
            pixels = lam * pixels + (1 - lam) * pixels[order]
        batch["inputs"]["pixel_values"] = pixels
        batch["targets"] = lam * targets + (1 - lam) * targets[order]
        return batch

    return collate_mixed


def _cut_and_paste(pixels: torch.Tensor, order: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a box of area (1 - lam) from the shuffled batch; return the area actually kept."""
    height, width = pixels.shape[-2:]
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = pixels.clone()
    mixed[..., top:bottom, left:right] = pixels[order][..., top:bottom, left:right]
    return mixed, 1 - (bottom - top) * (right - left) / (height * width)
