"""`timm:NAME` and `torchvision:NAME`: imported lazily, so graftune works where they are not installed.

Weights come from the library's own download (timm: the Hugging Face hub; torchvision: download.pytorch.org,
cached under TORCH_HOME), or from a local file with `model.weights: PATH` (a state dict for the library's
architecture, read with safetensors or torch.load(weights_only=True) and loaded strictly). `model.kwargs` are
the library's own keyword arguments: `timm.create_model(NAME, **kwargs)` (`pretrained: false` for random
weights), `torchvision.models.get_model(NAME, **kwargs)` (`weights: null` for random weights, or a weights
name such as `IMAGENET1K_V2`).

Example:
    >>> load_torchvision("mobilenet_v2", weights="mobilenet_v2-b0353104.pth")   # no download
    >>> load_timm("resnet18", kwargs={"pretrained": False})                      # random weights
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from graftune.backbones.base import Backbone, ImageBody, generic_groups
from graftune.backbones.surgery import wrap_image_model
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess
from graftune.weights import load_into, read_state_dict


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except Exception as err:  # a broken CUDA build fails with RuntimeError, not ImportError
        raise UserError(f"{name}: cannot import it here ({str(err).splitlines()[0]}). Install {name} "
                        f"built for your torch, or use another source (hf:, module:, a preset).") from None


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def _library_weights(spec: str, key: str, kwargs: dict[str, Any], file: str | None, default: Any) -> Any:
    """What to pass as the library's own weights argument (`key`): the user's kwargs value, else `default`;
    none when a local file gives the weights, and both at once is an error."""
    if file is None:
        return kwargs.pop(key, default)
    if kwargs.pop(key, None):
        raise UserError(f"model.kwargs.{key} and model.weights: {spec} takes its weights from one place. Remove "
                        f"model.kwargs.{key} to use {file}, or model.weights to use the library's own weights.")
    return None


def load_timm(name: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
              cut_at: str | None = None) -> Backbone:
    """`timm.create_model(name, **kwargs)` with timm's pretrained weights (from the hub), or with `weights`, a
    local file; `kwargs={"pretrained": False}` for random weights."""
    timm = _import("timm")
    spec, build = f"timm:{name}", dict(kwargs or {})
    pretrained = bool(_library_weights(spec, "pretrained", build, weights, True))
    if not timm.is_model(name):
        raise UserError(f"{spec}: timm has no such model. List them with timm.list_models('*{name[:4]}*').")
    try:
        model = timm.create_model(name, pretrained=pretrained, **build)
    except TypeError as err:
        raise UserError(f"{spec}: model.kwargs {build} do not fit timm.create_model ({_first_line(err)}).") from None
    except Exception as err:  # with pretrained weights: the hub, unreachable or without this file
        if not pretrained:
            raise UserError(f"{spec}: cannot create this model ({_first_line(err)}).") from None
        raise UserError(f"{spec}: timm downloads its pretrained weights from the Hugging Face hub, and that failed "
                        f"({type(err).__name__}: {_first_line(err)}). Give a local weights file (a state dict of "
                        f"timm.create_model('{name}')) with model.weights: PATH, or start from random weights "
                        "with model.kwargs: {pretrained: false}.") from None
    if weights:
        load_into(model, read_state_dict(weights), where=weights)
    config = timm.data.resolve_data_config({}, model=model)
    # timm's data config keeps the pretrained input size when model.kwargs.img_size builds a ViT for another
    size = build.get("img_size", config["input_size"][-1])
    size = size[-1] if isinstance(size, list | tuple) else size
    preprocess = ImagePreprocess(size=int(size), mean=tuple(config["mean"]),
                                 std=tuple(config["std"]), crop_pct=float(config.get("crop_pct", 0.875)))
    if cut_at:
        backbone = wrap_image_model(model, source=spec, replace=None, cut_at=cut_at, preprocess=preprocess)
    else:
        model.reset_classifier(0, "")  # timm's own head removal; keeps unpooled features
        body = ImageBody(model, method="forward_features")
        backbone = Backbone(body=body, feature_dim=0, groups=generic_groups(body), preprocess=preprocess,
                            modality="image", default_pooling="avg", source=spec)
        if backbone.probe().feature_rank == 3:  # a vision transformer's token states
            backbone.default_pooling = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    backbone.build_kwargs = build
    return backbone


def rebuild_timm(name: str, info: dict[str, Any], folder: Path) -> Backbone:
    kwargs = {**info.get("build_kwargs", {}), "pretrained": False}
    return load_timm(name, kwargs=kwargs, cut_at=info.get("surgery", {}).get("cut_at"))


def load_torchvision(name: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                     replace: str | None = None, cut_at: str | None = None) -> Backbone:
    """`torchvision.models.get_model(name, **kwargs)` with torchvision's default weights (downloaded), or with
    `weights`, a local file; `kwargs={"weights": None}` for random weights."""
    models = _import("torchvision").models
    spec, build = f"torchvision:{name}", dict(kwargs or {})
    chosen = _library_weights(spec, "weights", build, weights, "DEFAULT")
    if name not in models.list_models():
        raise UserError(f"{spec}: torchvision has no such model. List them with torchvision.models.list_models().")
    try:
        model: nn.Module = models.get_model(name, weights=chosen, **build)
    except (ValueError, KeyError, TypeError) as err:  # an unknown weights name, kwargs that do not fit
        raise UserError(f"{spec}: get_model with weights={chosen!r} and model.kwargs {build} failed "
                        f"({_first_line(err)}).") from None
    except Exception as err:  # the download: no network, a proxy, a truncated file
        raise UserError(f"{spec}: torchvision downloads its weights ({chosen}) from download.pytorch.org into "
                        f"$TORCH_HOME/hub/checkpoints, and that failed ({type(err).__name__}: {_first_line(err)}). "
                        f"Give a local weights file (torchvision's .pth, or a state dict of "
                        f"torchvision.models.{name}()) with model.weights: PATH, or start from random weights with "
                        "model.kwargs: {weights: null}.") from None
    if weights:
        load_into(model, read_state_dict(weights), where=weights)
    backbone = wrap_image_model(model, source=spec, replace=replace, cut_at=cut_at)
    backbone.build_kwargs = build
    return backbone


def rebuild_torchvision(name: str, info: dict[str, Any], folder: Path) -> Backbone:
    surgery = info.get("surgery", {})
    return load_torchvision(name, kwargs={**info.get("build_kwargs", {}), "weights": None},
                            replace=surgery.get("replaced"), cut_at=surgery.get("cut_at"))
