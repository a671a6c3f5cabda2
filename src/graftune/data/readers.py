"""Readers for labelled examples: class folders (images or .txt texts) and CSV/JSONL tables.

Every example remembers where it came from (`file` or `file:line`), so errors and the recorded split
can point at it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from graftune.errors import UserError, closest
from graftune.preprocessing import Modality

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Example:
    """One labelled input: the text itself, or the path of an image file."""

    input: str
    label: str
    where: str


def read_examples(path: str | Path, modality: Modality, fmt: str = "auto", input_column: str | None = None,
                  label_column: str = "label") -> list[Example]:
    """Read every labelled example under `path` (a class-folder root, a .csv or a .jsonl file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data not found.")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    if fmt == "folder":
        examples = _read_folder(path, modality)
    else:
        examples = _read_table(path, fmt, modality, input_column, label_column)
    if not examples:
        raise UserError(f"{path}: no examples found. Expected class folders (ROOT/LABEL/file) or a CSV/JSONL file.")
    return examples


def read_unlabelled(path: str | Path, modality: Modality, input_column: str | None = None) -> list[str]:
    """Inputs without labels (EWC's retained data): every image or .txt file under a folder, the lines
    of a .txt file (text), or the input column of a CSV/JSONL file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data not found.")
    if path.is_dir():
        suffixes = IMAGE_SUFFIXES if modality == "image" else {".txt"}
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not p.name.startswith("."))
        inputs = [read_text(f) if modality == "text" else _checked_image(f) for f in files]
    elif modality == "text" and path.suffix.lower() == ".txt":
        inputs = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = _csv_rows(path) if _detect_format(path) == "csv" else _jsonl_rows(path)
        inputs = []
        for line, row in rows:
            column = input_column or _guess_input_column(row, modality, path)
            if column not in row:
                raise UserError(f"{path}:{line}: no column '{column}'. Columns: {', '.join(row)}.")
            value = "" if row[column] is None else str(row[column])
            if modality == "text":
                inputs.append(_checked_text(value, f"{path}:{line}"))
            else:
                image = Path(value) if Path(value).is_absolute() else path.parent / value
                inputs.append(_checked_image(image, f"{path}:{line}"))
    if not inputs:
        raise UserError(f"{path}: no {modality} inputs found.")
    return inputs


def split_folders(path: Path) -> dict[str, Path] | None:
    """`ROOT/{train,val,test}/LABEL/...`: the user's own split, when the folder has that layout."""
    if not path.is_dir():
        return None
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = {SPLIT_NAMES[p.name.lower()]: p for p in subdirs if p.name.lower() in SPLIT_NAMES}
    return found if "train" in found and len(found) == len(subdirs) else None


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise UserError(f"{path}: unknown data format '{suffix}'. Use a class-folder root, a .csv or a .jsonl file, "
                    "or set data.format.")


def _read_folder(root: Path, modality: Modality) -> list[Example]:
    suffixes = IMAGE_SUFFIXES if modality == "image" else {".txt"}
    examples = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root}: no class folders. Put each example in ROOT/LABEL/ (one folder per label).")
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not p.name.startswith("."))
        for file in files:
            content = read_text(file) if modality == "text" else _checked_image(file)
            examples.append(Example(content, class_dir.name, str(file)))
    return examples


def read_text(file: Path, where: str | None = None) -> str:
    try:
        text = file.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise UserError(f"{file}: not UTF-8 text (byte {err.start}). Re-save the file as UTF-8.") from None
    return _checked_text(text, where or str(file))


def _checked_text(text: str, where: str) -> str:
    if not text.strip():
        raise UserError(f"{where}: empty text. Remove the example or give it content.")
    return text


def _checked_image(file: Path, where: str | None = None) -> str:
    try:
        with Image.open(file) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{where or file}: cannot read image {file.name} ({err}). Remove or replace the file.") \
            from None
    return str(file)


def _read_table(path: Path, fmt: str, modality: Modality, input_column: str | None,
                label_column: str) -> list[Example]:
    rows = _csv_rows(path) if fmt == "csv" else _jsonl_rows(path)
    examples = []
    for line, row in rows:
        where = f"{path}:{line}"
        column = input_column or _guess_input_column(row, modality, path)
        for key in (column, label_column):
            if key not in row:
                raise UserError(f"{where}: no column '{key}'.{closest(key, row)} Columns: {', '.join(row)}. "
                                "Set data.input_column / data.label_column.")
        label = row[label_column]
        if label is None or str(label).strip() == "":
            raise UserError(f"{where}: empty label in column '{label_column}'.")
        value = "" if row[column] is None else str(row[column])
        if modality == "text":
            content = _checked_text(value, where)
        else:
            image = Path(value) if Path(value).is_absolute() else path.parent / value
            content = _checked_image(image, where)
        examples.append(Example(content, str(label).strip(), where))
    return examples


def _guess_input_column(row: dict[str, object], modality: Modality, path: Path) -> str:
    candidates = ("text", "sentence", "content") if modality == "text" else ("image", "path", "file", "filename")
    for name in candidates:
        if name in row:
            return name
    raise UserError(f"{path}: cannot tell which column holds the {modality}s (columns: {', '.join(row)}). "
                    "Set data.input_column.")


def _csv_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise UserError(f"{path}: empty CSV file, expected a header line.")
        for row in reader:
            if None in row:
                raise UserError(f"{path}:{reader.line_num}: more fields than the header has.")
            rows.append((reader.line_num, dict(row)))
    return rows


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}:{err.colno}: not valid JSON ({err.msg}).") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line.")
        rows.append((number, row))
    return rows


def read_prediction_inputs(files: list[str], texts: list[str], modality: Modality) -> list[tuple[str, str]]:
    """(name, input) pairs for `graftune predict`: text files are read, image paths are checked, --text
    values pass through."""
    inputs = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: input file not found.")
        if modality == "image":
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            inputs.append((name, str(path)))
        else:
            inputs.append((name, read_text(path)))
    if texts and modality == "image":
        raise UserError("--text is for text models; this run classifies images.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise UserError(f"--text #{i + 1}: empty text.")
        inputs.append((f"text {i + 1}", text))
    if not inputs:
        raise UserError("nothing to predict: give input files or --text.")
    return inputs
