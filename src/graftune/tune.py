"""`graftune tune`: an Optuna search over a config's hyperparameters, each trial one graftune run.

    tune("news.yaml", "studies/news", trials=8, space=["head.dropout=float:0:0.5"])

What the study folder holds:

    STUDY/.graftune-study   the marker (graftune made this folder); locked while a search runs in it
    STUDY/study.db          the Optuna study (SQLite, study name "graftune"): each trial's parameters,
                            per-epoch validation values and state
    STUDY/trials/NNNN/      trial NNNN's run folder (results.json and model/ once it finished; a pruned or
                            interrupted trial keeps its checkpoints, so `graftune train --resume` continues it)
    STUDY/best.yaml         the best finished trial's config: `graftune train STUDY/best.yaml --out RUN`
    STUDY/trials.csv        one row per trial: number, state, value, epochs, seconds, the values it set

Each trial draws its values from the search space (graftune/space.py) with Optuna's TPE sampler (seeded
by train.seed), trains with `graftune.api.train` and is scored by the best epoch's validation metric
(train.early_stopping.metric, in the task's direction); the test split plays no part. After every epoch
the trial reports that metric, and Optuna's MedianPruner (n_startup_trials=2, n_warmup_steps=1, the
steps being the epochs 1, 2, ..., so the first chance is after epoch 1) stops a trial whose best value
so far is worse than the median of the completed trials at the same epoch; the last epoch is never
pruned, as stopping there saves nothing. TPE draws its first 10 trials at random (its
n_startup_trials), so a short study is a seeded random search with pruning.

Running the same command again continues the study to `trials` finished (complete or pruned) trials in
all. A trial that a Ctrl-C interrupted, or that a killed process left running, is marked failed and its
parameters run again first, in a new trial folder. A study refuses to continue with another config or
search space.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from graftune.api import train
from graftune.config import Config, as_config, changed_keys
from graftune.errors import UserError
from graftune.rundir import RunDir, make_parents, remove_made
from graftune.safe_files import Confined
from graftune.settings import (
    data_folders,
    load_configured_backbone,
    monitored_metric,
    refuse_output_in_data,
    resolve_settings,
    with_absolute_paths,
)
from graftune.space import Space, build_space
from graftune.tasks import get_task

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "graftune"
MARKER = ".graftune-study"
MARKER_TEXT = "graftune study directory\n"
# Settings a continued study may change: how visibly or where trials run, not what they learn.
CONTINUABLE = ("train.progress", "train.num_workers", "cache.dir")


@dataclass
class TuneResult:
    """What `tune` returns: the study folder, the best finished trial (None before one finished) and every trial."""

    dir: Path
    best_trial: int | None
    best_value: float | None
    best_config: Path | None
    trials: list[dict[str, Any]]


def tune(config: str | Path | dict[str, Any] | Config, study_dir: str | Path, trials: int,
         space: list[str] | None = None, only: list[str] | None = None, overrides: list[str] | None = None,
         timeout: float | None = None, console: Console | None = None) -> TuneResult:
    """Search `config`'s hyperparameters until the study in `study_dir` has `trials` finished trials.

    `space` holds `KEY=SPEC` items that add to or replace the default space, `only` the keys to keep
    (see graftune/space.py); `overrides` are `key=value` settings of every trial, as `--set` gives them.
    `timeout` (seconds) starts no trial after that time; the one running finishes.
    """
    optuna = _require_optuna()
    console = console or Console(stderr=True)
    if trials < 1:
        raise UserError(f"--trials {trials}: a study needs at least 1 trial.")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout {timeout:g}: give the seconds after which no new trial starts (above 0).")
    folder = StudyDir(study_dir)
    folder.check()
    base = with_absolute_paths(as_config(config, overrides))
    refuse_output_in_data(study_dir, data_folders(base))
    task = get_task(base.task)
    backbone = load_configured_backbone(base)
    resolve_settings(base, backbone, task)  # the config's own errors, before any value of the search is tried
    metric = monitored_metric(base, task)
    searched = build_space(base, task, backbone, space, only)
    del backbone  # each trial loads its own
    created = folder.create()
    try:
        with folder.locked():
            return _search(optuna, folder, base, searched, metric, task.metrics[metric], trials, timeout, console)
    except UserError:
        if created:
            folder.discard_if_empty()  # a study that failed before any trial finished leaves nothing
        raise


def _require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("graftune tune needs Optuna: pip install 'graftune[tune]' (or pip install optuna).") \
            from None
    return optuna


# --- the study folder -------------------------------------------------------------------------------------


class StudyDir:
    """A folder graftune made for one study (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = Confined(self.path, "study folder")
        self.created_parents: list[Path] = []

    marker = property(lambda self: self.path / MARKER)
    db = property(lambda self: self.path / "study.db")
    trials = property(lambda self: self.path / "trials")
    best = property(lambda self: self.path / "best.yaml")
    table = property(lambda self: self.path / "trials.csv")

    def trial(self, number: int) -> Path:
        return self.trials / f"{number:04d}"

    def check(self) -> None:
        """Refuse a path that is not a study graftune made, or an empty folder or nothing (a new one)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is a file. Choose another --out.")
        if path.is_dir() and any(path.iterdir()) and not self.is_study():
            what = "a graftune run, not a study" if RunDir(path).is_run() else "not a graftune study"
            raise UserError(f"{path}: exists and is {what} (no {MARKER} marker); refusing to write into it. "
                            "Choose another --out.")
        if path.is_dir():
            self.files.refuse_links()  # a study someone sent: its database and trials are written in place

    def is_study(self) -> bool:
        try:
            return self.files.read_text(self.marker) == MARKER_TEXT
        except (OSError, UnicodeDecodeError, UserError):
            return False

    def create(self) -> bool:
        """Make the folder of a new study (checked first); True when made now."""
        if self.is_study():
            return False
        try:
            self.created_parents = make_parents(self.path.parent)
            self.path.mkdir(exist_ok=True)
            self.files.write_text(self.marker, MARKER_TEXT)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the study folder ({err.strerror}). Choose another --out.") \
                from None
        return True

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the study for this process: a trial left running is then surely one a dead process left."""
        with self.marker.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another graftune tune is running this study; let it finish, or "
                                "choose another --out.") from None
            yield

    def discard_if_empty(self) -> None:
        """Remove a study made by this call in which no trial finished, and the parent folders made for it."""
        if self.db.is_file() and _finished_count(self.db) > 0:
            return
        remove_made(self.path, self.created_parents)


