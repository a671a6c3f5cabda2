"""`module:package.path:factory`: any PyTorch model, such as the user's own "car" classifier.

The factory is called (with `model.kwargs`) to build the architecture, the optional weights file is
loaded strictly, and the classifier is removed: found automatically (the last linear layer) or named
with `head.replace`. With `head.cut_at`, the body ends at that layer instead.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from graftune.backbones.base import Backbone
from graftune.backbones.surgery import wrap_image_model
from graftune.errors import UserError
from graftune.weights import load_into, read_state_dict


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
                replace: str | None = None, cut_at: str | None = None, image_size: int = 224) -> Backbone:
    """Build the factory's model, load `weights` into it (random weights without), and remove its head."""
    model = import_factory(ref)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"module:{ref}: the factory returned {type(model).__name__}, not a torch.nn.Module.")
    if weights:
        load_into(model, read_state_dict(weights), where=weights)
    backbone = wrap_image_model(model, source=f"module:{ref}", replace=replace, cut_at=cut_at, image_size=image_size)
    backbone.build_kwargs = dict(kwargs or {})
    return backbone


def rebuild_module(ref: str, info: dict[str, Any], folder: Path) -> Backbone:
    """The body of a saved run, without its original weights file (the run holds the weights)."""
    surgery = info.get("surgery", {})
    return load_module(ref, kwargs=info.get("build_kwargs"), replace=surgery.get("replaced"),
                       cut_at=surgery.get("cut_at"), image_size=info["preprocess"]["size"])
