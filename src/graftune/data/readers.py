"""Readers for labelled examples: class folders (images, videos or .txt texts) and CSV/JSONL tables.

Every example remembers where it came from (`file` or `file:line`), so errors and the recorded split
can point at it. Inputs are read faithfully or refused: text in the configured encoding (`data.encoding`,
UTF-8 by default) or an error naming the file and byte; every image opened; files a class folder holds
in another format are reported, and a class left with nothing is an error. Image and video files are
opened (videos decoded whole) before training; with `data.skip_unreadable` the ones that fail are left
out and counted in one warning instead.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from graftune.data.videos import VIDEO_SUFFIXES, check_video
from graftune.errors import InputWarning, MissingColumn, UserError, closest
from graftune.preprocessing import Modality

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEXT_SUFFIXES = {".txt"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Example:
    """One labelled input: the text itself, or the path of an image or video file. `label` is a class name, or
    for a task with numeric targets the number as text (labels are plain strings everywhere data goes)."""

    input: str
    label: str
    where: str


LabelOf = Callable[[object, str, str], str]  # (cell value, column, file:line) -> the label, or a UserError


def read_examples(path: str | Path, modality: Modality, fmt: str = "auto", input_column: str | None = None,
                  label_column: str = "label", encoding: str = "utf-8", skip_unreadable: bool = False,
                  label_of: LabelOf | None = None) -> list[Example]:
    """Read every labelled example under `path` (a class-folder root, a .csv or a .jsonl file). `label_of`
    reads a table's label cell (default: one class name); a task whose labels are no classes (a number)
    passes its own and cannot read class folders."""
    path = Path(path)
    fmt = _checked_format(path, fmt)
    skipped: list[str] = []
    if fmt == "folder" and label_of is not None:
        raise UserError(f"{path}: class folders hold classes, and this task's targets are not classes. Give a CSV or "
                        f"JSONL file with the target in a column (data.label_column, now '{label_column}').")
    if fmt == "folder":
        examples = _read_folder(path, modality, encoding, skipped if skip_unreadable else None)
    else:
        examples = _read_table(path, fmt, modality, input_column, label_column, encoding,
                               skipped if skip_unreadable else None, label_of or class_label)
    if skipped:
        warnings.warn(f"{path}: left out {len(skipped)} unreadable {modality} file(s) (data.skip_unreadable), "
                      f"first: {skipped[0]}", InputWarning, stacklevel=2)
    if not examples:
        raise UserError(f"{path}: no examples found. Expected class folders (ROOT/LABEL/file) or a CSV/JSONL file.")
    return examples


def read_unlabelled(path: str | Path, modality: Modality, input_column: str | None = None,
                    encoding: str = "utf-8") -> list[str]:
    """Inputs without labels (EWC's retained data): every image or .txt file under a folder, the lines
    of a .txt file (text), or the input column of a CSV/JSONL file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data not found.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _suffixes(modality)
                       and not p.name.startswith("."))
        inputs = [read_text(f, encoding=encoding) if modality == "text" else checked_file(f, modality) for f in files]
    elif modality == "text" and path.suffix.lower() == ".txt":
        inputs = [line for line in read_text(path, encoding=encoding).splitlines() if line.strip()]
    else:
        fmt = _checked_format(path, "auto")
        inputs = [value for line, row in _rows(path, fmt, encoding)
                  if (value := _input_of(row, line, path, modality, input_column)) is not None]
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


def _checked_format(path: Path, fmt: str) -> str:
    """The data format of `path`: the one `data.format` names, checked against the path, or detected."""
    if not path.exists():
        raise UserError(f"{path}: data not found.")
    if fmt == "auto":
        return _detect_format(path)
    if fmt == "folder" and not path.is_dir():
        raise UserError(f"{path}: data.format is 'folder', but this is a file. Give the class-folder root, or set "
                        "data.format to csv or jsonl (or auto).")
    if fmt != "folder" and path.is_dir():
        raise UserError(f"{path}: data.format is '{fmt}', but this is a folder. Give the {fmt} file, or set "
                        "data.format to folder (or auto).")
    return fmt


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


def _suffixes(modality: Modality) -> set[str]:
    return {"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES, "text": TEXT_SUFFIXES}[modality]


def checked_file(file: Path, modality: Modality, where: str | None = None) -> str:
    """The path of an image or video file that opens, or an error naming it."""
    return check_video(file, where) if modality == "video" else _checked_image(file, where)


def _read_folder(root: Path, modality: Modality, encoding: str, skipped: list[str] | None = None) -> list[Example]:
    examples = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root}: no class folders. Put each example in ROOT/LABEL/ (one folder per label).")
    suffixes = _suffixes(modality)
    files_of = {d: sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) for d in class_dirs}
    _warn_empty_classes([d for d, files in files_of.items() if not files], root)
    for class_dir, files in files_of.items():
        usable = [f for f in files if f.suffix.lower() in suffixes]
        others = Counter(f.suffix.lower() or "(none)" for f in files if f.suffix.lower() not in suffixes)
        kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(others.items()))
        if others and not usable:
            raise UserError(f"{class_dir}: class '{class_dir.name}' has no {modality} files ({kinds}); "
                            f"{modality} files end in {', '.join(sorted(suffixes))}. Convert them, or remove the "
                            "folder.")
        if others:
            warnings.warn(f"{class_dir}: ignored {kinds} file(s) that are not {', '.join(sorted(suffixes))}.",
                          InputWarning, stacklevel=2)
        for file in usable:
            if modality == "text":
                examples.append(Example(read_text(file, encoding=encoding), class_dir.name, str(file)))
                continue
            checked = _unless_skipped(partial(checked_file, file, modality), skipped)
            if checked is not None:
                examples.append(Example(checked, class_dir.name, str(file)))
    return examples


