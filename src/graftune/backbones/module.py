"""`module:package.path:factory`: any PyTorch model, such as the user's own "car" classifier.

The factory is called (with `model.kwargs`) to build the architecture, the optional weights file is
loaded strictly, and the classifier is removed: found automatically (the last linear layer) or named
with `head.replace`. With `head.cut_at`, the body ends at that layer instead.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImagePreprocess, generic_groups
from graftune.backbones.weights import load_into, read_state_dict
from graftune.errors import UserError
from graftune.surgery import CutBody, remove_classifier


class ImageModuleBody(nn.Module):
    """Wraps a plain `model(x)` image module so it takes `pixel_values=` like every body."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def import_factory(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UserError(f"module:{ref}: expected module:package.module:factory, e.g. module:mypkg.models:build_car.")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"module:{ref}: cannot import '{module_name}' ({err}). Is it installed or on PYTHONPATH?") \
            from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"module:{ref}: '{module_name}' has no attribute '{attr}'.")
        target = getattr(target, part)
    return target


def load_module(ref: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                replace: str | None = None, cut_at: str | None = None, image_size: int = 224,
                pretrained: bool = True) -> Backbone:
    model = import_factory(ref)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"module:{ref}: the factory returned {type(model).__name__}, not a torch.nn.Module.")
    if weights and pretrained:
        load_into(model, read_state_dict(weights), where=weights)
    return wrap_image_model(model, source=f"module:{ref}", replace=replace, cut_at=cut_at, image_size=image_size)


def wrap_image_model(model: nn.Module, *, source: str, replace: str | None, cut_at: str | None,
                     image_size: int = 224, preprocess: ImagePreprocess | None = None) -> Backbone:
    """Remove the classifier (or cut at a layer) of an image model and describe it as a Backbone."""
    surgery: dict[str, Any] = {}
    body: nn.Module
    if cut_at:
        cut = CutBody(model, cut_at)
        used = cut.used_parameters()
        for name, param in cut.named_parameters():
            if name not in used:  # layers past the cut never run: frozen for good
                param.requires_grad_(False)
                param._graftune_unused = True  # type: ignore[attr-defined]
        body, surgery["cut_at"] = cut, cut_at
        groups = [g for g in generic_groups(body) if any(p in used for p in g.params)]
        for group in groups:
            group.params = [p for p in group.params if p in used]
    else:
        surgery["replaced"] = remove_classifier(model, replace)
        body = ImageModuleBody(model)
        groups = generic_groups(body)
    preprocess = preprocess or ImagePreprocess(size=image_size)
    backbone = Backbone(body=body, feature_dim=0, groups=groups, preprocess=preprocess, modality="image",
                        default_pooling="avg", source=source, surgery=surgery)
    return backbone.probe()


def module_from_saved(ref: str, kwargs: dict[str, Any], surgery: dict[str, Any], image_size: int) -> Backbone:
    """Rebuild the body of a saved run without its original weights file (the run has the weights)."""
    return load_module(ref, kwargs=kwargs, replace=surgery.get("replaced"), cut_at=surgery.get("cut_at"),
                       image_size=image_size, pretrained=False)


def weights_path(value: str | None) -> Path | None:
    return Path(value) if value else None