def _finished_count(db: Path) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=_url(db))
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=_finished_states()))


def _url(db: Path) -> str:
    return f"sqlite:///{db.resolve()}"


def _finished_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


# --- the search -------------------------------------------------------------------------------------------


def _search(optuna: Any, folder: StudyDir, base: Config, space: Space, metric: str, mode: str, trials: int,
            timeout: float | None, console: Console) -> TuneResult:
    with _quiet_optuna(optuna):
        storage = optuna.storages.RDBStorage(_url(folder.db))
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                    direction="maximize" if mode == "max" else "minimize",
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
        _check_same_search(study, folder, base, space, metric)
        _retry_interrupted(study, storage, console)
        # Seeded by the trials so far: a continued study draws new values instead of replaying the first ones.
        study.sampler = optuna.samplers.TPESampler(seed=base.train.seed + len(study.trials))
        finished = len(study.get_trials(deepcopy=False, states=_finished_states()))
        remaining = trials - finished
        if remaining <= 0:
            console.print(f"{folder.path}: the study already has {finished} finished trials (--trials {trials}).")
        else:
            console.print(f"study {folder.path}: {finished} of {trials} trials finished; searching", markup=False)
            for line in space.describe():
                console.print(f"  {line}", markup=False, highlight=False)
            objective = Objective(optuna, folder, base, space, metric, console)
            try:
                study.optimize(objective, n_trials=remaining, timeout=timeout, gc_after_trial=True,
                               callbacks=[lambda study, trial: write_outputs(study, folder, base, metric, console,
                                                                             trial)])
            except KeyboardInterrupt:
                write_outputs(study, folder, base, metric, console)  # the interrupted trial shows as failed
                raise
        result = write_outputs(study, folder, base, metric, console)
    console.print(trial_table(result.trials, metric))
    if result.best_config is not None:
        console.print(f"best: trial {result.best_trial}, {metric} {result.best_value:.4f}; its run is "
                      f"{folder.trial(result.best_trial or 0)}. Train its config again with: graftune train "
                      f"{result.best_config} --out RUN")
    return result


