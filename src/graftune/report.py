"""The run report: RUN/report.html, one self-contained page (figures as inline PNG, CSS inline, no script, no
network) written at the end of every run and rebuilt by `graftune report RUN`.

It is made from the run folder alone: the learning curves and every epoch's stage, trainable groups and
rates (metrics.jsonl, strategy.json), the task's own sections on the test (results.json and
test_predictions.jsonl, through `Task.report_sections`), forgetting, results.json and config.yaml. An
unfinished run gets the epochs so far. Everything shown is escaped (graftune/pages.py).
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from graftune.config import Config, load_config
from graftune.errors import UserError
from graftune.pages import Section, figure, page, paragraph, png_image, preformatted, table
from graftune.plots import learning_curves_figure, rates_figure
from graftune.rundir import MARKER, RunDir
from graftune.tasks import get_task
from graftune.tasks.base import Task


def write_report(run: str | Path, read_inputs: bool = False) -> Path:
    """Write RUN/report.html from what the run folder holds; return its path. With `read_inputs`, the test
    inputs the prediction rows name (image and clip files, wherever they lie) are read for thumbnails: the run
    itself passes it for its own data; for a folder someone sent, the rows could name any file of the user's."""
    folder = _report_folder(Path(run))
    settings = load_config(folder.config)
    splits = _shaped(folder, folder.splits, dict, {})
    task = get_task(settings.task)(settings, _schema(folder, splits))
    rows = folder.read_metrics()
    strategy = _shaped(folder, folder.strategy, dict, {})
    results = _shaped(folder, folder.results, dict, None)
    predictions = read_predictions(folder, task.prediction_fields) \
        if results is not None and folder.predictions.is_file() else []
    try:
        sections = [_summary(settings, task, rows, splits, results), _curves(settings, task, rows, folder),
                    _stages(rows, strategy)]
        if results is None:
            sections.append(Section("Test results", paragraph(
                f"No results.json yet: the run has not finished. Finish it with graftune train --resume "
                f"{folder.path}, which writes this report again."), "test"))
        else:
            sections += task.report_sections(results, predictions, partial(_drawn, folder), read_inputs)
            if results.get("forgetting"):
                sections.append(_forgetting(results["forgetting"]))
            sections.append(Section("results.json", preformatted(json.dumps(results, indent=2)), "results"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise UserError(f"{folder.path}: results.json, metrics.jsonl or strategy.json does not have the shape "
                        f"graftune writes ({type(err).__name__}: {str(err)[:80]}); no report can be written. Rebuild "
                        "the results with graftune evaluate, or train the run again.") from None
    config_text = folder.files.read_text(folder.config)
    sections.append(Section("config.yaml (the resolved settings)", preformatted(config_text), "config"))
    subtitle = f"{settings.task}, {settings.model.source}; written {time.strftime('%Y-%m-%d %H:%M:%S')} from " \
               f"{folder.path}"
    folder.write_text(folder.report, page(f"graftune run {folder.path.name}", sections, subtitle))
    return folder.report


def _shaped(folder: RunDir, path: Path, kind: type, missing: Any) -> Any:
    """A JSON file of the run, refused by name unless it holds a `kind` (`missing` when it is not there)."""
    if not path.is_file() and not path.is_symlink():
        return missing
    value = folder.read_json(path)
    if not isinstance(value, kind):
        raise UserError(f"{path}: damaged (a JSON {type(value).__name__}, not the {kind.__name__} graftune writes); "
                        "no report can be written.")
    return value


def _drawn(folder: RunDir, name: str) -> bytes | None:
    """The PNG the run drew as plots/NAME, read inside the run folder only, or None."""
    try:
        return folder.files.read_bytes(folder.plots / name)
    except FileNotFoundError:
        return None


def read_predictions(folder: RunDir, fields: frozenset[str]) -> list[dict[str, Any]]:
    """The rows of RUN/test_predictions.jsonl, each with the task's `fields`, or an error naming file and line."""
    rows = []
    for number, line in enumerate(folder.files.read_text(folder.predictions).splitlines(), start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not fields <= set(row):
                raise ValueError(f"not a prediction row ({', '.join(sorted(fields))})")
        except ValueError as err:
            raise UserError(f"{folder.predictions}:{number}: damaged ({err}). Run the test again with graftune "
                            "evaluate, or train a new run.") from None
        rows.append(row)
    return rows


def fresh(drawn: Path, source: Path) -> bool:
    """Whether the run's plot `drawn` was drawn after `source` last changed (a resume adds epochs after it)."""
    try:
        return drawn.lstat().st_mtime >= source.lstat().st_mtime
    except FileNotFoundError:
        return False


def _report_folder(path: Path) -> RunDir:
    folder = RunDir(path)
    if not path.is_dir():
        raise UserError(f"{path}: run directory not found.")
    folder.files.refuse_links()
    if not folder.is_run():
        raise UserError(f"{path}: not a graftune run (no {MARKER} marker); the report is written only into runs "
                        "graftune made.")
    if not folder.config.is_file():
        raise UserError(f"{folder.config}: missing, so the run's settings are unknown; no report can be written.")
    return folder


def _schema(folder: RunDir, splits: dict[str, Any]) -> dict[str, Any]:
    """What the model predicts: recorded in data_splits.json at the start, and in the model folder at the end."""
    schema = splits.get("schema") if isinstance(splits, dict) else None
    if not isinstance(schema, dict) and (folder.model / "graftune.json").is_file():
        info = folder.read_json(folder.model / "graftune.json")
        schema = info.get("schema") if isinstance(info, dict) else None
    if not isinstance(schema, dict):
        raise UserError(f"{folder.splits}: missing or without the run's schema; no report can be written.")
    return schema


def _summary(settings: Config, task: Task, rows: list[dict[str, Any]], splits: dict[str, Any],
             results: dict[str, Any] | None) -> Section:
    counts = "/".join(str(splits.get(name, {}).get("count", "?")) for name in ("train", "val", "test"))
    metric = str(settings.train.early_stopping.metric)
    facts: list[list[Any]] = [
        ["task", settings.task], ["model", settings.model.source], ["strategy", settings.strategy.name],
        ["train / val / test examples", counts],
        ["epochs run", f"{len(rows)} of {settings.train.epochs}"],
        ["training time", f"{sum(float(r.get('seconds', 0.0)) for r in rows):.1f} s"]]
    if results is not None:
        best = results.get("best_val", {}).get(metric)
        facts += [["best epoch", f"{results.get('best_epoch')} ({metric} {_shown(best)})"],
                  ["stopped early", "yes" if results.get("stopped_early") else "no"],
                  ["test", task.summary(results["test"])]]
    return Section("Summary", table(None, facts), "summary")


def _curves(settings: Config, task: Task, rows: list[dict[str, Any]], folder: RunDir) -> Section:
    if not rows:
        return Section("Learning curves", paragraph("No epoch has been checkpointed yet.", note=True), "curves")
    metric = str(settings.train.early_stopping.metric)
    metrics = [m for m in task.metrics if m != "val_loss"]
    columns = ["epoch", "stage", "train_loss", "val_loss", *metrics, "seconds"]
    drawn = _drawn(folder, "learning_curves.png") if fresh(folder.plots / "learning_curves.png", folder.metrics) \
        else None
    curves = png_image(drawn, "learning curves") if drawn else figure(learning_curves_figure(rows, metric),
                                                                     "learning curves")
    body = curves + table(columns, [[_cell(row.get(c, "")) for c in columns] for row in rows])
    return Section("Learning curves", body, "curves")


def _stages(rows: list[dict[str, Any]], strategy: dict[str, Any]) -> Section:
    """The strategy's plan, then per run of epochs in one stage: what trained and what stayed frozen."""
    groups = list(strategy.get("groups", []))
    plan = table(["stage", "trains", "epochs", "until plateau", "body lr", "head lr", "lr decay", "schedule"],
                 [[s.get("name"), s.get("train"), s.get("epochs") if s.get("epochs") is not None else "rest",
                   s.get("plateau_patience") or "", s.get("lr"), s.get("head_lr"), s.get("lr_decay"),
                   s.get("schedule")] for s in strategy.get("stages", [])])
    spans: list[list[Any]] = []
    for row in rows:
        trainable = list(row.get("trainable_groups", []))
        key = (row.get("stage_index"), tuple(trainable))
        if spans and spans[-1][-1] == key:
            spans[-1][1] = row["epoch"]
            continue
        frozen = [g for g in groups if g not in trainable]
        spans.append([row["epoch"], row["epoch"], row.get("stage", ""), f"{len(trainable)} of {len(groups)}",
                      row.get("trainable_params", ""), _names(frozen) or "none",
                      "yes" if row.get("cached_features") else "no", key])
    timeline = table(["from epoch", "to epoch", "stage", "trainable layer groups", "trainable parameters",
                      "frozen layer groups", "cached features"], [span[:-1] for span in spans])
    figure_html = figure(rates_figure(rows), "learning rates per layer group") if rows else ""
    body = (paragraph(f"Strategy {strategy.get('name', '?')}: the stages as planned (strategy.json).") + plan
            + paragraph("As trained (metrics.jsonl): the head always trains; a layer group without a rate was "
                        "frozen at that epoch.") + figure_html + timeline)
    return Section("Stages and learning rates", body, "stages")


def _forgetting(forgetting: dict[str, Any]) -> Section:
    """What the model forgot: the scalar scores before and after, side by side."""
    before, after = forgetting.get("before") or {}, forgetting.get("after") or {}
    keys = [k for k in after if _scalar(after[k]) and _scalar(before.get(k))]
    rows: list[list[Any]] = [[k, before[k], after[k]] for k in keys]
    facts = [[k, v] for k, v in forgetting.items() if k not in ("before", "after") and _scalar(v)]
    body = (table(None, facts) if facts else "") + table(["score", "before", "after"], rows)
    return Section("Forgetting", body, "forgetting")


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _cell(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _names(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
