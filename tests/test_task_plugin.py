"""A task defined here, in the test file, plugs into the one run path: train, cache, resume, evaluate, predict,
and every command after training (serve, export, report, tune, forgetting; plan says it cannot score it).

The toy task is regression: the brightness of a grey image, read from a CSV of image paths and values.
Nothing in graftune knows about it; it registers itself by name and the same path runs it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import helpers
import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from sklearn.model_selection import train_test_split
from torch import nn

import graftune
from graftune.backbones.base import Backbone
from graftune.config import DataConfig
from graftune.data.inputs import input_encoder
from graftune.data.readers import Example, read_examples
from graftune.data.splits import Splits
from graftune.grafted import GraftedModel
from graftune.loop import Batch, Evaluation, Step
from graftune.preprocessing import Preprocess
from graftune.tasks import register
from graftune.tasks.base import Item, Prediction, Task, TaskData
from graftune.tasks.heads import Pooling


class BrightnessPrediction(Prediction):
    value: float


@register
class Brightness(Task):
    """Predict one number per image: its mean brightness in [0, 1]."""

    name = "brightness"
    modality = "image"
    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {"val_loss": "min", "val_mae": "min"}
    default_metric = "val_mae"
    headline = "mae"
    prediction_model = BrightnessPrediction

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        examples = read_examples(data.train, "image", data.format, data.input_column, data.label_column)
        rest, test = train_test_split(examples, test_size=data.split.test, random_state=data.split.seed)
        train, val = train_test_split(rest, test_size=data.split.val, random_state=data.split.seed)
        return TaskData(Splits(train, val, test), {"scale": 1.0})

    def build_model(self, backbone: Backbone) -> GraftedModel:
        return GraftedModel(backbone.body, nn.Linear(backbone.feature_dim, 1), Pooling("avg"),
                            self.settings.freeze.batchnorm)

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        return [(e.input, float(e.label) * self.schema["scale"]) for e in examples]

    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        predicted = model(batch["inputs"]).float().squeeze(-1)
        targets = batch["targets"].float()
        loss = nn.functional.mse_loss(predicted, targets)
        return Step(loss, len(targets), {} if train else {"predicted": predicted, "true": targets})

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        return {"val_loss": evaluation.loss, "val_mae": self.test_results(evaluation)["mae"]}

    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        error = np.abs(evaluation.outputs["predicted"] - evaluation.outputs["true"])
        return {"mae": float(error.mean()), "mse": evaluation.loss, "examples": evaluation.count}

    def summary(self, results: dict[str, Any]) -> str:
        return f"MAE {results['mae']:.4f} ({results['examples']} examples)"

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        return read_examples(path, "image", "auto", input_column, label_column)

    @torch.inference_mode()
    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        model.eval()
        values = model(input_encoder(preprocess)([x for _, x in inputs])).squeeze(-1).tolist()
        return [{"input": name, "value": value} for (name, _), value in zip(inputs, values, strict=True)]

    def format_prediction(self, result: dict[str, Any]) -> str:
        return f"{result['input']}\t{result['value']:.3f}"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))  # module:helpers:tiny_cnn


def write_greys(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` grey PNGs of random brightness, and values.csv with their paths and brightness in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        level = int(rng.integers(0, 256))
        helpers.write_png(folder / f"{i}.png", (level, level, level), size=(20, 20))
        rows.append({"image": f"{i}.png", "value": level / 255})
    with (folder / "values.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "value"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "values.csv"


def config(table: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "brightness", "model": {"source": "module:helpers:tiny_cnn"},
        "data": {"train": str(table), "label_column": "value", "image_size": 16, "augment": False,
                 "split": {"val": 0.25, "test": 0.25}},
        "freeze": {"body": "none"}, "optim": {"lr": 3e-3, "head_lr": 3e-2, "schedule": "constant", "warmup_ratio": 0},
        "train": {"epochs": 8, "batch_size": 8, "progress": False, "early_stopping": {"patience": None}},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_task_from_outside_graftune_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    table = write_greys(tmp_path / "greys", 48)
    result = graftune.train(config(table), out=tmp_path / "run", console=Console(quiet=True))

    settings = yaml.safe_load((result.dir / "config.yaml").read_text())
    assert settings["train"]["early_stopping"]["metric"] == "val_mae"  # the task's default, resolved once
    history = rows(result.dir)
    assert all("val_mae" in row for row in history)
    assert min(r["val_mae"] for r in history) < history[0]["val_mae"]  # it learned
    saved = json.loads((result.dir / "results.json").read_text())
    assert saved["test"]["mae"] == result.test["mae"] and saved["best_val"]["val_mae"] == min(
        r["val_mae"] for r in history)
    train_values = [float(v) for v in _values(result.dir, "train", table)]
    test_values = _values(result.dir, "test", table)
    baseline = float(np.mean(np.abs(np.array(test_values) - np.mean(train_values))))
    assert result.test["mae"] < 0.6 * baseline  # better than predicting the mean brightness

    again = graftune.evaluate(result.dir, table, label_column="value", trust_code=True)
    assert again["examples"] == 48
    predictions = graftune.predict(result.dir, files=[str(table.parent / "0.png")], trust_code=True)
    assert set(predictions[0]) == {"input", "value"} and isinstance(predictions[0]["value"], float)


def test_the_feature_cache_serves_a_new_task(tmp_path: Path) -> None:
    table = write_greys(tmp_path / "greys", 24)
    probe = config(table, freeze={"body": "all"}, optim={"lr": 1e-2, "head_lr": 1e-2}, train={"epochs": 3})
    cached = graftune.train(probe, out=tmp_path / "cached", console=Console(quiet=True))
    live = graftune.train({**probe, "cache": {"features": False}}, out=tmp_path / "live", console=Console(quiet=True))
    assert [r["cached_features"] for r in rows(cached.dir)] == [True] * 3
    for a, b in zip(rows(cached.dir), rows(live.dir), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)  # float targets through the cache
        assert a["val_mae"] == pytest.approx(b["val_mae"], abs=1e-6)


def test_a_new_task_resumes_like_the_built_in_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = write_greys(tmp_path / "greys", 24)
    short = config(table, train={"epochs": 4})
    straight = graftune.train(short, out=tmp_path / "straight", console=Console(quiet=True))
    helpers.interrupt_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        graftune.train(short, out=tmp_path / "resumed", console=Console(quiet=True))
    resumed = graftune.train({}, out=tmp_path / "resumed", resume=True, console=Console(quiet=True),
                             trust_code=True)
    assert [r["epoch"] for r in rows(resumed.dir)] == [1, 2, 3, 4]
    for a, b in zip(rows(straight.dir), rows(resumed.dir), strict=True):
        assert a["val_mae"] == pytest.approx(b["val_mae"], abs=1e-6)
    assert resumed.test["mae"] == pytest.approx(straight.test["mae"], abs=1e-6)


def _values(run: Path, split: str, table: Path) -> list[float]:
    """Brightness of the examples in one split of the run, from the CSV rows data_splits.json names."""
    lines = table.read_text().splitlines()
    wheres = json.loads((run / "data_splits.json").read_text())[split]["items"]
    return [float(lines[int(where.rsplit(":", 1)[1]) - 1].split(",")[1]) for where in wheres]


def test_a_new_task_goes_through_every_command_after_training(tmp_path: Path) -> None:
    """Nothing outside graftune/tasks/ knows this task: serve, export, report, tune, forgetting and plan take it
    through the contract alone."""
    from fastapi.testclient import TestClient

    from graftune.report import write_report
    from graftune.serve import create_app
    from graftune.tune import tune
    from tests.e2e.cli import run_cli

    table = write_greys(tmp_path / "greys", 32)
    run = graftune.train(config(table, train={"epochs": 3}), out=tmp_path / "run", console=Console(quiet=True)).dir
    model = graftune.load(run, trust_code=True)
    image = table.parent / "0.png"
    expected = model.predict([str(image)])[0]["value"]

    client = TestClient(create_app(run, fine_tuned=model))  # serve
    answer = client.post("/predict", files=[("files", ("0.png", image.read_bytes(), "image/png"))])
    assert answer.status_code == 200 and answer.json()["predictions"][0]["value"] == pytest.approx(expected)

    done = graftune.export(run, "onnx", out=tmp_path / "onnx", trust_code=True)  # export, checked against PyTorch
    assert done.check.max_abs_diff <= done.check.limit

    assert "MAE" in write_report(run).read_text()  # report: the summary line is the task's own

    study = tune(config(table, train={"epochs": 1}), tmp_path / "study", trials=1, only=["optim.lr"],
                          console=Console(quiet=True))
    assert study.best_value is not None

    chained = config(table, model={"source": f"run:{run}"}, train={"epochs": 1})  # forgetting of task A
    results = graftune.train(chained, out=tmp_path / "chained", console=Console(quiet=True), trust_code=True)
    forgetting = json.loads((results.dir / "results.json").read_text())["forgetting"]
    own = json.loads((run / "results.json").read_text())["test"]
    assert forgetting["before"]["mae"] == pytest.approx(own["mae"], abs=1e-6) and "mae_drop" in forgetting

    code, output = run_cli("plan", "--task", "brightness", "--model", "module:helpers:tiny_cnn", "--data", str(table),
                           "--out", str(tmp_path / "plan"))
    assert code == 2 and "classification tasks only" in " ".join(output.split())