@contextmanager
def _quiet_optuna(optuna: Any) -> Iterator[None]:
    """graftune says what happens to each trial itself; Optuna's log would repeat it, with a traceback for Ctrl-C."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _check_same_search(study: optuna.Study, folder: StudyDir, base: Config, space: Space, metric: str) -> None:
    """Record the config and space of a new study; refuse to continue one with others (its trials would not
    compare)."""
    now = {"config": base.model_dump(mode="json"), "space": space.record(), "metric": metric}
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", now)
        return
    changed = [key for key in changed_keys(recorded["config"], now["config"]) if key not in CONTINUABLE]
    if changed:
        raise UserError(f"{folder.path}: this study was started with other settings ({', '.join(changed[:4])} "
                        "differ). Continue it with the config and --set it began with, or choose another --out.")
    recorded_space, now_space = recorded["space"], _plain(now["space"])
    differ = sorted(key for key in {*recorded_space, *now_space} if recorded_space.get(key) != now_space.get(key))
    if differ:
        raise UserError(f"{folder.path}: this study searched another space ({', '.join(differ)} differ). Continue "
                        "it with the --space and --only it began with, or choose another --out.")


def _plain(value: Any) -> Any:
    """As the study stores it, in JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _retry_interrupted(study: optuna.Study, storage: optuna.storages.RDBStorage, console: Console) -> None:
    """A trial still running belongs to a process that died (this one holds the lock): mark it failed. Every
    interrupted trial's parameters run again, once, before new draws."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(STUDY_NAME)
    # Changed in the storage itself; the study re-reads unfinished trials from it, so it sees the change.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs.get("retry_of") for trial in trials}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            epochs = len(trial.intermediate_values)
            console.print(f"trial {trial.number} was interrupted after {epochs} epoch{'' if epochs == 1 else 's'}; "
                          "its parameters run again first, as a new trial")
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


class Objective:
    """One trial: draw the values, train a run with them, report every epoch to the pruner, return the best
    epoch's validation score."""

    def __init__(self, optuna: Any, folder: StudyDir, base: Config, space: Space, metric: str,
                 console: Console) -> None:
        self.optuna, self.folder, self.base, self.space = optuna, folder, base, space
        self.metric, self.console = metric, console

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial, self.base)
        trial.set_user_attr("values", values)
        cfg = self.base.updated(values, source=f"trial {trial.number}")
        retry = trial.user_attrs.get("retry_of")
        again = f", trial {retry} again" if retry is not None else ""
        self.console.print(f"[bold]trial {trial.number}[/]{again}: ", Text(describe(values)), sep="")
        out = self.folder.trial(trial.number)
        try:
            result = train(cfg, out, console=self.console, on_epoch=self._reporter(trial, cfg.train.epochs))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # run again when the study continues
            raise
        except UserError as err:
            raise UserError(f"trial {trial.number} ({describe(values)}): {err}") from None
        run = RunDir(result.dir)
        return float(run.read_json(run.results)["best_val"][self.metric])

    def _reporter(self, trial: optuna.Trial, epochs: int) -> Any:
        def report(epoch: int, row: dict[str, Any]) -> None:
            value = float(row[self.metric])
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                self.console.print(f"trial {trial.number} pruned after epoch {epoch}: {self.metric} {value:.4f} is "
                                   "worse than the median of the completed trials at this epoch")
                raise self.optuna.TrialPruned()

        return report


# --- what a study writes ----------------------------------------------------------------------------------


def write_outputs(study: optuna.Study, folder: StudyDir, base: Config, metric: str, console: Console,
                  just_finished: Any = None) -> TuneResult:
    """trials.csv and best.yaml as the study now stands (after every trial, so an interrupted study has them)."""
    rows = [trial_row(trial, folder) for trial in study.get_trials(deepcopy=False)]
    folder.files.write_text(folder.table, _csv(rows))
    if just_finished is not None:
        row = rows[just_finished.number]
        value = "" if row["value"] is None else f" {metric} {row['value']:.4f}"
        console.print(f"trial {row['number']} {row['state'].lower()}{value} ({row['seconds']:.0f} s)")
    best = _best(study)
    if best is None:
        return TuneResult(folder.path, None, None, None, rows)
    cfg = base.updated(best.user_attrs["values"], source=f"trial {best.number}")
    header = (f"# graftune tune: trial {best.number} of {folder.path}, best {metric} {best.value:.4f} "
              f"(run: {folder.trial(best.number)})\n")
    folder.files.write_text(folder.best, header + cfg.to_yaml())
    return TuneResult(folder.path, best.number, best.value, folder.best, rows)


def _best(study: optuna.Study) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial has completed yet
        return None


def trial_row(trial: Any, folder: StudyDir) -> dict[str, Any]:
    """A trial as the table shows it; a pruned trial's value is its last reported one."""
    reported = trial.intermediate_values
    value = trial.value if trial.value is not None else (reported[max(reported)] if reported else None)
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return {"number": trial.number, "state": trial.state.name, "value": value, "epochs": len(reported),
            "seconds": seconds, "values": trial.user_attrs.get("values", {}),
            "retry_of": trial.user_attrs.get("retry_of"), "folder": str(folder.trial(trial.number))}


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(key for row in rows for key in row["values"]))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["number", "state", "value", "epochs", "seconds", *keys, "retry_of", "folder"])
    for row in rows:
        writer.writerow([row["number"], row["state"], _number(row["value"]), row["epochs"],
                         _number(row["seconds"], 4), *(_cell(row["values"].get(key, "")) for key in keys),
                         "" if row["retry_of"] is None else row["retry_of"], row["folder"]])
    return text.getvalue()


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # in full, for whoever reads the table on


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ",".join(_format(item) for item in value) + "]"
    return str(value)


def describe(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format(value)}" for key, value in values.items())


def trial_table(rows: list[dict[str, Any]], metric: str) -> Table:
    table = Table(title="trials", title_justify="left")
    for column in ("number", "state", metric, "params", "epochs", "seconds"):
        table.add_column(column, justify="right" if column not in ("state", "params") else "left")
    for row in rows:
        state = row["state"] + (f" (trial {row['retry_of']} again)" if row["retry_of"] is not None else "")
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        table.add_row(str(row["number"]), state, value, Text(describe(row["values"])), str(row["epochs"]), seconds)
    return table

