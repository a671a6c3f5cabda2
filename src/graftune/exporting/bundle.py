"""The export folder: written under a temporary name and renamed into place, with what travels with every
export beside the model file.

    OUT/model.onnx | model.pt | (a Transformers or sentence-transformers folder)
    OUT/labels.json         classifiers: the labels in output order (logit i is labels[i]), and a two-class
                            model's decision threshold on the second class's probability
    OUT/preprocessing.json  how to turn an input into the tensors the model takes
    OUT/tokenizer/          text models in onnx and torchscript (an hf folder holds its tokenizer itself)
    OUT/graftune.json       the run's model record: task, schema, settings, source, provenance
    OUT/export.json         the format, the inputs and outputs with their axes, the check against PyTorch,
                            and every file the export wrote (what --overwrite may replace)

An existing --out is replaced only with --overwrite, and only when it is an export graftune wrote (its
export.json) holding no other files; anything else is refused and left as it is.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftune.artifacts import FineTuned
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess, TextPreprocess
from graftune.rundir import make_parents, remove_made
from graftune.safe_files import Confined

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1  # of export.json


@dataclass
class Staged:
    """An export being written: `path` is renamed to `final` once it is complete and checked."""

    path: Path
    final: Path
    made_parents: list[Path] = field(default_factory=list)

    def commit(self) -> None:
        Confined(self.final.parent, "export's parent folder").replace_folder(self.path, self.final)

    def discard(self) -> None:
        remove_made(self.path, self.made_parents)


def stage(out: Path, overwrite: bool) -> Staged:
    """A hidden sibling of `out` to write the export into, after refusing an `out` that must not be touched."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is a file. Choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: exists and is not empty. Choose another --out, or replace an export "
                            "graftune wrote there with --overwrite.")
        foreign = _foreign_entries(out)
        if foreign is None:
            raise UserError(f"--out {out}: not an export graftune wrote (no {EXPORT_FILE}); refusing to replace it "
                            "with --overwrite. Choose another --out.")
        if foreign:
            raise UserError(f"--out {out}: holds files the export did not write ({', '.join(foreign[:5])}); refusing "
                            "to delete them with --overwrite. Move them away or choose another --out.")
    try:
        made = make_parents(out.parent)
        # a new, unique name: a folder of the user's named like it is never reused or removed
        path = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the export folder ({err.strerror}). Choose another "
                        "--out.") from None
    return Staged(path, out, made)


def _foreign_entries(folder: Path) -> list[str] | None:
    """Files (and links) at any depth of a previous export that it did not write; None when the folder is no
    export of graftune's."""
    files = Confined(folder, "export folder")
    try:
        record = json.loads(files.read_text(folder / EXPORT_FILE))
        written = frozenset(str(name) for name in record["files"])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None
    return [name for name in files.foreign(spared=written)]


def write_companions(folder: Path, fine_tuned: FineTuned, tokenizer_dir: str | None) -> None:
    """What the outputs mean (the task's file: labels.json for classifiers, target.json for regression),
    preprocessing.json, graftune.json and, with `tokenizer_dir`, the tokenizer."""
    meaning = fine_tuned.task.output_meaning()
    if meaning is not None:
        _write(folder / meaning[0], meaning[1])
    _write(folder / "preprocessing.json", preprocessing(fine_tuned, tokenizer_dir or "."))
    _write(folder / "graftune.json", fine_tuned.info)
    if tokenizer_dir is not None:
        save_tokenizer(fine_tuned, folder / tokenizer_dir)


def save_tokenizer(fine_tuned: FineTuned, folder: Path) -> None:
    """The tokenizer, with the run's token limit as its `model_max_length` (what pipelines truncate at)."""
    preprocess = fine_tuned.preprocess
    assert isinstance(preprocess, TextPreprocess)
    tokenizer = preprocess.tokenizer
    limit = tokenizer.model_max_length
    tokenizer.model_max_length = preprocess.max_length
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.model_max_length = limit


def preprocessing(fine_tuned: FineTuned, tokenizer_dir: str) -> dict[str, Any]:
    """How an input becomes the tensors the export takes, as graftune does it for `evaluate` and `predict`."""
    preprocess = fine_tuned.preprocess
    if isinstance(preprocess, TextPreprocess):
        return {"kind": "text", "max_length": preprocess.max_length, "tokenizer": tokenizer_dir,
                "inputs": ["input_ids", "attention_mask"],
                "steps": [f"AutoTokenizer.from_pretrained('{tokenizer_dir}')(texts, truncation=True, "
                          f"max_length={preprocess.max_length}, padding='longest')",
                          "input_ids and attention_mask, int64, (batch, sequence)"]}
    assert isinstance(preprocess, ImagePreprocess)
    size = preprocess.size
    spec: dict[str, Any] = {**preprocess.to_json(), "inputs": ["pixel_values"], "steps": [
        "RGB", f"resize the shorter side to max({size}, round({size} / crop_pct)) pixels (bilinear)",
        f"crop the centre {size} x {size}", "scale to [0, 1], subtract mean and divide by std per channel",
        f"channels first: float32 (3, {size}, {size})"]}
    return fine_tuned.task.input_steps(spec)


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """export.json, last: it lists every file the export holds."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    _write(folder / EXPORT_FILE, {"graftune_export": EXPORT_FORMAT, **record, "files": [*files, EXPORT_FILE]})
