"""Strategies end to end on real weights and data: stages in metrics, resume mid-strategy, LoRA export,
BatchNorm policies and the errors for combinations that would do nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from safetensors.torch import load_file

import graftune
from tests.e2e.cli import run_cli
from tests.e2e.test_image_classification import pretrained_lite0

pytestmark = pytest.mark.e2e


def text_config(data: Path, strategy: str, epochs: int = 3) -> dict[str, Any]:
    return {"task": "text-classification", "model": {"source": "minilm-l6"},
            "data": {"train": str(data), "max_length": 32}, "strategy": {"name": strategy},
            "train": {"epochs": epochs, "batch_size": 16, "progress": False, "early_stopping": {"patience": None}}}


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_gradual_stages(run: Path) -> None:
    """Each stage change is visible in metrics.jsonl and the optimizer gains groups as layers unfreeze."""
    rows = metrics(run)
    assert [r["stage"] for r in rows] == ["head", "top-1", "top-2"]
    assert [len(r["trainable_groups"]) for r in rows] == [0, 1, 2]
    assert rows[1]["trainable_groups"] == ["model.encoder.layer.5"]
    params = [r["trainable_params"] for r in rows]
    assert params == sorted(params) and len(set(params)) == 3
    assert [len(r["lr"]) for r in rows] == [2, 4, 6]  # head, then decay / no-decay halves per layer group
    strategy = json.loads((run / "strategy.json").read_text())
    assert [s["name"] for s in strategy["stages"]][:3] == ["head", "top-1", "top-2"]


@pytest.fixture(scope="module")
def lora_run(bbc_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted LoRA run through the CLI (text_config's settings), read by the resume test as its
    reference and by the adapter test: one LoRA training on MiniLM instead of two."""
    out = tmp_path_factory.mktemp("lora") / "straight"
    code, output = run_cli("train", "--task", "text-classification", "--model", "minilm-l6", "--data", bbc_folder,
                           "--out", out, "--strategy", "lora", "--epochs", "3", "--batch-size", "16",
                           "--set", "data.max_length=32", "--set", "train.progress=false",
                           "--set", "train.early_stopping.patience=null")
    assert code == 0, output
    return out


@pytest.mark.parametrize("strategy", ["gradual", "lora"])
def test_resume_mid_strategy_matches_uninterrupted(strategy: str, bbc_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    if strategy == "gradual":
        straight = graftune.train(text_config(bbc_folder, strategy), out=tmp_path / "straight").dir
        check_gradual_stages(straight)
    else:
        straight = request.getfixturevalue("lora_run")
    helpers.interrupt_epoch(monkeypatch, 3)  # Ctrl-C during epoch 3: gradual has just entered its third stage
    with pytest.raises(KeyboardInterrupt):
        graftune.train(text_config(bbc_folder, strategy), out=tmp_path / "resumed")
    code, output = run_cli("train", "--resume", tmp_path / "resumed")
    assert code == 0, output
    assert "resuming after epoch 2" in output
    assert [r["epoch"] for r in metrics(tmp_path / "resumed")] == [1, 2, 3]
    for a, b in zip(metrics(straight), metrics(tmp_path / "resumed"), strict=True):
        assert (a["stage"], a["trainable_groups"], a["trainable_params"]) == \
            (b["stage"], b["trainable_groups"], b["trainable_params"])
        assert a["lr"] == pytest.approx(b["lr"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())["test"]
    assert resumed["accuracy"] == pytest.approx(json.loads((straight / "results.json").read_text())["test"]["accuracy"])


def test_lora_saves_adapter_and_merged_model_with_equal_predictions(lora_run: Path, bbc_folder: Path) -> None:
    out = lora_run
    rows = metrics(out)
    assert rows[0]["trainable_params"] < 0.05 * 22_567_301  # adapters and head only
    adapter = out / "model" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "head.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    merged = load_file(str(out / "model" / "model.safetensors"))
    assert not any("lora" in key for key in merged)  # plain weights: loads like any other run
    texts = [(f"t{i}", path.read_text()) for i, path in enumerate(sorted(bbc_folder.glob("*/*.txt"))[::9])]
    # In fp32, as the task computes without the run's autocast: merging W + BA is exact there, while bf16
    # rounds W + BA and W x + B A x differently (a few 1e-4).
    merged_model, adapter_model = graftune.load(out), graftune.load(out, adapter=True)
    by_merged = merged_model.task.predict(merged_model.model, merged_model.preprocess, texts)
    by_adapter = adapter_model.task.predict(adapter_model.model, adapter_model.preprocess, texts)
    for a, b in zip(by_merged, by_adapter, strict=True):
        assert a["label"] == b["label"]
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-5)
    # The adapter really changed the model: the pre-trained body alone gives other outputs.
    base = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    assert any("lora_B" in key and base[key].abs().sum() > 0 for key in base)


@pytest.mark.parametrize("policy", ["frozen", "affine-only"])
def test_batchnorm_policy_in_gradual_image_run(policy: str, fashion_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / policy
    code, output = run_cli("train", "--task", "image-classification", "--model", "efficientnet-lite0",
                           "--data", fashion_folder, "--out", out, "--strategy", "gradual", "--epochs", "3",
                           "--set", "data.image_size=64", "--set", "train.batch_size=16",
                           "--set", f"freeze.batchnorm={policy}",
                           # the head by SGD: a solved head can be the best epoch, and this test reads the body
                           "--set", "strategy.probe=sgd")
    assert code == 0, output
    tuned, original = load_file(str(out / "model" / "model.safetensors")), pretrained_lite0()
    # Stages: head, top-1 (tail: _conv_head/_bn1), top-2 (+ block 15). Lower groups never trained.
    assert torch.equal(tuned["body.model._blocks.3._bn1.running_mean"], original["_blocks.3._bn1.running_mean"])
    top_stats_moved = not torch.equal(tuned["body.model._bn1.running_var"], original["_bn1.running_var"])
    assert top_stats_moved == (policy == "frozen")  # affine-only never updates statistics
    lower_affine_moved = not torch.equal(tuned["body.model._blocks.3._bn1.weight"], original["_blocks.3._bn1.weight"])
    assert lower_affine_moved == (policy == "affine-only")  # affine-only trains BatchNorm scale everywhere
    assert not torch.equal(tuned["body.model._conv_head.weight"], original["_conv_head.weight"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--strategy", "gradul"], "strategy.name"),
    (["--strategy", "partial"], "partial needs freeze.body"),
    (["--strategy", "gradual", "--freeze", "all"], "freeze.body=all"),
    (["--ewc", "1.0"], "--retain"),
    (["--strategy", "lora", "--l2sp", "0.1"], "never changes the body"),
    (["--set", "regularize.mixup=0.2"], "mix images"),
])
def test_strategy_combinations_that_do_nothing_are_errors(flags: list[str], message: str, bbc_folder: Path,
                                                          tmp_path: Path) -> None:
    code, output = run_cli("train", "--task", "text-classification", "--model", "minilm-l6", "--data", bbc_folder,
                           "--out", tmp_path / "run", *flags)
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output
