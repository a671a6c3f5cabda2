"""Checkpoints restore training exactly, commit one epoch as a unit and refuse what is not theirs; the run
directory writes only into folders graftune made."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from graftune.backbones.base import generic_groups
from graftune.checkpoint import Checkpoints, FitState, LoopState
from graftune.config import HeadConfig
from graftune.errors import UserError
from graftune.fit import improved
from graftune.grafted import GraftedModel
from graftune.optim import build_optimizer, build_schedule, parameter_groups
from graftune.rundir import MANIFEST, MARKER, RunDir
from graftune.tasks.heads import Pooling, build_head
from graftune.weights import load_weights, save_weights


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


class Training:
    """A tiny model, optimizer, schedule and loop state, prepared by a CPU Accelerator."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(cpu=True, mixed_precision="no")
        body = helpers.body_of(helpers.TinyResNet())
        model = GraftedModel(body, build_head(HeadConfig(dropout=0.0), 16, 3, "avg"), Pooling("avg"))
        optimizer = build_optimizer(parameter_groups(model, generic_groups(body), 1e-3, 1e-2, 0.01))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.loop = LoopState(FitState(), build_schedule(self.optimizer.optimizer, "cosine", 20, 0.2))
        self.accelerator.register_for_checkpointing(self.loop)

    def step(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(4, 3, 16, 16, generator=generator)
        labels = torch.randint(0, 3, (4,), generator=generator)
        self.model.train()
        nn.functional.cross_entropy(self.model({"pixel_values": inputs}), labels).backward()
        self.optimizer.step()
        self.loop.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loop.fit.epoch += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


def checkpoints(root: Path) -> Checkpoints:
    return Checkpoints(root / "checkpoints", root / "metrics.jsonl")


def rows(*epochs: int) -> list[dict[str, Any]]:
    return [{"epoch": e, "val_loss": 1.0 / e} for e in epochs]


def test_a_restored_checkpoint_continues_exactly(tmp_path: Path) -> None:
    training = Training(seed=0)
    for i in range(3):
        training.step(seed=i)
    training.loop.fit.best_score, training.loop.fit.stage = 0.5, 1
    checkpoints(tmp_path).commit(training.accelerator, 3, rows(1, 2, 3), best=True)

    restored = Training(seed=99)  # other initial weights
    latest = checkpoints(tmp_path).latest()
    assert latest is not None and latest.name == "epoch-0003"
    fit_state, _ = checkpoints(tmp_path).loop_state(latest)
    assert (fit_state.epoch, fit_state.best_score, fit_state.stage) == (3, 0.5, 1)
    assert checkpoints(tmp_path).restore(restored.accelerator, latest) == rows(1, 2, 3)
    mine, theirs = training.weights(), restored.weights()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # incl. BatchNorm running statistics
    assert restored.loop.fit.epoch == 3 and restored.loop.scheduler.last_epoch == 3
    saved, loaded = training.optimizer.state_dict(), restored.optimizer.state_dict()
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    training.step(seed=3)
    restored.step(seed=3)  # the next step is identical: a resumed run goes on as if never stopped
    assert all(torch.equal(a, b) for a, b in zip(training.model.parameters(), restored.model.parameters(),
                                                 strict=True))
    assert restored.loop.scheduler.get_last_lr() == training.loop.scheduler.get_last_lr()


def test_a_commit_is_one_folder_named_by_last_json(tmp_path: Path) -> None:
    training = Training(seed=0)
    store = checkpoints(tmp_path)
    for epoch in (1, 2):
        training.step(seed=epoch)
        store.commit(training.accelerator, epoch, rows(*range(1, epoch + 1)), best=epoch == 1)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "epoch-0002", "last.json"]  # epoch 1 is gone
    assert json.loads((folder / "last.json").read_text()) == {"epoch": 2, "dir": "epoch-0002"}
    assert {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", "metrics.jsonl"} <= {
        p.name for p in (folder / "epoch-0002").iterdir()}
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    for name in ("optimizer.bin", "custom_checkpoint_0.pkl"):
        torch.load(folder / "epoch-0002" / name, weights_only=True)  # no pickled code anywhere


