"""Freezing: which parameters a spec freezes, clear errors for specs that would do nothing, and its effect."""

from __future__ import annotations

import helpers
import pytest
import torch
from torch import nn

from graftune.backbones.base import generic_groups
from graftune.backbones.surgery import CutBody
from graftune.config import FreezeConfig, HeadConfig
from graftune.errors import UserError
from graftune.freezing import apply_freeze, frozen_parameter_names, trainable_groups
from graftune.grafted import GraftedModel
from graftune.optim import build_optimizer, parameter_groups
from graftune.tasks.heads import Pooling, build_head


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.fixture
def body() -> nn.Module:
    return helpers.body_of(helpers.tiny_cnn())


def names(body: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in body.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize(("text", "spec"), [
    ("all", "all"), ("none", "none"), (" all ", "all"), ("3", 3), ("0", "none"), (0, "none"), (" 12 ", 12),
    ("a,b", ["a", "b"]), ("encoder", ["encoder"]), ("a,,b,", ["a", "b"]), (4, 4), (["x"], ["x"]),
])
def test_freeze_body_is_parsed_once_by_the_config(text: str | int | list[str], spec: str | int | list[str]) -> None:
    assert FreezeConfig(body=text).body == spec


def test_all_and_none(body: nn.Module) -> None:
    groups = generic_groups(body)
    assert frozen_parameter_names("all", groups, body) == names(body, "")
    assert frozen_parameter_names("none", groups, body) == set()


def test_first_k_groups(body: nn.Module) -> None:
    groups = generic_groups(body)
    assert [g.name for g in groups] == ["stem", "model.layer1", "model.layer2", "model.layer3"]
    assert frozen_parameter_names(0, groups, body) == set()
    assert frozen_parameter_names(1, groups, body) == names(body, "model.conv1.", "model.bn1.")
    two = FreezeConfig(body="2").body  # the config reads the text once
    assert frozen_parameter_names(two, groups, body) == names(body, "model.conv1.", "model.bn1.", "model.layer1.")
    assert frozen_parameter_names(4, groups, body) == names(body, "")


def test_k_larger_than_the_number_of_groups_is_a_user_error(body: nn.Module) -> None:
    with pytest.raises(UserError) as info:
        frozen_parameter_names(5, generic_groups(body), body)
    message = str(info.value)
    assert "freeze.body=5" in message and "only 4 layer groups" in message
    assert "stem, model.layer1, model.layer2, model.layer3" in message


def test_regex_list(body: nn.Module) -> None:
    groups = generic_groups(body)
    frozen = frozen_parameter_names([r"^model\.layer1\.", r"bn1"], groups, body)
    assert frozen == names(body, "model.layer1.", "model.bn1.")
    assert frozen_parameter_names(FreezeConfig(body=r"model\.layer3\.0,conv1").body, groups, body) == names(
        body, "model.layer3.0.", "model.conv1.")


def test_regex_that_matches_nothing_is_a_user_error(body: nn.Module) -> None:
    with pytest.raises(UserError) as info:
        frozen_parameter_names(["layer1", "encoder"], generic_groups(body), body)
    message = str(info.value)
    assert "'encoder' matches no parameter" in message
    assert "model.conv1.weight" in message  # shows what names look like


def test_invalid_regex_is_a_user_error(body: nn.Module) -> None:
    with pytest.raises(UserError, match=r"'layer\[' is not a valid regular expression"):
        frozen_parameter_names(["layer["], generic_groups(body), body)


def test_apply_freeze_sets_requires_grad(body: nn.Module) -> None:
    groups = generic_groups(body)
    frozen = frozen_parameter_names(2, groups, body)
    apply_freeze(body, frozen)
    for name, param in body.named_parameters():
        assert param.requires_grad == (name not in frozen), name
    assert trainable_groups(groups, body) == ["model.layer2", "model.layer3"]
    apply_freeze(body, set())  # unfreezing works too
    assert all(p.requires_grad for p in body.parameters())
    assert trainable_groups(groups, body) == [g.name for g in groups]


def test_apply_freeze_keeps_layers_past_a_cut_frozen() -> None:
    cut = CutBody(helpers.tiny_cnn(), "layer2")
    unused = cut.model.layer3[0].conv.weight
    unused.requires_grad_(False)
    unused._graftune_unused = True  # what wrap_image_model marks
    apply_freeze(cut, set())
    assert not unused.requires_grad
    assert cut.model.layer2[0].conv.weight.requires_grad


def test_frozen_parameters_do_not_change_after_a_step_and_trainable_ones_do(body: nn.Module) -> None:
    groups = generic_groups(body)
    apply_freeze(body, frozen_parameter_names(2, groups, body))
    model = GraftedModel(body, build_head(HeadConfig(), 16, 3, "avg"), Pooling("avg"))
    optimizer = build_optimizer(parameter_groups(model, groups, 0.1, 0.1, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = nn.functional.cross_entropy(model({"pixel_values": torch.randn(4, 3, 32, 32)}), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name
    assert not model.body.model.layer1[0].conv.weight.requires_grad
    assert model.body.model.layer3[0].conv.weight.requires_grad
