"""The search space of `graftune tune`: which config keys a study varies, and over what.

A spec, as `--space KEY=SPEC` gives it:

    log:LOW:HIGH     a float, log-uniform             optim.lr=log:1e-5:1e-3
    float:LOW:HIGH   a float, uniform                 head.dropout=float:0:0.5
    int:LOW:HIGH     an integer, both ends included   train.epochs=int:2:6
    choice:A,B,...   one of the values, each read as --set reads a value (YAML), so lists work:
                     strategy.name=choice:full,lp-ft   head.hidden=choice:[],[256],[512,128]

The default space, for a task that grafts a new head (classification):

    optim.lr             log-uniform from 1/10 to 10 times the rate the run would pick for the trial's
                         strategy (settings.default_lr: the config's optim.lr, else 1e-2 for a linear probe
                         and 5e-5 / 3e-4 / 1e-4 for a text / image / video body that trains)
    optim.weight_decay   log-uniform over [1e-5, 1e-1]
    strategy.name        linear-probe, partial, full, lp-ft, discriminative, gradual
    head.hidden          [] or [256]

A language model (no new head) searches optim.lr and optim.weight_decay only. `--space` adds a key or
replaces a default's range; `--only KEY,...` keeps only the named keys (of the default space and
`--space`). With strategy.name searched, freeze.body follows the strategy, so every trial is a valid
combination (settings._check_strategy): linear-probe freezes all of the body, partial keeps 1 to
groups-1 layer groups frozen (searched too), the others freeze nothing.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import yaml

from graftune.backbones import Backbone
from graftune.config import Config, parse_value
from graftune.errors import UserError
from graftune.settings import default_lr, resolve_settings
from graftune.strategies import resolve_name
from graftune.tasks.base import Task

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

STRATEGIES = ("linear-probe", "partial", "full", "lp-ft", "discriminative", "gradual")
# What a study compares its trials on: the same task, body, data split and validation metric in every trial.
FIXED = ("task", "model.source", "data.train", "data.val", "data.test", "data.split", "data.format",
         "data.input_column", "data.label_column", "data.encoding", "train.early_stopping.metric")
SPEC_HELP = "log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or choice:A,B,..."
SCALED_LR = "optim.lr/default"  # the Optuna parameter of the default rate search: a factor of the default


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high`; with `scaled`, factors of the default rate (the default optim.lr search)."""

    kind: Literal["log", "float", "int"]
    low: float
    high: float
    scaled: bool = False

    def text(self) -> str:
        bounds = f"{self.low:g}:{self.high:g}"
        return f"{self.kind}:{bounds}" + (" x the default rate" if self.scaled else "")


@dataclass(frozen=True)
class Choice:
    """One of `values` (config values: strings, numbers, lists...)."""

    values: tuple[Any, ...]

    def labels(self) -> list[Any]:
        """What Optuna stores for each value: a scalar as it is, a list or mapping as its JSON text (Optuna's
        categorical choices are scalars)."""
        return [json.dumps(value) if isinstance(value, list | dict) else value for value in self.values]

    def text(self) -> str:
        return "choice:" + ",".join(str(label) for label in self.labels())


Spec = Range | Choice


@dataclass(frozen=True)
class Space:
    """The keys a study searches, with what a trial's values depend on: the body's layer groups (freeze
    depths) and modality (default rates), and the task's default strategy."""

    specs: dict[str, Spec]
    groups: int
    modality: str
    default_strategy: str | None

    def record(self) -> dict[str, Any]:
        """Plain JSON, stored with the study so that a continued study searches the same space."""
        return {key: {"type": type(spec).__name__, **asdict(spec)} for key, spec in self.specs.items()}

    def describe(self) -> list[str]:
        lines = [f"{key}: {spec.text()}" for key, spec in self.specs.items()]
        if "strategy.name" in self.specs:
            lines.append(f"freeze.body: with the strategy (partial: int:1:{self.groups - 1})")
        return lines

    def suggest(self, trial: BaseTrial, base: Config) -> dict[str, Any]:
        """One trial's config values, drawn through the trial (Optuna records each draw), in the space's order."""
        values: dict[str, Any] = {}
        for key, spec in self.specs.items():
            if isinstance(spec, Range) and spec.scaled:
                values[key] = None  # its place; drawn after the strategy, whose default rate is its centre
                continue
            values[key] = suggest(trial, key, spec)
            freeze = tied_freeze(values[key], self.groups, trial) if key == "strategy.name" else None
            if freeze is not None:
                values["freeze.body"] = freeze
        lr = self.specs.get("optim.lr")
        if isinstance(lr, Range) and lr.scaled:
            strategy = resolve_name(base.updated(values, source="the search"), self.default_strategy)
            scale = trial.suggest_float(SCALED_LR, lr.low, lr.high, log=True)
            values["optim.lr"] = float(f"{default_lr(base, strategy, self.modality) * scale:.4g}")
        return values


def suggest(trial: BaseTrial, key: str, spec: Spec) -> Any:
    if isinstance(spec, Choice):
        labels = spec.labels()
        return spec.values[labels.index(trial.suggest_categorical(key, labels))]
    if spec.kind == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.kind == "log")


def tied_freeze(strategy: str, groups: int, trial: BaseTrial | None = None) -> Any:
    """freeze.body for a strategy the search chose: all for a linear probe, none for the strategies that
    train the whole body, a searched depth for partial (the smallest when no trial draws it); None: as the
    config says (auto, whose meaning is freeze.body's)."""
    if strategy == "auto":
        return None
    if strategy == "linear-probe":
        return "all"
    if strategy == "partial":
        return trial.suggest_int("freeze.body", 1, groups - 1) if trial is not None else 1
    return "none"


