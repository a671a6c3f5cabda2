"""Forgetting in a chained run: task A (a classifier fine-tuned before) is scored on its own head before and
after training task B on its body; a frozen body forgets nothing, a trained one shows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import helpers
import pytest
from rich.console import Console

import graftune
from graftune.errors import UserError

QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    monkeypatch.setenv("GRAFTUNE_CACHE_DIR", str(tmp_path / "cache"))


def config(data: Path, source: str, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": source},
                           "data": {"train": str(data), "image_size": 16, "augment": False},
                           "optim": {"lr": 3e-3},
                           "train": {"epochs": 2, "batch_size": 4, "progress": False}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.fixture
def task_a(tmp_path: Path) -> Path:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=10)
    graftune.train(config(colours, "module:helpers:tiny_cnn"), out=tmp_path / "a", console=QUIET)
    return tmp_path / "a"


def task_b(tmp_path: Path) -> Path:
    """Two new classes from other colours' images: red-or-green against blue."""
    colours = helpers.write_colour_folders(tmp_path / "b-source", per_class=10, seed=1)
    for label, target in (("red", "warm"), ("green", "warm"), ("blue", "cool")):
        for file in (colours / label).glob("*.png"):
            (tmp_path / "b" / target).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, tmp_path / "b" / target / f"{label}-{file.name}")
    return tmp_path / "b"


def forgetting(run: Path) -> dict[str, Any]:
    section: dict[str, Any] = json.loads((run / "results.json").read_text())["forgetting"]
    return section


def test_a_chained_run_reports_task_a_before_and_after(task_a: Path, tmp_path: Path) -> None:
    data = task_b(tmp_path)
    graftune.train(config(data, f"run:{task_a}", freeze={"body": "none"}), out=tmp_path / "full", console=QUIET,
                   trust_code=True)  # run: of a module: model
    graftune.train(config(data, f"run:{task_a}", strategy={"name": "linear-probe"}), out=tmp_path / "probe",
                   console=QUIET, trust_code=True)
    own = json.loads((task_a / "results.json").read_text())["test"]
    full, probe = forgetting(tmp_path / "full"), forgetting(tmp_path / "probe")
    for section in (full, probe):  # before: A's own model on A's own test split, exactly
        assert section["before"]["accuracy"] == own["accuracy"]
        assert section["before"]["examples"] == own["examples"]
        assert section["before"]["loss"] == pytest.approx(own["loss"], abs=1e-6)
    assert probe["after"] == probe["before"] and probe["accuracy_drop"] == 0  # a frozen body forgets nothing
    assert full["after"]["loss"] != pytest.approx(full["before"]["loss"], abs=1e-4)  # a trained body moved


def test_retain_scores_task_a_when_its_recorded_split_is_gone(task_a: Path, tmp_path: Path) -> None:
    more_a = helpers.write_colour_folders(tmp_path / "more-a", per_class=5, seed=7)
    b_data = task_b(tmp_path)
    graftune.train(config(b_data, f"run:{task_a}", regularize={"retain": str(more_a)}),
                   out=tmp_path / "with-split", console=QUIET, trust_code=True)
    assert forgetting(tmp_path / "with-split")["examples"] == "test split of the run"  # A's own split first
    shutil.move(tmp_path / "colours", tmp_path / "moved")  # A's data is gone: --retain stands in for it
    graftune.train(config(b_data, f"run:{task_a}", regularize={"retain": str(more_a)}),
                   out=tmp_path / "b-run", console=QUIET, trust_code=True)
    section = forgetting(tmp_path / "b-run")
    assert section["before"]["examples"] == 15 and section["examples"] == str(more_a.resolve())


def test_retain_with_labels_task_a_never_had_is_refused(task_a: Path, tmp_path: Path) -> None:
    data = task_b(tmp_path)
    shutil.move(tmp_path / "colours", tmp_path / "moved")
    with pytest.raises(UserError, match="were not in the training data"):
        graftune.train(config(data, f"run:{task_a}", regularize={"retain": str(data)}), out=tmp_path / "x",
                       console=QUIET, trust_code=True)
    assert not (tmp_path / "x").exists()
