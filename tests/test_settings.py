"""Settings are resolved once, after the backbone loads: every default decided, the user's config untouched,
and resolving the resolved settings again changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import helpers
import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console

import graftune
from graftune.backbones import Backbone, load_backbone
from graftune.config import Config, StrategyConfig, load_config, validate
from graftune.errors import UserError
from graftune.settings import Found, resolve_settings, run_preprocess
from graftune.tasks.base import Task
from graftune.tasks.causal_lm import CausalLM
from graftune.tasks.image_classification import ImageClassification
from graftune.tasks.text_classification import TextClassification

CNN = "module:helpers:tiny_cnn"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.fixture(scope="module")
def cnn() -> Backbone:
    return load_backbone(CNN, image_size=24)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return load_backbone(f"hf:{helpers.write_tiny_bert(tmp_path_factory.mktemp('bert'), mean_pooling=True)}")


def image_config(**sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": CNN}, "data": {"train": "x"}}
    return validate({**raw, **sections})


def test_every_auto_is_decided_and_the_users_config_is_untouched(cnn: Backbone) -> None:
    cfg = image_config(freeze={"body": 2})
    before = cfg.model_dump()
    settings = resolve_settings(cfg, cnn, ImageClassification)
    assert cfg.model_dump() == before
    assert settings.strategy.name == "partial"
    assert (settings.optim.lr, settings.optim.head_lr) == (3e-4, 1e-3)  # 20x the body's rate, capped at 1e-3
    assert settings.head.pooling == "avg"
    assert settings.train.mixed_precision in ("no", "bf16", "fp16")
    assert settings.train.num_workers == 0  # no GPU here
    assert settings.train.early_stopping.metric == "val_accuracy"
    assert settings.data.image_size == 24  # the size the backbone was loaded at
    assert resolve_settings(settings, cnn, ImageClassification) == settings  # resolving twice changes nothing


def test_configs_are_immutable() -> None:
    cfg = image_config()
    with pytest.raises(ValidationError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.task = "text-classification"  # type: ignore[misc]


@pytest.mark.parametrize(("strategy", "freeze", "lr", "head_lr"), [
    ("auto", "all", 1e-2, 1e-2), ("lora", "none", 5e-4, 1e-3), ("bitfit", "none", 1e-3, 1e-3),
    ("full", "none", 3e-4, 1e-3), ("lp-ft", "none", 3e-4, 1e-3),
])
def test_default_rates_by_strategy(cnn: Backbone, strategy: str, freeze: str, lr: float, head_lr: float) -> None:
    settings = resolve_settings(image_config(strategy={"name": strategy}, freeze={"body": freeze}), cnn,
                                ImageClassification)
    assert (settings.optim.lr, settings.optim.head_lr) == (lr, head_lr)


def test_rates_given_are_kept(cnn: Backbone) -> None:
    settings = resolve_settings(image_config(optim={"lr": 1e-5}), cnn, ImageClassification)
    assert (settings.optim.lr, settings.optim.head_lr) == (1e-5, 2e-4)
    settings = resolve_settings(image_config(optim={"lr": 1e-5, "head_lr": 7e-3}), cnn, ImageClassification)
    assert settings.optim.head_lr == 7e-3


def test_text_settings_follow_the_encoder(bert: Backbone) -> None:
    raw: dict[str, Any] = {"task": "text-classification", "model": {"source": "hf:x"}, "data": {"train": "x"}}
    settings = resolve_settings(validate(raw), bert, TextClassification)
    assert settings.optim.lr == 5e-5 and settings.head.pooling == "mean"  # sentence-transformers pooled means
    # The tiny BERT has 128 positions (its tokenizer, MiniLM's, would allow 512): it reads at most 128 tokens.
    assert settings.data.max_length == 128 and settings.data.image_size is None
    short = resolve_settings(validate({**raw, "data": {"train": "x", "max_length": 64}}), bert, TextClassification)
    long = resolve_settings(validate({**raw, "data": {"train": "x", "max_length": 4096}}), bert, TextClassification)
    assert long.data.max_length == bert.preprocess.max_length == 128  # capped at what the model reads
    assert run_preprocess(bert, long).max_length == 128
    assert run_preprocess(bert, short).max_length == 64 and bert.preprocess.max_length == 128


def test_an_early_stopping_metric_the_task_does_not_report_is_refused(cnn: Backbone) -> None:
    cfg = image_config(train={"early_stopping": {"metric": "val_mae"}})
    with pytest.raises(UserError, match=r"train\.early_stopping\.metric: 'val_mae'.*val_accuracy"):
        resolve_settings(cfg, cnn, ImageClassification)
    chosen = resolve_settings(image_config(train={"early_stopping": {"metric": "val_loss"}}), cnn, ImageClassification)
    assert chosen.train.early_stopping.metric == "val_loss"


def test_an_unknown_task_names_the_key_and_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("task: text-clasification\nmodel: {source: minilm-l6}\ndata: {train: x}\n")
    from graftune.config import load_config

    with pytest.raises(UserError, match=r"run\.yaml:1: 'task'.*Did you mean 'text-classification'"):
        load_config(config)


# --- one copy: what a run records is what its model folder says -----------------------------------------------

STRATEGIES = [name for name in get_args(StrategyConfig.model_fields["name"].annotation) if name != "auto"]
# What each strategy needs beyond its name to run on the tiny CNN (lora: on the tiny BERT's linear layers).
NEEDS: dict[str, dict[str, Any]] = {
    "partial": {"freeze": {"body": 2}},
    "custom": {"strategy": {"stages": [{"train": "head", "epochs": 1}, {"train": 2, "lr_scale": 0.5}]}},
}


def run_config(strategy: str, tmp_path: Path, bbc_folder: Path) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "image-classification", "model": {"source": CNN},
        "data": {"train": str(helpers.write_colour_folders(tmp_path / "colours", per_class=8)), "image_size": 16,
                 "augment": False},
        "strategy": {"name": strategy}, "train": {"epochs": 2, "batch_size": 4, "progress": False},
        "cache": {"dir": str(tmp_path / "cache")},
    }
    if strategy == "lora":
        bert = helpers.write_tiny_bert(tmp_path / "bert", mean_pooling=True)
        raw.update(task="text-classification", model={"source": f"hf:{bert}"},
                   data={"train": str(bbc_folder), "max_length": 32})
    for key, value in NEEDS.get(strategy, {}).items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_recorded_settings_are_the_model_folders(strategy: str, tmp_path: Path, bbc_folder: Path) -> None:
    """RUN/config.yaml and RUN/model/graftune.json hold one copy of the settings, probe choice included."""
    out = graftune.train(run_config(strategy, tmp_path, bbc_folder), out=tmp_path / "run",
                         console=Console(quiet=True)).dir
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    saved = json.loads((out / "model" / "graftune.json").read_text())["settings"]
    assert recorded == saved
    assert recorded["strategy"]["name"] == strategy and recorded["strategy"]["probe"] in ("exact", "sgd")


# --- resolving twice changes nothing ----------------------------------------------------------------------------

HEAD_FIRST = ("linear-probe", "lp-ft", "gradual", "fastai", "ulmfit", "custom")  # NEEDS' custom starts with the head


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return load_backbone(f"hf:{helpers.write_tiny_llama(tmp_path_factory.mktemp('llama'))}", lm=True)


def first_pass(raw: dict[str, Any], backbone: Backbone, task: type[Task]) -> Config:
    """The settings as a run resolves them: with the range test's rate for optim.lr auto and, once the model
    exists, what stands in the exact probe's way."""
    cfg = validate({**raw, "optim": {"lr": "auto"}})
    draft = resolve_settings(cfg, backbone, task, Found(lr=2e-3))
    assert draft.strategy.probe == "auto" and draft.optim.lr == 2e-3  # the probe waits for the model
    obstacles = () if draft.strategy.name in HEAD_FIRST else ("no stage that trains only the head",)
    return resolve_settings(draft, backbone, task, Found(probe_obstacles=obstacles))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("modality", ["image", "text"])
