"""End to end on real weights and data: `graftune tune` on minilm-l6 and a BBC News subset through the CLI,
killed with SIGKILL in its first trial and continued by running the same command again."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from graftune.config import load_config
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


def test_a_killed_study_continues_with_the_same_command(bbc_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "news.yaml"
    config.write_text(yaml.safe_dump({
        "task": "text-classification", "model": {"source": "minilm-l6"},
        "data": {"train": str(bbc_folder), "max_length": 64},
        "train": {"epochs": 1, "batch_size": 8, "progress": False}}))
    study = tmp_path / "study"
    command = ["tune", str(config), "--trials", "2", "--out", str(study)]

    env = {**os.environ, "GRAFTUNE_KILL_AT": "train@1"}  # SIGKILL at trial 0's first training batch
    killed = subprocess.run([sys.executable, "-m", "graftune.cli", *command], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    code, output = run_cli(*command)
    assert code == 0, output
    assert "trial 0 was interrupted after 0 epochs; its parameters run again first" in output
    trials = optuna.load_study(study_name="graftune", storage=f"sqlite:///{study / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # one epoch: nothing to prune
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0
    rows = list(csv.DictReader((study / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "┃ number" in output and "val_accuracy" in output  # the printed table

    best = max(trials[1:], key=lambda t: t.value or 0.0)
    results = json.loads((study / "trials" / f"{best.number:04d}" / "results.json").read_text())
    assert best.value == results["best_val"]["val_accuracy"] > 0.2  # chance is 0.2 on five topics
    again = load_config(study / "best.yaml")  # the best trial's config, ready for graftune train
    assert again.strategy.name == best.user_attrs["values"]["strategy.name"]
    assert again.optim.lr == best.user_attrs["values"]["optim.lr"] and again.model.source == "minilm-l6"
