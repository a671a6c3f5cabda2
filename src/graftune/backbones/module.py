"""`module:package.path:factory`: any PyTorch model, such as the user's own "car" classifier.

The factory is called (with `model.kwargs`) to build the architecture, the optional weights file is
loaded strictly, and the classifier is removed: found automatically (the last linear layer) or named
with `head.replace`. With `head.cut_at`, the body ends at that layer instead.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from graftune.backbones.base import Backbone
from graftune.backbones.surgery import wrap_image_model
from graftune.errors import InputWarning, UserError
from graftune.weights import load_into, read_state_dict


def import_factory(ref: str, code_path: str | None = None) -> tuple[Any, dict[str, str] | None]:
    """The factory `ref` names, imported (from `code_path` first, when given), and where its code lives.

    Importing runs the module's code: callers decide first whether the spec may be followed.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UserError(f"module:{ref}: expected module:package.module:factory, e.g. module:mypkg.models:build_car.")
    if code_path:
        sys.path.insert(0, code_path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"module:{ref}: cannot import '{module_name}' ({err}). Is it installed or on PYTHONPATH?") \
            from None
    finally:
        if code_path:
            sys.path.remove(code_path)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"module:{ref}: '{module_name}' has no attribute '{attr}'.")
        target = getattr(target, part)
    return target, _code_of(module, module_name)


def _code_of(module: Any, name: str) -> dict[str, str] | None:
    """The import root, file and sha256 of a module's source, so a run can find it again without PYTHONPATH."""
    file = getattr(module, "__file__", None)
    if not file:
        return None  # a built-in module
    path = Path(file).resolve()
    depth = name.count(".") + (2 if path.name == "__init__.py" else 1)
    return {"path": str(path.parents[depth - 1]), "file": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def load_module(ref: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                replace: str | None = None, cut_at: str | None = None, image_size: int = 224,
                code_path: str | None = None) -> Backbone:
    """Build the factory's model, load `weights` into it (random weights without), and remove its head."""
    factory, code = import_factory(ref, code_path)
    try:
        model = factory(**(kwargs or {}))
    except Exception as err:  # the user's factory, called with the user's kwargs
        raise UserError(f"module:{ref}: calling the factory with model.kwargs {kwargs or {}} failed "
                        f"({type(err).__name__}: {str(err)[:200]}). Check model.kwargs against its signature.") \
            from None
    if not isinstance(model, nn.Module):
        raise UserError(f"module:{ref}: the factory returned {type(model).__name__}, not a torch.nn.Module.")
    if weights:
        load_into(model, read_state_dict(weights), where=weights)
    backbone = wrap_image_model(model, source=f"module:{ref}", replace=replace, cut_at=cut_at, image_size=image_size)
    backbone.build_kwargs, backbone.code = dict(kwargs or {}), code
    return backbone


def rebuild_module(ref: str, info: dict[str, Any], folder: Path) -> Backbone:
    """The body of a saved run, without its original weights file (the run holds the weights), built by the
    code the run recorded; a warning says when that code changed since."""
    surgery, recorded = info.get("surgery", {}), info.get("code") or {}
    backbone = load_module(ref, kwargs=info.get("build_kwargs"), replace=surgery.get("replaced"),
                           cut_at=surgery.get("cut_at"), image_size=info["preprocess"]["size"],
                           code_path=recorded.get("path"))
    now = backbone.code or {}
    if recorded.get("sha256") and now.get("sha256") != recorded["sha256"]:
        warnings.warn(f"module:{ref}: {now.get('file')} changed since this model was trained (sha256 "
                      f"{recorded['sha256'][:12]}... then, {now.get('sha256', '?')[:12]}... now).", InputWarning,
                      stacklevel=2)
    return backbone
