"""kill -9 at chosen instants, then --resume: the run ends with the metrics of a run that never stopped,
with every epoch's row once.

The process kills itself with SIGKILL at a named point (graftune/faults.py: GRAFTUNE_KILL_AT), inside an
epoch, at a stage change, at every step of a checkpoint commit and while the final model is saved.

Only the killed run needs a process of its own (SIGKILL ends it mid-write, which nothing in-process can do);
the uninterrupted reference and the resume run in this process through the same CLI, reading only what the
killed process left on disk, which saves a Python start-up and its imports per case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import helpers
import pytest

from graftune.faults import KILL_POINTS
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e

EPOCHS = 3
# lp-ft with a one-epoch probe: epoch 1 trains the head on cached features, then the stage changes.
INSTANTS = [("train", 1), ("train", 2), ("stage", 1), ("checkpoint:begin", 2), ("checkpoint:written", 2),
            ("checkpoint:renamed", 2), ("checkpoint:best", 2), ("checkpoint:committed", 2),
            ("checkpoint:metrics", 2), ("checkpoint:committed", 3), ("save:tested", 3), ("save:model", 3)]


def graftune_cli(args: list[Any], tmp: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(helpers.TESTS_DIR), "GRAFTUNE_CACHE_DIR": str(tmp / "cache")}
    env.pop("GRAFTUNE_KILL_AT", None)
    if kill_at:
        env["GRAFTUNE_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "graftune.cli", *[str(a) for a in args]], env=env,
                          capture_output=True, text=True, timeout=300)


def train_args(data: Path, out: Path) -> list[Any]:
    return ["train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn", "--data", data,
            "--strategy", "lp-ft", "--epochs", EPOCHS, "--batch-size", "4", "--set", "strategy.probe_epochs=1",
            "--set", "data.image_size=16", "--set", "data.augment=false", "--set", "train.progress=false",
            "--out", out]


def outcome(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((run / "results.json").read_text())["test"]


def in_process(args: list[Any], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI in this process, with the environment graftune_cli gives a child (tests dir importable for
    `module:helpers:tiny_cnn`, the same feature cache folder)."""
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    monkeypatch.setenv("GRAFTUNE_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.delenv("GRAFTUNE_KILL_AT", raising=False)
    code, output = run_cli(*args)
    assert code == 0, output


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    root = tmp_path_factory.mktemp("kill")
    data = helpers.write_colour_folders(root / "colours")
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_process(train_args(data, root / "straight"), root, monkeypatch)
    return (data, *outcome(root / "straight"))


def test_every_kill_point_is_exercised() -> None:
    assert {point for point, _ in INSTANTS} == set(KILL_POINTS)


@pytest.mark.parametrize(("point", "epoch"), INSTANTS)
def test_killed_and_resumed_ends_like_a_run_that_never_stopped(
        point: str, epoch: int, straight: tuple[Path, list[dict[str, Any]], dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data, rows, test = straight
    run = tmp_path / "run"
    killed = graftune_cli(train_args(data, run), tmp_path, kill_at=f"{point}@{epoch}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "results.json").exists()  # it really stopped before the end
    in_process(["train", "--resume", run, "--trust-code"], tmp_path, monkeypatch)
    again, again_test = outcome(run)
    assert [r["epoch"] for r in again] == list(range(1, EPOCHS + 1))  # no epoch twice, none skipped
    for a, b in zip(rows, again, strict=True):
        assert (a["stage"], a["cached_features"]) == (b["stage"], b["cached_features"])
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a["epoch"])
    assert again_test["confusion_matrix"] == test["confusion_matrix"]
    assert again_test["loss"] == pytest.approx(test["loss"], abs=1e-6)
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert leftovers == ["best", f"epoch-{EPOCHS:04d}", "last.json"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
