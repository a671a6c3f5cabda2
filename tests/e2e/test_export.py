"""End to end on real weights: minilm-l6 (frozen, one solved epoch) on BBC News articles, exported through the
CLI as ONNX and as a sentence-transformers folder, both agreeing with `graftune predict` on new texts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from graftune.datasets import write_bbc_news
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e

TEXTS = ["The striker scored twice as the club won the cup final at Wembley.",
         "Shares in the bank fell after it warned that profits would shrink this year.",
         "The new handset has a faster chip, a brighter screen and a battery that lasts two days."]


def test_minilm_exports_to_onnx_and_a_sentence_transformer_that_agree_with_predict(tmp_path: Path) -> None:
    import onnxruntime
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    data = write_bbc_news(tmp_path / "bbc", per_class=6, seed=0)
    run = tmp_path / "run"
    started = time.perf_counter()
    code, output = run_cli("train", "--task", "text-classification", "--model", "minilm-l6", "--data", data,
                           "--freeze", "all", "--epochs", "1", "--set", "data.max_length=96",
                           "--set", "train.mixed_precision=no",  # exports are fp32; predict computes as the run did
                           "--out", run)
    assert code == 0, output
    train_seconds = time.perf_counter() - started
    code, output = run_cli("predict", run, "--json", *[part for text in TEXTS for part in ("--text", text)])
    assert code == 0, output
    predicted = [json.loads(line) for line in output.strip().splitlines()[-len(TEXTS):]]
    labels = json.loads((run / "model" / "graftune.json").read_text())["schema"]["labels"]
    expected = np.array([[p["probabilities"][label] for label in labels] for p in predicted])

    started = time.perf_counter()
    code, output = run_cli("export", run, "--format", "onnx")
    onnx_seconds = time.perf_counter() - started
    assert code == 0, output
    assert re.search(r"max \|ONNX Runtime [0-9.]+ - PyTorch\| = \S+ on the first \d+ examples of the run's test "
                     "split", output), output
    folder = run / "exports" / "onnx"
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    encoded = tokenizer(TEXTS, truncation=True, max_length=96, padding="longest", return_tensors="np")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {name: encoded[name] for name in ("input_ids", "attention_mask")})[0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    started = time.perf_counter()
    code, output = run_cli("export", run, "--format", "hf", "--out", tmp_path / "hf")
    hf_seconds = time.perf_counter() - started
    assert code == 0, output
    assert "sentence-transformers (Transformer, Pooling mean, 1 Dense)" in output, output
    encoded_st = SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(TEXTS)
    probs_st = np.exp(encoded_st) / np.exp(encoded_st).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs_st, expected, atol=1e-5)
    checks = {name: json.loads((where / "export.json").read_text())["check"]
              for name, where in (("onnx", folder), ("hf", tmp_path / "hf"))}
    print(f"minilm-l6: train {train_seconds:.1f} s; export onnx {onnx_seconds:.1f} s, max diff "
          f"{checks['onnx']['max_abs_diff']:.3g}; hf {hf_seconds:.1f} s, max diff {checks['hf']['max_abs_diff']:.3g}")
