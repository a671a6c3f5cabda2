"""Causal language models on a tiny Llama built from a config: packing keeps documents apart, only completion
tokens carry loss, perplexity is the exponential of the token-weighted loss, LoRA runs save a Transformers
model and a PEFT adapter that give the same logits, and runs resume exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from rich.console import Console

import graftune
from graftune.config import DataConfig
from graftune.data.corpus import read_texts
from graftune.errors import InputWarning, UserError
from graftune.tasks.lm_batches import collate_sequences, pack_documents, pair_sequence

QUIET = Console(quiet=True)
IGNORE = -100


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.write_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def news(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graftune.datasets import write_bbc_news

    return write_bbc_news(tmp_path_factory.mktemp("news"), per_class=6, seed=0)


def config(llama: Path, data: Path | str, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "causal-lm", "model": {"source": f"hf:{llama}"},
                           "data": {"train": str(data), "block_size": 64},
                           "optim": {"lr": 3e-3}, "train": {"epochs": 2, "batch_size": 4, "progress": False},
                           "generation": {"samples": 1, "max_new_tokens": 4}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


# --- batches ----------------------------------------------------------------------------------------------


def test_position_ids_restart_with_every_document_in_every_row() -> None:
    """Rows of several documents, then padding (segment -1): positions count from each document's start."""
    blocks = [pack_documents([list(range(5)), list(range(3)), list(range(4))], block_size=64)[0],
              pack_documents([list(range(2)), list(range(6))], block_size=64)[0]]
    batch = collate_sequences(blocks, pad_id=0, ignore=IGNORE)
    assert batch["inputs"]["position_ids"].tolist() == [[*range(5), *range(3), *range(4)],
                                                        [*range(2), *range(6), *range(4)]]  # the pad counts on


def test_a_packed_document_gives_the_logits_it_gives_alone(llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    first, second = list(range(1000, 1011)), list(range(2000, 2007))
    [block] = pack_documents([first, second], block_size=64)
    batch = collate_sequences([block], pad_id=0, ignore=IGNORE)
    assert batch["inputs"]["position_ids"][0].tolist() == [*range(11), *range(7)]  # restart per document
    with torch.no_grad():
        packed = model(**batch["inputs"]).logits[0, 11:18]
        alone = model(input_ids=torch.tensor([second])).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)
    # the last token of the first document predicts nothing across the boundary
    assert batch["targets"][0, 10].item() == IGNORE and batch["targets"][0, 11].item() == second[1]


def test_packing_keeps_every_token_once_and_cuts_long_documents() -> None:
    documents = [list(range(10)), list(range(100, 135)), list(range(200, 205))]
    blocks = pack_documents(documents, block_size=16)
    assert [len(b.input_ids) for b in blocks] == [16, 16, 16, 2]
    assert [t for b in blocks for t in b.input_ids] == [t for d in documents for t in d]
    assert blocks[0].segments == [0] * 10 + [1] * 6 and blocks[1].segments == [0] * 16  # the rest of doc 2


