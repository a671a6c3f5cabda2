"""The run directory: the unit of output every later command reads.

    RUN/config.yaml          resolved config
    RUN/data_splits.json     which example went to train / val / test, and the seed
    RUN/model/               the fine-tuned model (see artifacts.py)
    RUN/checkpoints/         last/ (full training state for --resume) and best/ (weights)
    RUN/metrics.jsonl        one JSON object per epoch
    RUN/results.json         final test metrics
    RUN/plots/               learning_curves.png, confusion_matrix.png
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from graftune.errors import UserError

MARKER = ".graftune-run"  # written first: only folders with it (or a saved model) are runs


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    splits = property(lambda self: self.path / "data_splits.json")
    model = property(lambda self: self.path / "model")
    last = property(lambda self: self.path / "checkpoints" / "last")
    best = property(lambda self: self.path / "checkpoints" / "best")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    strategy = property(lambda self: self.path / "strategy.json")
    plots = property(lambda self: self.path / "plots")

    def create(self, overwrite: bool = False) -> None:
        """Make a fresh run folder. Never touches an existing one unless `overwrite`, and never deletes
        a folder that is not a graftune run, even then."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            if not overwrite:
                raise UserError(f"{self.path}: run directory exists. Choose another --out, continue it with "
                                "--resume, or replace it with --overwrite.")
            if not self.is_run():
                raise UserError(f"{self.path}: exists and is not a graftune run; refusing to delete it. "
                                "Choose another --out.")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).write_text("graftune run directory\n")

    def is_run(self) -> bool:
        return (self.path / MARKER).is_file() or (self.path / "model" / "graftune.json").is_file()

    def require(self) -> RunDir:
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run directory not found.")
        if not self.model.is_dir():
            raise UserError(f"{self.path}: no model/ folder: this run has not finished training. "
                            f"Finish it with `graftune train --resume {self.path}`.")
        return self

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows past `last_epoch`: on resume, epochs after the last checkpoint are redone."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def write_json(self, path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)  # atomic: a crash never leaves half a file
