"""The search space of `graftune tune`: each spec read as written, every bad one refused with the key named,
the default space for the body, and every value checked by the run's own rules before a trial trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest

from graftune.backbones import Backbone
from graftune.config import Config, validate
from graftune.errors import UserError
from graftune.settings import load_configured_backbone
from graftune.space import Choice, Range, Space, build_space, parse_spec
from graftune.tasks import get_task


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


def base(tmp_path: Path, **sections: Any) -> Config:
    raw = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
           "data": {"train": str(tmp_path)}, **sections}
    return validate(raw)


@pytest.fixture
def body(tmp_path: Path) -> Backbone:
    return load_configured_backbone(base(tmp_path))


def space(tmp_path: Path, body: Backbone, given: list[str] | None = None, only: list[str] | None = None,
          **sections: Any) -> Space:
    return build_space(base(tmp_path, **sections), get_task("image-classification"), body, given, only)


@pytest.mark.parametrize(("item", "expected"), [
    ("optim.lr=log:1e-5:1e-3", Range("log", 1e-5, 1e-3)),
    ("head.dropout=float:0:0.5", Range("float", 0.0, 0.5)),
    ("train.epochs=int:2:6", Range("int", 2, 6)),
    ("strategy.name=choice:full,lp-ft", Choice(("full", "lp-ft"))),
    ("head.hidden=choice:[],[256],[512, 128]", Choice(([], [256], [512, 128]))),
    ("optim.weight_decay=choice:0,1e-4,0.01", Choice((0, 1e-4, 0.01))),  # numbers read as --set reads them
])
def test_each_spec_reads_as_written(item: str, expected: Any) -> None:
    key, spec = parse_spec(item)
    assert (key, spec) == (item.partition("=")[0], expected)


@pytest.mark.parametrize(("item", "message"), [
    ("optim.lr", "--space 'optim.lr': expected KEY=SPEC"),
    ("=log:1:2", "expected KEY=SPEC"),
    ("optim.lr=uniform:1e-5:1e-3", "unknown spec 'uniform'"),
    ("optim.lr=log:1e-3", "expected log:LOW:HIGH"),
    ("optim.lr=log:small:big", "LOW and HIGH numbers"),
    ("optim.lr=log:0:1e-3", "a log range needs LOW above 0"),
    ("head.dropout=float:0.5:0.1", "LOW must be below HIGH"),
    ("train.epochs=int:1.5:3", "LOW and HIGH integers"),
    ("head.hidden=choice:", "give the values to choose from"),
    ("head.hidden=choice:[256", "not valid YAML"),
    ("strategy.name=choice:full,full", "a value is given twice"),
])
def test_a_bad_spec_is_refused_with_its_text(item: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_spec(item)
    assert message in str(caught.value)
    assert item.partition("=")[0] in str(caught.value)


def test_the_default_space_and_how_space_and_only_change_it(tmp_path: Path, body: Backbone) -> None:
    default = space(tmp_path, body)
    assert list(default.specs) == ["optim.lr", "optim.weight_decay", "strategy.name", "head.hidden"]
    assert default.specs["optim.lr"] == Range("log", 0.1, 10.0, scaled=True)
    assert default.specs["strategy.name"] == Choice(("linear-probe", "partial", "full", "lp-ft", "discriminative",
                                                     "gradual"))
    changed = space(tmp_path, body, ["optim.lr=log:1e-4:1e-2", "head.dropout=float:0:0.5"])
    assert changed.specs["optim.lr"] == Range("log", 1e-4, 1e-2) and "head.dropout" in changed.specs
    narrowed = space(tmp_path, body, ["head.dropout=float:0:0.5"], only=["optim.lr,head.dropout"])
    assert list(narrowed.specs) == ["optim.lr", "head.dropout"]


def test_a_trial_gets_valid_combinations_and_rates_around_its_strategys_default(tmp_path: Path,
                                                                                 body: Backbone) -> None:
    searched, cfg = space(tmp_path, body), base(tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        values = searched.suggest(trial, cfg)
        study.tell(trial, 0.0)
        name, freeze, lr = values["strategy.name"], values["freeze.body"], values["optim.lr"]
        seen.add(name)
        if name == "linear-probe":
            assert freeze == "all" and 1e-3 <= lr <= 1e-1  # around the probe's 1e-2
        elif name == "partial":
            assert 1 <= freeze <= len(body.groups) - 1
        else:
            assert freeze == "none" and 3e-5 <= lr <= 3e-3  # around an image body's 3e-4
        cfg.updated(values)  # a valid config
        assert list(values) == ["optim.lr", "optim.weight_decay", "strategy.name", "freeze.body", "head.hidden"]
    assert seen == set(searched.specs["strategy.name"].values)  # type: ignore[union-attr]


@pytest.mark.parametrize(("given", "only", "sections", "message"), [
    (["optim.lrr=log:1e-4:1e-2"], None, {}, "--space optim.lrr: unknown key 'optim.lrr'. Did you mean 'lr'?"),
    (["optimm.lr=log:1e-4:1e-2"], None, {}, "unknown key 'optimm'. Did you mean 'optim'?"),
    (["train.epochs=int:0:3"], None, {}, "--space train.epochs: 'train.epochs': Input should be greater than"),
    (["strategy.name=choice:full,bogus"], None, {}, "--space strategy.name: 'strategy.name'"),
    (["data.train=choice:a,b"], None, {}, "--space data.train: a study compares its trials on one task"),
    (["data.split.seed=int:0:3"], None, {}, "set data.split with --set"),
    (["train.early_stopping.metric=choice:val_loss,val_accuracy"], None, {}, "validation metric"),
    (["freeze.body=int:1:3"], None, {}, "--space freeze.body: freeze.body follows strategy.name"),
    (["head.dropout=float:0:0.5", "head.dropout=float:0:0.2"], None, {}, "--space head.dropout: given twice"),
    ([], ["optim.lr,head.dropout"], {}, "--only head.dropout: not in the search space"),
    ([], None, {"regularize": {"l2sp": 0.01}}, "--space strategy.name=linear-probe: regularize.l2sp"),
])
def test_a_bad_space_is_refused_naming_the_key(tmp_path: Path, body: Backbone, given: list[str],
                                                only: list[str] | None, sections: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(UserError) as caught:
        space(tmp_path, body, given, only, **sections)
    assert message in str(caught.value)


def test_freeze_body_is_searched_when_the_strategy_is_not(tmp_path: Path, body: Backbone) -> None:
    searched = space(tmp_path, body, ["freeze.body=int:1:3"], only=["freeze.body"], strategy={"name": "partial"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert 1 <= searched.suggest(study.ask(), base(tmp_path, strategy={"name": "partial"}))["freeze.body"] <= 3
