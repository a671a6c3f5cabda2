"""Classification, shared by the image and text tasks: one label per input, a pooled linear head,
cross-entropy, accuracy and macro-F1, a confusion matrix, labels with probabilities as predictions.

The schema is `{"labels": [...], "train_counts": [...]}`: the class names in sorted order (output i of the
head is labels[i]) and how many training examples each has, which `train.class_weights: balanced` reads.
A two-class model also keeps `threshold`: the probability of the second class above which it is
predicted, chosen after training on validation where balanced accuracy (TPR - FPR, Youden's J) peaks;
`predict` decides by it (each row states the rule and keeps the argmax beside the decided label) and the
test results report the metrics at it beside those of the argmax.
Metrics for unbalanced classes: balanced accuracy (the mean of per-class recall) and ROC AUC (one class
against the rest, averaged over the classes present; for two classes, of the second class's probability).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from torch import nn

from graftune.config import DataConfig
from graftune.data.readers import Example, read_examples
from graftune.data.splits import read_splits
from graftune.errors import UserError
from graftune.loop import Batch, Evaluation, Step
from graftune.pages import Section
from graftune.preprocessing import Preprocess
from graftune.regularize import mixing_collate
from graftune.tasks.base import Collate, Item, Prediction, TaskData
from graftune.tasks.classification_report import classification_sections
from graftune.tasks.pooled import TEXT_KEPT, PooledHead, in_split_order

SNIPPET = 300  # characters of it the report shows


class Decision(BaseModel):
    """The rule that decided a prediction's label."""

    rule: Literal["argmax", "threshold"]
    on: str | None = Field(None, description="threshold: the label whose probability meets the threshold")
    threshold: float | None = Field(None, description="threshold: the validated threshold on that probability")


class LabelPrediction(Prediction):
    """A classifier's answer: the decided label, the most probable one, the rule, every class's probability."""

    label: str = Field(description="the decided label")
    argmax: str = Field(description="the most probable label, whatever the rule decided")
    decision: Decision
    probabilities: dict[str, float]


