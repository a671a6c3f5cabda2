"""Removing an image model's old head: the classifier found or named, or everything after a named layer.

Example:
    >>> name = remove_classifier(resnet)            # finds `fc`, replaces it with Identity
    >>> backbone = wrap_image_model(resnet, source="module:cars:build", replace=None, cut_at="layer3")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.errors import UserError, closest
from graftune.preprocessing import ImagePreprocess


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
    get_module(model, name)  # fails clearly on a wrong name
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
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
        get_module(model, layer).register_forward_hook(self._stop)

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
        body = ImageBody(model)
        groups = generic_groups(body)
    backbone = Backbone(body=body, feature_dim=0, groups=groups, preprocess=preprocess or ImagePreprocess(image_size),
                        modality="image", default_pooling="avg", source=source, surgery=surgery)
    return backbone.probe()


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, or an error that suggests the closest name and lists the top layers."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UserError(f"layer '{name}' not found in the model.{closest(name, names)} "
                        f"Layers at the top: {', '.join(n for n, _ in model.named_children())}.") from None
