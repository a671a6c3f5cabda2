"""A saved model folder rebuilds the model the run trained: evaluate reproduces the run's test metrics,
predict gives the task's answer for new inputs, and what is not a model folder is refused clearly."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import helpers
import pytest
from rich.console import Console

import graftune
from graftune.artifacts import load_model
from graftune.errors import UserError
from tests.e2e.cli import run_cli


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny CNN run with an explicit test folder: (run, test folder)."""
    train = helpers.write_colour_folders(tmp_path / "train", per_class=8, seed=0)
    test = helpers.write_colour_folders(tmp_path / "test", per_class=4, seed=1)
    model = {"source": "module:helpers:tiny_cnn", "kwargs": {"num_classes": 5}}
    config = {"task": "image-classification", "model": model,
              "data": {"train": str(train), "test": str(test), "image_size": 16, "augment": False},
              "freeze": {"body": 1}, "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    graftune.train(config, out=tmp_path / "run", console=Console(quiet=True))
    return tmp_path / "run", test


def test_evaluate_reproduces_the_test_metrics_of_the_run(trained: tuple[Path, Path]) -> None:
    run, test = trained
    recorded = json.loads((run / "results.json").read_text())["test"]
    again = graftune.evaluate(run, test, trust_code=True)
    assert again["confusion_matrix"] == recorded["confusion_matrix"]
    assert again["accuracy"] == recorded["accuracy"] and again["loss"] == pytest.approx(recorded["loss"], abs=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_evaluate_and_predict_compute_in_the_runs_precision(precision: str, tmp_path: Path) -> None:
    """Forced, not `auto`: a run in bf16 autocast is reproduced by inference on every machine, not only on one
    whose CPU picks bf16 by itself."""
    train = helpers.write_colour_folders(tmp_path / "train", per_class=8, seed=0)
    test = helpers.write_colour_folders(tmp_path / "test", per_class=4, seed=1)
    config = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
              "data": {"train": str(train), "test": str(test), "image_size": 16, "augment": False},
              "train": {"epochs": 1, "batch_size": 8, "progress": False, "mixed_precision": precision}}
    graftune.train(config, out=tmp_path / "run", console=Console(quiet=True))
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    model = graftune.load(tmp_path / "run", trust_code=True)
    assert model.precision == precision
    again = graftune.evaluate(tmp_path / "run", test, trust_code=True)
    assert again["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "test_predictions.jsonl").read_text().splitlines()]
    for row, fresh in zip(rows, model.predict([(r["where"], r["input"]) for r in rows]), strict=True):
        for label, p in row["probabilities"].items():
            assert p == pytest.approx(fresh["probabilities"][label], abs=1e-5)


def test_the_model_folder_records_task_schema_settings_and_build(trained: tuple[Path, Path]) -> None:
    run, _ = trained
    info = json.loads((run / "model" / "graftune.json").read_text())
    assert info["task"] == "image-classification" and info["schema"]["labels"] == ["blue", "green", "red"]
    assert info["settings"]["strategy"]["name"] == "partial" and info["settings"]["head"]["pooling"] == "avg"
    assert info["build_kwargs"] == {"num_classes": 5} and info["surgery"] == {"replaced": "fc"}
    assert info["preprocess"]["size"] == 16


def test_predict_gives_labels_with_probabilities(trained: tuple[Path, Path]) -> None:
    run, test = trained
    files = sorted(str(p) for p in test.glob("*/*.png"))
    results = graftune.predict(run, files=files, trust_code=True)
    assert [r["input"] for r in results] == files
    for result in results:
        probabilities = result["probabilities"]
        assert set(probabilities) == {"blue", "green", "red"} and sum(probabilities.values()) == pytest.approx(1)
        assert result["label"] == result["argmax"] == max(probabilities, key=probabilities.__getitem__)
        assert result["decision"] == {"rule": "argmax"}  # three classes: no threshold
        assert result["file"] == result["input"]  # the row names the image it is about
    fine_tuned = load_model(run, trust_code=True)
    evaluation = fine_tuned.evaluate(fine_tuned.task.read_labelled(test, None, "label"))
    right = sum(r["label"] == Path(r["input"]).parent.name for r in results)
    assert right / len(results) == evaluation["accuracy"]  # predict and evaluate agree


@pytest.mark.parametrize(("files", "texts", "message"), [
    (["missing.png"], [], "input file not found"),
    ([], ["a text"], "--text is for text models"),
    ([], [], "nothing to predict"),
])
def test_bad_prediction_inputs(trained: tuple[Path, Path], files: list[str], texts: list[str], message: str) -> None:
    run, _ = trained
    with pytest.raises(UserError, match=message):
        graftune.predict(run, files=files, texts=texts, trust_code=True)


def test_a_file_that_is_no_image(trained: tuple[Path, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(UserError, match="not an image file"):
        graftune.predict(trained[0], files=[str(notes)], trust_code=True)


def test_evaluate_refuses_labels_the_model_never_saw(trained: tuple[Path, Path], tmp_path: Path) -> None:
    other = helpers.write_png(tmp_path / "other" / "purple" / "1.png")
    with pytest.raises(UserError, match="labels purple were not in the training data"):
        graftune.evaluate(trained[0], other.parent.parent, trust_code=True)


def test_model_folders_of_another_format_are_refused(trained: tuple[Path, Path]) -> None:
    run, _ = trained
    info_path = run / "model" / "graftune.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "format": 1}))
    with pytest.raises(UserError, match="model format 1"):
        graftune.load(run, trust_code=True)


# --- predictions that describe themselves (issue 21) -------------------------------------------------------


def test_a_binary_classifier_states_its_threshold_and_keeps_the_argmax(tmp_path: Path) -> None:
    """The label is decided at the validated threshold, and the row says so: the rule, the label it is on and
    the argmax beside it, so a threshold that overrides the argmax is seen, not hidden."""
    data = helpers.write_colour_folders(tmp_path / "colours", per_class=8)
    shutil.rmtree(data / "green")  # two classes: blue, red
    config = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
              "data": {"train": str(data), "image_size": 16, "augment": False}, "freeze": {"body": 1},
              "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    run = graftune.train(config, tmp_path / "run", console=Console(quiet=True)).dir
    files = sorted(str(p) for p in data.glob("*/*.png"))
    info_path = run / "model" / "graftune.json"
    info = json.loads(info_path.read_text())
    assert "threshold" in info["schema"]
    [first] = graftune.predict(run, files=files[:1], trust_code=True)
    red = first["probabilities"]["red"]
    threshold = red / 2 if first["argmax"] == "blue" else (1 + red) / 2  # the first file's label flips
    info_path.write_text(json.dumps({**info, "schema": {**info["schema"], "threshold": threshold}}))

    rows = graftune.predict(run, files=files, trust_code=True)
    for row, file in zip(rows, files, strict=True):
        probabilities = row["probabilities"]
        assert row["decision"] == {"rule": "threshold", "on": "red", "threshold": threshold}
        assert row["argmax"] == max(probabilities, key=probabilities.__getitem__)
        assert row["label"] == ("red" if probabilities["red"] >= threshold else "blue")
        assert row["file"] == row["input"] == file
    assert rows[0]["label"] != rows[0]["argmax"]
    code, output = run_cli("predict", str(run), files[0], "--trust-code")
    assert code == 0, output
    assert f"vs threshold {threshold:.3g}; argmax {rows[0]['argmax']}" in " ".join(output.split())


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny-BERT run on a CSV whose columns are `body` and `topic`, not the defaults: (run, the CSV)."""
    from graftune.datasets import write_bbc_news

    root = tmp_path_factory.mktemp("reviews")
    news = write_bbc_news(root / "news", per_class=6, seed=0)
    table = write_table(root / "news.csv", [{"body": " ".join(f.read_text().split()[:60]), "topic": f.parent.name}
                                            for f in sorted(news.glob("*/*.txt"))])
    bert = helpers.write_tiny_bert(root / "bert", mean_pooling=True)
    graftune.train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                    "data": {"train": str(table), "input_column": "body", "label_column": "topic", "max_length": 32},
                    "strategy": {"name": "linear-probe", "probe": "sgd"}, "train": {"epochs": 1, "progress": False}},
                   root / "run", console=Console(quiet=True))
    return root / "run", table


def test_predict_takes_plain_texts_and_echoes_them(reviews: tuple[Path, Path]) -> None:
    run, _ = reviews
    model = graftune.load(run)
    [row] = model.predict(["The striker scored twice"])
    assert row["input"] == "text 1" and row["text"] == "The striker scored twice" and "file" not in row
    assert row["label"] == row["argmax"] and row["decision"] == {"rule": "argmax"}
    assert row["label"] == model.predict([("text 1", "The striker scored twice")])[0]["label"]
    code, output = run_cli("predict", str(run), "--text", "Shares fell sharply", "--json")
    assert code == 0, output
    assert json.loads(output)["text"] == "Shares fell sharply"
    with pytest.raises(TypeError, match="not a mixture"):
        model.predict(["a text", ("name", "another")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap a single one"):
        model.predict("a lone text")


def test_evaluate_reads_the_runs_own_column_names(reviews: tuple[Path, Path], tmp_path: Path) -> None:
    """No flags needed for data shaped like the training data; a missing column is named with the flag that
    sets it for evaluate, not the config key of training."""
    run, table = reviews
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert graftune.evaluate(run, table)["examples"] == len(rows)
    code, output = run_cli("evaluate", str(run), "--data", str(table))
    assert code == 0 and "accuracy" in output, output
    renamed = write_table(tmp_path / "renamed.csv", [{"body": r["body"], "category": r["topic"]} for r in rows])
    with pytest.raises(UserError, match=r"no column 'topic'.* Set --label-column\.$"):
        graftune.evaluate(run, renamed)
    assert graftune.evaluate(run, renamed, label_column="category")["examples"] == len(rows)