def _warn_empty_classes(empty: list[Path], root: Path) -> None:
    """An empty folder is no class: say so, since a class the user expected would otherwise just be missing."""
    if empty:
        names = ", ".join(d.name for d in empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn(f"{root}: ignored {len(empty)} empty class folder(s): {names}. Put examples in them, or "
                      "remove them.", InputWarning, stacklevel=4)


def _unless_skipped(check: Callable[[], str], skipped: list[str] | None) -> str | None:
    """`check()`, or None with its error noted in `skipped` when the user lets unreadable files be left out."""
    try:
        return check()
    except UserError as err:
        if skipped is None:
            raise
        skipped.append(str(err))
        return None


def read_text(file: Path, where: str | None = None, encoding: str = "utf-8") -> str:
    """A non-empty text file's content, or an error naming the file and the first byte that is not `encoding`."""
    return _checked_text(decode_text(file, encoding), where or str(file))


def decode_text(file: Path, encoding: str = "utf-8") -> str:
    """A text file's content, or an error naming the file and the first byte that is not `encoding`."""
    try:
        return file.read_text(encoding=encoding, errors="strict")
    except UnicodeDecodeError as err:
        raise UserError(_not_decodable(file, encoding, err)) from None


def _not_decodable(file: Path, encoding: str, err: UnicodeDecodeError) -> str:
    return (f"{file}: not {encoding.upper()} text (byte {err.start}). Re-save it as {encoding.upper()}, or set "
            "data.encoding to its encoding (for example latin-1 or cp1252).")


def _checked_text(text: str, where: str) -> str:
    if not text.strip():
        raise UserError(f"{where}: empty text. Remove the example or give it content.")
    return text


def _checked_image(file: Path, where: str | None = None) -> str:
    where = where or str(file)
    try:
        with Image.open(file) as image:
            image.verify()
    except Image.DecompressionBombError as err:
        raise UserError(f"{where}: {file.name} is too large to decode safely ({err}). Resize or remove it.") from None
    except FileNotFoundError:
        raise UserError(f"{where}: image file {file} not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{where}: cannot read image {file.name} ({err}). Remove or replace the file.") from None
    return str(file)


def _read_table(path: Path, fmt: str, modality: Modality, input_column: str | None, label_column: str,
                encoding: str, skipped: list[str] | None, label_of: LabelOf) -> list[Example]:
    examples = []
    for line, row in _rows(path, fmt, encoding):
        where = f"{path}:{line}"
        if label_column not in row:
            raise MissingColumn(f"{where}: no column '{label_column}'.{closest(label_column, row)} Columns: "
                                f"{', '.join(row)}.", "label", "data.label_column")
        label = label_of(row[label_column], label_column, where)
        value = _input_of(row, line, path, modality, input_column, skipped)
        if value is not None:
            examples.append(Example(value, label, where))
    return examples


def class_label(value: object, column: str, where: str) -> str:
    """One class name from a label cell: a string, or a whole number or boolean of JSON (classes "3", "True").
    A list would become a class named "['a', 'b']", and a fraction is a score, not a class (and 1.0 and 1
    would be two classes), so they are refused."""
    if isinstance(value, list):
        raise UserError(f"{where}: the label in column '{column}' is a list ({json.dumps(value)[:60]}); multi-label "
                        "classification is not supported by this task. Give one string label per example.")
    if not (value is None or isinstance(value, str | int)):  # bool is an int
        kind = "an object" if isinstance(value, dict) else f"the number {value}"
        raise UserError(f"{where}: the label in column '{column}' is {kind}; a class label is a string, or a whole "
                        "number written without a decimal point. Give one string label per example.")
    if value is None or str(value).strip() == "":
        raise UserError(f"{where}: empty label in column '{column}'.")
    return str(value).strip()


def number_label(value: object, column: str, where: str) -> str:
    """A numeric target from a label cell (a JSON number, or text that reads as one), as text; refused with the
    file and line when it is no finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str) or \
            (isinstance(value, str) and not value.strip()):
        shown = "empty" if value is None or (isinstance(value, str) and not value.strip()) else json.dumps(value)[:40]
        raise UserError(f"{where}: the target in column '{column}' is {shown}, not a number. Give every example a "
                        "number (a regression target), or fix data.label_column.")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: the target in column '{column}' is {str(value)[:40]!r}, not a number. Give every "
                        "example a number (a regression target), or fix data.label_column.") from None
    if not math.isfinite(number):
        raise UserError(f"{where}: the target in column '{column}' is {value!r}; a target must be a finite number "
                        "(not NaN or infinite). Fix or remove the row.")
    return repr(number)


def label_list(separator: str) -> LabelOf:
    """A multi-label cell reader: a JSON list of strings, or text split on `separator`; the labels are kept
    as a JSON list, sorted (Example.label stays a string). An empty list is allowed (no label applies);
    a label given twice, or one that is no string, is refused with the file and line."""

    def read(value: object, column: str, where: str) -> str:
        if isinstance(value, list):
            labels = value
        elif isinstance(value, str):
            labels = [part.strip() for part in value.split(separator)] if value.strip() else []
        else:
            raise UserError(f"{where}: the labels in column '{column}' are {json.dumps(value)[:40]}; give a list of "
                            f"strings (JSONL) or labels separated by '{separator}' (data.label_separator).")
        if not all(isinstance(label, str) and label.strip() for label in labels):
            raise UserError(f"{where}: the labels in column '{column}' ({json.dumps(value)[:60]}) hold an empty label "
                            "or one that is no string; every label is a non-empty string.")
        names = [label.strip() for label in labels]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise UserError(f"{where}: label {', '.join(repr(n) for n in twice)} given twice in column '{column}'; "
                            "list each label of an example once.")
        return json.dumps(sorted(names))

    return read


def _input_of(row: dict[str, object], line: int, path: Path, modality: Modality, input_column: str | None,
              skipped: list[str] | None = None) -> str | None:
    """The checked text, or the path of the checked image or video (relative to the table's folder), of one row;
    None for a file that does not open when `skipped` collects those."""
    where = f"{path}:{line}"
    column = input_column or _guess_input_column(row, modality, path)
    if column not in row:
        raise MissingColumn(f"{where}: no column '{column}'.{closest(column, row)} Columns: {', '.join(row)}.",
                            "input", "data.input_column")
    value = "" if row[column] is None else str(row[column])
    if modality == "text":
        return _checked_text(value, where)
    if not value.strip():
        raise UserError(f"{where}: empty {modality} path in column '{column}'.")
    file = Path(value) if Path(value).is_absolute() else path.parent / value
    return _unless_skipped(partial(checked_file, file, modality, where), skipped)


def _guess_input_column(row: dict[str, object], modality: Modality, path: Path) -> str:
    candidates = {"text": ("text", "sentence", "content"), "image": ("image", "path", "file", "filename"),
                  "video": ("video", "clip", "path", "file", "filename")}[modality]
    for name in candidates:
        if name in row:
            return name
    raise MissingColumn(f"{path}: cannot tell which column holds the {modality}s (columns: {', '.join(row)}).",
                        "input", "data.input_column")


def read_rows(path: Path, encoding: str = "utf-8") -> list[tuple[int, dict[str, object]]]:
    """The (line, row) pairs of a CSV/TSV or JSONL file, checked."""
    return _rows(path, _checked_format(path, "auto"), encoding)


def _rows(path: Path, fmt: str, encoding: str) -> list[tuple[int, dict[str, object]]]:
    try:
        return _csv_rows(path, encoding) if fmt == "csv" else _jsonl_rows(path, encoding)
    except UnicodeDecodeError as err:
        raise UserError(_not_decodable(path, encoding, err)) from None


def _without_bom(encoding: str) -> str:
    """UTF-8 that drops a leading byte-order mark: Excel's "CSV UTF-8" starts with one, which plain UTF-8 reads
    as part of the first column's name (and JSON refuses)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _csv_rows(path: Path, encoding: str) -> list[tuple[int, dict[str, object]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = []
    with path.open(newline="", encoding=_without_bom(encoding)) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            if not reader.fieldnames:
                raise UserError(f"{path}: empty CSV file, expected a header line.")
            for row in reader:
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more fields than the header has.")
                rows.append((reader.line_num, dict(row)))
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num}: not valid CSV ({err}).") from None
    return rows


def _jsonl_rows(path: Path, encoding: str) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for number, text in enumerate(path.read_text(encoding=_without_bom(encoding)).splitlines(), start=1):
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


def read_prediction_inputs(files: list[str], texts: list[str], modality: Modality,
                           encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(name, input) pairs for `graftune predict`: text files are read, image and video files are checked,
    --text values pass through."""
    inputs = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: input file not found.")
        if modality != "text":
            if path.suffix.lower() not in _suffixes(modality):
                raise UserError(f"{path}: not {'a video' if modality == 'video' else 'an image'} file "
                                f"({', '.join(sorted(_suffixes(modality)))}).")
            inputs.append((name, checked_file(path, modality)))
        else:
            inputs.append((name, read_text(path, encoding=encoding)))
    if texts and modality != "text":
        raise UserError(f"--text is for text models; this run classifies {modality}s.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise UserError(f"--text #{i + 1}: empty text.")
        inputs.append((f"text {i + 1}", text))
    if not inputs:
        raise UserError("nothing to predict: give input files or --text.")
    return inputs
