"""The run as an object: setup builds each resource once from the resolved settings, resume is decided in
setup, train runs what is left and save writes what every later command reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
import yaml
from rich.console import Console

from graftune.config import validate
from graftune.errors import UserError
from graftune.grafted import GraftedModel
from graftune.run import Permissions, Run


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return helpers.write_colour_folders(tmp_path / "colours")


def config(data: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                           "data": {"train": str(data), "image_size": 16, "augment": False},
                           "freeze": {"body": 2}, "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    return {**raw, **sections}


def test_setup_builds_every_resource_from_the_resolved_settings(colours: Path, tmp_path: Path) -> None:
    cfg = validate(config(colours))
    run = Run.start(cfg, tmp_path / "run", overwrite=False, console=Console(quiet=True))
    assert run.settings != cfg and cfg.strategy.name == "auto"  # resolved into a new object
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written == run.settings.model_dump(mode="json")
    assert isinstance(run.model, GraftedModel) and run.model.head[-1].out_features == 3
    frozen = {n for n, p in run.model.body.named_parameters() if not p.requires_grad}
    assert frozen == {n for g in run.backbone.groups[:2] for n in g.params}  # freeze.body=2
    assert [s.name for s in run.stages] == ["partial"]
    held = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in run.model.parameters() if p.requires_grad}  # only what trains
    assert len(run.items["train"]) + len(run.items["val"]) + len(run.items["test"]) == 24
    assert run.fit_state.epoch == 0 and run.latest is None
    strategy = json.loads((tmp_path / "run" / "strategy.json").read_text())
    assert strategy["name"] == "partial" and strategy["groups"] == [g.name for g in run.backbone.groups]

    run.train()
    result = run.save()
    assert result.epochs_run == 2 and 1 <= result.best_epoch <= 2
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"] == result.test and saved["best_val"].keys() == {"val_accuracy"}
    for name in ("model/model.safetensors", "model/graftune.json", "plots/learning_curves.png",
                 "plots/confusion_matrix.png", "data_splits.json", "checkpoints/last.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_resume_restores_state_and_optimizer_in_setup(colours: Path, tmp_path: Path) -> None:
    first = Run.start(validate(config(colours)), tmp_path / "run", overwrite=False, console=Console(quiet=True))
    first.train()
    first.save()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()

    again = Run.resume(tmp_path / "run", Console(quiet=True), permissions=Permissions(trust_code=True))
    assert again.latest is not None and again.fit_state.epoch == 2 and again.settings == first.settings
    saved = torch.load(again.latest / "optimizer.bin", weights_only=True)
    loaded = again.optimizer.state_dict()
    assert saved["state"].keys() == loaded["state"].keys()
    assert all(torch.equal(saved["state"][k]["exp_avg"], loaded["state"][k]["exp_avg"]) for k in saved["state"])
    again.train()  # nothing left to run
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == rows
    assert again.save().test == first.save().test


def test_resume_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a graftune run"):
        Run.resume(tmp_path, Console(quiet=True))


def test_a_model_of_the_wrong_modality_is_refused(colours: Path, tmp_path: Path) -> None:
    bert = helpers.write_tiny_bert(tmp_path / "bert")
    cfg = validate(config(colours, model={"source": f"hf:{bert}"}))
    with pytest.raises(UserError, match="is a text model, but the task 'image-classification' reads images"):
        Run.start(cfg, tmp_path / "run", overwrite=False, console=Console(quiet=True))