class Classification(PooledHead):
    """One label per input, from a fixed set of classes seen in training."""

    prediction_model = LabelPrediction

    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {
        "val_accuracy": "max", "val_macro_f1": "max", "val_balanced_accuracy": "max", "val_roc_auc": "max",
        "val_loss": "min"}
    default_metric = "val_accuracy"
    headline = "accuracy"
    plannable = True
    hf_problem_type = "single_label_classification"
    convex_head = True  # multinomial logistic regression on the pooled features
    prediction_fields: ClassVar[frozenset[str]] = frozenset({"label", "predicted", "confidence", "probabilities"})

    @property
    def labels(self) -> list[str]:
        return list(self.schema["labels"])

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        splits = read_splits(data, cls.modality)
        labels = splits.labels()
        counts = Counter(e.label for e in splits.train)
        return TaskData(splits, {"labels": labels, "train_counts": [counts[label] for label in labels]})

    @property
    def head_outputs(self) -> int:
        return len(self.labels)

    def describe_schema(self) -> str:
        return f"{len(self.labels)} classes"

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [(e.input, index[e.label]) for e in examples]

    def sample_weights(self, items: list[Item]) -> list[float] | None:
        """`train.sampler: balanced`: each item weighted by 1 / its class's count, so classes come equally often."""
        if self.settings.train.sampler != "balanced":
            return None
        counts = Counter(target for _, target in items)
        return [1.0 / counts[target] for _, target in items]

    @property
    def mixes_inputs(self) -> bool:
        return bool(self.settings.regularize.mixup or self.settings.regularize.cutmix)

    def training_collate(self, preprocess: Preprocess) -> Collate:
        collate = super().training_collate(preprocess)
        reg = self.settings.regularize
        return mixing_collate(collate, len(self.labels), reg.mixup, reg.cutmix) if self.mixes_inputs else collate

    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        """Cross-entropy on the logits: label-smoothed (and soft, under mixup) in training, plain in
        evaluation, where the class probabilities are kept for the metrics."""
        logits = model(batch["inputs"])
        targets = batch["targets"]
        if train:
            weights = self.class_weights()
            weight = None if weights is None else weights.to(logits.device, logits.dtype)  # float64 in the probe
            loss = nn.functional.cross_entropy(logits, targets, label_smoothing=self.settings.train.label_smoothing,
                                               weight=weight)
            return Step(loss, len(targets))
        logits = logits.float()
        return Step(nn.functional.cross_entropy(logits, targets), len(targets),
                    {"probs": logits.softmax(-1), "labels": targets})

    def class_weights(self) -> torch.Tensor | None:
        """n / (classes x n_class) per class with `train.class_weights: balanced`; None (all 1) otherwise."""
        if self.settings.train.class_weights == "none":
            return None
        counts = torch.tensor(self.schema["train_counts"], dtype=torch.float32)
        return counts.sum() / (len(counts) * counts.clamp(min=1))

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        y_true, y_pred = _true_and_predicted(evaluation)
        if not len(y_true):
            return {"val_loss": evaluation.loss, "val_accuracy": 0.0, "val_macro_f1": 0.0,
                    "val_balanced_accuracy": 0.0, "val_roc_auc": 0.0}
        return {"val_loss": evaluation.loss, "val_accuracy": float(np.mean(y_true == y_pred)),
                "val_macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "val_balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "val_roc_auc": roc_auc(y_true, evaluation.outputs["probs"])}

    @property
    def calibrates(self) -> bool:
        return len(self.labels) == 2

    def calibrate(self, evaluation: Evaluation) -> None:
        """The decision threshold of a two-class model: where TPR - FPR peaks on validation (0.5 without both
        classes there)."""
        y_true = evaluation.outputs.get("labels", np.zeros(0))
        threshold = 0.5
        if len(np.unique(y_true)) == 2:
            fpr, tpr, thresholds = roc_curve(y_true, evaluation.outputs["probs"][:, 1])
            finite = np.isfinite(thresholds)  # the first point of the curve stands for "predict none"
            best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
            threshold = float(thresholds[best])
        self.schema = {**self.schema, "threshold": threshold}

    def _at_threshold(self, y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        y_pred = (probs[:, 1] >= self.schema["threshold"]).astype(int)
        recall = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)[1]
        return {"threshold": self.schema["threshold"], "accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "recall": dict(zip(self.labels, map(float, recall), strict=True))}

    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix (scikit-learn)."""
        y_true, y_pred = _true_and_predicted(evaluation)
        labels, indices = self.labels, list(range(len(self.labels)))
        precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=indices,
                                                                         zero_division=0)
        per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, name in enumerate(labels)}
        return {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=indices, average="macro", zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
            "roc_auc": roc_auc(y_true, evaluation.outputs["probs"]) if len(y_true) else 0.0,
            "loss": evaluation.loss,
            "examples": len(y_true),
            "per_class": per_class,
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=indices).tolist(),
            "labels": labels,
            **({"at_threshold": self._at_threshold(y_true, evaluation.outputs["probs"])}
               if "threshold" in self.schema and len(y_true) else {}),
        }

    def plots(self, results: dict[str, Any]) -> dict[str, bytes]:
        from graftune.plots import confusion_matrix_png

        return {"confusion_matrix.png": confusion_matrix_png(results["confusion_matrix"], self.labels)}

    def test_predictions(self, evaluation: Evaluation, examples: list[Example]) -> list[dict[str, Any]] | None:
        """Per test example: where it came from, its input (a text, cut at TEXT_KEPT characters, or a file's
        path), the true and the predicted label (the argmax, as in the confusion matrix) and the probabilities."""
        labels = self.labels

        def row(example: Example, probs: np.ndarray) -> dict[str, Any]:
            best = int(np.argmax(probs))
            return {"where": example.where, "input": example.input[:TEXT_KEPT], "label": example.label,
                    "predicted": labels[best], "confidence": round(float(probs[best]), 6),
                    "probabilities": {label: round(float(p), 6) for label, p in zip(labels, probs, strict=True)}}

        return in_split_order(evaluation, examples, evaluation.outputs.get("probs", np.zeros((0, 0))), row)

    def output_meaning(self) -> tuple[str, dict[str, Any]] | None:
        """labels.json: the labels in output order (logit i is labels[i]); a two-class model's threshold on the
        second class's probability."""
        threshold = {"threshold": self.schema["threshold"]} if "threshold" in self.schema else {}
        return "labels.json", {"labels": self.labels, **threshold}

    def report_sections(self, results: dict[str, Any], predictions: list[dict[str, Any]],
                        plots: Callable[[str], bytes | None], read_inputs: bool) -> list[Section]:
        # without read_inputs, a file input shows as its path: Classification's cell reads nothing
        cell = self.example_cell if read_inputs else partial(Classification.example_cell, self)
        return classification_sections(results["test"], predictions, cell, plots("confusion_matrix.png"))

    def example_cell(self, row: dict[str, Any]) -> str:
        """How the report shows one test example: a text's first words (images and clips: a thumbnail)."""
        from graftune.pages import escape

        text = str(row["input"])
        shown = text if len(text) <= SNIPPET else text[:SNIPPET].rstrip() + " …"
        return f'{escape(shown)}<br><span class="note">{escape(row["where"])}</span>'

    def summary(self, results: dict[str, Any]) -> str:
        return (f"accuracy {results['accuracy']:.4f}  macro-F1 {results['macro_f1']:.4f}  "
                f"loss {results['loss']:.4f}  ({results['examples']} examples)")

    def details(self, results: dict[str, Any]) -> list[str]:
        balance = f"  balanced accuracy {results['balanced_accuracy']:.4f}  ROC AUC {results['roc_auc']:.4f}"
        return [balance] + [f"  {label:<20} precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                            f"f1 {s['f1']:.3f}  support {s['support']}" for label, s in results["per_class"].items()]

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        examples = read_examples(path, self.modality, "auto", input_column, label_column, self.settings.data.encoding)
        unknown = sorted({e.label for e in examples} - set(self.labels))
        if unknown:
            raise UserError(f"{path}: labels {', '.join(unknown)} were not in the training data of this model "
                            f"(it knows {', '.join(self.labels)}).")
        return examples

    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One row per (name, input), as `graftune predict --json` prints it:

            input          its name: a file's path as given, or "text N" for the Nth text
            text | file    the input itself: a text model's text, an image or video model's file path
            label          the decided label (see decision)
            argmax         the most probable label, shown whatever the rule decided
            decision       the rule that decided: {"rule": "argmax"}, or for a two-class model with a validated
                           threshold {"rule": "threshold", "on": SECOND_LABEL, "threshold": T}: the second
                           label when its probability is at least T, else the first
            probabilities  every label's probability
        """
        return [self._prediction(name, value, logits.softmax(-1).tolist())
                for name, value, logits in self.outputs(model, preprocess, inputs, batch_size)]

    def _prediction(self, name: str, value: str, probs: list[float]) -> dict[str, Any]:
        argmax = max(range(len(probs)), key=probs.__getitem__)
        decision: dict[str, Any] = {"rule": "argmax"}
        picked = argmax
        if "threshold" in self.schema:  # a two-class model decides at its validated threshold, and says so
            decision = {"rule": "threshold", "on": self.labels[1], "threshold": self.schema["threshold"]}
            picked = int(probs[1] >= self.schema["threshold"])
        return {**self.echoed(name, value), "label": self.labels[picked],
                "argmax": self.labels[argmax], "decision": decision,
                "probabilities": dict(zip(self.labels, probs, strict=True))}

    def format_prediction(self, result: dict[str, Any]) -> str:
        """NAME, label and its probability; where a threshold overrode the argmax, a fourth column says how."""
        line = f"{result['input']}\t{result['label']}\t{result['probabilities'][result['label']]:.3f}"
        if result["argmax"] != result["label"]:
            on, threshold = result["decision"]["on"], result["decision"]["threshold"]
            line += f"\t{on} {result['probabilities'][on]:.3f} vs threshold {threshold:.3g}; argmax {result['argmax']}"
        return line


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of the class probabilities: for two classes, of the second's; else one class against the rest,
    averaged over the classes present. 0.5 (no better than chance) when fewer than two classes are present."""
    present = np.unique(y_true)
    if len(present) < 2:
        return 0.5
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def _true_and_predicted(evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    if "labels" not in evaluation.outputs:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return evaluation.outputs["labels"], evaluation.outputs["probs"].argmax(axis=1)
