"""Optimizer parameter groups (decay / no-decay, head learning rate, no frozen params) and the schedule."""

from __future__ import annotations

import itertools

import helpers
import pytest
import torch
from torch import nn

from graftune.backbones.base import LayerGroup, generic_groups
from graftune.config import HeadConfig
from graftune.freezing import apply_freeze, frozen_parameter_names
from graftune.grafted import GraftedModel
from graftune.optim import build_optimizer, build_schedule, current_lrs, parameter_groups
from graftune.tasks.heads import Pooling, build_head


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def cnn_model() -> tuple[GraftedModel, list[LayerGroup]]:
    body = helpers.body_of(helpers.tiny_cnn())
    groups = generic_groups(body)
    head = build_head(HeadConfig(hidden=[8]), 16, 3, "avg")
    return GraftedModel(body, head, Pooling("avg")), groups


class TinyEncoder(nn.Module):
    """Transformer-style names: LayerNorm weights are 1-D, attention weights 2-D."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(20, 8)
        self.layer = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(8, 8), "LayerNorm": nn.LayerNorm(8)})
                                   for _ in range(2))


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def param_names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_biases_and_norm_weights_get_no_decay() -> None:
    model, groups = cnn_model()
    result = by_name(parameter_groups(model, groups, body_lr=1e-4, head_lr=1e-3, weight_decay=0.05))
    assert list(result) == ["stem", "stem/no_decay", "model.layer1", "model.layer1/no_decay", "model.layer2",
                            "model.layer2/no_decay", "model.layer3", "model.layer3/no_decay", "head",
                            "head/no_decay"]
    assert param_names(model, result["stem"]) == {"body.model.conv1.weight"}
    assert param_names(model, result["stem/no_decay"]) == {"body.model.bn1.weight", "body.model.bn1.bias"}
    assert param_names(model, result["head"]) == {"head.1.weight", "head.4.weight"}
    assert param_names(model, result["head/no_decay"]) == {"head.1.bias", "head.4.bias"}
    for name, group in result.items():
        assert group["weight_decay"] == (0.0 if name.endswith("/no_decay") else 0.05), name
        for param in group["params"]:
            if not name.endswith("/no_decay"):
                assert param.ndim > 1


def test_transformer_norms_and_biases_get_no_decay() -> None:
    body = TinyEncoder()
    model = GraftedModel(body, nn.Linear(8, 2), Pooling("mean"))
    groups = generic_groups(body)
    result = by_name(parameter_groups(model, groups, 1e-4, 1e-3, 0.01))
    no_decay = param_names(model, result["layer.0/no_decay"])
    assert no_decay == {"body.layer.0.attn.bias", "body.layer.0.LayerNorm.weight", "body.layer.0.LayerNorm.bias"}
    assert param_names(model, result["layer.0"]) == {"body.layer.0.attn.weight"}


def test_learning_rates_per_section() -> None:
    model, groups = cnn_model()
    for group in parameter_groups(model, groups, body_lr=2e-5, head_lr=3e-3, weight_decay=0.01):
        expected = 3e-3 if group["name"].startswith("head") else 2e-5
        assert group["lr"] == expected, group["name"]


def test_every_trainable_parameter_once_and_frozen_ones_never() -> None:
    model, groups = cnn_model()
    apply_freeze(model.body, frozen_parameter_names(2, groups, model.body))
    result = parameter_groups(model, groups, 1e-4, 1e-3, 0.01)
    assert not any(g["name"].startswith(("stem", "model.layer1")) for g in result)
    ids = [id(p) for g in result for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.requires_grad for g in result for p in g["params"])


def test_fully_frozen_body_leaves_only_the_head() -> None:
    model, groups = cnn_model()
    apply_freeze(model.body, frozen_parameter_names("all", groups, model.body))
    result = parameter_groups(model, groups, 1e-4, 1e-3, 0.01)
    assert [g["name"] for g in result] == ["head", "head/no_decay"]
    optimizer = build_optimizer(result)
    assert current_lrs(optimizer) == {"head": 1e-3, "head/no_decay": 1e-3}


def test_parameters_outside_every_group_go_to_body_other() -> None:
    model, groups = cnn_model()
    result = by_name(parameter_groups(model, groups[1:], 1e-4, 1e-3, 0.01))  # no stem group
    assert "stem" not in result
    assert param_names(model, result["body.other"]) == {"body.model.conv1.weight"}
    assert param_names(model, result["body.other/no_decay"]) == {"body.model.bn1.weight", "body.model.bn1.bias"}
    assert result["body.other"]["lr"] == 1e-4


def test_optimizer_is_adamw_with_the_groups() -> None:
    model, groups = cnn_model()
    optimizer = build_optimizer(parameter_groups(model, groups, 1e-4, 1e-3, 0.01))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert current_lrs(optimizer)["model.layer2/no_decay"] == 1e-4
    assert current_lrs(optimizer)["head"] == 1e-3


def lrs_over(kind: str, total: int, warmup_ratio: float) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0, "name": "body"}], lr=1.0)
    schedule = build_schedule(optimizer, kind, total, warmup_ratio)
    lrs = []
    for _ in range(total + 1):
        lrs.append(current_lrs(optimizer)["body"])
        optimizer.step()
        schedule.step()
    return lrs


def test_cosine_warms_up_then_decays_to_zero() -> None:
    lrs = lrs_over("cosine", 100, 0.1)
    assert lrs[0] < 0.01 < lrs[5] < lrs[9]
    assert lrs[10] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(0.0, abs=1e-6)
    assert lrs[55] == pytest.approx(0.5, abs=1e-6)  # halfway through the decay


def test_linear_and_constant_schedules() -> None:
    linear = lrs_over("linear", 20, 0.25)
    assert linear[0] == 0.0 and linear[5] == pytest.approx(1.0)
    assert linear[20] == pytest.approx(0.0, abs=1e-6)
    assert linear[10] == pytest.approx(2 / 3)
    constant = lrs_over("constant", 20, 0.25)
    assert constant[0] == 0.0 and constant[2] == pytest.approx(0.4)
    assert all(lr == pytest.approx(1.0) for lr in constant[5:])


def test_no_warmup_starts_at_the_peak() -> None:
    lrs = lrs_over("cosine", 10, 0.0)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.0, abs=1e-6)
