"""Train / validation / test splits: the user's own, or a seeded stratified split recorded in the run."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from graftune.config import DataConfig
from graftune.data.readers import Example, LabelOf, read_examples, split_folders
from graftune.errors import InputWarning, UserError
from graftune.preprocessing import Modality


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def labels(self) -> list[str]:
        """Class names in sorted order: index i of the head's output is labels()[i]."""
        return sorted({e.label for e in self.train})


def read_splits(data: DataConfig, modality: Modality, label_of: LabelOf | None = None) -> Splits:
    """Read train (and val/test, when given) and split what is missing, stratified by label; check that
    every split's labels are known to train. With `label_of` (labels that are no classes: numeric targets),
    the split is a seeded random one and no label is checked against train."""
    classes = label_of is None

    def read(path: str | Path) -> list[Example]:
        return read_examples(path, modality, data.format, data.input_column, data.label_column, data.encoding,
                             data.skip_unreadable, label_of)

    folders = split_folders(Path(data.train)) if data.format in ("auto", "folder") else None
    paths: dict[str, str | Path | None] = {"train": data.train, "val": data.val, "test": data.test}
    if folders:
        paths = {"train": folders["train"], "val": data.val or folders.get("val"),
                 "test": data.test or folders.get("test")}
    refuse_training_data_held_out(paths)
    train = read(paths["train"])  # type: ignore[arg-type]
    val = read(paths["val"]) if paths["val"] else None
    test = read(paths["test"]) if paths["test"] else None
    warn_held_out_overlap(train, {"val": val, "test": test}, modality)
    seed, val_frac, test_frac = data.split.seed, data.split.val, data.split.test
    split = stratified_split if classes else random_split
    if val is None and test is None:
        splits = split(train, val_frac, test_frac, seed)
    elif val is None:
        part = split(train, val_frac, 0.0, seed)
        splits = Splits(part.train, part.val, test or [])
    elif test is None:
        part = split(train, 0.0, test_frac, seed)
        splits = Splits(part.train, val, part.test)
    else:
        splits = Splits(train, val, test)
    if not splits.val:
        raise UserError("data: no validation examples. Give data.val or set data.split.val above 0.")
    if classes:
        check_labels(splits, {k: str(v) for k, v in paths.items() if v})
    return splits


def refuse_training_data_held_out(paths: Mapping[str, str | Path | None]) -> None:
    """data.val or data.test naming the training data itself: its scores would measure memory, not the model."""
    train = Path(paths["train"]).resolve()  # type: ignore[arg-type]
    for name in ("val", "test"):
        given = paths.get(name)
        if given and Path(given).resolve() == train:
            raise UserError(f"data.{name} ({given}) is the training data (data.train: {paths['train']}): scores on "
                            "examples the model trained on say nothing about new data. Give held-out data, or leave "
                            f"data.{name} unset to split it off the training data.")


def warn_held_out_overlap(train: list[Example], held: Mapping[str, list[Example] | None], modality: Modality) -> None:
    """Given val or test data that repeats training examples (a copied file or folder): warn with the count, since
    its scores overstate how the model does on new data. Duplicates inside one data set that a split spreads
    over train and test are the user's data, and not checked here."""
    seen = {_content(e, modality) for e in train}
    for name, part in held.items():
        repeated = [e for e in part or [] if _content(e, modality) in seen]
        if repeated:
            warnings.warn(f"{len(repeated)} of {len(part or [])} {name} examples are also in the training data (same "
                          f"content and label; first: {repeated[0].where}): {name} scores on them say nothing about "
                          "new data. Remove them from one of the two.", InputWarning, stacklevel=3)


def _content(example: Example, modality: Modality) -> tuple[str, str]:
    """An example's label and content (its text, or a digest of its file: a copied folder has other paths)."""
    if modality == "text":
        return example.label, example.input
    with open(example.input, "rb") as handle:
        return example.label, hashlib.file_digest(handle, "blake2b").hexdigest()


def stratified_split(examples: list[Example], val: float, test: float, seed: int) -> Splits:
    """Split so every class keeps its share in train, val and test."""
    counts = Counter(e.label for e in examples)
    needed = 1 + (val > 0) + (test > 0)
    for label, count in sorted(counts.items()):
        if count < needed:
            raise UserError(f"class '{label}' has {count} example(s); a stratified split into train/val/test needs "
                            f"at least {needed} per class. Add examples, or give explicit val/test data.")
    try:
        rest, test_part = _split(examples, test, seed)
        train_part, val_part = _split(rest, val / (1 - test), seed)
    except ValueError as err:
        raise UserError(f"cannot split {len(examples)} examples in {len(counts)} classes ({err}). "
                        "Add examples or change data.split.val / data.split.test.") from None
    for held, fraction in ((val_part, val), (test_part, test)):
        if fraction > 0:
            _give_every_class_one(train_part, held)
    return Splits(train_part, val_part, test_part)


def random_split(examples: list[Example], val: float, test: float, seed: int) -> Splits:
    """A seeded random split, for targets that are no classes (a number, a set of labels)."""
    needed = 1 + (val > 0) + (test > 0)
    if len(examples) < max(needed, 2) or len(examples) * min(f for f in (val, test, 1.0) if f > 0) < 1:
        raise UserError(f"cannot split {len(examples)} examples into train/val/test by data.split.val {val} and "
                        f"data.split.test {test}: each part needs at least one example. Add examples, or give explicit "
                        "val/test data.")
    rest, test_part = (train_test_split(examples, test_size=test, random_state=seed) if test > 0 else (examples, []))
    if val > 0:
        train_part, val_part = train_test_split(list(rest), test_size=val / (1 - test), random_state=seed)
    else:
        train_part, val_part = list(rest), []
    return Splits(list(train_part), list(val_part), list(test_part))


def _give_every_class_one(train: list[Example], held: list[Example]) -> None:
    """Proportional splits can leave a small class out of val or test; move one example over."""
    present = {e.label for e in held}
    for label in sorted({e.label for e in train} - present):
        donor = next(i for i in range(len(train) - 1, -1, -1) if train[i].label == label)
        if sum(e.label == label for e in train) > 1:
            held.append(train.pop(donor))


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if fraction <= 0:
        return examples, []
    labels = [e.label for e in examples]
    keep, held = train_test_split(examples, test_size=fraction, random_state=seed, stratify=labels)
    return list(keep), list(held)


def check_labels(splits: Splits, where: dict[str, str]) -> None:
    """Every label in val/test must exist in train: the head cannot predict a class it never saw."""
    known = set(splits.labels())
    if len(known) < 2:
        raise UserError(f"{where.get('train', 'train data')}: found {len(known)} class(es); classification needs "
                        "at least 2.")
    for name, part in (("val", splits.val), ("test", splits.test)):
        for example in part:
            if example.label not in known:
                raise UserError(f"{example.where}: label '{example.label}' in the {name} data does not appear in "
                                "the training data. Add training examples of it or remove it.")
