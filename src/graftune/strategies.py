"""Named fine-tuning strategies as data: a list of stages, each saying what trains, how long, how fast.

A stage trains the new head plus one part of the body (`train`): nothing (`head`), the top K layer
groups, every group (`all`), only biases (`bias`) or only LoRA adapters (`lora`). Its rates are the
top body group's `lr`, the head's `head_lr` and `lr_decay`, the factor each group down the depth gets
(discriminative rates). A stage lasts `epochs` epochs, the rest of the run when `None`, and ends
early after `plateau_patience` epochs without validation improving, when that is set. Stages only
ever unfreeze more, so the optimizer only ever gains parameters.

`strategy_defaults(cfg)` decides the strategy settings left unset (settings.resolve_settings records
them); `plan(settings, num_groups)` turns resolved settings into stages, deciding nothing itself; `fit`
walks them; `stage_trainable` says which body parameters a stage trains. Nothing else decides what is frozen.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from graftune.backbones.base import LayerGroup
from graftune.config import Config
from graftune.errors import UserError

DESCRIPTIONS: dict[str, str] = {
    "linear-probe": "Body frozen, only the new head trains (feature extraction). Use with very little data or "
                    "a task close to the original one; fastest, forgets nothing.",
    "partial": "The first K layer groups (freeze.body=K) stay frozen, the rest trains. Use when low-level "
               "features transfer but the top must adapt; cheaper than full.",
    "full": "Every layer trains. Use with enough data (thousands of examples) or a task far from the original.",
    "gradual": "ULMFiT gradual unfreezing: the head first, then one more group from the top every "
               "strategy.unfreeze_every epochs. Use to avoid wrecking pre-trained features with a random head.",
    "discriminative": "Full fine-tuning with layer-wise rate decay: each group down the depth gets "
                      "strategy.lr_decay (default 0.8) times the rate above it. General layers move least.",
    "lp-ft": "Linear probe (head at 10x head_lr) until validation plateaus, then full fine-tuning at the body's "
             "low rate. Keeps "
             "features that a random head would distort; good out-of-distribution accuracy (Kumar et al. 2022).",
    "lora": "Low-rank adapters (PEFT) on the linear layers, plus the head. Few trainable parameters, small "
            "checkpoints, little forgetting; exports the adapter and a merged model.",
    "bitfit": "Only the body's biases and the head train (Ben Zaken et al. 2021). Tiny updates, cheap to store; "
              "for small data with a text encoder.",
    "fastai": "fastai's fine_tune: one epoch with the body frozen, then everything with rates spread "
              "geometrically over 100x from the first group to the head; one-cycle schedule in each stage.",
    "ulmfit": "ULMFiT: gradual unfreezing, discriminative rates (each group 1/2.6 of the one above) and slanted "
              "triangular rates in each stage (Howard & Ruder 2018).",
    "custom": "Your own stages from strategy.stages.",
}

ULMFIT_DECAY = 1 / 2.6  # Howard & Ruder 2018, section 3.2
FASTAI_LR_MULT = 100.0  # fastai's fine_tune(lr_mult=100)
PROBE_LR_FACTOR = 10.0  # lp-ft's probe stage: a linear probe takes larger steps than a head on a moving body
SCHEDULE_WARMUP = {"one-cycle": 0.25, "slanted-triangular": 0.1}  # fastai pct_start, ULMFiT cut_frac
# strategy.lr_decay left unset: discriminative's own default, ULMFiT's, else none (every group at one rate).
# fastai spreads its unfrozen stage over FASTAI_LR_MULT whatever lr_decay says (its frozen stage trains no group).
DEFAULT_DECAY = {"discriminative": 0.8, "ulmfit": ULMFIT_DECAY}


@dataclass(frozen=True)
class Stage:
    """One stage of a strategy, with its rates resolved."""

    name: str
    train: str | int  # "head" | "all" | "bias" | "lora" | K (the top K layer groups)
    epochs: int | None
    plateau_patience: int | None
    lr: float
    head_lr: float
    lr_decay: float
    schedule: str
    warmup_ratio: float

    def group_lrs(self, group_names: list[str]) -> dict[str, float]:
        """Rate of every layer group (bottom first): the top one gets `lr`, each lower one `lr_decay` times more."""
        top = len(group_names) - 1
        return {name: self.lr * self.lr_decay ** (top - i) for i, name in enumerate(group_names)}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_name(cfg: Config, default: str | None = None) -> str:
    """`auto` names what freeze.body already says: linear-probe, partial, or with nothing frozen the task's
    default (`default`, lora for language models) or full."""
    if cfg.strategy.name != "auto":
        return cfg.strategy.name
    body = cfg.freeze.body
    return "linear-probe" if body == "all" else (default or "full") if body == "none" else "partial"


def strategy_defaults(cfg: Config) -> Config:
    """`cfg`, whose strategy is named (not `auto`), with the strategy settings its stages read and it left unset
    decided: `lr_decay` (0.8 for discriminative, 1/2.6 for ULMFiT, else 1: no decay), `probe_epochs` (lp-ft: half
    of train.epochs, at least 1; fastai: 1) and each custom stage's name (stage-N) and schedule (optim.schedule).
    Recorded with the run, so a resume that gives more epochs keeps the stages the run started with."""
    strategy, name = cfg.strategy, cfg.strategy.name
    assert name != "auto", "name the strategy first (resolve_name)"
    values: dict[str, Any] = {"strategy.lr_decay": strategy.lr_decay or DEFAULT_DECAY.get(name, 1.0)}
    if strategy.probe_epochs is None and name in ("lp-ft", "fastai"):
        values["strategy.probe_epochs"] = max(1, cfg.train.epochs // 2) if name == "lp-ft" else 1
    if name == "custom" and strategy.stages:
        values["strategy.stages"] = [
            {**stage.model_dump(mode="json"), "name": stage.name or f"stage-{i + 1}",
             "schedule": stage.schedule or cfg.optim.schedule} for i, stage in enumerate(strategy.stages)]
    return cfg.updated(values)


def plan(settings: Config, num_groups: int) -> list[Stage]:
    """The stages of the resolved settings' strategy for a body with `num_groups` trainable layer groups."""
    strategy, optim = settings.strategy, settings.optim
    name = strategy.name
    assert name != "auto" and isinstance(optim.lr, float) and optim.head_lr is not None, "resolve the settings first"
    assert strategy.lr_decay is not None, "resolve the settings first (strategy_defaults)"
    base = Stage(name, "all", None, None, optim.lr, optim.head_lr, strategy.lr_decay, optim.schedule,
                 optim.warmup_ratio)
    if name == "linear-probe":
        return [replace(base, train="head")]
    if name in ("full", "partial", "discriminative"):
        return [base]
    if name in ("bitfit", "lora"):
        return [replace(base, train="bias" if name == "bitfit" else "lora")]
    if name == "gradual":
        return _gradual(base, num_groups, strategy.unfreeze_every)
    if name == "lp-ft":
        assert strategy.probe_epochs is not None, "resolve the settings first (strategy_defaults)"
        return [replace(base, name="probe", train="head", epochs=strategy.probe_epochs,
                        head_lr=PROBE_LR_FACTOR * optim.head_lr, plateau_patience=strategy.plateau_patience),
                replace(base, name="fine-tune", head_lr=optim.lr)]
    if name == "fastai":
        assert strategy.probe_epochs is not None, "resolve the settings first (strategy_defaults)"
        top = optim.head_lr / 2  # fine_tune halves the base rate after the frozen epoch
        decay = (1 / FASTAI_LR_MULT) ** (1 / max(1, num_groups))  # slice(lr/100, lr) over groups + head
        one_cycle = replace(base, schedule="one-cycle", warmup_ratio=SCHEDULE_WARMUP["one-cycle"])
        return [replace(one_cycle, name="frozen", train="head", epochs=strategy.probe_epochs),
                replace(one_cycle, name="unfrozen", lr=top * decay, head_lr=top, lr_decay=decay)]
    if name == "ulmfit":
        stlr = replace(base, schedule="slanted-triangular", warmup_ratio=SCHEDULE_WARMUP["slanted-triangular"])
        return _gradual(stlr, num_groups, strategy.unfreeze_every)
    return _custom(settings, base)


