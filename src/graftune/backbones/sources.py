"""One registry of the places pre-trained models come from, each with its load and its rebuild from a run.

A source loads pre-trained weights (`load`) and, for a model graftune saved, rebuilds the same
architecture without them (`rebuild`: the run's own weights are loaded on top). Sources are named by a
prefix (`hf:ID_OR_DIR`, `timm:NAME`, `torchvision:NAME`, `module:pkg.mod:factory`, `run:DIR`) or are a
preset name alone (`minilm-l6`, `efficientnet-lite0`).

Example:
    >>> backbone = load_backbone("minilm-l6")
    >>> [g.name for g in backbone.groups][:3]
    ['stem', 'model.encoder.layer.0', 'model.encoder.layer.1']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftune.backbones.base import Backbone
from graftune.backbones.hf import load_hf, rebuild_hf
from graftune.backbones.module import load_module, rebuild_module
from graftune.backbones.presets import (
    load_efficientnet_lite0,
    load_minilm,
    load_smollm2,
    rebuild_efficientnet_lite0,
)
from graftune.backbones.vision_libs import load_timm, load_torchvision, rebuild_timm, rebuild_torchvision
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess
from graftune.weights import load_into, read_state_dict

MODEL_FORMAT = 2  # of RUN/model/graftune.json; 2: the run's resolved settings and the task's schema


@dataclass(frozen=True)
class LoadOptions:
    """What a user may say about loading, besides the source itself (config keys model.* and head.*), and
    whether code a run folder names may be imported (`--trust-code`, never recorded)."""

    weights: str | None = None
    kwargs: dict[str, Any] | None = None
    replace: str | None = None
    cut_at: str | None = None
    image_size: int | None = None
    trust_remote_code: bool = False
    code_path: str | None = None
    trust_code: bool = False
    lm: bool = False  # a causal language model with its LM head, for the tasks that generate text


# The config key of each option a source may take or refuse; a source that takes no option refuses it.
OPTION_KEYS = {"weights": "model.weights", "kwargs": "model.kwargs", "replace": "head.replace",
               "cut_at": "head.cut_at", "trust_remote_code": "model.trust_remote_code", "code_path": "model.code_path"}
Rebuild = Callable[[str, dict[str, Any], Path], Backbone]  # (ref, graftune.json, model folder) -> architecture


@dataclass(frozen=True)
class Source:
    load: Callable[[str, LoadOptions], Backbone]
    rebuild: Rebuild | None  # None: nothing to rebuild from (a run records the source it started from)
    accepts: frozenset[str] = frozenset()  # the LoadOptions it uses


def require_trust(spec: str, origin: Path | str, trust_code: bool, code: dict[str, str] | None = None) -> None:
    """Refuse to follow a `module:` spec found in a file graftune wrote, unless the user trusts it."""
    if trust_code:
        return
    where = f" ({code['file']}, sha256 {code['sha256'][:12]}...)" if code else ""
    raise UserError(f"{origin}: names Python code to import: {spec}{where}. graftune imports code that a run folder "
                    "names only when you allow it: add --trust-code (Python: trust_code=True) if you trust where "
                    "this folder came from.")


def load_run_body(ref: str, options: LoadOptions) -> Backbone:
    """`run:DIR`: the body of a model graftune fine-tuned before, with its fine-tuned weights."""
    run_dir = Path(ref)
    if not run_dir.is_dir():
        raise UserError(f"run:{run_dir}: run directory not found.")
    folder = run_dir / "model"
    info = read_model_info(folder)
    backbone = rebuild_backbone(info, folder, options.trust_code)
    state = read_state_dict(folder / "model.safetensors")
    body_state = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    load_into(backbone.body, body_state, where=str(folder / "model.safetensors"))
    backbone.default_pooling = info["settings"]["head"]["pooling"]  # the pooling the body was tuned with
    return backbone


SOURCES: dict[str, Source] = {
    "hf": Source(lambda ref, o: load_hf(ref, trust_remote_code=o.trust_remote_code, lm=o.lm), rebuild_hf,
                 frozenset({"trust_remote_code"})),
    "timm": Source(lambda ref, o: load_timm(ref, weights=o.weights, kwargs=o.kwargs, cut_at=o.cut_at), rebuild_timm,
                   frozenset({"weights", "kwargs", "cut_at"})),
    "torchvision": Source(lambda ref, o: load_torchvision(ref, weights=o.weights, kwargs=o.kwargs, replace=o.replace,
                                                          cut_at=o.cut_at),
                          rebuild_torchvision, frozenset({"weights", "kwargs", "replace", "cut_at"})),
    "module": Source(lambda ref, o: load_module(ref, weights=o.weights, kwargs=o.kwargs, replace=o.replace,
                                                cut_at=o.cut_at, image_size=o.image_size or 224,
                                                code_path=o.code_path),
                     rebuild_module, frozenset({"weights", "kwargs", "replace", "cut_at", "code_path"})),
    "run": Source(load_run_body, None),
}
PRESETS: dict[str, Source] = {
    "minilm-l6": Source(lambda ref, o: load_minilm(lm=o.lm), rebuild_hf),
    "efficientnet-lite0": Source(lambda ref, o: load_efficientnet_lite0(), rebuild_efficientnet_lite0),
    "smollm2-135m": Source(lambda ref, o: load_smollm2(lm=o.lm), rebuild_hf),
}


def find_source(spec: str) -> tuple[Source, str]:
    """The source a model spec names, and the reference to give it."""
    if spec in PRESETS:
        return PRESETS[spec], spec
    prefix, _, ref = spec.partition(":")
    if prefix in SOURCES and ref:
        return SOURCES[prefix], ref
    raise UserError(f"unknown model source '{spec}'. Use one of {', '.join(p + ':...' for p in SOURCES)} "
                    f"or a preset: {', '.join(PRESETS)}.")


def load_backbone(spec: str, *, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                  replace: str | None = None, cut_at: str | None = None, image_size: int | None = None,
                  trust_remote_code: bool = False, code_path: str | None = None,
                  trust_code: bool = False, lm: bool = False) -> Backbone:
    """Load pre-trained weights from any source and return the body without its old head.

    An option the source does not use is an error, not silently ignored; `trust_code` lets a `run:` source
    import the code its run folder names.
    """
    source, ref = find_source(spec)
    options = LoadOptions(weights, kwargs, replace, cut_at, image_size, trust_remote_code, code_path, trust_code,
                          lm)
    for name, key in OPTION_KEYS.items():
        if getattr(options, name) and name not in source.accepts:
            users = [f"{prefix}:" for prefix, other in SOURCES.items() if name in other.accepts]
            raise UserError(f"{key}: '{spec}' does not use it ({key} is for {', '.join(users)} sources). Remove it.")
    backbone = source.load(ref, options)
    if image_size and isinstance(backbone.preprocess, ImagePreprocess):
        backbone.preprocess.size = image_size
    return backbone


def rebuild_backbone(info: dict[str, Any], folder: Path, trust_code: bool = False) -> Backbone:
    """Rebuild a saved model's body architecture (random weights) from its `graftune.json` and files; a
    `module:` source is imported only with `trust_code`."""
    source, ref = find_source(info["source"])
    if source.rebuild is None:
        raise UserError(f"{folder}/graftune.json: source '{info['source']}' cannot be rebuilt.")
    if info["source"].startswith("module:"):
        require_trust(info["source"], folder / "graftune.json", trust_code, info.get("code"))
    backbone = source.rebuild(ref, info, folder)
    backbone.surgery, backbone.build_kwargs = info.get("surgery", {}), info.get("build_kwargs", {})
    backbone.code = info.get("code")
    saved = info["preprocess"]
    if isinstance(backbone.preprocess, ImagePreprocess) and saved.get("kind") == "image":
        backbone.preprocess = ImagePreprocess(size=saved["size"], mean=tuple(saved["mean"]), std=tuple(saved["std"]),
                                              crop_pct=saved["crop_pct"])
    return backbone


def read_model_info(folder: Path) -> dict[str, Any]:
    """Read `graftune.json` of a saved model folder, with a clear error when it is not one."""
    path = folder / "graftune.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a graftune model folder (no graftune.json). Give a run directory "
                        "written by `graftune train`.")
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: damaged (not the JSON graftune writes: {err}). Train the model again.") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise UserError(f"{path}: written in model format {found}; this graftune reads format "
                        f"{MODEL_FORMAT}. Train the model again with this version.")
    missing = [key for key in ("task", "schema", "source", "settings", "preprocess") if key not in info]
    if missing:
        raise UserError(f"{path}: damaged (no {', '.join(missing)}). Train the model again.")
    return info
