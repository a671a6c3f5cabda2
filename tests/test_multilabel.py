"""Multi-label classification: any number of labels per input, one sigmoid each, thresholds tuned per label."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import graftune
from graftune.data.readers import label_list, read_examples
from graftune.errors import UserError
from graftune.tasks.multilabel import scores_of
from tests.e2e.cli import run_cli

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def test_label_lists_from_jsonl_and_csv_cells() -> None:
    read = label_list("|")
    assert json.loads(read(["politics", "business"], "tags", "d.jsonl:1")) == ["business", "politics"]
    assert json.loads(read("politics | business", "tags", "d.csv:2")) == ["business", "politics"]
    assert json.loads(read([], "tags", "d.jsonl:3")) == [] and json.loads(read("", "tags", "d.csv:3")) == []
    with pytest.raises(UserError, match=r"d\.csv:4: label 'tech' given twice"):
        read("tech|sport|tech", "tags", "d.csv:4")
    with pytest.raises(UserError, match=r"d\.jsonl:5: .*no string"):
        read(["tech", 3], "tags", "d.jsonl:5")
    with pytest.raises(UserError, match=r"d\.jsonl:6: the labels in column 'tags' are 7; give a list"):
        read(7, "tags", "d.jsonl:6")


def test_scores_at_thresholds() -> None:
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.8], [0.1, 0.6]])
    scores = scores_of(truth, probs, np.array([0.5, 0.65]), ["a", "b"])
    assert scores["subset_accuracy"] == 1.0 and scores["micro_f1"] == 1.0 and scores["map"] == 1.0
    scores = scores_of(truth, probs, np.array([0.5, 0.5]), ["a", "b"])
    assert scores["subset_accuracy"] == 0.75 and scores["per_label"]["b"]["precision"] == pytest.approx(2 / 3)


def patches_table(root: Path, count: int, seed: int) -> Path:
    """Images holding a patch of each of their colours (none to all three) on grey: the labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        pixels = np.full((16, 16, 3), 128.0)
        labels = [name for name in COLOURS if rng.random() < 0.45]
        for (name, colour), (y, x) in zip(COLOURS.items(), ((0, 0), (0, 8), (8, 4)), strict=True):
            if name in labels:
                pixels[y:y + 8, x:x + 8] = colour
        noisy = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)  # no two images alike
        Image.fromarray(noisy).save(root / f"{n}.png")
        rows.append({"image": f"{n}.png", "tags": labels})
    table = root / "images.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return table


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multilabel")
    train, test = patches_table(root / "train", 64, 0), patches_table(root / "test", 24, 1)
    config = {"task": "image-multilabel", "model": {"source": "module:helpers:tiny_cnn"},
              "data": {"train": str(train), "test": str(test), "label_column": "tags", "image_size": 16,
                       "augment": False},
              "optim": {"lr": 3e-3}, "train": {"epochs": 6, "batch_size": 8, "progress": False,
                                               "mixed_precision": "bf16"}}
    graftune.train(config, out=root / "run", console=Console(quiet=True))
    return root / "run", test


def test_a_multilabel_run_learns_every_label_with_its_threshold(multilabel_run: tuple[Path, Path]) -> None:
    run, _ = multilabel_run
    results = json.loads((run / "results.json").read_text())["test"]
    schema = json.loads((run / "model" / "graftune.json").read_text())["schema"]
    assert schema["labels"] == ["blue", "green", "red"] and len(schema["thresholds"]) == 3
    assert results["thresholds"] == schema["thresholds"]
    assert results["micro_f1"] > 0.8 and results["map"] > 0.8, results
    assert set(results["per_label"]) == {"blue", "green", "red"}


def test_evaluate_predict_and_the_report_agree_with_the_run(multilabel_run: tuple[Path, Path]) -> None:
    run, test = multilabel_run
    recorded = json.loads((run / "results.json").read_text())["test"]
    again = graftune.evaluate(run, test, trust_code=True, label_column="tags")
    assert again["loss"] == pytest.approx(recorded["loss"], abs=1e-6) and again["micro_f1"] == recorded["micro_f1"]
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    model = graftune.load(run, trust_code=True)
    for row, fresh in zip(rows, model.predict([(r["where"], r["input"]) for r in rows]), strict=True):
        assert fresh["labels"] == row["predicted"]
    html = (run / "report.html").read_text()
    assert 'id="per-label"' in html and 'id="scores"' in html


def test_an_export_carries_the_thresholds(multilabel_run: tuple[Path, Path], tmp_path: Path) -> None:
    from graftune.exporting import export_run

    done = export_run(multilabel_run[0], "torchscript", out=tmp_path / "ts", trust_code=True)
    meaning = json.loads((done.folder / "labels.json").read_text())
    assert meaning["labels"] == ["blue", "green", "red"] and len(meaning["thresholds"]) == 3


