"""Settings are resolved once, after the backbone loads: every default decided, the user's config untouched,
and resolving the resolved settings again changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helpers
import pytest
from pydantic import ValidationError

from graftune.backbones import Backbone, load_backbone
from graftune.config import Config, validate
from graftune.errors import UserError
from graftune.settings import resolve_settings, run_preprocess
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