def test_best_weights_keep_their_epoch(tmp_path: Path) -> None:
    training, store = Training(seed=0), checkpoints(tmp_path)
    training.step(seed=0)
    store.commit(training.accelerator, 1, rows(1), best=True)
    best = training.weights()
    training.step(seed=1)
    store.commit(training.accelerator, 2, rows(1, 2), best=False)  # epoch 2 is worse
    restored = Training(seed=99)
    load_weights(restored.model, store.best)
    assert all(torch.equal(best[k], v) for k, v in restored.weights().items())
    assert not all(torch.equal(best[k], v) for k, v in training.weights().items())


def test_a_crafted_loop_state_is_refused_without_running(tmp_path: Path) -> None:
    training, store = Training(seed=0), checkpoints(tmp_path)
    store.commit(training.accelerator, 1, rows(1), best=True)
    latest = store.latest()
    assert latest is not None
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    (latest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"fit": Payload(), "scheduler": {}}, protocol=2))
    with pytest.raises(UserError, match="not a loop state graftune wrote"):
        store.loop_state(latest)
    assert not marker.exists()


# How each writer reports a full or read-only disk: Python, torch.save (C++) and safetensors (Rust).
REFUSALS = [(OSError(errno.ENOSPC, "No space left on device", "x"), "No space left on device"),
            (OSError(errno.EROFS, "Read-only file system", "x"), "Read-only file system"),
            (RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                          "data/0: file write failed Permission denied"), "Permission denied"),
            (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                       'on device" })'), "No space left on device")]


