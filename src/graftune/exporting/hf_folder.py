"""`--format hf`: a folder the Hugging Face ecosystem loads, where an architecture there computes exactly what
the run's model computes; otherwise a refusal that says why.

- A language model (causal-lm): its Transformers folder with the tokenizer,
  `AutoModelForCausalLM.from_pretrained(out)`. A LoRA run's model folder already holds the merged weights
  (peft's `merge_and_unload` when it was saved); a body still wrapped by PEFT is merged here.
- A text classifier whose head is the one its encoder's own classification class computes:
  `AutoModelForSequenceClassification.from_pretrained(out)`, with id2label and label2id. For BERT that head
  is the [CLS] token through a dense layer and tanh (BERT's pooler), then a linear classifier: graftune's
  `head.pooling: cls, head.hidden: [hidden_size], head.activation: tanh`.
- Any other text classifier, the usual case (the minilm-l6 preset pools the MEAN of its token states, which
  BertForSequenceClassification's pooler on [CLS] with tanh cannot represent): a sentence-transformers
  folder, Transformer + Pooling (graftune's pooling: mean, max, cls, or mean and max side by side) + one
  Dense layer per head layer (the last with the identity activation). `SentenceTransformer(out).encode(texts)`
  gives the logits; labels.json names them. The folder's root is also the encoder's Transformers folder.
- Image and video models have no Transformers architecture that holds graftune's new head on their body:
  refused (use onnx or torchscript).
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.artifacts import FineTuned
from graftune.errors import UserError
from graftune.exporting.batches import Inputs
from graftune.exporting.bundle import save_tokenizer
from graftune.preprocessing import TextPreprocess

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
ST_POOLING: dict[str, str | tuple[str, ...]] = {"mean": "mean", "max": "max", "cls": "cls", "avgmax": ("mean", "max")}
CAUSAL_LM, SEQUENCE_CLASSIFICATION, SENTENCE_TRANSFORMERS = "causal-lm", "sequence-classification", \
    "sentence-transformers"


@dataclass(frozen=True)
class Written:
    kind: str  # one of the three above: how to load the folder back
    exporter: str  # what the folder is, in words


def write_hf(fine_tuned: FineTuned, folder: Path) -> Written:
    """Write the folder for the run's model, or refuse with the reason."""
    task = fine_tuned.task
    inner = _transformers_model(fine_tuned)
    if task.needs == "logits" and inner is not None:
        return _causal_lm(fine_tuned, inner, folder)
    if task.modality == "text" and task.hf_problem_type and inner is not None:
        if _bert_head(fine_tuned, inner):
            return _sequence_classification(fine_tuned, inner, folder)
        return _sentence_transformers(fine_tuned, inner, folder)
    kind = "image and video models" if task.modality in ("image", "video") else f"{task.name} models"
    raise UserError(f"--format hf: {kind} ({fine_tuned.info['source']} with graftune's new head) have no Hugging "
                    "Face architecture that computes what this model computes. Use --format onnx or --format "
                    "torchscript.")


def _transformers_model(fine_tuned: FineTuned) -> Any:
    from transformers import PreTrainedModel

    inner = getattr(fine_tuned.model.body, "model", None)
    return inner if isinstance(inner, PreTrainedModel) or hasattr(inner, "merge_and_unload") else None


def _causal_lm(fine_tuned: FineTuned, model: Any, folder: Path) -> Written:
    if hasattr(model, "merge_and_unload"):  # a PEFT-wrapped body: fold the adapter into the weights
        model = model.merge_and_unload()
    model.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(fine_tuned, folder)
    return Written(CAUSAL_LM, f"Transformers {type(model).__name__} (AutoModelForCausalLM)")


def _head_layers(fine_tuned: FineTuned) -> list[nn.Linear]:
    layers = [m for m in fine_tuned.model.head.modules() if isinstance(m, nn.Linear)]
    if len(layers) != len(fine_tuned.task.settings.head.hidden) + 1:
        raise UserError(f"--format hf: the head of {fine_tuned.info['source']} is not graftune's pooled head "
                        "(linear layers with activations). Use --format onnx or --format torchscript.")
    return layers


def _bert_head(fine_tuned: FineTuned, encoder: Any) -> bool:
    """Whether the head is exactly BertForSequenceClassification's: [CLS], dense, tanh, linear."""
    head = fine_tuned.task.settings.head
    return bool(encoder.config.model_type == "bert" and head.pooling == "cls" and head.activation == "tanh"
                and head.hidden == [encoder.config.hidden_size])


