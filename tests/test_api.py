"""The Python API: one config in any form (dict, YAML, Config, overrides) gives the same run; the package
imports lazily; errors are the same UserError the CLI prints."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml
from rich.console import Console

import graftune
from graftune.artifacts import FineTuned
from graftune.config import validate
from graftune.errors import UserError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


def config(data: Path) -> dict[str, Any]:
    return {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
            "data": {"train": str(data), "image_size": 16, "augment": False}, "freeze": {"body": "all"},
            "train": {"epochs": 1, "batch_size": 8, "progress": False}}


def test_every_form_of_a_config_gives_the_same_run(tmp_path: Path) -> None:
    data = helpers.write_colour_folders(tmp_path / "colours")
    quiet = Console(quiet=True)
    as_yaml = tmp_path / "run.yaml"
    as_yaml.write_text(yaml.safe_dump({**config(data), "train": {"epochs": 3, "batch_size": 8, "progress": False}}))
    runs = {
        "dict": graftune.train(config(data), tmp_path / "dict", overrides=["train.epochs=3"], console=quiet),
        "yaml": graftune.train(as_yaml, tmp_path / "yaml", console=quiet),
        "config": graftune.train(validate(config(data)), tmp_path / "config", overrides=["train.epochs=3"],
                                 console=quiet),
    }
    resolved = {name: (run.dir / "config.yaml").read_text() for name, run in runs.items()}
    assert resolved["dict"] == resolved["yaml"] == resolved["config"]
    assert {run.test["accuracy"] for run in runs.values()} == {runs["dict"].test["accuracy"]}
    assert all(run.epochs_run == 1 for run in runs.values())  # a linear probe is solved exactly in its first epoch


def test_load_returns_a_model_ready_to_predict(tmp_path: Path) -> None:
    data = helpers.write_colour_folders(tmp_path / "colours")
    run = graftune.train(config(data), tmp_path / "run", console=Console(quiet=True))
    loaded = graftune.load(run.dir, trust_code=True)  # module:helpers, a file of these tests
    assert isinstance(loaded, FineTuned) and not loaded.model.training
    image = str(next((data / "red").glob("*.png")))
    assert loaded.predict([(image, image)]) == graftune.predict(run.dir, files=[image], trust_code=True)
    assert loaded.predict([image]) == loaded.predict([(image, image)])  # plain paths, named by themselves


def test_errors_are_user_errors(tmp_path: Path) -> None:
    assert graftune.UserError is UserError
    with pytest.raises(UserError, match="data not found"):
        graftune.train(config(tmp_path / "missing"), tmp_path / "run", console=Console(quiet=True))
    with pytest.raises(UserError, match="run directory not found"):
        graftune.load(tmp_path / "nothing")


def test_the_package_imports_lazily() -> None:
    assert graftune.__version__ == version("graftune")
    code = ("import sys, graftune, graftune.errors, graftune.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'matplotlib') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    with pytest.raises(AttributeError):
        _ = graftune.no_such_thing  # type: ignore[attr-defined]
