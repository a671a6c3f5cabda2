"""Pooled heads: pooling that turns body features into one vector per example, and the new layers on it.

Example:
    >>> head = build_head(cfg.head, backbone.feature_dim, num_outputs=3, pooling="avg")
    >>> model = GraftedModel(backbone.body, head, Pooling("avg"))
"""

from __future__ import annotations

import torch
from torch import nn

from graftune.config import HeadConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Pooling(nn.Module):
    """Turns body features into one vector per example; the neck of a pooled head.

    `avg`/`max`/`avgmax` pool (B, C, H, W) maps; `mean`/`max`/`avgmax`/`cls` pool (B, T, D) token states,
    honouring the inputs' attention mask so padding never counts; `none` passes (B, D) vectors through.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def extra_repr(self) -> str:
        return self.kind  # part of the feature cache's key: another pooling, other features

    def forward(self, features: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if features.dim() == 2 or self.kind == "none":
            return features.flatten(1)
        if features.dim() == 4:
            avg = features.mean(dim=(2, 3))
            if self.kind == "avgmax":
                return torch.cat([avg, features.amax(dim=(2, 3))], dim=1)
            return features.amax(dim=(2, 3)) if self.kind == "max" else avg
        if self.kind == "cls":
            return features[:, 0]
        mask = (inputs or {}).get("attention_mask")
        weights = torch.ones(features.shape[:2], device=features.device) if mask is None else mask
        weights = weights.unsqueeze(-1).to(features.dtype)
        if self.kind == "max":
            return _masked_max(features, weights)
        mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.cat([mean, _masked_max(features, weights)], dim=1) if self.kind == "avgmax" else mean


def _masked_max(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return features.masked_fill(weights == 0, torch.finfo(features.dtype).min).amax(dim=1)


def pooled_width(feature_dim: int, pooling: str) -> int:
    """The width of one pooled vector: avgmax puts the average and the maximum side by side."""
    return feature_dim * 2 if pooling == "avgmax" else feature_dim


def build_head(head: HeadConfig, feature_dim: int, num_outputs: int, pooling: str) -> nn.Sequential:
    """Optional hidden layers (linear, activation, dropout), then the output layer, on pooled features."""
    width = pooled_width(feature_dim, pooling)
    layers: list[nn.Module] = [nn.Dropout(head.dropout)] if head.dropout else []
    for hidden in head.hidden:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[head.activation]()]
        if head.dropout:
            layers.append(nn.Dropout(head.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)
