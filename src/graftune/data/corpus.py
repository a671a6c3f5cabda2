"""Text for language models: a corpus of documents, or prompt/completion pairs.

A corpus is a folder of .txt files (one document each), one .txt file (documents separated by a line,
an empty one by default), or a CSV/JSONL text column (one document per row). Pairs are a CSV/JSONL
file with a prompt and a completion column. Every example remembers its file or file:line.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Literal

from sklearn.model_selection import train_test_split

from graftune.config import DataConfig
from graftune.data.readers import Example, decode_text, read_rows
from graftune.data.splits import Splits
from graftune.errors import InputWarning, MissingColumn, UserError, closest

Form = Literal["corpus", "pairs"]


def corpus_form(data: DataConfig) -> Form:
    """`data.form`, or for auto: pairs when the training table has both the prompt and the completion column."""
    if data.form != "auto":
        return data.form
    path = Path(data.train)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        rows = read_rows(path, data.encoding)
        if rows and data.prompt_column in rows[0][1] and data.completion_column in rows[0][1]:
            return "pairs"
    return "corpus"


def read_texts(path: str | Path, form: Form, data: DataConfig) -> list[Example]:
    """Documents (input: the text) or pairs (input: the prompt, label: the completion) under `path`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data not found.")
    if form == "pairs":
        examples = _pairs(path, data)
    elif path.is_dir():
        examples = _files(path, data)
    elif path.suffix.lower() == ".txt":
        examples = _documents(path, data)
    else:
        examples = _column(path, data)
    if not examples:
        raise UserError(f"{path}: no text found. Give .txt files, a .txt file of documents, or a CSV/JSONL with a "
                        f"'{data.input_column or 'text'}' column ({data.prompt_column} and {data.completion_column} "
                        "for pairs).")
    return examples


def split_documents(examples: list[Example], val: float, test: float, seed: int) -> Splits:
    """A seeded random split by document (or pair), so no document is in two splits."""
    needed = 1 + (val > 0) + (test > 0)
    if len(examples) < needed:
        raise UserError(f"{len(examples)} document(s) cannot be split into train/val/test; give more documents, or "
                        "explicit --data val=... test=....")
    rest, held_test = (train_test_split(examples, test_size=test, random_state=seed) if test > 0 else
                       (examples, []))
    train, held_val = (train_test_split(rest, test_size=val / (1 - test), random_state=seed) if val > 0 else
                       (rest, []))
    return Splits(list(train), list(held_val), list(held_test))


def _files(folder: Path, data: DataConfig) -> list[Example]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in found if p.suffix.lower() == ".txt"]
    others = Counter(p.suffix.lower() or "(none)" for p in found if p.suffix.lower() != ".txt")
    _warn_dropped(others.total(), f"files that are not .txt ({', '.join(f'{n} {s}' for s, n in sorted(others.items()))}"
                  "; a corpus folder holds one .txt document per file)", folder)
    examples = [Example(text, "", str(file)) for file in files if (text := decode_text(file, data.encoding)).strip()]
    _warn_dropped(len(files) - len(examples), "empty .txt files", folder)
    return examples


def _documents(path: Path, data: DataConfig) -> list[Example]:
    lines = decode_text(path, data.encoding).splitlines()
    separator = data.document_separator if data.document_separator is not None else ""
    documents: list[Example] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate([*lines, separator], start=1):
        if line.strip() == separator.strip():
            text = "\n".join(current).strip()
            if text:
                documents.append(Example(text, "", f"{path}:{start}"))
            current, start = [], number + 1
        else:
            current.append(line)
    return documents


def _column(path: Path, data: DataConfig) -> list[Example]:
    examples, empty = [], 0
    for line, row in read_rows(path, data.encoding):
        column = data.input_column or ("text" if "text" in row else None)
        if column is None or column not in row:
            name = column or "text"
            raise MissingColumn(f"{path}:{line}: no column '{name}'.{closest(name, row)} Columns: {', '.join(row)}.",
                                "input", "data.input_column")
        text = "" if row[column] is None else str(row[column])
        if text.strip():
            examples.append(Example(text, "", f"{path}:{line}"))
        else:
            empty += 1
    _warn_dropped(empty, "empty documents", path)
    return examples


def _pairs(path: Path, data: DataConfig) -> list[Example]:
    if path.is_dir() or path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
        raise UserError(f"{path}: pairs come from a CSV or JSONL file with '{data.prompt_column}' and "
                        f"'{data.completion_column}' columns.")
    examples = []
    for line, row in read_rows(path, data.encoding):
        for key in (data.prompt_column, data.completion_column):
            if key not in row:
                raise UserError(f"{path}:{line}: no column '{key}'.{closest(key, row)} Columns: {', '.join(row)}. Set "
                                "data.prompt_column / data.completion_column.")
        where = f"{path}:{line}"
        prompt = _pair_text(row[data.prompt_column], "prompt", data.prompt_column, where)
        completion = _pair_text(row[data.completion_column], "completion", data.completion_column, where)
        examples.append(Example(prompt, completion, where))
    return examples


def _pair_text(value: object, role: str, column: str, where: str) -> str:
    """A prompt or completion: text, never the Python form of a JSON number, list or object (a model would learn
    to write "['a', 'b']"); 0 or false is not empty but not text either."""
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: the {role} (column '{column}') is {json.dumps(value)[:60]}, not text. Write it as "
                        "a JSON string in quotes.")
    if value is None or not value.strip():
        raise UserError(f"{where}: empty {role} (column '{column}'). Give it text, or remove the line.")
    return value


def _warn_dropped(count: int, what: str, where: Path) -> None:
    if count:
        warnings.warn(f"{where}: left out {count} {what}.", InputWarning, stacklevel=3)
