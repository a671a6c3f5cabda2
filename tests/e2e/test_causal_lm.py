"""End to end on real weights and text: smollm2-135m (SmolLM2-135M-Instruct from its GGUF file) tuned with
LoRA on BBC News articles through the CLI, then `graftune generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graftune.datasets import write_bbc_news

    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("lm")
    news = write_bbc_news(root / "news", per_class=2, seed=0)
    out = root / "run"
    code, output = run_cli("train", "--task", "causal-lm", "--model", "smollm2-135m", "--data", news,
                           "--epochs", "1", "--lr", "2e-3", "--batch-size", "4", "--set", "data.block_size=128",
                           "--set", "generation.samples=1", "--set", "generation.max_new_tokens=8", "--out", out)
    assert code == 0, output
    return out


def test_lora_on_a_real_corpus_lowers_held_out_perplexity(lm_run: Path) -> None:
    results = json.loads((lm_run / "results.json").read_text())
    assert results["strategy"] == "lora"
    assert results["test"]["perplexity"] < results["before"]["perplexity"]
    assert results["test"]["samples"][0]["generated"].strip()


def test_the_model_folder_is_a_transformers_model(lm_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lm_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(lm_run / "model")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.eos_token == "<|im_end|>"


def test_generate_streams_text(lm_run: Path) -> None:
    code, output = run_cli("generate", lm_run, "--prompt", "The government said", "--max-new-tokens", "8")
    assert code == 0, output
    assert output.strip()
