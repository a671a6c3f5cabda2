"""Multi-label classification: any number of labels per input (an article about politics and business, an
image showing several findings), from texts or images in a CSV/JSONL table: a JSONL list of strings, or a CSV
cell split on `data.label_separator` ("politics|business"). An empty list is allowed: no label applies.

One sigmoid output per label, trained with binary cross-entropy (`train.class_weights: balanced` weighs each
label's positives by its negatives / positives in training, for rare labels). After training, each label gets
its own decision threshold: the one that maximises its F1 on validation (0.5 for a label validation lacks),
saved in the schema with the model. The schema is `{"labels": [...], "train_counts": [...], "train_examples": n,
"thresholds": [...]}`: label i is output i; `train_counts` how many training examples carry it.

Metrics: micro-F1 (picks the best epoch), macro-F1, mAP (the mean over labels of average precision, from the
probabilities alone) and subset accuracy (every label of the example right), at 0.5 during training and at
the tuned thresholds on the test.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, precision_recall_fscore_support
from torch import nn

from graftune.config import DataConfig
from graftune.data.readers import Example, label_list, read_examples
from graftune.data.splits import Splits, read_splits
from graftune.errors import UserError
from graftune.loop import Batch, Evaluation, Step
from graftune.pages import Section
from graftune.preprocessing import Preprocess
from graftune.tasks.base import Item, Prediction, TaskData
from graftune.tasks.pooled import TEXT_KEPT, PooledHead, in_split_order


class LabelsPrediction(Prediction):
    """A multi-label answer: every label over its threshold, and every label's probability."""

    labels: list[str] = Field(description="the labels whose probability meets their threshold (none: an empty list)")
    probabilities: dict[str, float]


class MultiLabel(PooledHead):
    """Any number of labels per input; see the module docstring."""

    prediction_model = LabelsPrediction

    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {
        "val_micro_f1": "max", "val_macro_f1": "max", "val_map": "max", "val_subset_accuracy": "max",
        "val_loss": "min"}
    default_metric = "val_micro_f1"
    headline = "micro_f1"
    hf_problem_type = "multi_label_classification"  # the labels' thresholds travel in labels.json
    convex_head = True  # binary cross-entropy of a linear head: the exact probe solves it
    prediction_fields: ClassVar[frozenset[str]] = frozenset({"labels", "predicted", "probabilities"})

    @property
    def labels(self) -> list[str]:
        return list(self.schema["labels"])

    @property
    def thresholds(self) -> list[float]:
        return [float(t) for t in self.schema.get("thresholds", [0.5] * len(self.labels))]

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        splits = read_splits(data, cls.modality, label_list(data.label_separator))
        counts = Counter(label for e in splits.train for label in json.loads(e.label))
        labels = sorted(counts)
        if not labels:
            raise UserError(f"{data.train}: no training example has a label (column '{data.label_column}'); there "
                            "is nothing to learn.")
        _check_known(splits, set(labels))
        return TaskData(splits, {"labels": labels, "train_counts": [counts[label] for label in labels],
                                 "train_examples": len(splits.train)})

    @property
    def head_outputs(self) -> int:
        return len(self.labels)

    def describe_schema(self) -> str:
        return f"{len(self.labels)} labels, any number per example"

    def _indicator(self, label: str) -> torch.Tensor:
        """The 0/1 vector of an example's labels: a tensor, so every collate (live batches, the feature cache,
        the exact probe) stacks targets into one (N, labels) tensor."""
        present = set(json.loads(label))
        return torch.tensor([1.0 if name in present else 0.0 for name in self.labels])

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        return [(e.input, self._indicator(e.label)) for e in examples]

    def positive_weights(self) -> torch.Tensor | None:
        """Per label, negatives / positives in training with `train.class_weights: balanced`; None otherwise."""
        if self.settings.train.class_weights == "none":
            return None
        positives = torch.tensor(self.schema["train_counts"], dtype=torch.float32).clamp(min=1)
        return (self.schema["train_examples"] - positives).clamp(min=1) / positives

    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        """Binary cross-entropy per label; evaluation keeps the probabilities and the true indicators."""
        logits = model(batch["inputs"])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = batch["targets"].to(logits.device, logits.dtype)
        weights = self.positive_weights() if train else None
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=None if weights is None else weights.to(logits.device, logits.dtype))
        if train:
            return Step(loss, len(targets))
        return Step(loss, len(targets), {"probs": logits.sigmoid(), "targets": targets})

    def _truth(self, evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        outputs = evaluation.outputs
        if "targets" not in outputs:
            empty = np.zeros((0, len(self.labels)))
            return empty, empty
        return outputs["targets"].astype(int), outputs["probs"].astype(np.float64)

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        truth, probs = self._truth(evaluation)
        scores = scores_of(truth, probs, np.full(len(self.labels), 0.5))
        return {"val_loss": evaluation.loss, **{f"val_{k}": scores[k] for k in ("micro_f1", "macro_f1", "map",
                                                                                 "subset_accuracy")}}

    @property
    def calibrates(self) -> bool:
        return True

    def calibrate(self, evaluation: Evaluation) -> None:
        """Each label's threshold: where its F1 on validation peaks (0.5 when validation has none of it)."""
        truth, probs = self._truth(evaluation)
        thresholds = []
        for column in range(len(self.labels)):
            if len(truth) == 0 or truth[:, column].sum() == 0:
                thresholds.append(0.5)
                continue
            precision, recall, cuts = precision_recall_curve(truth[:, column], probs[:, column])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            thresholds.append(float(cuts[int(np.argmax(f1))]))
        self.schema = {**self.schema, "thresholds": thresholds}

    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        truth, probs = self._truth(evaluation)
        return {**scores_of(truth, probs, np.array(self.thresholds), self.labels), "loss": evaluation.loss,
                "labels": self.labels, "thresholds": self.thresholds}

    def _decided(self, probs: list[float]) -> list[str]:
        return [label for label, p, t in zip(self.labels, probs, self.thresholds, strict=True) if p >= t]

    def test_predictions(self, evaluation: Evaluation, examples: list[Example]) -> list[dict[str, Any]] | None:
        def row(example: Example, probs: np.ndarray) -> dict[str, Any]:
            return {"where": example.where, "input": example.input[:TEXT_KEPT], "labels": json.loads(example.label),
                    "predicted": self._decided(probs.tolist()),
                    "probabilities": {label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)}}

        return in_split_order(evaluation, examples, self._truth(evaluation)[1], row)

    def report_sections(self, results: dict[str, Any], predictions: list[dict[str, Any]],
                        plots: Callable[[str], bytes | None], read_inputs: bool) -> list[Section]:
        from graftune.pages import paragraph, table

        test = results["test"]
        summary = table(["micro-F1", "macro-F1", "mAP", "subset accuracy", "loss", "examples"],
                        [[test["micro_f1"], test["macro_f1"], test["map"], test["subset_accuracy"], test["loss"],
                          test["examples"]]])
        per_label = table(["label", "threshold", "precision", "recall", "F1", "average precision", "support"],
                          [[name, s["threshold"], s["precision"], s["recall"], s["f1"], s["average_precision"],
                            s["support"]] for name, s in test["per_label"].items()])
        return [Section("Test scores", paragraph("At each label's threshold, tuned on validation for its F1.")
                        + summary, "scores"), Section("Per-label results", per_label, "per-label")]

    def output_meaning(self) -> tuple[str, dict[str, Any]] | None:
        """labels.json: output i is labels[i]'s logit; a label applies when sigmoid(output) >= its threshold."""
        return "labels.json", {"labels": self.labels, "thresholds": self.thresholds,
                               "rule": "sigmoid(output[i]) >= thresholds[i]"}

    def summary(self, results: dict[str, Any]) -> str:
        return (f"micro-F1 {results['micro_f1']:.4f}  macro-F1 {results['macro_f1']:.4f}  mAP {results['map']:.4f}  "
                f"subset accuracy {results['subset_accuracy']:.4f}")

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        examples = read_examples(path, self.modality, "auto", input_column, label_column, self.settings.data.encoding,
                                 label_of=label_list(self.settings.data.label_separator))
        _check_known(Splits([], [], examples), set(self.labels), "the training data of this model")
        return examples

    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        """Per input: every label over its threshold, and every label's probability."""
        results = []
        for name, value, logits in self.outputs(model, preprocess, inputs, batch_size):
            probs = logits.sigmoid().tolist()
            results.append({**self.echoed(name, value), "labels": self._decided(probs),
                            "probabilities": dict(zip(self.labels, probs, strict=True))})
        return results

    def format_prediction(self, result: dict[str, Any]) -> str:
        shown = ", ".join(f"{label} {result['probabilities'][label]:.3f}" for label in result["labels"])
        return f"{result['input']}\t{shown or '(no label)'}"


