"""Model surgery: remove the old head, cut at a named layer, graft a new head sized for the labels.

Example:
    >>> name = remove_classifier(resnet)            # finds `fc`, replaces it with Identity
    >>> model = FineTuneModel(backbone.body, build_head(cfg.head, backbone, num_classes=3), ...)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone
from graftune.config import HeadConfig
from graftune.errors import UserError, closest

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def find_classifier(model: nn.Module) -> str:
    """Name of the module that is the model's old head: its last `nn.Linear` in registration order.

    timm models say it themselves (`get_classifier`); for the rest the final linear layer is the
    classifier in every common architecture (ResNet `fc`, MobileNet `classifier.1`, ViT `head`).
    """
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise UserError("no nn.Linear classifier found in the model: name the layer to remove with "
                        "head.replace=NAME, or the layer to cut at with head.cut_at=NAME.")
    return linear[-1]


def remove_classifier(model: nn.Module, name: str | None = None) -> str:
    """Replace the classifier (found automatically when `name` is None) by `nn.Identity`."""
    name = name or find_classifier(model)
    _get_module(model, name)  # fails clearly on a wrong name
    parent_name, _, child = name.rpartition(".")
    parent = _get_module(model, parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return name


class _StopForward(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


class CutBody(nn.Module):
    """Runs a model only up to a named layer and returns that layer's output.

    Works for any module, not only `nn.Sequential`: a forward hook captures the layer's output and
    stops the forward pass there. Layers after the cut never run, so they are frozen and left out of
    the layer groups.
    """

    def __init__(self, model: nn.Module, layer: str, input_name: str = "pixel_values") -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.input_name = input_name
        _get_module(model, layer).register_forward_hook(self._stop)

    @staticmethod
    def _stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        try:
            self.model(inputs[self.input_name])
        except _StopForward as stop:
            return stop.output
        raise RuntimeError(f"layer {self.layer!r} was never called in the forward pass")

    def used_parameters(self) -> set[str]:
        """Names (relative to this module) of parameters of layers that run before the cut."""
        used: set[str] = set()
        for name, module in self.model.named_modules():
            if name == self.layer:
                used |= {f"model.{name}.{p}" for p, _ in module.named_parameters()}
                break
            used |= {f"model.{name}.{p}" if name else f"model.{p}" for p, _ in module.named_parameters(recurse=False)}
        return used


class Pooling(nn.Module):
    """Turns body features into one vector per example.

    `avg`/`max`/`avgmax` pool (B, C, H, W) maps; `mean`/`max`/`cls` pool (B, T, D) token states,
    honouring the attention mask so padding never counts; `none` passes (B, D) vectors through.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if features.dim() == 2 or self.kind == "none":
            return features.flatten(1)
        if features.dim() == 4:
            avg = features.mean(dim=(2, 3))
            if self.kind == "avgmax":
                return torch.cat([avg, features.amax(dim=(2, 3))], dim=1)
            return features.amax(dim=(2, 3)) if self.kind == "max" else avg
        if self.kind == "cls":
            return features[:, 0]
        weights = torch.ones(features.shape[:2], device=features.device) if mask is None else mask
        weights = weights.unsqueeze(-1).to(features.dtype)
        if self.kind == "max":
            return _masked_max(features, weights)
        mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.cat([mean, _masked_max(features, weights)], dim=1) if self.kind == "avgmax" else mean


def _masked_max(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return features.masked_fill(weights == 0, torch.finfo(features.dtype).min).amax(dim=1)


def resolve_pooling(head: HeadConfig, backbone: Backbone) -> str:
    return backbone.default_pooling if head.pooling == "auto" else head.pooling


def build_head(head: HeadConfig, feature_dim: int, num_classes: int, pooling: str) -> nn.Module:
    """Pooling, then optional hidden layers (linear, activation, dropout), then the output layer."""
    width = feature_dim * 2 if pooling == "avgmax" else feature_dim
    layers: list[nn.Module] = [nn.Dropout(head.dropout)] if head.dropout else []
    for hidden in head.hidden:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[head.activation]()]
        if head.dropout:
            layers.append(nn.Dropout(head.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class FineTuneModel(nn.Module):
    """Body + pooling + new head. `train()` keeps fully frozen layers in inference mode.

    Frozen layers run in eval mode so BatchNorm keeps the running statistics learned in
    pre-training and dropout does not perturb features that cannot adapt anyway. BatchNorm policies:
    `frozen` (that rule), `train` (every BatchNorm updates its statistics, frozen or not) and
    `affine-only` (no BatchNorm ever updates its statistics; its scale and shift may still train).
    """

    def __init__(self, body: nn.Module, pooling: str, head: nn.Module, batchnorm_policy: str = "frozen") -> None:
        super().__init__()
        self.body = body
        self.pool = Pooling(pooling)
        self.head = head
        self.batchnorm_policy = batchnorm_policy

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pool(self.body(**inputs), inputs.get("attention_mask"))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in inputs:  # pooled features from the feature cache: the frozen body already ran
            return self.head(inputs["features"])
        return self.head(self.features(inputs))

    def train(self, mode: bool = True) -> FineTuneModel:
        super().train(mode)
        if mode:
            _eval_frozen(self.body)
            if self.batchnorm_policy in ("train", "affine-only"):
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.train(self.batchnorm_policy == "train")
        return self


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


def _get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UserError(f"layer '{name}' not found in the model.{closest(name, names)} "
                        f"Layers at the top: {', '.join(n for n, _ in model.named_children())}.") from None