def _label_config(fine_tuned: FineTuned, config: Any, architecture: str) -> Any:
    labels = list(fine_tuned.task.schema["labels"])
    config = copy.deepcopy(config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = fine_tuned.task.hf_problem_type
    config.architectures = [architecture]
    return config


def _sequence_classification(fine_tuned: FineTuned, encoder: Any, folder: Path) -> Written:
    from transformers import BertForSequenceClassification

    hidden, output = _head_layers(fine_tuned)
    model = BertForSequenceClassification(_label_config(fine_tuned, encoder.config, "BertForSequenceClassification"))
    state = {f"bert.{key}": value for key, value in encoder.state_dict().items()}
    state.update({"bert.pooler.dense.weight": hidden.weight, "bert.pooler.dense.bias": hidden.bias,
                  "classifier.weight": output.weight, "classifier.bias": output.bias})
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(fine_tuned, folder)
    return Written(SEQUENCE_CLASSIFICATION, "Transformers BertForSequenceClassification "
                                            "(AutoModelForSequenceClassification)")


def _st_modules() -> Any:
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        raise UserError("--format hf for this text classifier writes a sentence-transformers folder: pip install "
                        "'graftune[export]' (or pip install 'sentence-transformers>=6').") from None
    return modules


def _sentence_transformers(fine_tuned: FineTuned, encoder: Any, folder: Path) -> Written:
    modules = _st_modules()
    from sentence_transformers import SentenceTransformer

    head = fine_tuned.task.settings.head
    if head.pooling not in ST_POOLING:
        raise UserError(f"--format hf: head.pooling={head.pooling} has no sentence-transformers Pooling mode. Use "
                        "--format onnx or --format torchscript.")
    layers = _head_layers(fine_tuned)
    preprocess = fine_tuned.preprocess
    assert isinstance(preprocess, TextPreprocess)
    encoder.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(fine_tuned, folder)
    model_kwargs = _without_pooler(encoder)
    transformer = modules.Transformer(str(folder), max_seq_length=preprocess.max_length, model_kwargs=model_kwargs)
    pooling = modules.Pooling(encoder.config.hidden_size, pooling_mode=ST_POOLING[head.pooling])
    dense = [modules.Dense(layer.in_features, layer.out_features,
                           activation_function=ACTIVATIONS[head.activation]() if i < len(layers) - 1 else nn.Identity(),
                           init_weight=layer.weight.detach().clone(), init_bias=layer.bias.detach().clone())
             for i, layer in enumerate(layers)]
    SentenceTransformer(modules=[transformer, pooling, *dense], device="cpu").save(str(folder))
    _record_model_kwargs(folder, model_kwargs)
    return Written(SENTENCE_TRANSFORMERS, f"sentence-transformers (Transformer, Pooling {head.pooling}, "
                                          f"{len(dense)} Dense)")


def _without_pooler(encoder: Any) -> dict[str, Any]:
    """graftune drops a BERT-like encoder's pooler (the head pools the token states), so its weights are gone:
    the encoder is built without one (else a randomly initialised pooler would be saved, never used, and
    Transformers would warn that it was newly initialised)."""
    if getattr(encoder, "pooler", True) is None and \
            "add_pooling_layer" in inspect.signature(type(encoder).__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def _record_model_kwargs(folder: Path, kwargs: dict[str, Any]) -> None:
    """sentence_bert_config.json keeps `model_kwargs`, so SentenceTransformer(folder) builds the encoder alike."""
    if not kwargs:
        return
    config_file = folder / "sentence_bert_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["model_kwargs"] = {**config.get("model_kwargs", {}), **kwargs}
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


@torch.inference_mode()
def run_hf(folder: Path, written: Written, inputs: Inputs) -> torch.Tensor:
    """The folder loaded back as the ecosystem loads it, on the batch (its texts, for sentence-transformers)."""
    if written.kind == SENTENCE_TRANSFORMERS:
        from sentence_transformers import SentenceTransformer

        assert inputs.texts is not None
        model = SentenceTransformer(str(folder), device="cpu")
        encoded: torch.Tensor = model.encode(inputs.texts, convert_to_tensor=True, batch_size=len(inputs.texts))
        return encoded
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto: Any = AutoModelForCausalLM if written.kind == CAUSAL_LM else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(str(folder), dtype=torch.float32).eval()
    extra = {"use_cache": False} if written.kind == CAUSAL_LM else {}
    logits: torch.Tensor = loaded(**inputs.tensors, **extra).logits
    return logits
