"""Checkpoints restore training exactly; the run directory protects what is not a graftune run."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
import torch
from torch import nn

from graftune.backbones.base import generic_groups
from graftune.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from graftune.config import HeadConfig
from graftune.errors import UserError
from graftune.fit import improved
from graftune.grafted import GraftedModel
from graftune.optim import build_optimizer, build_schedule, parameter_groups
from graftune.rundir import RunDir
from graftune.tasks.heads import Pooling, build_head
from graftune.weights import load_weights, save_weights


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def training_setup(seed: int) -> tuple[GraftedModel, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    body = helpers.body_of(helpers.TinyResNet())
    model = GraftedModel(body, build_head(HeadConfig(dropout=0.0), 16, 3, "avg"), Pooling("avg"))
    optimizer = build_optimizer(parameter_groups(model, generic_groups(body), 1e-3, 1e-2, 0.01))
    return model, optimizer, build_schedule(optimizer, "cosine", 20, 0.2)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
         seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 3, (4,), generator=generator)
    model.train()
    nn.functional.cross_entropy(model({"pixel_values": inputs}), labels).backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def test_checkpoint_restores_weights_optimizer_and_schedule(tmp_path: Path) -> None:
    model, optimizer, schedule = training_setup(seed=0)
    for i in range(3):
        step(model, optimizer, schedule, seed=i)
    save_checkpoint(tmp_path / "last", model, optimizer, schedule, {"epoch": 3, "best_score": 0.5})
    assert has_checkpoint(tmp_path / "last")

    restored, optimizer2, schedule2 = training_setup(seed=99)  # different initial weights
    state = load_checkpoint(tmp_path / "last", restored, optimizer2, schedule2)
    assert state == {"epoch": 3, "best_score": 0.5}
    mine, theirs = model.state_dict(), restored.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # incl. BatchNorm running statistics
    assert schedule2.last_epoch == schedule.last_epoch == 3
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    saved, loaded = optimizer.state_dict(), optimizer2.state_dict()
    assert saved["state"].keys() == loaded["state"].keys()
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)

    # the next step is identical: a resumed run continues as if never interrupted
    step(model, optimizer, schedule, seed=3)
    step(restored, optimizer2, schedule2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), restored.parameters(), strict=True))
    assert schedule2.get_last_lr() == schedule.get_last_lr()


def test_checkpoint_is_complete_only_with_state_json(tmp_path: Path) -> None:
    model, optimizer, schedule = training_setup(seed=0)
    assert not has_checkpoint(tmp_path / "last")
    save_checkpoint(tmp_path / "last", model, optimizer, schedule, {"epoch": 1})
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == [
        "model.safetensors", "optimizer.pt", "scheduler.pt", "state.json"]
    save_checkpoint(tmp_path / "last", model, optimizer, schedule, {"epoch": 2})  # overwrites in place
    assert json.loads((tmp_path / "last" / "state.json").read_text()) == {"epoch": 2}


def test_best_weights_share_the_checkpoint_file_and_keep_their_epoch(tmp_path: Path) -> None:
    model, optimizer, schedule = training_setup(seed=0)
    step(model, optimizer, schedule, seed=0)
    save_checkpoint(tmp_path / "last", model, optimizer, schedule, {"epoch": 1}, best=tmp_path / "best")
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == \
        (tmp_path / "last" / "model.safetensors").read_bytes()
    step(model, optimizer, schedule, seed=1)  # epoch 2 is worse: only the last checkpoint changes
    save_checkpoint(tmp_path / "last", model, optimizer, schedule, {"epoch": 2})
    restored, _, _ = training_setup(seed=99)
    load_weights(restored, tmp_path / "best" / "model.safetensors")
    assert all(torch.equal(best_state[k], v) for k, v in restored.state_dict().items())
    load_weights(restored, tmp_path / "last" / "model.safetensors")
    assert not all(torch.equal(best_state[k], v) for k, v in restored.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["model.safetensors"]


def test_checkpoint_files_load_with_weights_only(tmp_path: Path) -> None:
    model, optimizer, schedule = training_setup(seed=0)
    step(model, optimizer, schedule, seed=0)
    save_checkpoint(tmp_path, model, optimizer, schedule, {"epoch": 1})
    torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert "scheduler" in torch.load(tmp_path / "scheduler.pt", weights_only=True)


def test_save_weights_handles_shared_tensors(tmp_path: Path) -> None:
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    save_weights(tied, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    load_weights(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh[0].weight, tied[0].weight) and torch.equal(fresh[1].weight, tied[0].weight)
    assert not (tmp_path / "m.tmp").exists()


# --- run directory -----------------------------------------------------------------------------------------


def test_create_new_and_empty_directories(tmp_path: Path) -> None:
    RunDir(tmp_path / "a" / "b").create()
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").create()  # an empty folder is fine without --overwrite
    assert (tmp_path / "empty").is_dir()


def test_create_refuses_an_existing_run_without_overwrite(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create()
    run.config.write_text("task: text-classification\n")
    with pytest.raises(UserError, match=r"run directory exists.*--overwrite"):
        run.create()
    assert run.config.is_file()


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "main.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a graftune run; refusing to delete it"):
        RunDir(folder).create(overwrite=True)
    assert (folder / "main.tex").read_text() == "years of work"
    assert (folder / "chapters").is_dir()
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(UserError):
        RunDir(file).create(overwrite=True)
    assert file.read_text() == "x"


def test_overwrite_refuses_a_user_folder_that_merely_has_a_config_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("database: postgres\n")
    (folder / "app.py").write_text("print('hello')\n")
    with pytest.raises(UserError):
        RunDir(folder).create(overwrite=True)
    assert (folder / "app.py").is_file()


def test_overwrite_replaces_a_graftune_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create()
    run.config.write_text("task: text-classification\n")
    run.append_metrics({"epoch": 1})
    (run.path / "stale.txt").write_text("old")
    run.create(overwrite=True)
    assert run.path.is_dir() and [p.name for p in run.path.iterdir()] == [".graftune-run"]


def test_metrics_append_read_and_truncate(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_metrics() == []
    for epoch in (1, 2, 3, 4):
        run.append_metrics({"epoch": epoch, "val_accuracy": epoch / 10})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4]
    run.truncate_metrics(2)
    assert run.read_metrics() == [{"epoch": 1, "val_accuracy": 0.1}, {"epoch": 2, "val_accuracy": 0.2}]
    run.append_metrics({"epoch": 3, "val_accuracy": 0.9})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_metrics(0)
    assert run.read_metrics() == []


def test_require_and_write_json(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="run directory not found"):
        run.require()
    run.create()
    with pytest.raises(UserError, match="has not finished training"):
        run.require()
    run.model.mkdir()
    assert run.require() is run
    run.write_json(run.results, {"test": {"accuracy": 1.0}})
    assert json.loads(run.results.read_text()) == {"test": {"accuracy": 1.0}}
    assert not run.results.with_suffix(".json.tmp").exists()


def test_improved() -> None:
    accuracy, loss = "max", "min"
    assert improved(0.5, None, accuracy)
    assert improved(0.6, 0.5, accuracy) and not improved(0.5, 0.5, accuracy) and not improved(0.4, 0.5, accuracy)
    assert improved(0.4, 0.5, loss) and not improved(0.6, 0.5, loss)
    assert not improved(float("nan"), None, loss)
    assert improved(1.0, float("nan"), loss)