def test_resolving_resolved_settings_changes_nothing(strategy: str, modality: str, cnn: Backbone,
                                                     bert: Backbone) -> None:
    backbone, task = (cnn, ImageClassification) if modality == "image" else (bert, TextClassification)
    raw: dict[str, Any] = {"task": task.name, "model": {"source": "hf:x"}, "data": {"train": "x"},
                           "strategy": {"name": strategy}, "train": {"epochs": 5}}
    for key, value in NEEDS.get(strategy, {}).items():
        raw[key] = {**raw.get(key, {}), **value}
    settings = first_pass(raw, backbone, task)
    assert settings.strategy.probe == ("exact" if strategy in HEAD_FIRST else "sgd")
    assert settings.strategy.lr_decay is not None  # every default decided: nothing left for `plan` to decide
    assert resolve_settings(settings, backbone, task) == settings
    assert resolve_settings(settings, backbone, task, Found(lr=9.0, probe_obstacles=())) == settings
    # what a resume does: the recorded settings, read back, resolve to themselves
    assert resolve_settings(load_config(None, base=settings.model_dump(mode="json")), backbone, task) == settings


@pytest.mark.parametrize("strategy", ["lora", "full", "bitfit"])
def test_a_language_models_settings_resolve_to_themselves(strategy: str, llama: Backbone) -> None:
    raw: dict[str, Any] = {"task": "causal-lm", "model": {"source": "hf:x"}, "data": {"train": "x"},
                           "strategy": {"name": strategy}}
    settings = first_pass(raw, llama, CausalLM)
    assert settings.strategy.probe == "sgd" and settings.data.block_size <= 256
    assert resolve_settings(settings, llama, CausalLM) == settings


