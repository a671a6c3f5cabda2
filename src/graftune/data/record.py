"""The split a run trained on, recorded with a digest of every example, so a resumed run uses exactly it.

Reading and splitting again on resume would move examples between train and test when files were
added or removed in between, and silently inflate the test score. So a run records, at its start,
where each example came from (file or file:line) and a digest of its label and content (the text, or
the image file's bytes); a resume reads the data again and takes the recorded split from it. Files
changed, missing or new since the start are named, and the resume refused, unless the user accepts
the recorded split as it now is (missing examples dropped, changed ones read as they are, new ones
left out), which the run then records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftune.data.readers import Example
from graftune.data.splits import Splits
from graftune.errors import UserError
from graftune.preprocessing import Modality

PARTS = ("train", "val", "test")


def digest(example: Example, modality: Modality) -> str:
    """A digest of the example's label and content: its text, or the bytes of its image or video file."""
    content = example.input.encode("utf-8") if modality == "text" else Path(example.input).read_bytes()
    return hashlib.blake2b(example.label.encode("utf-8") + b"\x00" + content, digest_size=16).hexdigest()


def record(splits: Splits, modality: Modality, seed: int | None, schema: dict[str, Any]) -> dict[str, Any]:
    """What data_splits.json holds: per split, the examples' origins and digests; the seed and schema."""
    parts = {name: getattr(splits, name) for name in PARTS}
    return {"seed": seed, "schema": schema,
            **{name: {"count": len(part), "items": [e.where for e in part],
                      "digests": [digest(e, modality) for e in part]} for name, part in parts.items()}}


@dataclass
class DataChanges:
    """How the data differs from the recorded split: example origins per kind of change."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.new)

    def describe(self) -> str:
        parts = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for kind, names in (("changed", self.changed), ("missing", self.missing), ("new", self.new))
                 if names]
        return "; ".join(parts)


def restore(saved: dict[str, Any], fresh: Splits, modality: Modality, accept_changes: bool,
            where: Path) -> tuple[Splits, DataChanges]:
    """The recorded split, taken from the data as read now; refuse when it changed, unless accepted."""
    try:
        recorded = {name: list(zip(saved[name]["items"], saved[name]["digests"], strict=True)) for name in PARTS}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: not a split record graftune wrote (items and digests per split). This run "
                        "cannot be resumed; start a new run.") from None
    pool = {e.where: e for name in PARTS for e in getattr(fresh, name)}
    changes = DataChanges()
    kept: dict[str, list[Example]] = {name: [] for name in PARTS}
    for name, entries in recorded.items():
        for origin, recorded_digest in entries:
            example = pool.get(origin)
            if example is None:
                changes.missing.append(origin)
                continue
            if digest(example, modality) != recorded_digest:
                changes.changed.append(origin)
            kept[name].append(example)
    known = {origin for entries in recorded.values() for origin, _ in entries}
    changes.new = sorted(set(pool) - known)
    if changes and not accept_changes:
        raise UserError(f"the data changed since this run started: {changes.describe()}. Resuming would train and "
                        "test on other examples than the run began with. Restore the files, start a new run, or "
                        "pass --accept-changed-data to continue on the recorded split (missing examples dropped, "
                        "changed ones read as they are now, new ones left out).")
    if not kept["train"] or not kept["val"]:
        raise UserError(f"{where}: no training or validation examples of the recorded split are left; start a new "
                        "run.")
    return Splits(kept["train"], kept["val"], kept["test"]), changes