def _gradual(base: Stage, num_groups: int, every: int) -> list[Stage]:
    stages = [replace(base, name="head", train="head", epochs=every)]
    stages += [replace(base, name=f"top-{k}", train=k, epochs=every) for k in range(1, num_groups)]
    return [*stages, replace(base, name="all", train="all", epochs=None)]


def _custom(cfg: Config, base: Stage) -> list[Stage]:
    if not cfg.strategy.stages:
        raise UserError("strategy.name=custom needs strategy.stages: a list of {epochs, train, lr_scale}.")
    stages = []
    for spec in cfg.strategy.stages:
        schedule = spec.schedule
        assert spec.name is not None and schedule is not None, "resolve the settings first (strategy_defaults)"
        stages.append(replace(base, name=spec.name, train=spec.train, epochs=spec.epochs,
                              plateau_patience=cfg.strategy.plateau_patience if spec.until_plateau else None,
                              lr=base.lr * spec.lr_scale,
                              head_lr=base.head_lr * spec.lr_scale, schedule=schedule,
                              warmup_ratio=SCHEDULE_WARMUP.get(schedule, cfg.optim.warmup_ratio)))
    _check_monotone(stages)
    return stages


def _check_monotone(stages: list[Stage]) -> None:
    """Stages may only unfreeze more: the optimizer never drops parameters."""
    for i, (before, after) in enumerate(itertools.pairwise(stages), start=1):
        if not _covers(after.train, before.train):
            raise UserError(f"strategy.stages[{i}]: train={after.train!r} freezes what the stage before it "
                            f"(train={before.train!r}) trained; stages may only unfreeze more.")


