"""A regression's part of the run report: its test scores, predicted against true values with the residuals,
and the examples it missed by most, from results.json's `test` and RUN/test_predictions.jsonl."""

from __future__ import annotations

from typing import Any

from graftune.pages import Section, escape, figure, paragraph, table
from graftune.plots import regression_figure

WORST = 8  # largest errors shown
SNIPPET = 300  # characters of a text shown


def regression_sections(test: dict[str, Any], predictions: list[dict[str, Any]]) -> list[Section]:
    scores = table(["RMSE", "MAE", "R²", "Pearson", "Spearman", "examples"],
                   [[test["rmse"], test["mae"], test["r2"], test["pearson"], test["spearman"], test["examples"]]])
    sections = [Section("Test scores", paragraph(f"In the units of the target '{test.get('target', '?')}'.") + scores,
                        "scores")]
    if not predictions:
        sections.append(Section("Test predictions", paragraph(
            "This run wrote no test_predictions.jsonl: no scatter or largest errors.", note=True), "predictions"))
        return sections
    true = [float(row["target"]) for row in predictions]
    predicted = [float(row["predicted"]) for row in predictions]
    sections.append(Section("Predicted against true", figure(regression_figure(true, predicted, str(
        test.get("target", "target"))), "predicted against true values, and the residuals"), "scatter"))
    worst = sorted(predictions, key=lambda row: -abs(float(row["predicted"]) - float(row["target"])))[:WORST]
    rows = [[_snippet(row), row["target"], row["predicted"], round(float(row["predicted"]) - float(row["target"]), 6)]
            for row in worst]
    sections.append(Section("Largest errors", paragraph(f"The {len(rows)} test examples missed by most.")
                            + table(["example", "true", "predicted", "error"], rows, raw=True), "worst"))
    return sections


def _snippet(row: dict[str, Any]) -> str:
    text = str(row.get("input", ""))
    shown = text if len(text) <= SNIPPET else text[:SNIPPET].rstrip() + " …"
    return f'{escape(shown)}<br><span class="note">{escape(str(row.get("where", "")))}</span>'
