"""`graftune tune` on a tiny CNN: a study writes its trials, a table and a best config that trains; the
median pruner stops a trial worse than the others; an interrupted or killed study continues to the number
of trials asked for, running the interrupted trial's parameters again first."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

import graftune
from graftune.config import load_config, validate
from graftune.errors import UserError
from graftune.settings import with_absolute_paths
from graftune.tune import tune


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return helpers.write_colour_folders(tmp_path / "colours")


def config(data: Path, **train: Any) -> dict[str, Any]:
    return {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
            "data": {"train": str(data), "image_size": 16, "augment": False},
            "train": {"epochs": 2, "batch_size": 8, "progress": False, **train}}


def study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="graftune", storage=f"sqlite:///{folder / 'study.db'}")


def states(folder: Path) -> list[str]:
    return [trial.state.name for trial in study(folder).trials]


def table(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))


def test_a_study_writes_its_trials_a_table_and_a_best_config_that_trains(colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = tune(config(colours), out, trials=3, console=Console(quiet=True))
    trials = study(out).trials
    assert len(trials) == 3 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    rows = table(out)
    assert [row["number"] for row in rows] == ["0", "1", "2"]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == trial.state.name and row["strategy.name"] == trial.user_attrs["values"]["strategy.name"]
        assert float(row["optim.lr"]) == trial.user_attrs["values"]["optim.lr"]
        run = out / "trials" / f"{trial.number:04d}"
        assert (run / "results.json").is_file() == (trial.state == TrialState.COMPLETE)
        if trial.state == TrialState.COMPLETE:  # its value is the run's best validation accuracy
            assert trial.value == json.loads((run / "results.json").read_text())["best_val"]["val_accuracy"]
    best = study(out).best_trial
    assert (result.best_trial, result.best_value) == (best.number, best.value)

    written = load_config(out / "best.yaml")
    assert written == with_absolute_paths(validate(config(colours))).updated(best.user_attrs["values"])
    run = graftune.train(out / "best.yaml", tmp_path / "again", overrides=["train.epochs=1"],
                         console=Console(quiet=True))
    assert run.epochs_run == 1 and (tmp_path / "again" / "model").is_dir()


def test_the_median_pruner_stops_a_trial_worse_than_the_others_and_keeps_its_folder(colours: Path,
                                                                                     tmp_path: Path) -> None:
    out, good, bad = tmp_path / "study", 1e-3, 100  # a probe at rate 100 blows its loss up
    # An SGD probe: the exact one is solved whatever the rate, and this test needs a rate that diverges.
    cfg = {**config(colours, early_stopping={"metric": "val_loss"}), "freeze": {"body": "all"},
           "strategy": {"probe": "sgd"}}
    arguments: dict[str, Any] = {"space": [f"optim.lr=choice:{good},{bad}"], "only": ["optim.lr"],
                                 "console": Console(quiet=True)}
    tune(cfg, out, trials=1, **arguments)
    # Then a good trial and a bad one, through Optuna's own API on the study (as a user may enqueue points):
    # with two trials done, the bad one's first-epoch loss is above their median whichever value trial 0 drew.
    study(out).enqueue_trial({"optim.lr": good})
    study(out).enqueue_trial({"optim.lr": bad})
    tune(cfg, out, trials=3, **arguments)
    trials = study(out).trials
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert list(trials[2].intermediate_values) == [1]  # stopped after its first epoch
    assert trials[2].intermediate_values[1] > trials[1].intermediate_values[1]
    pruned = out / "trials" / "0002"
    assert (pruned / "checkpoints" / "last.json").is_file() and not (pruned / "results.json").exists()
    assert table(out)[2]["state"] == "PRUNED" and table(out)[2]["epochs"] == "1"


def test_an_interrupted_study_resumes_with_the_interrupted_trial_first(colours: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import graftune.fit

    out, quiet, train_one_epoch = tmp_path / "study", Console(quiet=True), graftune.fit.train_one_epoch
    helpers.interrupt_epoch(monkeypatch, 3)  # Ctrl-C in trial 1's first epoch
    with pytest.raises(KeyboardInterrupt):
        tune(config(colours), out, trials=3, console=quiet)
    assert states(out) == ["COMPLETE", "FAIL"]
    assert table(out)[1]["state"] == "FAIL"  # written on the way out

    killed = _die_in_epoch(monkeypatch, 2)  # the retry of trial 1 runs as trial 2; its process dies in epoch 2
    with pytest.raises(SystemExit):
        tune(config(colours), out, trials=3, console=quiet)
    assert states(out) == ["COMPLETE", "FAIL", "RUNNING"]  # as a kill -9 leaves it: no one told the storage
    assert killed["epochs"] == 2

    monkeypatch.setattr(graftune.fit, "train_one_epoch", train_one_epoch)
    console = Console(file=io.StringIO(), width=200)
    tune(config(colours), out, trials=3, console=console)
    trials = study(out).trials
    assert [t.state.name for t in trials[:3]] == ["COMPLETE", "FAIL", "FAIL"]
    assert {t.state for t in trials[3:]} <= {TrialState.COMPLETE, TrialState.PRUNED}  # 3 finished in all
    assert trials[1].params == trials[2].params == trials[3].params  # the interrupted values, run again
    assert trials[3].user_attrs["retry_of"] == 2 and trials[2].user_attrs["retry_of"] == 1
    assert trials[4].params != trials[3].params  # then a new draw
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "trial 2 was interrupted after 1 epoch; its parameters run again first" in output
    assert "trial 1 was interrupted" not in output  # already run again, once
    assert len(list((out / "trials").iterdir())) == 5


def _die_in_epoch(monkeypatch: pytest.MonkeyPatch, number: int) -> dict[str, int]:
    """Make the `number`-th training epoch from now end the process the way Optuna cannot see: SystemExit is
    not an Exception, so the trial stays RUNNING in the storage, as after kill -9."""
    import graftune.fit

    real, calls = graftune.fit.train_one_epoch, {"epochs": 0}

    def dying(*args: object, **kwargs: object) -> float:
        calls["epochs"] += 1
        if calls["epochs"] == number:
            raise SystemExit(137)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(graftune.fit, "train_one_epoch", dying)
    return calls


def test_a_study_refuses_to_continue_with_another_search(colours: Path, tmp_path: Path) -> None:
    out, quiet = tmp_path / "study", Console(quiet=True)
    arguments: dict[str, Any] = {"space": ["optim.lr=choice:0.01,0.001"], "only": ["optim.lr"], "console": quiet}
    tune(config(colours), out, trials=1, **arguments)
    with pytest.raises(UserError, match=r"train\.batch_size differ"):
        tune(config(colours, batch_size=4), out, trials=2, **arguments)
    with pytest.raises(UserError, match=r"another space \(optim\.lr differ\)"):
        tune(config(colours), out, trials=2, space=["optim.lr=choice:0.01,0.1"], only=["optim.lr"], console=quiet)
    tune(config(colours, progress=True), out, trials=1, **arguments)  # how visibly it runs may change
    assert states(out) == ["COMPLETE"]


def test_without_optuna_the_error_says_what_to_install(colours: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets where it is not installed
    with pytest.raises(UserError, match=r"pip install 'graftune\[tune\]'"):
        tune(config(colours), tmp_path / "study", trials=1, console=Console(quiet=True))
    assert not (tmp_path / "study").exists()


def test_ctrl_c_in_the_cli_says_how_to_continue(colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e.cli import run_cli

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(config(colours)))
    helpers.interrupt_epoch(monkeypatch, 1)
    code, output = run_cli("tune", str(config_file), "--trials", "2", "--out", str(tmp_path / "study"), "--only",
                           "optim.lr,head.hidden")
    assert code == 130, output
    assert "Traceback" not in output
    assert (f"Continue with the same command: graftune tune {config_file} --trials 2 --out {tmp_path / 'study'} "
            "--only optim.lr,head.hidden") in " ".join(output.split())
    assert states(tmp_path / "study") == ["FAIL"]
