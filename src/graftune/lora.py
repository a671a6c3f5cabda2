"""LoRA through PEFT: low-rank adapters on the body, saved as a PEFT adapter, merged for export.

The body is wrapped by `peft.get_peft_model`, which renames its parameters (`base_model.model.` prefix,
`.base_layer`, `lora_A` / `lora_B`); the layer groups are mapped onto the new names so freezing,
rates and metrics keep working by group.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from graftune.backbones.base import Backbone, LayerGroup
from graftune.config import LoraConfig
from graftune.errors import UserError
from graftune.grafted import GraftedModel

ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"


def add_lora(backbone: Backbone, cfg: LoraConfig) -> Backbone:
    """The backbone with fresh LoRA adapters (B = 0, so outputs are unchanged until it trains) and its layer
    groups renamed to match. PEFT wraps `backbone.peft_target` (a Transformers model inside the body) when
    set, so that the saved adapter loads with PEFT onto the original model; else the whole body."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    target = backbone.peft_target or ""
    adapted = backbone.body.get_submodule(target) if target else backbone.body
    targets = lora_targets(adapted, cfg.targets)
    _plain_pointwise(adapted, targets)
    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                            bias="none")
    wrapped = get_peft_model(adapted, config)
    body = _put(backbone.body, target, wrapped)
    return dataclasses.replace(backbone, body=body, groups=regroup(backbone.groups, body, target))


def _put(body: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """`body` with its submodule `name` replaced by `module` (the whole body when `name` is empty)."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, child, module)
    return body


def _peft_module(body: nn.Module) -> tuple[str, Any]:
    """The PEFT-wrapped module inside `body` and its name ('' when it is the body)."""
    from peft import PeftModel

    for name, module in body.named_modules():
        if isinstance(module, PeftModel):
            return name, module
    raise ValueError("the body carries no LoRA adapters")


def _plain_pointwise(body: nn.Module, targets: list[str]) -> None:
    """PEFT builds adapter layers with the target's own class; subclasses with extra constructor arguments
    (EfficientNet's same-padding convolutions) break that. A pointwise convolution needs no padding, so
    it becomes a plain nn.Conv2d with the same parameters and names."""
    for name in targets:
        module = body.get_submodule(name)
        if type(module) is nn.Conv2d or not is_pointwise(module):
            continue
        assert isinstance(module, nn.Conv2d)
        plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
        plain.weight, plain.bias = module.weight, module.bias
        parent, _, child = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, child, plain)


def regroup(groups: list[LayerGroup], body: nn.Module, target: str = "") -> list[LayerGroup]:
    """The same layer groups, with the parameter names of the body whose `target` PEFT wrapped."""
    owner = {param: group.name for group in groups for param in group.params}
    renamed: dict[str, list[str]] = {group.name: [] for group in groups}
    wrapper = f"{target}.base_model.model." if target else "base_model.model."
    for name, _ in body.named_parameters():
        plain = name.replace(wrapper, f"{target}." if target else "", 1).replace(".base_layer", "")
        if ".lora_" in plain:  # an adapter belongs with the layer it adapts
            plain = plain.split(".lora_")[0] + ".weight"
        renamed[owner[plain]].append(name)
    return [LayerGroup(group.name, renamed[group.name]) for group in groups]


def save_adapter(model: GraftedModel, folder: Path) -> None:
    """PEFT's adapter files plus the new head, in `folder/adapter/`."""
    target = folder / ADAPTER_DIR
    _, adapted = _peft_module(model.body)
    adapted.save_pretrained(str(target))
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(target / HEAD_FILE))


def merge(model: GraftedModel) -> None:
    """Fold the adapters into the body's weights; the body holds plain modules again."""
    name, adapted = _peft_module(model.body)
    model.body = _put(model.body, name, adapted.merge_and_unload())


def attach_adapter(model: GraftedModel, folder: Path, target: str | None = None) -> None:
    """Load a saved adapter and head onto a model built on the pre-trained body (inference only); `target`
    is the submodule the adapter was made for (the backbone's `peft_target`)."""
    from peft import PeftModel

    name = target or ""
    adapted = model.body.get_submodule(name) if name else model.body
    model.body = _put(model.body, name, PeftModel.from_pretrained(adapted, str(folder / ADAPTER_DIR)))
    model.head.load_state_dict(load_file(str(folder / ADAPTER_DIR / HEAD_FILE)))


def lora_targets(body: nn.Module, patterns: list[str] | None) -> list[str]:
    """Module names LoRA adapts: the regexes given, or every linear layer (1x1 convolutions in a CNN)."""
    if patterns:
        chosen = [n for n, m in body.named_modules() if n and any(re.search(p, n) for p in patterns)
                  and isinstance(m, (nn.Linear, nn.Conv2d))]
        if not chosen:
            raise UserError(f"strategy.lora.targets: {patterns} match no linear or convolution layer.")
        return chosen
    # An output layer that shares its weight with the input embeddings (a language model's tied LM head) is
    # left alone: an adapter there would change the embeddings too.
    tied = {id(m.weight) for m in body.modules() if isinstance(m, nn.Embedding)}
    linear = [n for n, m in body.named_modules() if isinstance(m, nn.Linear) and id(m.weight) not in tied]
    if linear:
        return linear
    pointwise = [n for n, m in body.named_modules() if is_pointwise(m)]
    if not pointwise:
        raise UserError("strategy lora: the body has no linear or 1x1 convolution layer to adapt; "
                        "set strategy.lora.targets.")
    return pointwise


def is_pointwise(module: nn.Module) -> bool:
    """A 1x1, stride-1, ungrouped convolution: a linear map per pixel, whatever padding its class adds."""
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
        and module.groups == 1 and module.padding in ((0, 0), "valid", "same")
