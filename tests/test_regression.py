"""Regression: a number per input, trained on standardized targets and reported in their own units."""

from __future__ import annotations

import json
import re
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import graftune
from graftune.data.readers import number_label, read_examples
from graftune.errors import UserError
from graftune.tasks.regression import scores_of
from tests.e2e.cli import run_cli


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.mark.parametrize(("cell", "message"), [
    ("abc", "'abc', not a number"), ("", "is empty, not a number"), (None, "is empty"), (True, "true, not a number"),
    ([1.5], "[1.5], not a number"), ("nan", "finite number"), (float("inf"), "finite number")])
def test_a_target_that_is_no_finite_number_is_refused_by_line(cell: object, message: str) -> None:
    with pytest.raises(UserError, match=rf"data\.csv:7: the target in column 'price' .*{re.escape(message)}"):
        number_label(cell, "price", "data.csv:7")


def test_targets_read_as_numbers_and_class_folders_are_refused(tmp_path: Path) -> None:
    table = helpers.write_text(tmp_path / "d.jsonl", '{"text": "a", "y": 3}\n{"text": "b", "y": "-2.5e1"}\n')
    assert [float(e.label) for e in read_examples(table, "text", label_column="y", label_of=number_label)] == [3, -25]
    helpers.write_text(tmp_path / "folders" / "cheap" / "a.txt", "a")
    with pytest.raises(UserError, match="class folders hold classes"):
        read_examples(tmp_path / "folders", "text", label_of=number_label)


