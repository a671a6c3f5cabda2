"""Strategies as data: plans, stage entry (freezing, optimizer growth), BatchNorm policies, schedules,
the regularizers (L2-SP, EWC, mixup, cutmix, their config checks) and LoRA targets, on tiny models."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import helpers
import pytest
import torch
from torch import nn

from graftune.backbones.base import LayerGroup, generic_groups
from graftune.config import Config, HeadConfig, RegularizeConfig, validate
from graftune.errors import UserError
from graftune.freezing import apply_freeze, frozen_parameter_names
from graftune.grafted import GraftedModel
from graftune.lora import is_pointwise, lora_targets
from graftune.optim import grow_optimizer, lr_multiplier
from graftune.regularize import AnchorPenalty, check, fisher_diagonal, mixing_collate
from graftune.staging import StageSwitch
from graftune.strategies import Stage, plan, resolve_name, strategy_defaults, trainable_group_count
from graftune.tasks.heads import Pooling, build_head

LR, HEAD_LR = 1e-4, 1e-3
GROUPS = ["stem", "model.layer1", "model.layer2", "model.layer3"]  # TinyResNet's layer groups, bottom first


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def config(**sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": "x"}, "data": {"train": "x"},
                           "optim": {"lr": LR, "head_lr": HEAD_LR}, "train": {"epochs": 6}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate(raw)


def stages_of(name: str, num_groups: int = 4, **strategy: Any) -> list[Stage]:
    return plan(strategy_defaults(config(strategy={"name": name, **strategy})), num_groups)


def tiny_model(batchnorm: str = "frozen") -> tuple[GraftedModel, list[LayerGroup]]:
    torch.manual_seed(0)
    body = helpers.body_of(helpers.TinyResNet())
    head = build_head(HeadConfig(dropout=0.0), 16, 3, "avg")
    return GraftedModel(body, head, Pooling("avg"), batchnorm), generic_groups(body)


def switch_for(model: GraftedModel, groups: list[LayerGroup], stages: list[Stage], never: set[str] | None = None,
               batchnorm: str = "frozen") -> StageSwitch:
    return StageSwitch(model, groups, stages, never or set(), batchnorm, 0.01, None, total_epochs=10)


def images(batch: int = 8, seed: int = 0, size: int = 16) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 + 1}


def trainable_by_group(model: GraftedModel, groups: list[LayerGroup]) -> dict[str, bool]:
    """Whether each layer group trains; fails when a group is only partly trainable."""
    params = dict(model.body.named_parameters())
    flags = {g.name: {params[p].requires_grad for p in g.params} for g in groups}
    assert all(len(f) == 1 for f in flags.values()), flags
    return {name: f.pop() for name, f in flags.items()}


def held_ids(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def layout(optimizer: torch.optim.Optimizer) -> list[tuple[str, list[int], float]]:
    return [(group["name"], [id(p) for p in group["params"]], group["lr"]) for group in optimizer.param_groups]


def step(model: GraftedModel, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    loss = nn.functional.cross_entropy(model(images()), torch.arange(8) % 3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# --- plans ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "extra", "train", "decay"), [
    ("linear-probe", {}, "head", 1.0), ("full", {}, "all", 1.0), ("partial", {}, "all", 1.0),
    ("bitfit", {}, "bias", 1.0), ("lora", {}, "lora", 1.0), ("discriminative", {}, "all", 0.8),
    ("discriminative", {"lr_decay": 0.5}, "all", 0.5), ("full", {"lr_decay": 0.9}, "all", 0.9),
])
def test_single_stage_strategies(name: str, extra: dict[str, Any], train: str, decay: float) -> None:
    [stage] = stages_of(name, **extra)
    assert (stage.train, stage.epochs, stage.plateau_patience) == (train, None, None)
    assert (stage.lr, stage.head_lr, stage.lr_decay, stage.schedule) == (LR, HEAD_LR, decay, "cosine")


def test_gradual_unfreezes_one_group_per_stage_from_the_top() -> None:
    stages = stages_of("gradual", 4, unfreeze_every=2)
    assert [s.name for s in stages] == ["head", "top-1", "top-2", "top-3", "all"]
    assert [s.train for s in stages] == ["head", 1, 2, 3, "all"]
    assert [s.epochs for s in stages] == [2, 2, 2, 2, None]
    assert {(s.lr, s.head_lr, s.lr_decay) for s in stages} == {(LR, HEAD_LR, 1.0)}


def test_lp_ft_probes_fast_until_plateau_then_fine_tunes_at_the_body_rate() -> None:
    probe, tune = stages_of("lp-ft", plateau_patience=2)
    assert (probe.name, probe.train, probe.epochs, probe.plateau_patience) == ("probe", "head", 3, 2)
    assert (tune.name, tune.train, tune.epochs, tune.plateau_patience) == ("fine-tune", "all", None, None)
    assert probe.head_lr == pytest.approx(10 * HEAD_LR) and tune.head_lr == tune.lr == LR  # the probe at 10x
    assert stages_of("lp-ft", probe_epochs=1)[0].epochs == 1


def test_fastai_frozen_epoch_then_rates_spread_over_100x() -> None:
    frozen, unfrozen = stages_of("fastai", 4)
    assert (frozen.name, frozen.train, frozen.epochs) == ("frozen", "head", 1)
    assert (unfrozen.name, unfrozen.train, unfrozen.epochs) == ("unfrozen", "all", None)
    assert {(s.schedule, s.warmup_ratio) for s in (frozen, unfrozen)} == {("one-cycle", 0.25)}
    rates = [*unfrozen.group_lrs(GROUPS).values(), unfrozen.head_lr]  # bottom group first, head last
    assert rates[-1] == pytest.approx(HEAD_LR / 2, rel=1e-12)
    assert rates[0] == pytest.approx(HEAD_LR / 2 / 100, rel=1e-9)
    assert abs(rates[0] / rates[-1] - 1 / 100) < 1e-9
    ratios = [low / high for low, high in itertools.pairwise(rates)]
    assert all(r == pytest.approx(ratios[0], rel=1e-9) for r in ratios)


def test_ulmfit_is_gradual_with_decay_and_slanted_triangular_rates() -> None:
    stages = stages_of("ulmfit", 3)
    assert [s.train for s in stages] == ["head", 1, 2, "all"]
    assert {(s.lr_decay, s.schedule, s.warmup_ratio) for s in stages} == {(1 / 2.6, "slanted-triangular", 0.1)}


@pytest.mark.parametrize(("body", "name"), [("all", "linear-probe"), ("none", "full"), (3, "partial"),
                                            (["layer1"], "partial")])
def test_auto_names_what_freeze_body_says(body: Any, name: str) -> None:
    assert resolve_name(config(freeze={"body": body})) == name
    assert resolve_name(config(freeze={"body": body}, strategy={"name": "gradual"})) == "gradual"


def test_custom_stages() -> None:
    cfg = config(strategy={"name": "custom", "plateau_patience": 4, "stages": [
        {"name": "warm", "train": "head", "epochs": 2, "until_plateau": True},
        {"train": 2, "epochs": 1, "lr_scale": 0.5, "schedule": "one-cycle"}, {"train": "all"}]})
    stages = plan(strategy_defaults(cfg), 4)
    assert [(s.name, s.train, s.epochs, s.plateau_patience) for s in stages] == [
        ("warm", "head", 2, 4), ("stage-2", 2, 1, None), ("stage-3", "all", None, None)]
    assert [(s.lr, s.head_lr) for s in stages] == [(LR, HEAD_LR), (LR * 0.5, HEAD_LR * 0.5), (LR, HEAD_LR)]
    assert [(s.schedule, s.warmup_ratio) for s in stages[1:]] == [("one-cycle", 0.25), ("cosine", 0.1)]


@pytest.mark.parametrize(("before", "after"), [("all", "head"), (3, 2), ("bias", 1), (2, "bias"), ("all", 3)])
def test_custom_stages_that_refreeze_are_user_errors(before: Any, after: Any) -> None:
    cfg = config(strategy={"name": "custom", "stages": [{"train": before}, {"train": after}]})
    with pytest.raises(UserError, match="only unfreeze more"):
        plan(strategy_defaults(cfg), 4)
    with pytest.raises(UserError, match=r"strategy\.stages"):
        stages_of("custom")  # no stages at all


def test_group_lrs_decay_exactly_down_the_depth() -> None:
    stage = dataclasses.replace(stages_of("full")[0], lr=1.0, lr_decay=0.5)
    assert stage.group_lrs(["a", "b", "c"]) == {"a": 0.25, "b": 0.5, "c": 1.0}
    rates = list(dataclasses.replace(stage, lr=3e-4, lr_decay=0.8).group_lrs(GROUPS).values())
    assert rates[-1] == 3e-4
    assert all(low / high == pytest.approx(0.8, rel=1e-12) for low, high in itertools.pairwise(rates))


# --- entering stages --------------------------------------------------------------------------------------------


def test_gradual_stages_freeze_exactly_and_the_optimizer_holds_exactly_the_trainable() -> None:
    model, groups = tiny_model()
    assert [g.name for g in groups] == GROUPS
    switch = switch_for(model, groups, stages_of("gradual", len(groups), lr_decay=0.5))
    optimizer = None
    for index in range(len(switch.stages)):  # stage `index` trains the top `index` groups
        optimizer = switch.enter(index, optimizer)
        assert trainable_by_group(model, groups) == {g: i >= len(GROUPS) - index for i, g in enumerate(GROUPS)}
        assert all(p.requires_grad for p in model.head.parameters())
        ids = held_ids(optimizer)
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
        for group in optimizer.param_groups:
            name = group["name"].split("/")[0]
            expected = HEAD_LR if name == "head" else LR * 0.5 ** (len(GROUPS) - 1 - GROUPS.index(name))
            assert group["lr"] == pytest.approx(expected, rel=1e-12), group["name"]


def test_entering_a_stage_grows_the_optimizer_and_keeps_adam_state() -> None:
    model, groups = tiny_model()
    switch = switch_for(model, groups, stages_of("gradual", len(groups)))
    optimizer = switch.enter(0, None)
    step(model, optimizer)
    names = [g["name"] for g in optimizer.param_groups]
    moments = {id(p): optimizer.state[p]["exp_avg"].clone() for p in model.head.parameters()}
    assert switch.enter(1, optimizer) is optimizer
    assert [g["name"] for g in optimizer.param_groups] == [*names, "model.layer3", "model.layer3/no_decay"]
    assert all(torch.equal(optimizer.state[p]["exp_avg"], moments[id(p)]) for p in model.head.parameters())
    layer3 = list(model.body.model.layer3.parameters())
    assert not any(p in optimizer.state for p in layer3)
    step(model, optimizer)
    assert all("exp_avg" in optimizer.state[p] for p in layer3)


def test_replay_builds_the_same_optimizer_as_entering_stage_by_stage() -> None:
    model, groups = tiny_model()
    switch = switch_for(model, groups, stages_of("ulmfit", len(groups)))
    optimizer = switch.enter(0, None)
    for index in range(1, 4):
        switch.enter(index, optimizer)
    assert layout(switch.replay(3)) == layout(optimizer)


def test_never_frozen_groups_stay_frozen_in_every_stage() -> None:
    model, groups = tiny_model()
    never = frozen_parameter_names(1, groups, model.body)
    stages = stages_of("gradual", trainable_group_count(groups, never))
    assert [s.train for s in stages] == ["head", 1, 2, "all"]
    switch = switch_for(model, groups, stages, never)
    optimizer = None
    for index in range(len(stages)):
        optimizer = switch.enter(index, optimizer)
        assert trainable_by_group(model, groups)["stem"] is False
        assert not {id(p) for n, p in model.body.named_parameters() if n in never} & set(held_ids(optimizer))
    assert trainable_by_group(model, groups) == {"stem": False, **{g: True for g in GROUPS[1:]}}


def test_discriminative_rates_count_only_groups_that_can_train() -> None:
    """With the top group held frozen by freeze.body, the top group that trains still gets the full rate."""
    model, groups = tiny_model()
    never = frozen_parameter_names([r"^model\.layer3\."], groups, model.body)
    stages = stages_of("discriminative", trainable_group_count(groups, never))
    rates = switch_for(model, groups, stages, never).group_lrs(stages[0])
    assert rates["model.layer2"] == pytest.approx(LR)
    assert rates["model.layer1"] == pytest.approx(LR * 0.8)
    assert rates["stem"] == pytest.approx(LR * 0.8 ** 2)


def test_affine_only_trains_batchnorm_affine_even_in_a_head_only_stage() -> None:
    model, groups = tiny_model("affine-only")
    optimizer = switch_for(model, groups, stages_of("linear-probe"), batchnorm="affine-only").enter(0, None)
    for module in model.body.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Conv2d)):
            assert module.weight.requires_grad == isinstance(module, nn.BatchNorm2d)
    assert set(held_ids(optimizer)) == {id(p) for p in model.parameters() if p.requires_grad}


def bn_stats(model: GraftedModel) -> list[torch.Tensor]:
    return [t.clone() for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize(("policy", "strategy", "unchanged"), [
    ("frozen", "linear-probe", True), ("frozen", "full", False), ("train", "linear-probe", False),
    ("affine-only", "full", True),
])
def test_batchnorm_policy_decides_whether_running_statistics_move(policy: str, strategy: str,
                                                                   unchanged: bool) -> None:
    model, groups = tiny_model(policy)
    switch_for(model, groups, stages_of(strategy), batchnorm=policy).enter(0, None)
    before = bn_stats(model)
    model.train()
    loss = model(images()).sum()
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats(model), strict=True)) == unchanged
    loss.backward()
    bn_grads = [m.weight.grad for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(g is not None and g.abs().sum() > 0 for g in bn_grads) == (strategy == "full")


def test_frozen_policy_moves_statistics_only_in_trained_groups() -> None:
    model, groups = tiny_model()
    switch_for(model, groups, stages_of("gradual", len(groups))).enter(1, None)  # top-1: layer3 only
    layer1, layer3 = model.body.model.layer1[0].bn, model.body.model.layer3[0].bn
    before = layer1.running_mean.clone(), layer3.running_mean.clone()
    model.train()
    model(images())
    assert torch.equal(layer1.running_mean, before[0]) and not torch.equal(layer3.running_mean, before[1])


# --- schedules and optimizer growth -----------------------------------------------------------------------------


def test_schedule_shapes() -> None:
    """one-cycle: 1/25 to 1 to ~0; slanted-triangular: 1/32 to 1 to 1/32; cosine: 0.5 halfway."""
    rates = [lr_multiplier("one-cycle", s, 100, 25) for s in range(101)]
    assert rates[0] == pytest.approx(1 / 25) and rates[25] == pytest.approx(1.0) and max(rates) == rates[25]
    assert rates[100] < 1e-4
    assert all(a < b for a, b in itertools.pairwise(rates[:26]))
    assert all(a > b for a, b in itertools.pairwise(rates[25:]))
    rates = [lr_multiplier("slanted-triangular", s, 100, 10) for s in range(101)]
    assert (rates[0], rates[10], rates[100]) == pytest.approx((1 / 32, 1.0, 1 / 32))
    assert rates[55] == pytest.approx((1 + 0.5 * 31) / 32) and max(rates) == rates[10]
    cosine = [lr_multiplier("cosine", s, 100, 10) for s in (10, 55, 100)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_grow_optimizer_adds_groups_and_moves_held_rates() -> None:
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    optimizer = torch.optim.AdamW([{"name": "a", "params": [a], "lr": 1.0}])
    grow_optimizer(optimizer, [{"name": "a", "params": [a, b], "lr": 0.5, "weight_decay": 0.0},
                               {"name": "c", "params": [c], "lr": 0.1, "weight_decay": 0.0},
                               {"name": "again", "params": [a], "lr": 9.0, "weight_decay": 0.0}])
    assert layout(optimizer) == [("a", [id(a), id(b)], 0.5), ("c", [id(c)], 0.1)]


# --- regularization ---------------------------------------------------------------------------------------------


def value(penalty: AnchorPenalty) -> float:
    return float(penalty().detach())


def test_anchor_penalty_is_zero_at_the_anchors_and_grows_with_distance() -> None:
    model, _ = tiny_model()
    penalty = AnchorPenalty(model, RegularizeConfig(l2sp=2.0, l2sp_head=0.0))
    assert value(penalty) == 0.0 and penalty.distance() == 0.0
    weight = model.body.model.layer3[1].conv.weight
    with torch.no_grad():
        weight.add_(0.1)
    assert value(penalty) == pytest.approx(2.0 / 2 * 0.01 * weight.numel(), rel=1e-5)
    assert penalty.distance() == pytest.approx(math.sqrt(0.01 * weight.numel()), rel=1e-5)
    penalty().backward()
    assert torch.allclose(weight.grad, torch.full_like(weight, 2.0 * 0.1))
    with torch.no_grad():
        weight.add_(0.1)
    assert value(penalty) == pytest.approx(2.0 / 2 * 0.04 * weight.numel(), rel=1e-5)
    weight.requires_grad_(False)
    assert value(penalty) == 0.0  # a frozen weight contributes nothing


def test_l2sp_head_and_ewc_terms() -> None:
    model, _ = tiny_model()
    head_norm = sum(float(p.detach().pow(2).sum()) for p in model.head.parameters())
    assert value(AnchorPenalty(model, RegularizeConfig(l2sp=1.0, l2sp_head=0.5))) == pytest.approx(0.25 * head_norm)
    weight = model.body.model.layer2[0].conv.weight
    penalty = AnchorPenalty(model, RegularizeConfig(ewc=2.0, retain="r"),
                            {"model.layer2.0.conv.weight": torch.full_like(weight, 3.0)})
    with torch.no_grad():
        weight.sub_(0.1)
        model.body.model.layer1[0].conv.weight.add_(1.0)  # no Fisher for this one: no EWC term
    assert value(penalty) == pytest.approx(2.0 / 2 * 3.0 * 0.01 * weight.numel(), rel=1e-5)


def test_fisher_diagonal_is_nonnegative_mean_one_and_restores_the_model() -> None:
    model, groups = tiny_model()
    apply_freeze(model.body, frozen_parameter_names(2, groups, model.body))
    model.train()
    flags, modes = [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]
    fisher = fisher_diagonal(model, [images(4, seed) for seed in range(3)])
    body = dict(model.body.named_parameters())
    assert fisher.keys() == body.keys()
    assert all(fisher[n].shape == p.shape and bool((fisher[n] >= 0).all()) for n, p in body.items())
    assert float(fisher["model.conv1.weight"].sum()) > 0  # frozen parameters get a Fisher too
    total = sum(float(t.sum()) for t in fisher.values()) / sum(t.numel() for t in fisher.values())
    assert total == pytest.approx(1.0, rel=1e-5)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    with pytest.raises(UserError, match="retain"):
        fisher_diagonal(model, [])


def pretrained_like(model: GraftedModel) -> GraftedModel:
    """Give BatchNorm real running statistics as pre-training would (fresh ones make the Fisher degenerate)."""
    batchnorms = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in batchnorms:
        module.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(images(16, 50 + seed, size=8))
    return model


def distance_after_training(reg: RegularizeConfig, steps: int = 20) -> float:
    """Full fine-tuning of the tiny model on fixed random data; how far the body ends from its start."""
    model = pretrained_like(tiny_model()[0])
    fisher = fisher_diagonal(model, [images(8, 99, size=8)]) if reg.ewc else None
    penalty = AnchorPenalty(model, reg, fisher)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, labels = images(12, 1, size=8), torch.arange(12) % 3
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels) + penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return penalty.distance()


@functools.cache
def unanchored_distance() -> float:
    return distance_after_training(RegularizeConfig())


@pytest.mark.parametrize("reg", [RegularizeConfig(l2sp=10.0), RegularizeConfig(ewc=10.0, retain="r")])
def test_anchoring_keeps_the_body_closer_to_its_start(reg: RegularizeConfig) -> None:
    free, anchored = unanchored_distance(), distance_after_training(reg)
    assert free > 0.5
    assert anchored < 0.6 * free


def pixel_collate(items: list[tuple[str, int]]) -> dict[str, Any]:
    """Each image is constant, with the value of its label: the mix shows in the pixels."""
    labels = torch.tensor([label for _, label in items])
    return {"inputs": {"pixel_values": labels.float().view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()},
            "targets": labels}


ITEMS = [(f"img{i}", i) for i in range(6)]


def test_mixup_mixes_pixels_and_labels_with_one_lambda() -> None:
    torch.manual_seed(3)
    batch = mixing_collate(pixel_collate, 6, mixup=0.4, cutmix=0.0)(ITEMS)
    torch.manual_seed(3)  # the same draws: lambda, then the pairing
    lam, order = float(torch.distributions.Beta(0.4, 0.4).sample()), torch.randperm(6)
    pixels, onehot = pixel_collate(ITEMS)["inputs"]["pixel_values"], torch.eye(6)
    assert torch.allclose(batch["inputs"]["pixel_values"], lam * pixels + (1 - lam) * pixels[order])
    assert torch.allclose(batch["targets"], lam * onehot + (1 - lam) * onehot[order])


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_batches_have_soft_labels_that_match_the_pixels(mixup: float, cutmix: float) -> None:
    collate = mixing_collate(pixel_collate, 6, mixup, cutmix)
    for seed in range(8):
        torch.manual_seed(seed)
        batch = collate(ITEMS)
        labels, pixels = batch["targets"], batch["inputs"]["pixel_values"]
        assert pixels.shape == (6, 3, 8, 8) and labels.shape == (6, 6)
        assert torch.allclose(labels.sum(dim=1), torch.ones(6))
        assert bool((labels.max(dim=1).values >= 0.5 - 1e-6).all()) and bool((labels <= 1 + 1e-6).all())
        expected_mean = labels @ torch.arange(6.0)  # each label's share of the pixels (cutmix: of the area)
        assert torch.allclose(pixels.mean(dim=(1, 2, 3)), expected_mean, atol=1e-5)


@pytest.mark.parametrize(("reg", "strategy", "modality", "error"), [
    ({"l2sp": 1.0}, "linear-probe", "image", "never changes"), ({"ewc": 1.0, "retain": "r"}, "lora", "text", "never"),
    ({"ewc": 1.0}, "full", "image", "--retain"), ({"retain": "r"}, "full", "image", "only used by EWC"),
    ({"mixup": 0.2}, "full", "text", "inputs are text"), ({"cutmix": 1.0}, "gradual", "text", "inputs are text"),
    ({"l2sp": 1.0}, "full", "image", None), ({"ewc": 1.0, "retain": "r"}, "gradual", "text", None),
    ({"mixup": 0.2, "cutmix": 1.0}, "linear-probe", "image", None),
])
def test_check_refuses_regularization_that_would_do_nothing(reg: dict[str, Any], strategy: str, modality: str,
                                                             error: str | None) -> None:
    if error is None:
        check(config(regularize=reg), strategy, modality)
        return
    with pytest.raises(UserError, match=error):
        check(config(regularize=reg), strategy, modality)


# --- LoRA targets -----------------------------------------------------------------------------------------------


def test_lora_targets_linear_layers_else_pointwise_convolutions() -> None:
    assert lora_targets(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2))),
                        None) == ["1", "2.0"]
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1, stride=2),
                        nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 8, 1, padding="same"), nn.Conv2d(8, 8, 1, padding=1))
    assert [is_pointwise(m) for m in cnn] == [False, True, False, False, True, False]
    assert not is_pointwise(nn.Linear(2, 2))
    assert lora_targets(cnn, None) == ["1", "4"]


def test_lora_target_regexes_and_errors() -> None:
    body = helpers.body_of(helpers.TinyResNet())
    assert lora_targets(body, [r"layer3\.0"]) == ["model.layer3.0.conv"]
    with pytest.raises(UserError, match="no linear or 1x1"):
        lora_targets(body, None)  # only 3x3 convolutions
    for patterns in ([r"encoder"], [r"bn"]):
        with pytest.raises(UserError, match="match no linear or convolution layer"):
            lora_targets(body, patterns)
