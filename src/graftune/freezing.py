"""Freeze and unfreeze layer groups: the whole body, the first K groups, or parameters by name.

A freeze that would silently do nothing is an error: K larger than the number of groups, or a name
pattern that matches no parameter.
"""

from __future__ import annotations

import re

from torch import nn

from graftune.backbones.base import LayerGroup
from graftune.errors import UserError


def frozen_parameter_names(spec: str | int | list[str], groups: list[LayerGroup], body: nn.Module) -> set[str]:
    """Names (relative to the body) of the parameters the spec (`freeze.body`, as the config parsed it) freezes."""
    names = [n for n, _ in body.named_parameters()]
    if spec == "none":
        return set()
    if spec == "all":
        return set(names)
    if isinstance(spec, int):
        if spec > len(groups):
            raise UserError(f"freeze.body={spec}: the model has only {len(groups)} layer groups "
                            f"({', '.join(g.name for g in groups)}). Use a number up to {len(groups)} or 'all'.")
        return {p for group in groups[:spec] for p in group.params}
    frozen: set[str] = set()
    for pattern in spec if isinstance(spec, list) else [spec]:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise UserError(f"freeze.body: '{pattern}' is not a valid regular expression ({err}).") from None
        matched = {n for n in names if regex.search(n)}
        if not matched:
            raise UserError(f"freeze.body: '{pattern}' matches no parameter. Names look like: {', '.join(names[:3])}.")
        frozen |= matched
    return frozen


def apply_freeze(body: nn.Module, frozen: set[str]) -> None:
    """Set requires_grad on every body parameter: False for the frozen set, True for the rest.

    Parameters that were frozen for structural reasons (layers past a cut) stay frozen.
    """
    for name, param in body.named_parameters():
        if getattr(param, "_graftune_unused", False):
            continue
        param.requires_grad_(name not in frozen)


def trainable_groups(groups: list[LayerGroup], body: nn.Module) -> list[str]:
    """Names of the layer groups that have at least one trainable parameter."""
    params = dict(body.named_parameters())
    return [g.name for g in groups if any(params[p].requires_grad for p in g.params)]
