"""`graftune export`: a run's model as an ONNX file, a Hugging Face folder or a TorchScript file, checked
against the run's own PyTorch model before it is put in place.

    >>> from graftune.exporting import export_run
    >>> done = export_run("runs/news", "onnx")            # runs/news/exports/onnx/model.onnx
    >>> done.check.max_abs_diff                           # ONNX Runtime against PyTorch on the test split

Every export is a folder (bundle.py: the model file with labels.json, preprocessing.json, graftune.json,
the tokenizer for text, and export.json with the check). Formats:

| format | file | loads with | module |
|---|---|---|---|
| onnx | model.onnx, dynamic batch (and sequence) axes | onnxruntime.InferenceSession | onnx_file.py |
| hf | a Transformers or sentence-transformers folder | AutoModelFor..., SentenceTransformer | hf_folder.py |
| torchscript | model.pt | torch.jit.load | torchscript_file.py |

The check (check.py): the export's outputs on the first test examples (batches.py) against the run's
model, within `tolerance` x max(1, max |output|).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from graftune.artifacts import FineTuned, load_model
from graftune.errors import UserError, closest
from graftune.exporting.batches import Inputs, check_inputs, dynamic_axes, reference, synthetic_inputs
from graftune.exporting.bundle import preprocessing, stage, write_companions, write_record
from graftune.exporting.check import TOLERANCE, Check, compare
from graftune.preprocessing import TextPreprocess
from graftune.rundir import MARKER, RunDir

FORMATS = ("onnx", "hf", "torchscript")
EXPORTS_DIR = "exports"  # the default --out: RUN/exports/FORMAT
TRACE_BATCH = 2  # the synthetic batch a trace or export runs on; the check batch differs from it


@dataclass(frozen=True)
class Exported:
    """A finished export: its folder, format, what wrote it and its check against PyTorch."""

    folder: Path
    format: str
    exporter: str
    check: Check


def export_run(run_dir: str | Path, format: str, out: str | Path | None = None, overwrite: bool = False,
               trust_code: bool = False, tolerance: float = TOLERANCE) -> Exported:
    """Export the run's model to `out` (default RUN/exports/FORMAT), checked against PyTorch on the test split."""
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown format; use onnx, hf or torchscript.{closest(format, FORMATS)}")
    if not tolerance > 0:
        raise UserError(f"--tolerance {tolerance}: must be above 0 (the largest difference allowed, relative to "
                        "max(1, the largest output)).")
    if format == "onnx":
        from graftune.exporting.onnx_file import require_onnx

        require_onnx()
    run = RunDir(run_dir)
    if run.path.is_dir() and not run.is_run() and not run.model.is_dir():
        raise UserError(f"{run.path}: not a graftune run folder (no {MARKER} marker, no model/). Give a run directory "
                        "that graftune train wrote.")
    run.require()
    fine_tuned = load_model(run.path, trust_code=trust_code)
    if format == "hf" and fine_tuned.task.modality in ("image", "video"):
        raise UserError(f"--format hf: image and video models ({fine_tuned.info['source']} with graftune's new head) "
                        "have no Hugging Face architecture that computes what this model computes. Use --format "
                        "onnx or --format torchscript.")
    folder = Path(out) if out is not None else run.path / EXPORTS_DIR / format
    staged = stage(folder, overwrite)
    try:
        checked = check_inputs(run.path, fine_tuned)
        exporter, record, check = _WRITERS[format](fine_tuned, staged.path, checked, tolerance)
        write_record(staged.path, {"format": format, "run": str(run.path.resolve()), "task": fine_tuned.task.name,
                                   "exporter": exporter, **record, "check": check.to_json(),
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "versions": {"graftune": version("graftune"), "torch": torch.__version__,
                                                "python": platform.python_version()}})
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return Exported(folder, format, exporter, check)


def _tokenizer_dir(fine_tuned: FineTuned) -> str | None:
    return "tokenizer" if isinstance(fine_tuned.preprocess, TextPreprocess) else None