def test_a_test_label_that_training_never_shows_is_refused(tmp_path: Path) -> None:
    train = helpers.write_text(tmp_path / "train.jsonl", "".join(
        f'{{"text": "t {n}", "tags": ["a"{", " + chr(34) + "b" + chr(34) if n % 2 else ""}]}}\n' for n in range(12)))
    test = helpers.write_text(tmp_path / "test.jsonl", '{"text": "x", "tags": ["a"]}\n{"text": "y", "tags": ["c"]}\n')
    bert = helpers.write_tiny_bert(tmp_path / "bert", mean_pooling=True)
    code, output = run_cli("train", "--task", "text-multilabel", "--model", f"hf:{bert}", "--data", str(train),
                           "--data", f"test={test}", "--set", "data.label_column=tags", "--out", str(tmp_path / "run"))
    message = " ".join(output.split())
    assert code == 2 and f"{test}:2: label 'c' in the test data does not appear in the training data" in message, output
    examples = read_examples(train, "text", label_column="tags", label_of=label_list("|"))
    assert json.loads(examples[1].label) == ["a", "b"]


def test_serve_answers_label_lists(multilabel_run: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    from graftune.serve import create_app

    run, test = multilabel_run
    model = graftune.load(run, trust_code=True)
    client = TestClient(create_app(run, fine_tuned=model))
    image = test.parent / "3.png"
    answer = client.post("/predict", files=[("files", ("3.png", image.read_bytes(), "image/png"))])
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["predictions"]
    assert row["labels"] == model.predict([str(image)])[0]["labels"] and set(row["probabilities"]) == {
        "blue", "green", "red"}


def test_a_text_multilabel_model_exports_as_a_multi_label_transformers_classifier(tmp_path: Path) -> None:
    """BERT's own head with problem_type multi_label_classification: sigmoid of its logits is predict's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    words = {"goal": "sport", "shares": "business", "vote": "politics"}
    rng = np.random.default_rng(0)
    rows = []
    for n in range(48):
        tags = sorted({words[w] for w in rng.choice(list(words), size=int(rng.integers(1, 3)))})
        text = " ".join(w for w in words if words[w] in tags) + f" and more text {n}"
        rows.append(json.dumps({"text": text, "tags": tags}) + "\n")
    data = helpers.write_text(tmp_path / "news.jsonl", "".join(rows))
    bert = helpers.write_tiny_bert(tmp_path / "bert")
    graftune.train({"task": "text-multilabel", "model": {"source": f"hf:{bert}"},
                    "data": {"train": str(data), "label_column": "tags", "max_length": 24},
                    "head": {"pooling": "cls", "hidden": [32], "activation": "tanh", "dropout": 0.0},
                    "train": {"epochs": 1, "progress": False, "mixed_precision": "no"}},
                   out=tmp_path / "run", console=Console(quiet=True))
    done = graftune.export(tmp_path / "run", "hf", out=tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(done.folder)).eval()
    assert model.config.problem_type == "multi_label_classification"
    texts = ["goal and vote", "shares fell"]
    encoded = AutoTokenizer.from_pretrained(str(done.folder))(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**encoded).logits.sigmoid()
    predicted = graftune.predict(tmp_path / "run", texts=texts)
    expected = torch.tensor([[p["probabilities"][model.config.id2label[i]] for i in range(3)] for p in predicted])
    assert torch.allclose(probs, expected, atol=1e-5)
    assert json.loads((done.folder / "labels.json").read_text())["rule"] == "sigmoid(output[i]) >= thresholds[i]"


@pytest.mark.parametrize("probe", ["exact", "sgd"])
def test_a_linear_probe_on_cached_features_learns_the_labels(probe: str, tmp_path: Path) -> None:
    """Head-only training reads its targets from the feature cache (and the exact probe solves on them): label
    vectors must stack there as they do in live batches."""
    train, test = patches_table(tmp_path / "train", 48, 0), patches_table(tmp_path / "test", 16, 1)
    config = {"task": "image-multilabel", "model": {"source": "module:helpers:tiny_cnn"},
              "strategy": {"name": "linear-probe", "probe": probe},
              "data": {"train": str(train), "test": str(test), "label_column": "tags", "image_size": 16,
                       "augment": False},
              "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    result = graftune.train(config, out=tmp_path / "run", console=Console(quiet=True))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["cached_features"] for row in rows) and set(result.test["per_label"]) == set(COLOURS)
    assert result.test["examples"] == 16 and len(result.test["thresholds"]) == 3