def test_the_strategy_defaults_are_recorded_and_kept_when_epochs_change(cnn: Backbone) -> None:
    settings = resolve_settings(image_config(strategy={"name": "lp-ft"}, train={"epochs": 6}), cnn,
                                ImageClassification)
    assert (settings.strategy.probe_epochs, settings.strategy.lr_decay) == (3, 1.0)
    longer = resolve_settings(settings.updated({"train.epochs": 20}), cnn, ImageClassification)
    assert longer.strategy.probe_epochs == 3  # a resume with more epochs keeps the stages the run began with
    ulmfit = resolve_settings(image_config(strategy={"name": "ulmfit"}), cnn, ImageClassification).strategy
    assert (ulmfit.lr_decay, ulmfit.probe_epochs) == (pytest.approx(1 / 2.6), None)
    custom = resolve_settings(image_config(strategy=NEEDS["custom"]["strategy"] | {"name": "custom"}), cnn,
                              ImageClassification).strategy.stages
    assert custom is not None
    assert [(s.name, s.schedule) for s in custom] == [("stage-1", "cosine"), ("stage-2", "cosine")]


def test_the_probe_is_decided_by_what_stands_in_its_way(cnn: Backbone) -> None:
    cfg = image_config(strategy={"name": "linear-probe"})
    assert resolve_settings(cfg, cnn, ImageClassification).strategy.probe == "auto"  # not known yet
    assert resolve_settings(cfg, cnn, ImageClassification, Found(probe_obstacles=())).strategy.probe == "exact"
    assert resolve_settings(cfg, cnn, ImageClassification, Found(probe_obstacles=("x",))).strategy.probe == "sgd"
    exact = image_config(strategy={"name": "linear-probe", "probe": "exact"})
    with pytest.raises(UserError, match=r"strategy\.probe=exact: the head is not one linear layer"):
        resolve_settings(exact, cnn, ImageClassification, Found(probe_obstacles=("the head is not one linear layer",)))
    sgd = image_config(strategy={"name": "linear-probe", "probe": "sgd"})
    assert resolve_settings(sgd, cnn, ImageClassification, Found(probe_obstacles=())).strategy.probe == "sgd"
