"""`timm:NAME` and `torchvision:NAME`: imported lazily, so graftune works where they are not installed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImagePreprocess, generic_groups
from graftune.backbones.module import ImageModuleBody, wrap_image_model
from graftune.errors import UserError


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except Exception as err:  # a broken CUDA build fails with RuntimeError, not ImportError
        raise UserError(f"{name}: cannot import it here ({str(err).splitlines()[0]}). Install {name} "
                        f"built for your torch, or use another source (hf:, module:, a preset).") from None


def load_timm(name: str, *, pretrained: bool = True, cut_at: str | None = None) -> Backbone:
    timm = _import("timm")
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (RuntimeError, OSError) as err:
        raise UserError(f"timm:{name}: cannot create this model ({str(err).splitlines()[0]}).") from None
    config = timm.data.resolve_data_config({}, model=model)
    preprocess = ImagePreprocess(size=int(config["input_size"][-1]), mean=tuple(config["mean"]),
                                 std=tuple(config["std"]), crop_pct=float(config.get("crop_pct", 0.875)))
    if cut_at:
        return wrap_image_model(model, source=f"timm:{name}", replace=None, cut_at=cut_at, preprocess=preprocess)
    model.reset_classifier(0, "")  # timm's own head removal; keeps unpooled features
    body = _TimmBody(model)
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality="image", default_pooling="avg", source=f"timm:{name}")
    if backbone.probe().feature_rank == 3:  # a vision transformer's token states
        backbone.default_pooling = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    return backbone


class _TimmBody(ImageModuleBody):
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)  # type: ignore[operator]


def load_torchvision(name: str, *, pretrained: bool = True, replace: str | None = None,
                     cut_at: str | None = None) -> Backbone:
    models = _import("torchvision").models
    try:
        model: nn.Module = models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (ValueError, KeyError) as err:
        raise UserError(f"torchvision:{name}: unknown model ({err}).") from None
    return wrap_image_model(model, source=f"torchvision:{name}", replace=replace, cut_at=cut_at)
