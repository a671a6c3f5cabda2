"""The model every task trains: a pre-trained body with a new head grafted on.

    inputs -> body -> neck -> head -> outputs
              `---- encode ---'

The body is the backbone without its old head; the neck is parameter-free (a classifier's pooling, or
nothing); the head is new. `encode` is what the feature cache can stand in for while the body is
frozen: `forward({"features": ...})` runs the head alone on cached encodings.

Frozen layers run in eval mode during training, so BatchNorm keeps the running statistics learned in
pre-training and dropout does not perturb features that cannot adapt anyway. BatchNorm policies:
`frozen` (that rule), `train` (every BatchNorm updates its statistics, frozen or not) and
`affine-only` (no BatchNorm ever updates its statistics; its scale and shift may still train).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class GraftedModel(nn.Module):
    """Body + neck + head; `train()` keeps fully frozen layers in inference mode (see the module docstring)."""

    def __init__(self, body: nn.Module, head: nn.Module, neck: nn.Module | None = None,
                 batchnorm_policy: str = "frozen") -> None:
        super().__init__()
        self.body = body
        self.neck = neck if neck is not None else Identity()
        self.head = head
        self.batchnorm_policy = batchnorm_policy

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The body's output through the neck: one tensor per example, whatever its shape."""
        return self.neck(self.body(**inputs), inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        # Inputs made on the CPU (predict's encoder) follow the model to its device; a no-op in training, where
        # Accelerate has placed the batch already.
        for parameter in self.parameters():
            inputs = {k: v.to(parameter.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            break
        if "features" in inputs:  # encodings from the feature cache: the frozen body already ran
            return self.head(inputs["features"])
        return self.head(self.encode(inputs))

    def train(self, mode: bool = True) -> GraftedModel:
        super().train(mode)
        if mode:
            _eval_frozen(self.body)
            if self.batchnorm_policy in ("train", "affine-only"):
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.train(self.batchnorm_policy == "train")
        return self


class Identity(nn.Module):
    """The neck that passes the body's output through."""

    def forward(self, features: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return features


def _eval_frozen(module: nn.Module) -> None:
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        _eval_frozen(child)


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
