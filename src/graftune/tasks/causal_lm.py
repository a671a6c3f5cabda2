"""Causal language models: go on training a pre-trained decoder on domain text, or teach it to answer
prompts (instruction pairs, summaries), with the loss on the tokens it must learn to write.

Two data forms (graftune/data/corpus.py). A corpus: documents are tokenized with the end-of-text token
after each and packed into blocks of `data.block_size` tokens; inside a block the attention mask is
block-diagonal and position ids restart at every document, so no document sees another (the logits of
a document packed after another equal its logits alone). Pairs: prompt and completion, rendered with
the tokenizer's chat template when it has one (`data.chat_template`), one pair per sequence, loss on the
completion only.

The model is the pre-trained language model itself, LM head included (no new head); LoRA is the default
strategy. The test report gives perplexity before and after fine-tuning, generated samples from fixed
prompts and seeds, ROUGE for pairs, and with `--retain` the perplexity of a second corpus before and
after (what the model forgot). The model folder is a Transformers one: `AutoModelForCausalLM` loads it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from graftune.backbones.base import Backbone
from graftune.config import Config, DataConfig
from graftune.data.corpus import Form, corpus_form, read_texts, split_documents
from graftune.data.readers import Example
from graftune.data.splits import Splits, refuse_training_data_held_out, warn_held_out_overlap
from graftune.errors import InputWarning, UserError
from graftune.generation import GenerationRoom, check_generation
from graftune.grafted import GraftedModel
from graftune.loop import Batch, Evaluation, Step
from graftune.pages import Section
from graftune.preprocessing import Preprocess, TextPreprocess
from graftune.tasks.base import Collate, Item, Task, TaskData
from graftune.tasks.lm_batches import collate_sequences, pack_documents, pair_sequence

IGNORE = -100
HEAD_ONLY = ("linear-probe", "lp-ft", "gradual", "ulmfit", "fastai")  # begin by training a new head it lacks


class CausalLM(Task):
    name = "causal-lm"
    modality = "text"
    needs = "logits"
    default_strategy = "lora"
    evaluates_before = True
    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {"val_loss": "min", "val_perplexity": "min"}
    default_metric = "val_loss"

    @property
    def form(self) -> Form:
        form: Form = self.schema["form"]
        return form

    # --- data and settings -----------------------------------------------------------------------------

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        form = corpus_form(data)
        refuse_training_data_held_out({"train": data.train, "val": data.val, "test": data.test})
        train = read_texts(data.train, form, data)
        val = read_texts(data.val, form, data) if data.val else None
        test = read_texts(data.test, form, data) if data.test else None
        warn_held_out_overlap(train, {"val": val, "test": test}, "text")
        if val is None or test is None:
            split = split_documents(train, 0.0 if val is not None else data.split.val,
                                    0.0 if test is not None else data.split.test, data.split.seed)
            train, val, test = split.train, val if val is not None else split.val, test if test is not None \
                else split.test
        if not val:
            raise UserError("data: no validation documents. Give data.val or set data.split.val above 0.")
        return TaskData(Splits(train, val, test), {"form": form})

    @classmethod
    def resolve(cls, cfg: Config, backbone: Backbone) -> Config:
        """Block size within the model's positions, the chat template decided, strategies that need a new
        head refused."""
        if backbone.produces != "logits":
            raise UserError(f"model.source: {cfg.model.source} gives features, not next-token logits: causal-lm "
                            "needs a causal language model.")
        if cfg.strategy.name in HEAD_ONLY:
            raise UserError(f"strategy {cfg.strategy.name} begins by training a new head alone, and a language "
                            "model keeps its own: use lora (the default), full, partial, bitfit or discriminative.")
        assert isinstance(backbone.preprocess, TextPreprocess)
        tokenizer = backbone.preprocess.tokenizer
        block = min(cfg.data.block_size, backbone.preprocess.max_length)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        template = has_template if cfg.data.chat_template == "auto" else cfg.data.chat_template
        if template and not has_template:
            raise UserError(f"data.chat_template=true: the tokenizer of {cfg.model.source} has no chat template. Use "
                            "data.chat_template=false.")
        return cfg.updated({"data.block_size": block, "data.max_length": block, "data.chat_template": template})

    def describe_schema(self) -> str:
        return "prompt/completion pairs" if self.form == "pairs" else "a corpus of documents"

    def build_model(self, backbone: Backbone) -> GraftedModel:
        """The language model as it is: no new head."""
        return GraftedModel(backbone.body, nn.Identity(), batchnorm_policy=self.settings.freeze.batchnorm)

    # --- batches ---------------------------------------------------------------------------------------

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        tokenizer, block = _tokenizer(preprocess), self.settings.data.block_size
        if self.form == "corpus":
            documents = [[*_ids(tokenizer, e.input), tokenizer.eos_token_id]
                         for e in examples]
            return [(f"block {i}", sequence) for i, sequence in enumerate(pack_documents(documents, block))]
        sequences = [(e.where, pair_sequence(self.prompt_ids(tokenizer, e.input), self.completion_ids(tokenizer, e),
                                             block)) for e in examples]
        kept: list[Item] = [(where, sequence) for where, sequence in sequences if sequence is not None]
        _check_left_out([where for where, sequence in sequences if sequence is None], len(sequences), block)
        return kept

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        if self.settings.data.chat_template is True:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            return _ids(tokenizer, text)
        return _ids(tokenizer, prompt)

    def completion_ids(self, tokenizer: Any, example: Example) -> list[int]:
        """The completion as the model must write it, ending where generation should stop."""
        if self.settings.data.chat_template is True:
            full = tokenizer.apply_chat_template([{"role": "user", "content": example.input},
                                                  {"role": "assistant", "content": example.label}], tokenize=False)
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": example.input}], tokenize=False,
                                                   add_generation_prompt=True)
            rest = full[len(prompt):] if full.startswith(prompt) else example.label + tokenizer.eos_token
            return _ids(tokenizer, rest)
        return [*_ids(tokenizer, example.label), tokenizer.eos_token_id]

    def lengths(self, items: list[Item], preprocess: Preprocess) -> list[int] | None:
        return [len(sequence.input_ids) for _, sequence in items]

    def collate(self, preprocess: Preprocess, augment: bool = False) -> Collate:
        pad = _tokenizer(preprocess).pad_token_id

        def collate(items: list[Item]) -> Batch:
            return collate_sequences([sequence for _, sequence in items], pad, IGNORE)

        return collate

    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        """Mean cross-entropy over the tokens the model must write; logits[t] predicts targets[t]."""
        logits = model(batch["inputs"])
        targets = batch["targets"]
        count = int((targets != IGNORE).sum())
        if count == 0:  # nothing to learn in this batch: a zero that keeps the graph
            return Step(logits.sum() * 0.0, 0)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        return Step(loss, count)

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        return {"val_loss": evaluation.loss, "val_perplexity": _perplexity(evaluation.loss)}

    # --- results ---------------------------------------------------------------------------------------

    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        return {"loss": evaluation.loss, "perplexity": _perplexity(evaluation.loss), "tokens": evaluation.count}

    def summary(self, results: dict[str, Any]) -> str:
        rouge = f"  ROUGE-L {results['rouge']['rougeL']:.4f}" if "rouge" in results else ""
        return (f"perplexity {results['perplexity']:.2f}  loss {results['loss']:.4f}{rouge}  "
                f"({results['tokens']} tokens)")

    def report(self, model: nn.Module, preprocess: Preprocess, examples: list[Example]) -> dict[str, Any]:
        """Samples generated from the first test prompts with a fixed seed; ROUGE of every test pair's
        generated completion against the reference."""
        generation, tokenizer = self.settings.generation, _tokenizer(preprocess)
        prompts = [self._prompt_of(tokenizer, e) for e in examples[:generation.samples]]
        report: dict[str, Any] = {"samples": [{"prompt": prompt, "generated": self._generate(model, tokenizer, prompt)}
                                              for prompt in prompts]}
        if self.form == "pairs" and examples:
            report["rouge"] = rouge([self._generate(model, tokenizer, e.input) for e in examples],
                                    [e.label for e in examples])
        return report

    def report_sections(self, results: dict[str, Any], predictions: list[dict[str, Any]],
                        plots: Callable[[str], bytes | None], read_inputs: bool) -> list[Section]:
        """Held-out perplexity (and ROUGE) before and after fine-tuning; the samples generated from the first test
        prompts by both models."""
        from graftune.pages import escape, paragraph, table

        test, before = results["test"], results.get("before") or {}
        keys = [("perplexity", "perplexity"), ("loss", "loss (nats per token)"), ("tokens", "test tokens")]
        keys += [(f"rouge:{name}", name) for name in ("rouge1", "rouge2", "rougeL") if "rouge" in test]

        def value(scores: dict[str, Any], key: str) -> Any:
            name, _, part = key.partition(":")
            found = scores.get(name, "")
            return found.get(part, "") if part and isinstance(found, dict) else found

        scores = table(["", "pre-trained", "fine-tuned"], [[label, value(before, key), value(test, key)]
                                                           for key, label in keys])
        sections = [Section("Perplexity", scores, "perplexity")]
        samples, earlier = test.get("samples", []), before.get("samples", [])
        generation = self.settings.generation
        how = "greedy" if generation.temperature == 0 else f"temperature {generation.temperature:g}, seed " \
                                                            f"{generation.seed}"
        rows = [[f"<pre>{escape(s['prompt'])}</pre>",
                 f"<pre>{escape(earlier[i]['generated'])}</pre>" if i < len(earlier) else "",
                 f"<pre>{escape(s['generated'])}</pre>"] for i, s in enumerate(samples)]
        body = paragraph(f"{len(rows)} prompts from the test split, {generation.max_new_tokens} new tokens at most, "
                         f"{how}.") + table(["prompt", "pre-trained", "fine-tuned"], rows, raw=True) if rows else \
            paragraph("No samples (generation.samples is 0, or the test split is empty).", note=True)
        return [*sections, Section("Generation samples", body, "samples")]

    def _prompt_of(self, tokenizer: Any, example: Example) -> str:
        """A pair's prompt; for a document, its first words (the first 16 tokens)."""
        if self.form == "pairs":
            return example.input
        return str(tokenizer.decode(_ids(tokenizer, example.input)[:16]))

    def _generate(self, model: nn.Module, tokenizer: Any, prompt: str,
                  on_text: Callable[[str], None] | None = None, **options: Any) -> str:
        """Text that follows `prompt` (rendered as training rendered prompts), with the run's generation
        settings unless `options` say otherwise."""
        generation = self.settings.generation.model_copy(update=options)
        ids = torch.tensor([self._generation_ids(tokenizer, prompt)])
        language_model = _language_model(model)
        device = next(language_model.parameters()).device
        streamer = _streamer(tokenizer, on_text) if on_text else None
        torch.manual_seed(generation.seed)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = language_model.generate(
                input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                max_new_tokens=generation.max_new_tokens, do_sample=generation.temperature > 0,
                temperature=generation.temperature if generation.temperature > 0 else None,
                top_p=generation.top_p if generation.temperature > 0 else None, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, streamer=streamer)
        model.train(was_training)
        return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    def generate(self, model: GraftedModel, preprocess: Preprocess, prompt: str, on_text: Callable[[str], None],
                 **options: Any) -> str:
        """Refuses a prompt and max_new_tokens past the model's context (where its positions run out: slow,
        wrong text, or an error). Only here, for a user's prompt: the run's own samples generate unchecked, as
        they always have, from prompts that training already fitted into its blocks."""
        room = self.generation_room(model, preprocess, prompt)
        if room is not None:
            check_generation(room, options.get("max_new_tokens", self.settings.generation.max_new_tokens))
        return self._generate(model, _tokenizer(preprocess), prompt, on_text, **options)

    def generation_room(self, model: GraftedModel, preprocess: Preprocess, prompt: str) -> GenerationRoom | None:
        tokenizer = _tokenizer(preprocess)
        context = _context(_language_model(model), tokenizer)
        return None if context is None else GenerationRoom(len(self._generation_ids(tokenizer, prompt)), context)

    def _generation_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """The prompt's tokens as generation reads them: rendered as training rendered a pair's prompts."""
        return self.prompt_ids(tokenizer, prompt) if self.form == "pairs" else _ids(tokenizer, prompt)

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        data = self.settings.data.model_copy(update={"input_column": input_column or self.settings.data.input_column})
        return read_texts(path, self.form, data)

    def forgetting_examples(self, path: str) -> list[Example]:
        return read_texts(path, "corpus", self.settings.data.model_copy(update={"form": "corpus"}))

    @torch.inference_mode()
    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        tokenizer = _tokenizer(preprocess)
        return [{"input": name, "text": text, "completion": self._generate(model, tokenizer, text)}
                for name, text in inputs]

    def format_prediction(self, result: dict[str, Any]) -> str:
        return f"{result['input']}\t{result['completion']}"

    # --- the model folder: a Transformers one ----------------------------------------------------------

    def save_weights(self, model: GraftedModel, folder: Path, preprocess: Preprocess) -> None:
        language_model = _language_model(model)
        language_model.save_pretrained(folder, safe_serialization=True)
        _tokenizer(preprocess).save_pretrained(folder)

    def load_weights(self, model: GraftedModel, folder: Path) -> None:
        from safetensors.torch import load_file

        language_model = _language_model(model)
        try:
            state = load_file(str(folder / "model.safetensors"))
        except Exception as err:
            raise UserError(f"{folder / 'model.safetensors'}: missing or damaged ({str(err)[:160]}). Train the "
                            "model again.") from None
        result = language_model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(language_model.config, "tie_word_embeddings", False) else set()
        if set(result.missing_keys) - tied or result.unexpected_keys:
            raise UserError(f"{folder / 'model.safetensors'}: not the weights of this model (missing "
                            f"{sorted(set(result.missing_keys) - tied)[:3]}, unexpected {result.unexpected_keys[:3]}).")
        language_model.tie_weights()


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Google's rouge-score, with stemming)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("ROUGE needs rouge-score: pip install 'graftune[lm]' (or pip install rouge-score).") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references,
                                                                                    strict=True)]
    return {key: float(sum(s[key].fmeasure for s in scores) / max(1, len(scores))) for key in
            ("rouge1", "rouge2", "rougeL")}


