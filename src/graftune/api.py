"""The Python API: the same operations as the CLI, with the same behaviour and errors.

Example:
    >>> from graftune import train, predict
    >>> run = train("news.yaml", out="runs/news", overrides=["train.epochs=2"])
    >>> predict("runs/news", texts=["The striker scored twice"])[0]["label"]
    'sport'

`trust_code=True` lets graftune import Python code that a run folder names (a `module:` model source);
it is never recorded, so every later command asks again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from graftune.artifacts import FineTuned, load_model
from graftune.config import Config, as_config
from graftune.exporting import Exported, export_run
from graftune.exporting.check import TOLERANCE
from graftune.fit import EpochHook
from graftune.lr_find import Finding, RangeTest, output_folder, write
from graftune.run import Permissions, RunResult, find_lr, resume_run, train_run
from graftune.safe_files import Confined
from graftune.settings import data_folders, refuse_output_in_data


def train(config: str | Path | dict[str, Any] | Config, out: str | Path, overrides: list[str] | None = None,
          overwrite: bool = False, resume: bool = False, console: Console | None = None, trust_code: bool = False,
          accept_changed_data: bool = False, on_epoch: EpochHook | None = None) -> RunResult:
    """Fine-tune as the config says (a YAML path, a dict or a `Config`) into the run folder `out`.

    With `resume`, continue the run in `out` with its own settings (the config is not used; `overrides`
    may give it more epochs) on the split it recorded; `accept_changed_data` continues although data files
    changed since it started. `on_epoch(epoch, row)` is called with each epoch's metrics row once its
    checkpoint is committed; an exception it raises stops the run, which `resume` can continue.
    """
    permissions = Permissions(trust_code, accept_changed_data)
    if resume:
        return resume_run(out, overrides, console, permissions, on_epoch)
    return train_run(as_config(config, overrides), out, overwrite=overwrite, console=console, permissions=permissions,
                     on_epoch=on_epoch)


def range_test(config: str | Path | dict[str, Any] | Config, out: str | Path, overrides: list[str] | None = None,
               test: RangeTest = RangeTest(), overwrite: bool = False, console: Console | None = None,
               trust_code: bool = False) -> Finding:
    """The learning-rate range test on the stage of the config's run that will train (graftune/lr_find.py):
    writes `out`/lr_find.json and `out`/lr_find.png and returns the finding (`.lr`: the rate picked).
    A non-empty `out` is refused unless `overwrite`, which replaces only those two files."""
    folder = output_folder(out, overwrite)  # refused before minutes of work, not after
    cfg = as_config(config, overrides)
    refuse_output_in_data(out, data_folders(cfg))
    finding = find_lr(cfg, console or Console(stderr=True), Permissions(trust_code), test, progress=cfg.train.progress)
    write(finding, Confined(folder, "lr-find folder"), folder / "lr_find.json", folder / "lr_find.png")
    return finding


def load(run_dir: str | Path, adapter: bool = False, trust_code: bool = False, device: str = "auto") -> FineTuned:
    """Load a fine-tuned model from its run folder onto `device` (auto: the GPU when there is one), computing in
    the run's precision; `adapter=True` rebuilds a LoRA run from the pre-trained body and its adapter instead of
    the merged weights."""
    return load_model(run_dir, adapter, trust_code, device)


def predict(run_dir: str | Path, files: list[str] | None = None, texts: list[str] | None = None,
            trust_code: bool = False, device: str = "auto") -> list[dict[str, Any]]:
    """The task's prediction for image/text files and raw texts: a classifier's label and probabilities."""
    fine_tuned = load_model(run_dir, trust_code=trust_code, device=device)
    return fine_tuned.predict(fine_tuned.task.read_inputs(list(files or []), list(texts or [])))


def evaluate(run_dir: str | Path, data: str | Path, input_column: str | None = None,
             label_column: str | None = None, batch_size: int = 64, trust_code: bool = False,
             device: str = "auto") -> dict[str, Any]:
    """Metrics of a saved run on new labelled data (class folders or CSV/JSONL). A table's columns are those the
    run trained with (its data.input_column and data.label_column) unless `input_column` / `label_column` say
    otherwise."""
    fine_tuned = load_model(run_dir, trust_code=trust_code, device=device)
    return fine_tuned.evaluate(fine_tuned.read_labelled(data, input_column, label_column), batch_size)


def export(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, overwrite: bool = False,
           trust_code: bool = False, tolerance: float = TOLERANCE) -> Exported:
    """Export a run's model as `onnx`, `hf` (a Transformers or sentence-transformers folder) or `torchscript`
    into the folder `out` (default RUN/exports/FORMAT), with its labels and preprocessing beside it. The
    export is checked against the run's PyTorch model on the first examples of its test split and refused
    when the largest difference exceeds `tolerance` x max(1, the largest output); `.check` holds the figures."""
    return export_run(run_dir, format, out, overwrite, trust_code, tolerance)
