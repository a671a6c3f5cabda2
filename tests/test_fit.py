"""fit walks a strategy's stages: the best epoch by the task's metric and direction, early stopping only in
the last stage, stages that end on a plateau, a checkpoint and a metrics row per epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from safetensors.torch import load_file

from graftune.backbones.base import generic_groups
from graftune.checkpoint import Checkpoints, FitState, LoopState
from graftune.config import validate
from graftune.features import EpochLoaders
from graftune.fit import Monitor, Trainee, fit
from graftune.grafted import GraftedModel
from graftune.loop import Evaluation
from graftune.rundir import RunDir
from graftune.sampling import ShuffledBatches
from graftune.staging import StageSwitch
from graftune.strategies import plan, strategy_defaults
from graftune.tasks.heads import Pooling, build_head
from graftune.tasks.image_classification import ImageClassification

LABELS = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def batches(count: int, seed: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"inputs": {"pixel_values": torch.randn(4, 3, 16, 16, generator=generator)},
             "targets": torch.randint(0, 3, (4,), generator=generator)} for _ in range(count)]


class Scripted:
    """Validation metrics read from a script, one value per epoch; remembers the weights each epoch ended with."""

    def __init__(self, model: GraftedModel, metric: str, values: list[float]) -> None:
        self.model, self.metric, self.values = model, metric, iter(values)
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, evaluation: Evaluation) -> dict[str, float]:
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        value = next(self.values)
        return {"val_loss": value if self.metric == "val_loss" else evaluation.loss, self.metric: value}


def trainee(strategy: dict[str, Any], epochs: int, metric: str, values: list[float],
            folder: Path) -> tuple[Trainee, Scripted]:
    torch.manual_seed(0)
    settings = strategy_defaults(validate(config(strategy, epochs)))
    body = helpers.body_of(helpers.tiny_cnn())
    model = GraftedModel(body, build_head(settings.head, 16, 3, "avg"), Pooling("avg"))
    groups = generic_groups(body)
    switch = StageSwitch(model, groups, plan(settings, len(groups)), set(), "frozen", 0.01, None, epochs)
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    prepared, optimizer = accelerator.prepare(model, switch.replay(0))
    loop = LoopState(FitState(), switch.schedule(0, optimizer.optimizer, 1, 3))
    accelerator.register_for_checkpointing(loop)
    scripted = Scripted(model, metric, values)
    task = ImageClassification(settings, {"labels": LABELS})
    loaders = EpochLoaders(batches(3, seed=0), batches(1, seed=1), None, switch.head_only)
    return Trainee(prepared, optimizer, accelerator, loop, loaders, ShuffledBatches(4, 0, size=12), task.step,
                   scripted, 1.0, switch, 3, Checkpoints(folder / "checkpoints", folder / "metrics.jsonl"),
                   []), scripted


def config(strategy: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {"task": "image-classification", "model": {"source": "x"}, "data": {"train": "x"},
            "head": {"dropout": 0.0}, "strategy": strategy, "optim": {"lr": 1e-3, "head_lr": 1e-2},
            "train": {"epochs": epochs, "progress": False}}


def run_fit(tmp_path: Path, strategy: dict[str, Any], epochs: int, monitor: Monitor,
            values: list[float], console: Console | None = None) -> tuple[FitState, list[dict[str, Any]], Scripted,
                                                                          Trainee]:
    folder = RunDir(tmp_path / "run")
    trained, scripted = trainee(strategy, epochs, monitor.metric, values, folder.path)
    settings = strategy_defaults(validate(config(strategy, epochs)))
    state = fit(trained, settings.train, monitor, console or Console(quiet=True))
    return state, folder.read_metrics(), scripted, trained


def test_each_epoch_line_names_its_stage(tmp_path: Path) -> None:
    """The stage's name is printed in brackets as it is, not read as Rich markup (which dropped it)."""
    console = Console(record=True, width=200)
    run_fit(tmp_path, {"name": "lp-ft", "probe_epochs": 1}, 2, Monitor("val_accuracy", "max", patience=5),
            [0.5, 0.6], console)
    printed = console.export_text()
    assert "epoch 1/2 [probe]" in printed and "epoch 2/2 [fine-tune]" in printed, printed


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    monitor = Monitor("val_accuracy", "max", patience=2)
    state, rows, scripted, _ = run_fit(tmp_path, {"name": "full"}, 6, monitor, [0.5, 0.7, 0.6, 0.7, 0.9, 0.9])
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat 0.7: stop
    assert (state.epoch, state.best_epoch, state.best_score, state.stopped_early) == (4, 2, 0.7, True)
    best = load_file(str(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors"))
    assert weights_equal(best, scripted.weights[1])  # the weights epoch 2 ended with
    assert not weights_equal(best, scripted.weights[3])
    assert json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())["epoch"] == 4
    saved = torch.load(tmp_path / "run" / "checkpoints" / "epoch-0004" / "custom_checkpoint_0.pkl", weights_only=True)
    assert saved["fit"]["epoch"] == 4 and saved["fit"]["stopped_early"]


def test_a_loss_metric_improves_downwards(tmp_path: Path) -> None:
    monitor = Monitor("val_loss", "min", patience=1)
    state, rows, _, _ = run_fit(tmp_path, {"name": "full"}, 5, monitor, [2.0, 1.0, 1.5, 0.5, 0.4])
    assert (state.best_epoch, state.best_score, len(rows)) == (2, 1.0, 3)


def test_without_patience_every_epoch_runs(tmp_path: Path) -> None:
    state, rows, _, _ = run_fit(tmp_path, {"name": "full"}, 4, Monitor("val_accuracy", "max", None),
                                [0.9, 0.1, 0.1, 0.1])
    assert (len(rows), state.best_epoch, state.stopped_early) == (4, 1, False)


def test_a_stage_ends_on_a_plateau_and_its_patience_does_not_carry_over(tmp_path: Path) -> None:
    strategy = {"name": "lp-ft", "probe_epochs": 4, "plateau_patience": 1}
    monitor = Monitor("val_accuracy", "max", patience=2)
    state, rows, _, trained = run_fit(tmp_path, strategy, 8, monitor, [0.5, 0.5, 0.4, 0.45, 0.3, 0.3, 0.3, 0.3])
    # Epoch 2 does not improve: the probe plateaus after 2 of its 4 epochs and fine-tuning starts in epoch 3.
    assert [r["stage"] for r in rows] == ["probe", "probe", "fine-tune", "fine-tune"]
    assert rows[0]["trainable_params"] == rows[1]["trainable_params"] < rows[2]["trainable_params"]
    # The new stage counts its own bad epochs: epochs 3 and 4 without improvement stop the run, not epoch 3.
    assert (state.epoch, state.stopped_early, state.stage, state.stage_start) == (4, True, 1, 3)
    assert all(p.requires_grad for p in trained.switch.model.body.parameters())


def test_early_stopping_waits_for_the_last_stage(tmp_path: Path) -> None:
    monitor = Monitor("val_accuracy", "max", patience=1)
    strategy = {"name": "gradual", "unfreeze_every": 1}
    state, rows, _, _ = run_fit(tmp_path, strategy, 7, monitor, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert [r["stage"] for r in rows] == ["head", "top-1", "top-2", "top-3", "all"]
    assert state.stopped_early and state.epoch == 5


class Stop(Exception):
    """What an on_epoch hook raises to end the run."""


def test_on_epoch_sees_each_committed_epoch_and_can_stop_the_run(tmp_path: Path) -> None:
    monitor = Monitor("val_accuracy", "max", None)
    trained, _ = trainee({"name": "full"}, 4, monitor.metric, [0.5, 0.6, 0.7, 0.8], tmp_path / "run")
    seen: list[tuple[int, float, int]] = []

    def hook(epoch: int, row: dict[str, Any]) -> None:
        committed = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())["epoch"]
        seen.append((epoch, row["val_accuracy"], committed))
        if epoch == 2:
            raise Stop

    trained.on_epoch = hook
    with pytest.raises(Stop):
        fit(trained, validate(config({"name": "full"}, 4)).train, monitor, Console(quiet=True))
    assert seen == [(1, 0.5, 1), (2, 0.6, 2)]  # each call after its epoch's commit; none after the raise
    assert [r["epoch"] for r in RunDir(tmp_path / "run").read_metrics()] == [1, 2]