def _metadata(fine_tuned: FineTuned) -> dict[str, str]:
    """What travels inside the model file itself: the task, what its outputs mean (graftune.labels for a
    classifier, graftune.target for a regression: the companion file's JSON) and the preprocessing."""
    meaning = fine_tuned.task.output_meaning()
    outputs = {f"graftune.{meaning[0].removesuffix('.json')}": json.dumps(meaning[1])} if meaning else {}
    return {"graftune.task": fine_tuned.task.name, **outputs,
            "graftune.preprocessing": json.dumps(preprocessing(fine_tuned, _tokenizer_dir(fine_tuned) or "."))}


def _signature(fine_tuned: FineTuned, example: Inputs, axes: dict[str, dict[int, str]],
               output: torch.Tensor) -> dict[str, Any]:
    """The graph's inputs and outputs: each dimension's size, or its name where it may change."""
    def dims(shape: torch.Size, names: dict[int, str]) -> list[int | str]:
        return [names.get(i, size) for i, size in enumerate(shape)]

    text = isinstance(fine_tuned.preprocess, TextPreprocess)
    output_axes = {0: "batch", 1: "sequence"} if text and output.dim() == 3 else {0: "batch"}
    return {"inputs": {name: {"dims": dims(t.shape, axes[name]), "dtype": str(t.dtype).removeprefix("torch.")}
                       for name, t in example.tensors.items()},
            "outputs": {"logits": {"dims": dims(output.shape, output_axes), "dtype": "float32"}}}


def _onnx(fine_tuned: FineTuned, folder: Path, checked: Inputs, tolerance: float) -> tuple[str, dict[str, Any], Check]:
    from graftune.exporting.onnx_file import FILE, run_onnx, runtime, write_onnx

    example = synthetic_inputs(fine_tuned, TRACE_BATCH)
    axes = dynamic_axes(fine_tuned, example)
    exporter = write_onnx(fine_tuned.model, example, axes, folder / FILE, _metadata(fine_tuned))
    expected = reference(fine_tuned, checked)
    check = compare(run_onnx(folder / FILE, checked), expected, checked.source, checked.examples, runtime(),
                    tolerance, "--format onnx")
    write_companions(folder, fine_tuned, _tokenizer_dir(fine_tuned))
    return exporter, {"file": FILE, **_signature(fine_tuned, example, axes, expected)}, check


def _torchscript(fine_tuned: FineTuned, folder: Path, checked: Inputs,
                 tolerance: float) -> tuple[str, dict[str, Any], Check]:
    from graftune.exporting.torchscript_file import FILE, run_torchscript, write_torchscript

    example = synthetic_inputs(fine_tuned, TRACE_BATCH)
    metadata = {f"{key.removeprefix('graftune.')}.json": value for key, value in _metadata(fine_tuned).items()}
    exporter = write_torchscript(fine_tuned.model, example, folder / FILE, metadata)
    expected = reference(fine_tuned, checked)
    check = compare(run_torchscript(folder / FILE, checked), expected, checked.source, checked.examples,
                    f"torch.jit {torch.__version__}", tolerance, "--format torchscript")
    write_companions(folder, fine_tuned, _tokenizer_dir(fine_tuned))
    axes = dynamic_axes(fine_tuned, example)
    return exporter, {"file": FILE, "positional_inputs": example.names,
                      **_signature(fine_tuned, example, axes, expected)}, check


def _hf(fine_tuned: FineTuned, folder: Path, checked: Inputs, tolerance: float) -> tuple[str, dict[str, Any], Check]:
    from graftune.exporting.hf_folder import run_hf, write_hf

    written = write_hf(fine_tuned, folder)
    check = compare(run_hf(folder, written, checked), reference(fine_tuned, checked), checked.source,
                    checked.examples, written.exporter.split(" (")[0], tolerance, "--format hf")
    write_companions(folder, fine_tuned, None)
    return written.exporter, {"loads_with": written.kind}, check


_WRITERS = {"onnx": _onnx, "torchscript": _torchscript, "hf": _hf}