def test_only_completion_tokens_carry_loss() -> None:
    pair = pair_sequence([5, 6, 7], [8, 9, 3], block_size=32)
    short = pair_sequence([5], [4, 3], block_size=32)
    assert pair is not None and short is not None and pair_sequence(list(range(40)), [1], block_size=32) is None
    batch = collate_sequences([pair, short], pad_id=0, ignore=IGNORE)
    assert batch["targets"].tolist() == [[IGNORE, IGNORE, 8, 9, 3, IGNORE], [4, 3, IGNORE, IGNORE, IGNORE, IGNORE]]
    assert batch["inputs"]["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert "position_ids" not in batch["inputs"]  # one document per row: a plain causal mask


def test_perplexity_is_the_exponential_of_the_token_weighted_loss(llama: Path, news: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run = graftune.train(config(llama, news, train={"epochs": 1}), tmp_path / "run", console=QUIET)
    fine_tuned = graftune.load(run.dir)
    tokenizer = fine_tuned.preprocess.tokenizer  # type: ignore[union-attr]
    model = AutoModelForCausalLM.from_pretrained(run.dir / "model").eval()
    splits = json.loads((run.dir / "data_splits.json").read_text())
    total, tokens = 0.0, 0
    documents = [Path(where).read_text() for where in splits["test"]["items"]]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in documents]
    for block in pack_documents(ids, block_size=64):
        batch = collate_sequences([block], tokenizer.pad_token_id, IGNORE)
        with torch.no_grad():
            logits = model(**batch["inputs"]).logits
        total += float(torch.nn.functional.cross_entropy(logits[0], batch["targets"][0], ignore_index=IGNORE,
                                                         reduction="sum"))
        tokens += int((batch["targets"] != IGNORE).sum())
    assert run.test["tokens"] == tokens
    assert run.test["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert run.test["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


# --- runs -------------------------------------------------------------------------------------------------


def test_a_lora_run_saves_a_transformers_model_and_a_peft_adapter(llama: Path, news: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = graftune.train(config(llama, news), tmp_path / "run", console=QUIET)
    results = json.loads((run.dir / "results.json").read_text())
    assert results["strategy"] == "lora"  # the default for language models
    assert results["test"]["perplexity"] < results["before"]["perplexity"]
    assert len(results["test"]["samples"]) == len(results["before"]["samples"]) == 1
    ids = torch.tensor([[1000, 2000, 3000, 4000, 5000]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(run.dir / "model").eval()(**inputs).logits
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama),
                                            str(run.dir / "model" / "adapter")).eval()(**inputs).logits
        loaded = graftune.load(run.dir).model(inputs)
        rebuilt = graftune.load(run.dir, adapter=True).model(inputs)
        base = AutoModelForCausalLM.from_pretrained(llama).eval()(**inputs).logits
    for logits in (adapter, loaded, rebuilt):
        assert torch.allclose(logits, merged, atol=1e-5)
    assert not torch.allclose(base, merged, atol=1e-4)  # the adapter changed the model


def test_a_language_model_run_resumes_exactly(llama: Path, news: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(llama, news, train={"epochs": 3})
    straight = graftune.train(cfg, tmp_path / "straight", console=QUIET)
    helpers.interrupt_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        graftune.train(cfg, tmp_path / "resumed", console=QUIET)
    resumed = graftune.train({}, tmp_path / "resumed", resume=True, console=QUIET)
    rows = [[json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
            for run in (straight, resumed)]
    assert [r["epoch"] for r in rows[1]] == [1, 2, 3]
    for a, b in zip(*rows, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    assert resumed.test["perplexity"] == pytest.approx(straight.test["perplexity"], rel=1e-6)


def test_pairs_learn_the_completions_and_report_rouge(llama: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"capital of country {i}", "completion": f"city {i % 3}"} for i in range(30)]
    rows.append({"prompt": " ".join(["long"] * 80), "completion": "never seen"})  # fills a 64-token block
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.warns(InputWarning, match=r"left out 1 of \d+ pairs whose prompt fills a block of 64"):
        run = graftune.train(config(llama, pairs, strategy={"name": "full"}, optim={"lr": 1e-2},
                                    train={"epochs": 4}), tmp_path / "run", console=QUIET)
    results = json.loads((run.dir / "results.json").read_text())
    assert set(results["test"]["rouge"]) == {"rouge1", "rouge2", "rougeL"}
    assert results["test"]["rouge"]["rougeL"] > results["before"]["rouge"]["rougeL"]
    assert results["test"]["perplexity"] < results["before"]["perplexity"] / 10
    assert results["test"]["samples"][0]["prompt"].startswith("capital of country")
    [prediction] = graftune.predict(run.dir, texts=["capital of country 4"])
    assert set(prediction) == {"input", "text", "completion"} and prediction["text"] == "capital of country 4"


def test_retained_text_shows_what_the_model_forgot(llama: Path, news: Path, tmp_path: Path) -> None:
    retain = tmp_path / "retain.txt"
    retain.write_text("\n\n".join(f"An unrelated paragraph number {i} about the weather and rivers." for i in
                                  range(8)))
    run = graftune.train(config(llama, news, regularize={"retain": str(retain)}), tmp_path / "run", console=QUIET)
    forgetting = json.loads((run.dir / "results.json").read_text())["forgetting"]
    assert forgetting["before"]["tokens"] == forgetting["after"]["tokens"] > 0
    assert forgetting["before"]["perplexity"] != forgetting["after"]["perplexity"]


def test_generate_streams_what_it_returns(llama: Path, news: Path, tmp_path: Path) -> None:
    run = graftune.train(config(llama, news, train={"epochs": 1}), tmp_path / "run", console=QUIET)
    fine_tuned = graftune.load(run.dir)
    pieces: list[str] = []
    text = fine_tuned.task.generate(fine_tuned.model, fine_tuned.preprocess, "the market", pieces.append,
                                    max_new_tokens=5)
    assert "".join(pieces).strip() == text.strip() and text.strip()
    again = fine_tuned.task.generate(fine_tuned.model, fine_tuned.preprocess, "the market", lambda _: None,
                                     max_new_tokens=5)
    assert again == text  # greedy by default: the same text every time


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_decoder_layer_groups_are_embeddings_blocks_and_final_norm(family: str, tmp_path: Path) -> None:
    """--freeze K, gradual and discriminative rates mean the same for Llama-, GPT-2- and Qwen-style decoders."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from graftune.backbones import load_backbone

    tokenizer_source = helpers.write_tiny_llama(tmp_path / "tokenizer")
    size = {"vocab_size": 30522}
    config, model_class, block = {
        "llama": (LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, **size), LlamaForCausalLM, "model.model.layers."),
        "gpt2": (GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **size), GPT2LMHeadModel,
                 "model.transformer.h."),
        "qwen2": (Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, **size), Qwen2ForCausalLM, "model.model.layers."),
    }[family]
    torch.manual_seed(0)
    folder = tmp_path / family
    model_class(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_source / name).exists():
            (folder / name).write_bytes((tokenizer_source / name).read_bytes())
    backbone = load_backbone(f"hf:{folder}", lm=True)
    names = [group.name for group in backbone.groups]
    assert names == ["stem", f"{block}0", f"{block}1", f"{block}2", "tail"], names
    assert all("emb" in param or "wte" in param or "wpe" in param for param in backbone.groups[0].params)
    assert backbone.produces == "logits"


# --- issue 20: data edges ------------------------------------------------------------------------------------


def test_files_a_corpus_folder_does_not_read_are_counted_in_a_warning(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "a.txt", "a document")
    helpers.write_text(tmp_path / "notes.md", "# not read")
    helpers.write_text(tmp_path / "more" / "b.rst", "not read either")
    with pytest.warns(InputWarning, match=r"left out 2 files that are not \.txt \(1 \.md, 1 \.rst;"):
        assert [e.input for e in read_texts(tmp_path, "corpus", DataConfig(train=str(tmp_path)))] == ["a document"]


def test_a_completion_that_is_not_text_is_refused_as_such(tmp_path: Path) -> None:
    """A list was trained on as its Python repr; 0 was called empty."""
    path = tmp_path / "pairs.jsonl"
    for completion, shown in ((["a", "b"], '["a", "b"]'), (0, "is 0, not text"), (False, "is false, not text")):
        path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" +
                        json.dumps({"prompt": "q", "completion": completion}) + "\n")
        with pytest.raises(UserError) as info:
            read_texts(path, "pairs", DataConfig(train=str(path)))
        assert f"{path}:2" in str(info.value) and shown in str(info.value) and "empty" not in str(info.value)
    path.write_text(json.dumps({"prompt": "q", "completion": " "}) + "\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:1: empty completion \(column 'completion'\)"):
        read_texts(path, "pairs", DataConfig(train=str(path)))
