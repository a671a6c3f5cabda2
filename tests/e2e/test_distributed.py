"""Beyond one process: the same run under `accelerate launch --num_processes 2` (gloo on this CPU) follows the
loss curve of one process with the same global batch.

train.batch_size is the global batch: each process takes its share of every batch and its loss is weighted
by its share of the tokens, so two processes take exactly the steps one takes. Stated tolerance: 1e-5 on
every epoch's train and validation loss (the all-reduce sums in another order); the model has no dropout,
whose masks are drawn per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import helpers
import pytest

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


def train_args(out: Path, llama: Path, news: Path) -> list[str]:
    return ["train", "--task", "causal-lm", "--model", f"hf:{llama}", "--data", str(news), "--epochs", "2",
            "--batch-size", "8", "--lr", "3e-3", "--set", "data.block_size=64", "--set", "strategy.lora.dropout=0",
            "--set", "generation.samples=0", "--set", "train.progress=false", "--set", "train.mixed_precision=no",
            "--out", str(out)]


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def launch(prefix: list[str], out: Path, llama: Path, news: Path, tmp: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "GRAFTUNE_CACHE_DIR": str(tmp / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([*prefix, *train_args(out, llama, news)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(out)


def test_two_processes_take_the_steps_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graftune.datasets import write_bbc_news

    llama = helpers.write_tiny_llama(tmp_path / "llama")
    news = write_bbc_news(tmp_path / "news", per_class=6, seed=0)
    # The one-process reference runs in this process (a Python start-up saved); only the two-process run
    # needs real processes.
    monkeypatch.setenv("GRAFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    code, output = run_cli(*train_args(tmp_path / "one", llama, news))
    assert code == 0, output
    one = metrics(tmp_path / "one")
    accelerate = Path(sys.executable).parent / "accelerate"
    two = launch([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "graftune.cli"],
                 tmp_path / "two", llama, news, tmp_path)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert one[-1]["val_loss"] < one[0]["val_loss"]  # it learned, on both


def test_two_processes_write_each_test_prediction_beside_its_example(tmp_path: Path) -> None:
    """Each process evaluates its share of the test batches (of 3, so the last is padded with repeats that
    Accelerate drops) and the outputs, with their item indices, are gathered; every row of
    test_predictions.jsonl must still be its own example's (what `predict` gives for that file alone)."""
    import graftune

    images = helpers.write_colour_folders(tmp_path / "images", per_class=10)
    tests = str(Path(helpers.__file__).parent)
    env = {**os.environ, "GRAFTUNE_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    accelerate = Path(sys.executable).parent / "accelerate"
    run = tmp_path / "run"
    result = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "graftune.cli", "train", "--task", "image-classification", "--model",
         "module:helpers:tiny_cnn", "--data", str(images), "--freeze", "2", "--epochs", "1", "--batch-size", "8",
         "--set", "data.image_size=16", "--set", "data.augment=false", "--set", "train.eval_batch_size=3",
         "--set", "train.progress=false", "--out", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rows] == json.loads((run / "data_splits.json").read_text())["test"]["items"]
    alone = graftune.load(run, trust_code=True).predict([(r["where"], r["input"]) for r in rows])
    for row, fresh in zip(rows, alone, strict=True):
        for label, p in row["probabilities"].items():
            assert p == pytest.approx(fresh["probabilities"][label], abs=1e-5), row["where"]
    assert (run / "report.html").is_file()
