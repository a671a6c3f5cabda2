"""An interrupted run resumed with --resume ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest

import graftune
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


def config(data: Path) -> dict[str, object]:
    return {"task": "text-classification", "model": {"source": "minilm-l6"},
            "data": {"train": str(data), "max_length": 48},
            "freeze": {"body": 5}, "train": {"epochs": 3, "batch_size": 16, "early_stopping": {"patience": None}}}


def test_resume_after_interruption_matches_uninterrupted(bbc_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    straight = graftune.train(config(bbc_folder), out=tmp_path / "straight")

    helpers.interrupt_epoch(monkeypatch, 2)  # the user presses Ctrl-C during epoch 2
    with pytest.raises(KeyboardInterrupt):
        graftune.train(config(bbc_folder), out=tmp_path / "resumed")
    code, output = run_cli("train", "--resume", tmp_path / "resumed")
    assert code == 0, output
    assert "resuming after epoch 1" in output

    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
    assert [r["epoch"] for r in rows["resumed"]] == [1, 2, 3]
    for a, b in zip(rows["straight"], rows["resumed"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())["test"]
    assert resumed["accuracy"] == pytest.approx(straight.test["accuracy"])
