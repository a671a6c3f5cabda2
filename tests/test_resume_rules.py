"""What a resume may change and what it records; code a run names is found again, and trusted only when
the user says so; settings that would do nothing are said; Ctrl-C says how to go on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml
from rich.console import Console

import graftune
from graftune.errors import InputWarning, UserError
from tests.e2e.cli import run_cli

QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def config(folder: Path | str, source: str = "module:helpers:tiny_cnn", **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": source},
                           "data": {"train": str(folder), "image_size": 16, "augment": False}, "freeze": {"body": 2},
                           "train": {"epochs": 2, "batch_size": 8, "progress": False,
                                     "early_stopping": {"patience": None}}}
    return {**raw, **sections}


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_more_epochs_on_resume_are_honoured_and_recorded(tmp_path: Path) -> None:
    data = helpers.write_colour_folders(tmp_path / "colours")
    run = graftune.train(config(data), tmp_path / "run", console=QUIET).dir
    longer = graftune.train({}, run, overrides=["train.epochs=4"], resume=True, console=QUIET, trust_code=True)
    assert longer.epochs_run == 4 and [r["epoch"] for r in rows(run)] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    [entry] = json.loads((run / "resumes.json").read_text())
    assert entry["after_epoch"] == 2 and entry["changed"] == {"train.epochs": [2, 4]}


def test_resume_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    helpers.write_colour_folders(Path("colours"))
    run = graftune.train(config("colours"), "runs/a", console=QUIET).dir  # relative paths, as users type them
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["train"] == str(tmp_path / "colours")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = graftune.train({}, tmp_path / "runs" / "a", overrides=["train.epochs=3"], resume=True, console=QUIET,
                           trust_code=True)
    assert again.epochs_run == 3


def test_accepting_changed_data_continues_on_the_recorded_split(tmp_path: Path) -> None:
    data = helpers.write_colour_folders(tmp_path / "colours")
    run = graftune.train(config(data), tmp_path / "run", console=QUIET).dir
    recorded = json.loads((run / "data_splits.json").read_text())
    gone = Path(recorded["train"]["items"][0])
    gone.unlink()
    helpers.write_png(data / "red" / "late.png", (250, 0, 0))
    with pytest.raises(UserError, match=r"1 missing .*1 new"):
        graftune.train({}, run, overrides=["train.epochs=3"], resume=True, console=QUIET, trust_code=True)
    graftune.train({}, run, overrides=["train.epochs=3"], resume=True, console=QUIET, trust_code=True,
                   accept_changed_data=True)
    [entry] = json.loads((run / "resumes.json").read_text())
    assert entry["accepted_data_changes"] == {"changed": [], "missing": [str(gone)], "new": [str(data / "red" /
                                                                                               "late.png")]}


def test_a_module_model_is_found_again_without_the_python_path(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "cars.py").write_text("from helpers import tiny_cnn\n\n\ndef build():\n    return tiny_cnn()\n")
    monkeypatch.syspath_prepend(str(code))
    data = helpers.write_colour_folders(tmp_path / "colours")
    run = graftune.train(config(data, "module:cars:build"), tmp_path / "run", console=QUIET).dir
    info = json.loads((run / "model" / "graftune.json").read_text())
    assert info["code"]["path"] == str(code) and info["code"]["file"] == str(code / "cars.py")
    sys.path.remove(str(code))  # a later session, without PYTHONPATH
    sys.modules.pop("cars")
    image = str(next((data / "red").glob("*.png")))
    with pytest.raises(UserError, match=r"names Python code to import: module:cars:build \(.*cars\.py, sha256"):
        graftune.predict(run, files=[image])
    first = graftune.predict(run, files=[image], trust_code=True)
    assert first[0]["label"] in ("red", "green", "blue")
    sys.modules.pop("cars")
    (code / "cars.py").write_text((code / "cars.py").read_text() + "\n# edited since\n")
    with pytest.warns(InputWarning, match=r"cars\.py changed since this model was trained"):
        assert graftune.predict(run, files=[image], trust_code=True) == first


def test_settings_the_run_would_not_use_are_said(tmp_path: Path) -> None:
    data = helpers.write_colour_folders(tmp_path / "colours")
    unused = config(data, strategy={"name": "full", "unfreeze_every": 3, "lora": {"r": 4}},
                    data={"train": str(data), "image_size": 16, "augment": False, "max_length": 64},
                    freeze={"body": "none"})
    with pytest.warns(InputWarning) as caught:
        graftune.train(unused, tmp_path / "run", console=QUIET)
    said = " ".join(str(w.message) for w in caught)
    for key in ("strategy.unfreeze_every", "strategy.lora", "data.max_length"):
        assert key in said, (key, said)


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    data = helpers.write_colour_folders(tmp_path / "colours")
    helpers.interrupt_epoch(monkeypatch, 2)
    code, output = run_cli("train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn",
                           "--data", data, "--set", "data.image_size=16", "--epochs", "3", "--out", tmp_path / "run")
    assert code == 130
    assert "epoch 1 is the last checkpointed one" in " ".join(output.split())
    assert f"graftune train --resume {tmp_path / 'run'}" in " ".join(output.split())
