"""`graftune export`: each format loads back in its own runtime and agrees with the run's PyTorch model, for
other batch sizes than the one traced and (text) other lengths; labels and preprocessing travel with it.

Tolerances: 1e-4 absolute on logits of the tiny models (the export's own check uses 1e-4 x max(1, |logits|)).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from rich.console import Console

import graftune
from graftune.data.motion_clips import write_motion_clips
from graftune.errors import UserError
from graftune.exporting import Exported

ATOL = 1e-4
TOPICS = {
    "sport": ["The striker scored twice in the final minutes", "A late goal won the cup for the home side",
              "The keeper saved a penalty in extra time", "She won the race by a second on the last lap",
              "The team lost the match after a red card", "Fans cheered as the champions lifted the trophy"],
    "money": ["Shares fell sharply after the bank cut its forecast", "Inflation rose faster than markets expected",
              "The company reported record profits this quarter", "Investors sold bonds as interest rates climbed",
              "The central bank held rates steady on Tuesday", "Oil prices jumped after the supply cut"],
    "tech": ["The new phone has a faster chip and a better camera", "Engineers released an update to the software",
             "The startup built a chip for machine learning", "A security flaw was found in the web browser",
             "The laptop battery now lasts a whole day", "Researchers trained a larger language model"],
}
QUERIES = ["A goal in the last minute", "Rates and bonds", "The chip is faster than last year's model and it runs "
           "the new software without slowing down at all", "x"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


def write_topics(root: Path) -> Path:
    for label, texts in TOPICS.items():
        for i, text in enumerate(texts):
            helpers.write_text(root / label / f"{i}.txt", text)
    return root


def train(config: dict[str, Any], out: Path) -> Path:
    # fp32 runs: predict then computes as the exports do (a bf16 run's predict computes in bf16, its exports in fp32)
    graftune.train({**config, "train": {"epochs": 1, "batch_size": 6, "progress": False, "mixed_precision": "no",
                                        **config.get("train", {})}},
                   out, console=Console(quiet=True))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bert(root: Path) -> Path:
    return helpers.write_tiny_bert(root / "bert", mean_pooling=True)


@pytest.fixture(scope="module")
def topics(root: Path) -> Path:
    return write_topics(root / "topics")


@pytest.fixture(scope="module")
def text_run(root: Path, bert: Path, topics: Path) -> Path:
    """Tiny BERT with graftune's usual text head: the MEAN of the token states, then a linear layer."""
    return train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                  "data": {"train": str(topics), "max_length": 24}, "freeze": {"body": "all"}}, root / "text-run")


