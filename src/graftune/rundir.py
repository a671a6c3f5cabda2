"""The run directory: the unit of output every later command reads, and the only place graftune writes.

    RUN/.graftune-run        the marker: graftune made this folder
    RUN/config.yaml          resolved settings
    RUN/lr_find.json         with optim.lr auto: the range test that picked the rate (its plot in plots/)
    RUN/data_splits.json     which example went to train / val / test (with a digest of each), the schema
    RUN/strategy.json        the strategy's stages and the layer groups
    RUN/metrics.jsonl        one JSON object per epoch
    RUN/checkpoints/         epoch-N/ and last.json (training state for --resume), best/ (weights)
    RUN/model/               the fine-tuned model (see artifacts.py)
    RUN/results.json         final test metrics
    RUN/test_predictions.jsonl  classifiers: each test example's true and predicted label and probabilities
    RUN/report.html          the run report: one self-contained page (report.py)
    RUN/logs/                with train.log_with: the trackers' files (tensorboard: RUN/logs/NAME/ events)
    RUN/resumes.json         what each --resume changed or accepted
    RUN/before.json          language models: the pre-trained model's test (and retained) scores
    RUN/plots/               learning curves and the task's plots
    RUN/exports/FORMAT/      `graftune export`'s default output (graftune/exporting/)

graftune writes only into folders it made: a new run is set up in a hidden sibling folder and moved
into place once its setup succeeded, so a failed start leaves nothing behind, and `--overwrite`
removes an old run only then, and only a folder with the marker that holds nothing graftune did not
write. `--resume` needs the marker and the files a run starts with.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from graftune.errors import UserError

MARKER = ".graftune-run"
MARKER_TEXT = "graftune run directory\n"
ENTRIES = {MARKER, "config.yaml", "lr_find.json", "data_splits.json", "strategy.json", "metrics.jsonl", "results.json",
           "resumes.json", "before.json", "model", "checkpoints", "plots", "exports", "test_predictions.jsonl",
           "report.html", "logs"}


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.created_parents: list[Path] = []  # a staged run's: the parent folders made for it

    config = property(lambda self: self.path / "config.yaml")
    splits = property(lambda self: self.path / "data_splits.json")
    model = property(lambda self: self.path / "model")
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    strategy = property(lambda self: self.path / "strategy.json")
    resumes = property(lambda self: self.path / "resumes.json")
    before = property(lambda self: self.path / "before.json")
    plots = property(lambda self: self.path / "plots")
    lr_find = property(lambda self: self.path / "lr_find.json")
    predictions = property(lambda self: self.path / "test_predictions.jsonl")
    report = property(lambda self: self.path / "report.html")
    logs = property(lambda self: self.path / "logs")

    # --- what the folder is -----------------------------------------------------------------------------

    def is_run(self) -> bool:
        marker = self.path / MARKER
        try:
            return marker.is_file() and marker.read_text(errors="replace") == MARKER_TEXT
        except OSError:
            return False

    def foreign_entries(self) -> list[str]:
        """Names in the folder that graftune never writes (its own temporary names aside)."""
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in ENTRIES and not (p.name.startswith(".") and p.name.endswith(".tmp")))

    def require(self) -> RunDir:
        """A finished run, for evaluate, predict and `run:` sources."""
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run directory not found.")
        if not self.model.is_dir():
            raise UserError(f"{self.path}: no model/ folder: this run has not finished training. "
                            f"Finish it with `graftune train --resume {self.path}`.")
        return self

    def require_resumable(self) -> RunDir:
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run directory not found.")
        if not self.is_run():
            raise UserError(f"{self.path}: not a graftune run (no {MARKER} marker); --resume continues only runs "
                            "graftune made, and leaves this folder as it is.")
        missing = [name for name in ("config.yaml", "data_splits.json") if not (self.path / name).is_file()]
        if missing:
            raise UserError(f"{self.path}: {' and '.join(missing)} missing; this run cannot be resumed. Start a new "
                            "run with --out.")
        return self

    # --- a new run --------------------------------------------------------------------------------------

    def stage(self, overwrite: bool) -> RunDir:
        """A fresh, hidden sibling folder to set the run up in, after refusing what must not be touched."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is a file. Choose another --out.")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise UserError(f"{path}: run directory exists. Choose another --out, continue it with "
                                "--resume, or replace it with --overwrite.")
            if not self.is_run():
                raise UserError(f"{path}: exists and is not a graftune run (no {MARKER} marker); refusing to "
                                "replace it. Choose another --out.")
            foreign = self.foreign_entries()
            if foreign:
                raise UserError(f"{path}: holds files graftune did not write ({', '.join(foreign[:5])}); refusing "
                                "to delete them with --overwrite. Move them away or choose another --out.")
        staged = RunDir(path.parent / f".{path.name}.graftune-new")
        try:
            created = make_parents(path.parent)
            shutil.rmtree(staged.path, ignore_errors=True)
            staged.path.mkdir()
            (staged.path / MARKER).write_text(MARKER_TEXT)
        except OSError as err:
            raise UserError(f"{path}: cannot create the run folder ({err.strerror}). Choose another --out.") from None
        staged.created_parents = created
        return staged

    def adopt(self, staged: RunDir) -> None:
        """Move a staged run into place, replacing an old run (already checked by `stage`)."""
        old = self.path.parent / f".{self.path.name}.graftune-old"
        if self.path.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(staged.path, self.path)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove a staged run whose setup failed, and the parent folders made for it."""
        remove_made(self.path, self.created_parents)

    # --- files ------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        try:
            return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        except ValueError as err:
            raise UserError(f"{self.metrics}: damaged ({err}).") from None

    def read_json(self, path: Path) -> Any:
        """A JSON file graftune wrote, or an error that names it."""
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: missing from the run.") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: damaged (not the JSON graftune writes: {err}).") from None

    def write_json(self, path: Path, data: Any) -> None:
        write_text_atomically(path, json.dumps(data, indent=2))

    def write_text(self, path: Path, text: str) -> None:
        write_text_atomically(path, text)


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_folder(staged: Path, final: Path) -> None:
    """Put a folder written under a temporary name in place of `final`, which may exist."""
    old = final.with_name(f".{final.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_made(folder: Path, made_parents: list[Path]) -> None:
    """Remove `folder` and, innermost first, the parent folders `make_parents` made for it while they are empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in reversed(made_parents):
        try:
            parent.rmdir()
        except OSError:
            break


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))
