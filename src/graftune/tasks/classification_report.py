"""A classifier's part of the run report: the test confusion matrix, precision / recall / F1 per class,
calibration (reliability diagram and ECE) and the most confident mistakes, from results.json's `test` and
RUN/test_predictions.jsonl."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graftune.calibration import reliability
from graftune.pages import Section, escape, figure, paragraph, png_image, table
from graftune.plots import confusion_matrix_figure, reliability_figure

WORST = 8  # mistakes shown
BINS = 10  # equal-width confidence bins of the reliability diagram


def classification_sections(test: dict[str, Any], predictions: list[dict[str, Any]],
                            example_cell: Callable[[dict[str, Any]], str], drawn: bytes | None) -> list[Section]:
    """The sections, in reading order; calibration and mistakes only when the run wrote its test predictions.
    The confusion matrix is the one the run drew (`drawn`, PNG bytes) when it is there."""
    sections = [confusion_section(test, drawn), per_class_section(test)]
    if predictions:
        sections += [calibration_section(predictions), worst_section(predictions, example_cell)]
    else:
        sections.append(Section("Test predictions", paragraph(
            "This run wrote no test_predictions.jsonl (it predates it, or its test split is empty): no calibration "
            "or worst examples.", note=True), "predictions"))
    return sections


def confusion_section(test: dict[str, Any], drawn: bytes | None) -> Section:
    labels, matrix = test["labels"], test["confusion_matrix"]
    image = png_image(drawn, "test confusion matrix") if drawn else figure(
        confusion_matrix_figure(matrix, labels), "test confusion matrix")
    rows = [[label, *counts, sum(counts)] for label, counts in zip(labels, matrix, strict=True)]
    rows.append(["all", *[sum(column) for column in zip(*matrix, strict=True)], sum(map(sum, matrix))])
    body = (paragraph(f"{test['examples']} test examples; rows are the true labels, columns the predicted ones "
                      "(the most probable class).")
            + image + table(["true \\ predicted", *labels, "total"], rows))
    return Section("Confusion matrix", body, "confusion")


def per_class_section(test: dict[str, Any]) -> Section:
    rows: list[list[Any]] = [[label, s["precision"], s["recall"], s["f1"], s["support"]]
                             for label, s in test["per_class"].items()]
    summary = table(["accuracy", "macro F1", "balanced accuracy", "ROC AUC", "loss", "examples"],
                    [[test["accuracy"], test["macro_f1"], test["balanced_accuracy"], test["roc_auc"], test["loss"],
                      test["examples"]]])
    at = test.get("at_threshold")
    threshold = "" if not at else paragraph(
        f"At the validated threshold {at['threshold']:.4g} on the second class's probability: accuracy "
        f"{at['accuracy']:.4f}, balanced accuracy {at['balanced_accuracy']:.4f}.")
    return Section("Per-class results", summary + threshold + table(
        ["class", "precision", "recall", "F1", "support"], rows), "per-class")


def calibration_section(predictions: list[dict[str, Any]]) -> Section:
    confidence = np.array([row["confidence"] for row in predictions])
    correct = np.array([row["predicted"] == row["label"] for row in predictions])
    bins = reliability(confidence, correct, BINS)
    rows = [[f"({low:.1f}, {high:.1f}]", n, "" if n == 0 else acc, "" if n == 0 else conf]
            for low, high, n, acc, conf in zip(bins.edges[:-1], bins.edges[1:], bins.counts, bins.accuracy,
                                               bins.confidence, strict=True)]
    body = (paragraph(f"Expected calibration error (ECE, {BINS} equal-width bins of the predicted class's "
                      f"probability): {bins.ece:.4f}. A calibrated model is right as often as it is confident.")
            + figure(reliability_figure(bins.edges, bins.accuracy, bins.confidence, bins.ece), "reliability diagram")
            + table(["confidence", "examples", "accuracy", "mean confidence"], rows))
    return Section("Calibration", body, "calibration")


def worst_section(predictions: list[dict[str, Any]], example_cell: Callable[[dict[str, Any]], str]) -> Section:
    mistakes = sorted((row for row in predictions if row["predicted"] != row["label"]),
                      key=lambda row: -row["confidence"])
    if not mistakes:
        return Section("Worst-classified test examples", paragraph("No test example was misclassified."), "worst")
    rows = [[example_cell(row), escape(row["label"]), escape(row["predicted"]), f"{row['confidence']:.3f}",
             f"{row['probabilities'].get(row['label'], 0.0):.3f}"] for row in mistakes[:WORST]]
    body = (paragraph(f"The {len(rows)} most confident of {len(mistakes)} mistakes on the test split.")
            + table(["example", "true", "predicted", "confidence", "p(true)"], rows, raw=True))
    return Section("Worst-classified test examples", body, "worst")