@pytest.fixture(scope="module")
def image_run(root: Path) -> Path:
    images = helpers.write_colour_folders(root / "images")
    return train({"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                  "data": {"train": str(images), "image_size": 16, "augment": False}, "freeze": {"body": 2}},
                 root / "image-run")


@pytest.fixture(scope="module")
def lm_run(root: Path) -> Path:
    """A tiny Llama tuned with LoRA (the default strategy) on a corpus of short documents."""
    llama = helpers.write_tiny_llama(root / "llama")
    corpus = root / "corpus"
    for label, texts in TOPICS.items():
        for i, text in enumerate(texts):
            helpers.write_text(corpus / f"{label}-{i}.txt", text)
    return train({"task": "causal-lm", "model": {"source": f"hf:{llama}"}, "data": {"train": str(corpus),
                  "block_size": 32}, "generation": {"samples": 0}}, root / "lm-run")


@pytest.fixture(scope="module")
def text_onnx(root: Path, text_run: Path) -> Exported:
    """One ONNX export of the text run, shared: exporting takes the dynamo exporter seconds."""
    return graftune.export(text_run, "onnx", out=root / "text-onnx")


def tokens(run: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    fine_tuned = graftune.load(run, trust_code=True)
    return dict(fine_tuned.task.encoder(fine_tuned.preprocess)(texts))


@torch.inference_mode()
def pytorch(run: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model = graftune.load(run, trust_code=True).model.eval()
    return model(inputs).float()


def onnx_outputs(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run(["logits"], {name: t.numpy() for name, t in inputs.items()})[0]
    return output


def record(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "export.json").read_text())
    return data


# --- ONNX ------------------------------------------------------------------------------------------------


def test_text_onnx_takes_any_batch_and_length_and_agrees_with_pytorch(text_run: Path, text_onnx: Exported) -> None:
    import onnx

    done, folder = text_onnx, text_onnx.folder
    assert done.check.inputs == f"the first {done.check.examples} examples of the run's test split"
    assert done.check.max_abs_diff <= done.check.limit
    for texts in (QUERIES, QUERIES[:1], QUERIES[1:2] * 5):  # batches of 4, 1 and 5 at three lengths
        inputs = tokens(text_run, texts)
        got = onnx_outputs(folder / "model.onnx", inputs)
        np.testing.assert_allclose(got, pytorch(text_run, inputs).numpy(), atol=ATOL, rtol=0)
    assert len({len(tokens(text_run, t)["input_ids"][0]) for t in (QUERIES, QUERIES[:1], QUERIES[1:2])}) == 3
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(props["graftune.labels"])["labels"] == ["money", "sport", "tech"]
    assert json.loads(props["graftune.preprocessing"])["max_length"] == 24
    saved = record(folder)
    assert saved["inputs"]["input_ids"]["dims"] == ["batch", "sequence"]
    assert saved["outputs"]["logits"]["dims"] == ["batch", 3]
    assert saved["check"]["max_abs_diff"] == done.check.max_abs_diff
    assert sorted(saved["files"]) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_the_tokenizer_and_preprocessing_beside_an_onnx_export_reproduce_predict(text_run: Path,
                                                                                  text_onnx: Exported) -> None:
    """Only the export folder: its tokenizer, preprocessing.json and labels.json give predict's answers."""
    from transformers import AutoTokenizer

    folder = text_onnx.folder
    spec = json.loads((folder / "preprocessing.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder / spec["tokenizer"]))
    encoded = tokenizer(QUERIES, truncation=True, max_length=spec["max_length"], padding="longest", return_tensors="np")
    logits = onnx_outputs(folder / "model.onnx", {name: torch.from_numpy(encoded[name]) for name in spec["inputs"]})
    probs = torch.from_numpy(logits).softmax(-1)
    predicted = graftune.predict(text_run, texts=QUERIES)
    assert [labels[i] for i in probs.argmax(-1).tolist()] == [p["label"] for p in predicted]
    expected = torch.tensor([[p["probabilities"][label] for label in labels] for p in predicted])
    assert torch.allclose(probs, expected, atol=1e-5)


def test_image_onnx_takes_any_batch(image_run: Path, tmp_path: Path) -> None:
    done = graftune.export(image_run, "onnx", out=tmp_path / "onnx", trust_code=True)
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 7):
        pixels = {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}
        got = onnx_outputs(done.folder / "model.onnx", pixels)
        np.testing.assert_allclose(got, pytorch(image_run, pixels).numpy(), atol=ATOL, rtol=0)
    assert record(done.folder)["inputs"]["pixel_values"]["dims"] == ["batch", 3, 16, 16]
    assert json.loads((done.folder / "preprocessing.json").read_text())["size"] == 16


def test_video_onnx_takes_any_batch_of_clips(root: Path, tmp_path: Path) -> None:
    clips = root / "clips"
    write_motion_clips(clips, per_class=4, frames=4, size=32, classes=("grow", "shrink"))
    run = train({"task": "video-classification", "model": {"source": "module:helpers:tiny_cnn"},
                 "data": {"train": str(clips), "image_size": 16}, "video": {"frames": 4}, "freeze": {"body": "all"},
                 "train": {"batch_size": 4}}, root / "video-run")
    done = graftune.export(run, "onnx", out=tmp_path / "onnx", trust_code=True)
    assert done.check.inputs.startswith("the first") and done.check.max_abs_diff <= done.check.limit
    clip = {"pixel_values": torch.randn(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
    np.testing.assert_allclose(onnx_outputs(done.folder / "model.onnx", clip), pytorch(run, clip).numpy(),
                               atol=ATOL, rtol=0)
    spec = json.loads((done.folder / "preprocessing.json").read_text())
    assert spec["frames"] == 4 and record(done.folder)["inputs"]["pixel_values"]["dims"] == ["batch", 4, 3, 16, 16]


def test_language_model_onnx_gives_the_logits_at_any_batch_and_length(lm_run: Path, tmp_path: Path) -> None:
    done = graftune.export(lm_run, "onnx", out=tmp_path / "onnx")
    for texts in (QUERIES, QUERIES[3:]):
        inputs = tokens(lm_run, texts)
        got = onnx_outputs(done.folder / "model.onnx", inputs)
        np.testing.assert_allclose(got, pytorch(lm_run, inputs).numpy(), atol=ATOL, rtol=0)
    assert record(done.folder)["outputs"]["logits"]["dims"][:2] == ["batch", "sequence"]
    assert not (done.folder / "labels.json").exists()


def test_a_test_split_that_cannot_be_read_falls_back_to_a_synthetic_batch(root: Path, bert: Path,
                                                                          tmp_path: Path) -> None:
    data = write_topics(tmp_path / "topics")
    run = train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                 "data": {"train": str(data), "max_length": 16}, "freeze": {"body": "all"}}, tmp_path / "run")
    shutil.rmtree(data)
    done = graftune.export(run, "torchscript")
    assert done.folder == run / "exports" / "torchscript"
    assert done.check.inputs.startswith("synthetic (the run's test split cannot be read:")
    assert str(data) in done.check.inputs and record(done.folder)["check"]["examples"] == 3


def test_an_export_beyond_the_tolerance_is_refused_and_nothing_is_written(text_run: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import graftune.exporting.torchscript_file as torchscript_file

    real = torchscript_file.run_torchscript
    monkeypatch.setattr(torchscript_file, "run_torchscript", lambda path, inputs: real(path, inputs) + 1e-3)
    with pytest.raises(UserError, match=r"--format torchscript: max \|torch.jit .* - PyTorch\| = 0.001 .*above the "
                                        "limit, so the export was not written"):
        graftune.export(text_run, "torchscript", out=tmp_path / "out" / "ts")
    assert not (tmp_path / "out").exists()
    done = graftune.export(text_run, "torchscript", out=tmp_path / "out" / "ts", tolerance=1e-2)  # a looser limit
    assert done.check.max_abs_diff == pytest.approx(1e-3, rel=1e-3)


# --- TorchScript -----------------------------------------------------------------------------------------


def test_torchscript_loads_and_agrees_at_any_batch_and_length(text_run: Path, image_run: Path, tmp_path: Path) -> None:
    text = graftune.export(text_run, "torchscript", out=tmp_path / "text")
    image = graftune.export(image_run, "torchscript", out=tmp_path / "image", trust_code=True)
    for run, folder, inputs in ((text_run, text.folder, tokens(text_run, QUERIES)),
                                (text_run, text.folder, tokens(text_run, QUERIES[3:])),
                                (image_run, image.folder, {"pixel_values": torch.randn(5, 3, 16, 16)})):
        loaded = torch.jit.load(str(folder / "model.pt"))
        with torch.inference_mode():
            got = loaded(*inputs.values())
        assert torch.allclose(got, pytorch(run, inputs), atol=ATOL)
    extra = {"labels.json": ""}
    torch.jit.load(str(text.folder / "model.pt"), _extra_files=extra)
    assert json.loads(extra["labels.json"])["labels"] == ["money", "sport", "tech"]
    assert record(text.folder)["positional_inputs"] == ["input_ids", "attention_mask"]


# --- Hugging Face folders --------------------------------------------------------------------------------


def test_a_mean_pooled_text_classifier_exports_as_a_sentence_transformer(text_run: Path, tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    from sentence_transformers import SentenceTransformer

    done = graftune.export(text_run, "hf", out=tmp_path / "hf")
    assert done.exporter.startswith("sentence-transformers (Transformer, Pooling mean, 1 Dense)")
    capfd.readouterr()
    model = SentenceTransformer(str(done.folder), device="cpu")
    loading = capfd.readouterr()
    assert "MISSING" not in loading.err + loading.out and "UNEXPECTED" not in loading.err + loading.out  # no pooler
    logits = model.encode(QUERIES, convert_to_tensor=True)
    predicted = graftune.predict(text_run, texts=QUERIES)
    labels = json.loads((done.folder / "labels.json").read_text())["labels"]
    expected = torch.tensor([[p["probabilities"][label] for label in labels] for p in predicted])
    assert torch.allclose(logits.softmax(-1), expected, atol=1e-5)
    assert torch.allclose(logits, pytorch(text_run, tokens(text_run, QUERIES)), atol=ATOL)


def test_a_cls_tanh_head_on_bert_exports_as_bert_for_sequence_classification(root: Path, bert: Path, topics: Path,
                                                                             tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                 "data": {"train": str(topics), "max_length": 24},
                 "head": {"pooling": "cls", "hidden": [32], "activation": "tanh", "dropout": 0.0}}, root / "cls-run")
    done = graftune.export(run, "hf", out=tmp_path / "hf")
    assert "BertForSequenceClassification" in done.exporter
    model = AutoModelForSequenceClassification.from_pretrained(str(done.folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(done.folder))
    assert model.config.id2label == {0: "money", 1: "sport", 2: "tech"} and model.config.label2id["tech"] == 2
    assert tokenizer.model_max_length == 24
    encoded = tokenizer(QUERIES, truncation=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**encoded).logits.softmax(-1)
    predicted = graftune.predict(run, texts=QUERIES)
    assert [model.config.id2label[i] for i in probs.argmax(-1).tolist()] == [p["label"] for p in predicted]
    expected = torch.tensor([[p["probabilities"][model.config.id2label[i]] for i in range(3)] for p in predicted])
    assert torch.allclose(probs, expected, atol=1e-5)


def test_a_lora_language_model_exports_as_a_transformers_folder(lm_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = graftune.export(lm_run, "hf", out=tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(str(done.folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(done.folder))
    encoded = tokenizer(QUERIES, truncation=True, max_length=32, padding="longest", return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.inference_mode():
        logits = model(**inputs).logits
        adapter = graftune.load(lm_run, adapter=True).model.eval()(inputs)  # base weights + the LoRA adapter
    assert torch.allclose(logits, pytorch(lm_run, inputs), atol=ATOL)
    assert torch.allclose(logits, adapter, atol=ATOL)
    pretrained = AutoModelForCausalLM.from_pretrained(str(lm_run.parent / "llama")).eval()
    with torch.inference_mode():
        assert not torch.allclose(pretrained(**inputs).logits, logits, atol=ATOL)  # the fine-tuning is in it


def test_an_image_model_has_no_hf_format(image_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--format hf: image and video models .* Use --format onnx or --format "
                                        "torchscript"):
        graftune.export(image_run, "hf", out=tmp_path / "hf", trust_code=True)
    assert not (tmp_path / "hf").exists()


# --- the export folder -----------------------------------------------------------------------------------


def test_overwrite_replaces_an_export_and_nothing_else(text_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    graftune.export(text_run, "torchscript", out=out)
    with pytest.raises(UserError, match="exists and is not empty"):
        graftune.export(text_run, "hf", out=out)
    graftune.export(text_run, "hf", out=out, overwrite=True)
    assert (out / "modules.json").is_file() and not (out / "model.pt").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files the export did not write \(notes.txt\)"):
        graftune.export(text_run, "torchscript", out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "modules.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging folder left behind