@pytest.mark.parametrize(("refusal", "reason"), REFUSALS)
def test_a_full_disk_keeps_the_previous_checkpoint(refusal: Exception, reason: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    training, store = Training(seed=0), checkpoints(tmp_path)
    store.commit(training.accelerator, 1, rows(1), best=True)
    before = (tmp_path / "checkpoints" / "epoch-0001" / "model.safetensors").read_bytes()

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise refusal

    monkeypatch.setattr(training.accelerator, "save_state", full)
    with pytest.raises(UserError, match=rf"cannot write the checkpoint of epoch 2 \({reason}\); "
                                        r"the checkpoint of epoch 1 is intact.*--resume"):
        store.commit(training.accelerator, 2, rows(1, 2), best=True)
    assert json.loads((tmp_path / "checkpoints" / "last.json").read_text())["epoch"] == 1
    assert (tmp_path / "checkpoints" / "epoch-0001" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "checkpoints" / ".epoch-0002.tmp").exists()


def test_damaged_pointers_and_leftovers(tmp_path: Path) -> None:
    store = checkpoints(tmp_path)
    assert store.latest() is None
    (tmp_path / "checkpoints" / ".epoch-0005.tmp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch-0004").mkdir()
    store.tidy()
    assert list((tmp_path / "checkpoints").iterdir()) == []
    (tmp_path / "checkpoints" / "last.json").write_text("{not json")
    with pytest.raises(UserError, match=r"last\.json: damaged"):
        store.latest()
    (tmp_path / "checkpoints" / "last.json").write_text('{"epoch": 3, "dir": "../../etc"}')
    with pytest.raises(UserError, match="not a checkpoint folder here"):
        store.latest()


def test_save_weights_handles_shared_tensors(tmp_path: Path) -> None:
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    save_weights(tied, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    load_weights(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh[0].weight, tied[0].weight) and torch.equal(fresh[1].weight, tied[0].weight)
    assert not (tmp_path / "m.tmp").exists()


def test_weights_that_are_damaged_or_of_another_model(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    save_weights(nn.Linear(4, 3), tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not the weights of this model"):
        load_weights(model, tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="damaged"):
        load_weights(model, tmp_path / "bad.safetensors")


# --- run directory -----------------------------------------------------------------------------------------


def test_a_new_run_is_set_up_aside_and_moved_into_place(tmp_path: Path) -> None:
    target = RunDir(tmp_path / "runs" / "cars")
    staged = target.stage(overwrite=False)
    assert staged.path.parent == tmp_path / "runs" and staged.path.name.startswith(".") and staged.is_run()
    assert not target.path.exists()
    target.adopt(staged)
    assert target.is_run() and not staged.path.exists()


def test_a_failed_start_leaves_nothing(tmp_path: Path) -> None:
    staged = RunDir(tmp_path / "a" / "b" / "run").stage(overwrite=False)
    (staged.path / "config.yaml").write_text("task: x\n")
    staged.discard()
    assert list(tmp_path.iterdir()) == []  # the parent folders made for it are gone too


def test_an_existing_run_needs_overwrite_and_survives_a_failed_overwrite(tmp_path: Path) -> None:
    target = RunDir(tmp_path / "run")
    target.adopt(target.stage(overwrite=False))
    target.write_text(target.config, "task: text-classification\n")
    with pytest.raises(UserError, match=r"run directory exists.*--overwrite"):
        target.stage(overwrite=False)
    staged = target.stage(overwrite=True)
    staged.discard()  # the new run failed to start: the old one is untouched
    assert target.config.read_text() == "task: text-classification\n"
    target.adopt(target.stage(overwrite=True))
    assert sorted(p.name for p in target.path.iterdir()) == [MANIFEST, MARKER]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "main.tex").write_text("years of work")
    (folder / "config.yaml").write_text("database: postgres\n")
    with pytest.raises(UserError, match="not a graftune run"):
        RunDir(folder).stage(overwrite=True)
    assert (folder / "main.tex").read_text() == "years of work" and (folder / "chapters").is_dir()
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunDir(file).stage(overwrite=True)
    with pytest.raises(UserError, match="cannot create the run folder"):
        RunDir(file / "run").stage(overwrite=False)  # under a file
    assert file.read_text() == "x"


def test_overwrite_refuses_a_run_holding_the_users_files(tmp_path: Path) -> None:
    target = RunDir(tmp_path / "run")
    target.adopt(target.stage(overwrite=False))
    (target.path / "my-notes.txt").write_text("notes")
    with pytest.raises(UserError, match=r"holds files graftune did not write \(my-notes\.txt\)"):
        target.stage(overwrite=True)
    assert (target.path / "my-notes.txt").read_text() == "notes"


def test_resume_needs_the_marker_and_the_start_files(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("task: x\n")
    with pytest.raises(UserError, match="not a graftune run"):
        RunDir(tmp_path).require_resumable()
    (tmp_path / MARKER).write_text("graftune run directory\n")
    with pytest.raises(UserError, match=r"data_splits\.json missing"):
        RunDir(tmp_path).require_resumable()


def test_require_and_json_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="run directory not found"):
        run.require()
    run.adopt(run.stage(overwrite=False))
    with pytest.raises(UserError, match="has not finished training"):
        run.require()
    run.model.mkdir()
    assert run.require() is run
    run.write_json(run.results, {"test": {"accuracy": 1.0}})
    assert run.read_json(run.results) == {"test": {"accuracy": 1.0}}
    assert not list(run.path.glob(".*.tmp"))
    run.results.write_text("{truncated")
    with pytest.raises(UserError, match=r"results\.json: damaged"):
        run.read_json(run.results)


def test_improved() -> None:
    accuracy, loss = "max", "min"
    assert improved(0.5, None, accuracy)
    assert improved(0.6, 0.5, accuracy) and not improved(0.5, 0.5, accuracy) and not improved(0.4, 0.5, accuracy)
    assert improved(0.4, 0.5, loss) and not improved(0.6, 0.5, loss)
    assert not improved(float("nan"), None, loss)
    assert improved(1.0, float("nan"), loss)