def _check_left_out(left_out: list[str], count: int, block: int) -> None:
    """A pair whose prompt fills a block has no completion token to learn or score: warn when some are left out;
    when all are, the split has nothing to train on or score, and a perplexity of 1.00 on 0 tokens would look
    like success, so refuse."""
    if not left_out:
        return
    block_is = f"a block of {block} tokens (data.block_size, at most the model's length)"
    if len(left_out) == count:
        raise UserError(f"all {count} pairs were left out: each prompt fills {block_is}, leaving no room for its "
                        f"completion (first: {left_out[0]}). Nothing to train on or score: raise data.block_size, or "
                        "shorten the prompts.")
    warnings.warn(f"left out {len(left_out)} of {count} pairs whose prompt fills {block_is} (first: {left_out[0]}).",
                  InputWarning, stacklevel=3)


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens (quietly: documents may be longer than the model reads,
    and are packed into blocks)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _context(language_model: Any, tokenizer: Any) -> int | None:
    """The most tokens the model reads: its position count, else the tokenizer's limit when it sets a real one
    (Transformers puts a huge placeholder there otherwise), else unknown."""
    positions = getattr(language_model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # past e^50 the number says nothing more


def _tokenizer(preprocess: Preprocess) -> Any:
    assert isinstance(preprocess, TextPreprocess), "causal-lm reads text"
    return preprocess.tokenizer


def _language_model(model: nn.Module) -> Any:
    """The Transformers model inside a GraftedModel's body (through Accelerate's and PEFT's wrappers)."""
    inner: Any = getattr(model, "module", model)  # DistributedDataParallel
    return inner.body.model


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    """Transformers' TextStreamer, handing `on_text` whole words as generation produces them."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