def _check_known(splits: Splits, known: set[str], source: str = "the training data") -> None:
    """Refuse a label in val or test that training never shows: its output could not have learned it."""
    for name, part in (("val", splits.val), ("test", splits.test)):
        for example in part:
            unknown = sorted(set(json.loads(example.label)) - known)
            if unknown:
                raise UserError(f"{example.where}: label {', '.join(repr(u) for u in unknown)} in the {name} data "
                                f"does not appear in {source}. Add training examples of it or remove it.")


def scores_of(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
              labels: list[str] | None = None) -> dict[str, Any]:
    """Micro- and macro-F1 and subset accuracy at `thresholds`, mAP from the probabilities (scikit-learn);
    with `labels`, the per-label table too."""
    if len(truth) == 0:
        return {"micro_f1": 0.0, "macro_f1": 0.0, "map": 0.0, "subset_accuracy": 0.0, "examples": 0,
                **({"per_label": {}} if labels is not None else {})}
    predicted = (probs >= thresholds).astype(int)
    present = truth.sum(0) > 0  # average precision is undefined for a label with no positive example
    scores: dict[str, Any] = {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "map": float(np.mean([average_precision_score(truth[:, i], probs[:, i]) for i in np.flatnonzero(present)]))
        if present.any() else 0.0,
        "subset_accuracy": float(np.mean((predicted == truth).all(1))),
        "examples": len(truth)}
    if labels is not None:
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
        scores["per_label"] = {
            name: {"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i]),
                   "average_precision": float(average_precision_score(truth[:, i], probs[:, i])) if present[i]
                   else 0.0} for i, name in enumerate(labels)}
    return scores


class TextMultiLabel(MultiLabel):
    """Any number of labels per text (an article's topics, a ticket's tags)."""

    name = "text-multilabel"
    modality = "text"


class ImageMultiLabel(MultiLabel):
    """Any number of labels per image (the objects or findings it shows)."""

    name = "image-multilabel"
    modality = "image"