def _covers(after: str | int, before: str | int) -> bool:
    if after == "all" or before == "head" or after == before:
        return True
    return isinstance(after, int) and isinstance(before, int) and after >= before


def stage_trainable(stage: Stage, groups: list[LayerGroup], body: nn.Module, never: set[str],
                    batchnorm: str) -> set[str]:
    """Names (relative to the body) of the body parameters this stage trains.

    `never` is what freeze.body keeps frozen in every stage. With the `affine-only` BatchNorm policy,
    BatchNorm scale and shift train in every stage and group.
    """
    names = [n for n, _ in body.named_parameters()]
    if stage.train == "head":
        chosen: set[str] = set()
    elif stage.train == "all":
        chosen = set(names)
    elif stage.train == "bias":
        chosen = {n for n in names if n.endswith("bias")}
    elif stage.train == "lora":
        chosen = {n for n in names if ".lora_" in n}
    else:
        chosen = {p for group in eligible_groups(groups, never)[-int(stage.train):] for p in group.params}
    chosen -= never
    if batchnorm == "affine-only":
        chosen |= batchnorm_affine(body)
    return chosen


def eligible_groups(groups: list[LayerGroup], never: set[str]) -> list[LayerGroup]:
    """Layer groups a strategy can unfreeze: those not wholly kept frozen by freeze.body."""
    return [g for g in groups if any(p not in never for p in g.params)]


def trainable_group_count(groups: list[LayerGroup], never: set[str]) -> int:
    return len(eligible_groups(groups, never))


def batchnorm_affine(body: nn.Module) -> set[str]:
    """Names of the weight and bias of every BatchNorm layer in the body."""
    return {f"{module_name}.{param_name}".lstrip(".")
            for module_name, module in body.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for param_name, _ in module.named_parameters(recurse=False)}