def test_scores_match_their_definitions() -> None:
    true, predicted = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0])
    scores = scores_of(true, predicted)
    assert scores["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert scores["mae"] == pytest.approx(2.5 / 4)
    assert scores["r2"] == pytest.approx(1 - 2.25 / 5)
    assert scores["examples"] == 4 and -1 <= scores["spearman"] <= 1


def brightness_table(root: Path, count: int, seed: int) -> Path:
    """Grey images whose target is their brightness in percent: learnable from the pixels, in its own units."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        level = int(rng.integers(20, 236))
        pixels = np.clip(level + rng.normal(0, 6, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{n}.png")
        rows.append({"image": f"{n}.png", "brightness": round(100 * level / 255, 3)})
    table = root / "images.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return table


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image-regression run of the tiny CNN in forced bf16 (inference must match it on every machine)."""
    root = tmp_path_factory.mktemp("regression")
    train, test = brightness_table(root / "train", 48, 0), brightness_table(root / "test", 16, 1)
    config = {"task": "image-regression", "model": {"source": "module:helpers:tiny_cnn"},
              "data": {"train": str(train), "test": str(test), "label_column": "brightness", "image_size": 16,
                       "augment": False},
              "optim": {"lr": 3e-3}, "train": {"epochs": 6, "batch_size": 8, "progress": False,
                                               "mixed_precision": "bf16"}}
    graftune.train(config, out=root / "run", console=Console(quiet=True))
    return root / "run", test


def test_a_regression_run_learns_in_the_targets_units(regression_run: tuple[Path, Path]) -> None:
    run, test = regression_run
    results = json.loads((run / "results.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert results["best_val"] and "val_rmse" in rows[0] and results["test"]["target"] == "brightness"
    truth = [float(json.loads(line)["brightness"]) for line in test.read_text().splitlines()]
    assert results["test"]["rmse"] < 0.7 * float(np.std(truth)), results["test"]  # well below predicting the mean
    assert results["test"]["spearman"] > 0.8


def test_evaluate_and_predict_reproduce_the_run(regression_run: tuple[Path, Path]) -> None:
    run, test = regression_run
    recorded = json.loads((run / "results.json").read_text())["test"]
    again = graftune.evaluate(run, test, trust_code=True)
    assert again["rmse"] == pytest.approx(recorded["rmse"], abs=1e-4) and again["examples"] == 16
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    model = graftune.load(run, trust_code=True)
    for row, fresh in zip(rows, model.predict([(r["where"], r["input"]) for r in rows]), strict=True):
        assert fresh["value"] == pytest.approx(row["predicted"], abs=1e-3)
    code, output = run_cli("predict", str(run), str(test.parent / "0.png"), "--json", "--trust-code")
    assert code == 0, output
    assert isinstance(json.loads(output.splitlines()[-1])["value"], float)


def test_the_report_shows_the_scatter_and_largest_errors(regression_run: tuple[Path, Path]) -> None:
    html = (regression_run[0] / "report.html").read_text()
    assert 'id="scatter"' in html and 'id="worst"' in html and "data:image/png;base64," in html


def test_a_constant_target_is_refused(tmp_path: Path) -> None:
    table = helpers.write_text(tmp_path / "d.csv", "text,y\n" + "".join(f"text {n},5\n" for n in range(12)))
    bert = helpers.write_tiny_bert(tmp_path / "bert", mean_pooling=True)
    code, output = run_cli("train", "--task", "text-regression", "--model", f"hf:{bert}", "--data", str(table),
                           "--set", "data.label_column=y", "--out", str(tmp_path / "run"))
    assert code == 2 and "every training target in column 'y' is 5" in " ".join(output.split()), output


def test_an_onnx_export_gives_the_value_with_its_target_file(regression_run: tuple[Path, Path], tmp_path: Path) -> None:
    import onnxruntime

    from graftune.exporting import export_run

    run, _ = regression_run
    done = export_run(run, "onnx", out=tmp_path / "onnx", trust_code=True)
    meaning = json.loads((done.folder / "target.json").read_text())
    assert meaning["target"] == "brightness" and meaning["value"] == "output * std + mean"
    model = graftune.load(run, trust_code=True)
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()][:4]
    pixels = model.task.encoder(model.preprocess)([r["input"] for r in rows])["pixel_values"]
    session = onnxruntime.InferenceSession(str(done.folder / "model.onnx"))
    (output,) = session.run(None, {"pixel_values": pixels.numpy()})
    values = output.reshape(-1) * meaning["std"] + meaning["mean"]
    with torch.inference_mode():  # the fp32 model the export was checked against (the run computed in bf16)
        expected = model.model({"pixel_values": pixels}).reshape(-1).numpy() * model.task.std + model.task.mean
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    assert abs(values[0] - rows[0]["predicted"]) < 0.01 * abs(rows[0]["predicted"])  # and what the run predicted


def test_a_chained_run_reports_what_it_forgot_of_a_regression(regression_run: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """Task A is a regression: forgetting compares its RMSE (lower is better) before and after training B."""
    run, _ = regression_run
    train = brightness_table(tmp_path / "b", 32, 2)
    config = {"task": "image-regression", "model": {"source": f"run:{run}"},
              "data": {"train": str(train), "label_column": "brightness", "image_size": 16, "augment": False},
              "optim": {"lr": 3e-2}, "train": {"epochs": 2, "batch_size": 8, "progress": False,
                                               "mixed_precision": "bf16"}}
    graftune.train(config, out=tmp_path / "chained", console=Console(quiet=True), trust_code=True)
    forgetting = json.loads((tmp_path / "chained" / "results.json").read_text())["forgetting"]
    own = json.loads((run / "results.json").read_text())["test"]
    assert forgetting["before"]["rmse"] == pytest.approx(own["rmse"], abs=1e-6)
    assert forgetting["rmse_drop"] == pytest.approx(forgetting["after"]["rmse"] - forgetting["before"]["rmse"])


def test_serve_answers_numbers(regression_run: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    from graftune.serve import create_app

    run, test = regression_run
    model = graftune.load(run, trust_code=True)
    client = TestClient(create_app(run, fine_tuned=model))
    image = test.parent / "0.png"
    answer = client.post("/predict", files=[("files", ("0.png", image.read_bytes(), "image/png"))])
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["predictions"]
    assert row["file"] == "0.png" and row["value"] == pytest.approx(model.predict([str(image)])[0]["value"])
    assert client.get("/metadata").json()["endpoints"] == ["/predict"]
    assert "ValuePrediction" in client.get("/openapi.json").json()["components"]["schemas"]


def test_augmentation_is_off_by_default_for_a_number(tmp_path: Path) -> None:
    """`data.augment: auto`: a flip changes an angle's sign and a crop a count, so regression trains on the images
    as they are unless asked; classification keeps its crops and flips."""
    import yaml

    train = brightness_table(tmp_path / "train", 24, 0)
    config = {"model": {"source": "module:helpers:tiny_cnn"},
              "data": {"train": str(train), "label_column": "brightness", "image_size": 16},
              "train": {"epochs": 1, "batch_size": 8, "progress": False}}
    graftune.train({**config, "task": "image-regression"}, out=tmp_path / "run", console=Console(quiet=True))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["augment"] is False