def parse_spec(item: str) -> tuple[str, Spec]:
    """`KEY=SPEC` (see the module docstring) -> (key, spec)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--space {item!r}: expected KEY=SPEC, for example optim.lr=log:1e-5:1e-3 ({SPEC_HELP}).")
    kind, _, rest = text.strip().partition(":")
    if kind == "choice":
        return key, _choice(item, rest)
    if kind in ("log", "float", "int"):
        return key, _range(item, kind, rest)  # type: ignore[arg-type]
    raise UserError(f"--space {item}: unknown spec '{kind}'; use {SPEC_HELP}.")


def _range(item: str, kind: Literal["log", "float", "int"], text: str) -> Range:
    parts = text.split(":")
    number = int if kind == "int" else float
    try:
        if len(parts) != 2:
            raise ValueError
        low, high = (number(part) for part in parts)
    except ValueError:
        noun = "integers" if kind == "int" else "numbers"
        raise UserError(f"--space {item}: expected {kind}:LOW:HIGH with LOW and HIGH {noun}.") from None
    if not low < high:
        raise UserError(f"--space {item}: LOW must be below HIGH (to fix a value, use --set KEY=VALUE).")
    if kind == "log" and low <= 0:
        raise UserError(f"--space {item}: a log range needs LOW above 0; use float:LOW:HIGH to include 0.")
    return Range(kind, low, high)


def _choice(item: str, text: str) -> Choice:
    try:
        values = parse_value(f"[{text}]")  # the items of a YAML flow list: commas inside [..] stay together
    except yaml.YAMLError:
        raise UserError(f"--space {item}: the choices are not valid YAML, for example choice:[],[256].") from None
    if not values or any(value is None for value in values):
        raise UserError(f"--space {item}: give the values to choose from, separated by commas: choice:A,B.")
    choice = Choice(tuple(values))
    if len(set(choice.labels())) < len(values):
        raise UserError(f"--space {item}: a value is given twice.")
    return choice


def build_space(base: Config, task: type[Task], backbone: Backbone, given: list[str] | None = None,
                only: list[str] | None = None) -> Space:
    """The default space (module docstring) with `given` specs added or replacing, kept to the `only` keys,
    every value checked against the config, and the strategies against the task and body."""
    groups = len(backbone.groups)
    specs = default_specs(task, groups)
    seen: set[str] = set()
    for item in given or []:
        key, spec = parse_spec(item)
        if key in seen:
            raise UserError(f"--space {key}: given twice; give each key once.")
        seen.add(key)
        specs[key] = spec
    if only:
        keep = [key.strip() for entry in only for key in entry.split(",") if key.strip()]
        unknown = [key for key in keep if key not in specs]
        if unknown:
            raise UserError(f"--only {unknown[0]}: not in the search space ({', '.join(specs)}); give its range "
                            f"with --space {unknown[0]}=SPEC.")
        specs = {key: specs[key] for key in keep}
    space = Space(specs, groups, backbone.modality, task.default_strategy)
    _check(space, base, task, backbone)
    return space


def default_specs(task: type[Task], groups: int) -> dict[str, Spec]:
    specs: dict[str, Spec] = {"optim.lr": Range("log", 0.1, 10.0, scaled=True),
                              "optim.weight_decay": Range("log", 1e-5, 1e-1)}
    if task.needs == "features":  # a new head on the body: the strategies that treat them apart apply
        strategies = tuple(name for name in STRATEGIES if name != "partial" or groups >= 2)
        specs["strategy.name"] = Choice(strategies)
        specs["head.hidden"] = Choice(([], [256]))
    return specs


def _check(space: Space, base: Config, task: type[Task], backbone: Backbone) -> None:
    """Every bound and choice as a config value, and each with the run's own checks (settings.resolve_settings),
    so a trial cannot stop the study on a value refused before it trained."""
    for key, spec in space.specs.items():
        fixed = next((name for name in FIXED if key == name or key.startswith(f"{name}.")), None)
        if fixed:
            raise UserError(f"--space {key}: a study compares its trials on one task, model, data split and "
                            f"validation metric; set {fixed} with --set (one study per value).")
        if key == "freeze.body" and "strategy.name" in space.specs:
            raise UserError("--space freeze.body: freeze.body follows strategy.name in this search (partial: "
                            "searched depths, linear-probe: all, others: none); leave strategy.name out with "
                            "--only to search freeze.body yourself.")
        if key == "strategy.name" and isinstance(spec, Choice) and "partial" in spec.values and space.groups < 2:
            raise UserError(f"--space strategy.name=partial: {backbone.source} has {space.groups} layer group, so "
                            "partial has nothing to keep frozen; leave partial out.")
        for value in _probes(spec):
            values = {key: value}
            if key == "strategy.name":
                freeze = tied_freeze(value, space.groups)
                values.update({} if freeze is None else {"freeze.body": freeze})
            shown = f"--space {key}={json.dumps(value) if not isinstance(value, str) else value}"
            cfg = base.updated(values, source=f"--space {key}")
            with warnings.catch_warnings():  # settings the value makes unused are said once per trial
                warnings.simplefilter("ignore")
                try:
                    resolve_settings(cfg, backbone, task)
                except UserError as err:
                    raise UserError(f"{shown}: {err}") from None


def _probes(spec: Spec) -> list[Any]:
    if isinstance(spec, Choice):
        return list(spec.values)
    if spec.scaled:
        return []  # factors of a positive default rate: always a valid rate
    return [int(spec.low), int(spec.high)] if spec.kind == "int" else [spec.low, spec.high]
