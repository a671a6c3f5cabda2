"""`timm:NAME` and `torchvision:NAME`: imported lazily, so graftune works where they are not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.backbones.surgery import wrap_image_model
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess


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
    body = ImageBody(model, method="forward_features")
    backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                        modality="image", default_pooling="avg", source=f"timm:{name}")
    if backbone.probe().feature_rank == 3:  # a vision transformer's token states
        backbone.default_pooling = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    return backbone


def rebuild_timm(name: str, info: dict[str, Any], folder: Path) -> Backbone:
    return load_timm(name, pretrained=False, cut_at=info.get("surgery", {}).get("cut_at"))


def load_torchvision(name: str, *, pretrained: bool = True, replace: str | None = None,
                     cut_at: str | None = None) -> Backbone:
    models = _import("torchvision").models
    try:
        model: nn.Module = models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (ValueError, KeyError) as err:
        raise UserError(f"torchvision:{name}: unknown model ({err}).") from None
    return wrap_image_model(model, source=f"torchvision:{name}", replace=replace, cut_at=cut_at)


def rebuild_torchvision(name: str, info: dict[str, Any], folder: Path) -> Backbone:
    surgery = info.get("surgery", {})
    return load_torchvision(name, pretrained=False, replace=surgery.get("replaced"), cut_at=surgery.get("cut_at"))
