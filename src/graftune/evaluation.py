"""Classification metrics from scikit-learn: accuracy, macro-F1, per-class scores, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from graftune.loop import Predictions


def classification_metrics(predictions: Predictions, labels: list[str]) -> dict[str, Any]:
    """The `test` object of results.json (also used for `graftune evaluate`)."""
    y_true, y_pred = predictions.labels, predictions.predicted
    indices = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(labels)}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=indices, average="macro", zero_division=0)),
        "loss": predictions.loss,
        "examples": len(y_true),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=indices).tolist(),
        "labels": labels,
    }


def validation_metrics(predictions: Predictions) -> dict[str, float]:
    """What each epoch logs about the validation split."""
    y_true, y_pred = predictions.labels, predictions.predicted
    return {"val_loss": predictions.loss, "val_accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
            "val_macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else 0.0}
