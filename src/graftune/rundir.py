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
    RUN/.graftune-files      the manifest: every file graftune wrote here, one relative path a line

graftune writes only into folders it made: a new run is set up in a hidden sibling folder and moved
into place once its setup succeeded, so a failed start leaves nothing behind, and `--overwrite`
removes an old run only then, and only a folder with the marker that holds nothing graftune did not
write, at any depth (the manifest says what it wrote; exports name their files in export.json).
`--resume` needs the marker and the files a run starts with. Every file is written, read and removed
through `safe_files.Confined`, and a run folder holding a symbolic link is refused before any command
works on it: a folder someone sent cannot point graftune's writes, reads or deletions elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from graftune.errors import UserError
from graftune.safe_files import Confined

MARKER = ".graftune-run"
MARKER_TEXT = "graftune run directory\n"
MANIFEST = ".graftune-files"
EXPORT_RECORD = "export.json"  # an export's own list of the files it wrote (exporting/bundle.py)
ENTRIES = {MARKER, MANIFEST, "config.yaml", "lr_find.json", "data_splits.json", "strategy.json", "metrics.jsonl",
           "results.json",
           "resumes.json", "before.json", "model", "checkpoints", "plots", "exports", "test_predictions.jsonl",
           "report.html", "logs"}


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = Confined(self.path, "run folder", MANIFEST)
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
        try:
            return self.files.read_text(self.path / MARKER) == MARKER_TEXT
        except (OSError, UnicodeDecodeError, UserError):
            return False

    def foreign_files(self) -> list[str]:
        """Files (and links) in the folder, at any depth, that graftune did not write: not in the manifest, not
        one of the run's own top-level names, not listed by an export's export.json."""
        spared = {name for name in ENTRIES if (self.path / name).is_file()}
        exports = self.path / "exports"
        if exports.is_dir() and not exports.is_symlink():
            for record in exports.glob(f"*/{EXPORT_RECORD}"):
                spared |= _export_files(self.files, record)
        return self.files.foreign(spared=frozenset(spared))

    def require(self) -> RunDir:
        """A finished run, for evaluate, predict and `run:` sources."""
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run directory not found.")
        self.files.refuse_links()
        if not self.model.is_dir():
            raise UserError(f"{self.path}: no model/ folder: this run has not finished training. "
                            f"Finish it with `graftune train --resume {self.path}`.")
        return self

    def require_resumable(self) -> RunDir:
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run directory not found.")
        self.files.refuse_links()
        if not self.is_run():
            raise UserError(f"{self.path}: not a graftune run (no {MARKER} marker); --resume continues only runs "
                            "graftune made, and leaves this folder as it is.")
        missing = [name for name in ("config.yaml", "data_splits.json") if not (self.path / name).is_file()]
        if missing:
            raise UserError(f"{self.path}: {' and '.join(missing)} missing; this run cannot be resumed. Start a new "
                            "run with --out.")
        return self

    # --- a new run --------------------------------------------------------------------------------------

    def check_target(self, overwrite: bool) -> None:
        """Refuse an --out that must not be touched: a file, a run without --overwrite, a folder that is no run,
        a run holding files graftune did not write."""
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
            foreign = self.foreign_files()
            if foreign:
                more = f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
                raise UserError(f"{path}: holds files graftune did not write ({', '.join(foreign[:8])}{more}); "
                                "refusing to delete them with --overwrite. Move them away or choose another --out.")

    def stage(self, overwrite: bool) -> RunDir:
        """A fresh, hidden sibling folder to set the run up in, after refusing what must not be touched."""
        self.check_target(overwrite)
        path = _absolute(self.path)  # `--out .` has no name of its own: its sibling is named after the real one
        try:
            created = make_parents(path.parent)
            # a unique name: a folder of the user's that happens to look like graftune's is never reused
            staged = RunDir(tempfile.mkdtemp(prefix=f".{path.name}.graftune-new-", dir=path.parent))
            staged.files.write_text(staged.path / MARKER, MARKER_TEXT)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the run folder ({err.strerror}). Choose another "
                            "--out.") from None
        staged.created_parents = created
        return staged

    def adopt(self, staged: RunDir) -> None:
        """Move a staged run into place, replacing an old run (already checked by `stage`)."""
        path = _absolute(self.path)
        if not path.is_dir():
            os.replace(staged.path, path)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.graftune-old-", dir=path.parent))
        os.replace(path, aside / "run")
        os.replace(staged.path, path)
        shutil.rmtree(aside, ignore_errors=True)

    def discard(self) -> None:
        """Remove a staged run whose setup failed, and the parent folders made for it."""
        remove_made(self.path, self.created_parents)

    # --- files ------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file() and not self.metrics.is_symlink():
            return []
        try:
            rows = [json.loads(line) for line in self.files.read_text(self.metrics).splitlines() if line.strip()]
        except (ValueError, OSError) as err:
            raise UserError(f"{self.metrics}: damaged ({err}).") from None
        if not all(isinstance(row, dict) for row in rows):
            raise UserError(f"{self.metrics}: damaged (a line is not a JSON object, as graftune writes them).")
        return rows

    def read_json(self, path: Path) -> Any:
        """A JSON file graftune wrote, or an error that names it."""
        try:
            return json.loads(self.files.read_text(path))
        except FileNotFoundError:
            raise UserError(f"{path}: missing from the run.") from None
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise UserError(f"{path}: damaged (not the JSON graftune writes: {err}).") from None

    def write_json(self, path: Path, data: Any) -> None:
        self.files.write_text(path, json.dumps(data, indent=2))

    def write_text(self, path: Path, text: str) -> None:
        self.files.write_text(path, text)

    def write_bytes(self, path: Path, data: bytes) -> None:
        self.files.write_bytes(path, data)


def _absolute(path: Path) -> Path:
    """`path` absolute and without '.' or '..' parts, links kept (os.path.abspath)."""
    return Path(os.path.abspath(path))


def _export_files(files: Confined, record: Path) -> set[str]:
    """The files an export's export.json says it wrote, relative to the run folder (none when it is damaged)."""
    try:
        names = json.loads(files.read_text(record))["files"]
        folder = files.relative(record.parent)
        return {f"{folder}/{name}" for name in names if isinstance(name, str)} | {f"{folder}/{EXPORT_RECORD}"}
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return set()


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
