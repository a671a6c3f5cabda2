"""Classification, shared by the image and text tasks: one label per input, a pooled linear head,
cross-entropy, accuracy and macro-F1, a confusion matrix, labels with probabilities as predictions.

The schema is `{"labels": [...]}`, the class names in sorted order: output i of the head is labels[i].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from graftune.backbones.base import Backbone
from graftune.config import Config, DataConfig
from graftune.data.readers import Example, read_examples
from graftune.data.splits import read_splits
from graftune.errors import UserError
from graftune.grafted import GraftedModel
from graftune.loop import Batch, Evaluation, Step
from graftune.preprocessing import Preprocess
from graftune.regularize import mixing_collate
from graftune.tasks.base import Collate, Item, Task, TaskData
from graftune.tasks.heads import Pooling, build_head


class Classification(Task):
    """One label per input, from a fixed set of classes seen in training."""

    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {"val_accuracy": "max", "val_macro_f1": "max",
                                                           "val_loss": "min"}
    default_metric = "val_accuracy"

    @property
    def labels(self) -> list[str]:
        return list(self.schema["labels"])

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        splits = read_splits(data, cls.modality)
        return TaskData(splits, {"labels": splits.labels()})

    @classmethod
    def resolve(cls, cfg: Config, backbone: Backbone) -> Config:
        """`head.pooling: auto` becomes the pooling the backbone was pre-trained with."""
        pooling = backbone.default_pooling if cfg.head.pooling == "auto" else cfg.head.pooling
        if pooling == "avgmax" and backbone.feature_rank == 2:
            raise UserError(f"head.pooling=avgmax: {backbone.source} already gives one vector per example; "
                            "use head.pooling=none (or cut earlier with head.cut_at).")
        return cfg.updated({"head.pooling": pooling})

    def describe_schema(self) -> str:
        return f"{len(self.labels)} classes"

    def build_model(self, backbone: Backbone) -> GraftedModel:
        head_cfg = self.settings.head
        head = build_head(head_cfg, backbone.feature_dim, len(self.labels), head_cfg.pooling)
        return GraftedModel(backbone.body, head, Pooling(head_cfg.pooling), self.settings.freeze.batchnorm)

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [(e.input, index[e.label]) for e in examples]

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
            loss = nn.functional.cross_entropy(logits, targets, label_smoothing=self.settings.train.label_smoothing)
            return Step(loss, len(targets))
        logits = logits.float()
        return Step(nn.functional.cross_entropy(logits, targets), len(targets),
                    {"probs": logits.softmax(-1), "labels": targets})

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        y_true, y_pred = _true_and_predicted(evaluation)
        if not len(y_true):
            return {"val_loss": evaluation.loss, "val_accuracy": 0.0, "val_macro_f1": 0.0}
        return {"val_loss": evaluation.loss, "val_accuracy": float(np.mean(y_true == y_pred)),
                "val_macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}

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
            "loss": evaluation.loss,
            "examples": len(y_true),
            "per_class": per_class,
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=indices).tolist(),
            "labels": labels,
        }

    def plots(self, results: dict[str, Any], folder: Path) -> None:
        from graftune.plots import confusion_matrix_plot

        confusion_matrix_plot(results["confusion_matrix"], self.labels, folder / "confusion_matrix.png")

    def summary(self, results: dict[str, Any]) -> str:
        return (f"accuracy {results['accuracy']:.4f}  macro-F1 {results['macro_f1']:.4f}  "
                f"loss {results['loss']:.4f}  ({results['examples']} examples)")

    def details(self, results: dict[str, Any]) -> list[str]:
        return [f"  {label:<20} precision {s['precision']:.3f}  recall {s['recall']:.3f}  f1 {s['f1']:.3f}  "
                f"support {s['support']}" for label, s in results["per_class"].items()]

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        examples = read_examples(path, self.modality, "auto", input_column, label_column, self.settings.data.encoding)
        unknown = sorted({e.label for e in examples} - set(self.labels))
        if unknown:
            raise UserError(f"{path}: labels {', '.join(unknown)} were not in the training data of this model "
                            f"(it knows {', '.join(self.labels)}).")
        return examples

    @torch.inference_mode()
    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        encode = self.encoder(preprocess)
        model.eval()
        results = []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            probs = model(encode([value for _, value in chunk])).float().softmax(-1)
            for (name, _), row in zip(chunk, probs.tolist(), strict=True):
                best = max(range(len(row)), key=row.__getitem__)
                results.append({"input": name, "label": self.labels[best],
                                "probabilities": dict(zip(self.labels, row, strict=True))})
        return results

    def format_prediction(self, result: dict[str, Any]) -> str:
        return f"{result['input']}\t{result['label']}\t{result['probabilities'][result['label']]:.3f}"


def _true_and_predicted(evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    if "labels" not in evaluation.outputs:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return evaluation.outputs["labels"], evaluation.outputs["probs"].argmax(axis=1)
