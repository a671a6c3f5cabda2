"""The run's settings, resolved once: every `auto` and unset default of the user's config decided, after
the backbone loads, into a new immutable `Config`. That is what RUN/config.yaml and RUN/model/graftune.json
hold and what every later module reads; none of them works a default out again.

Two defaults depend on what only a run can find out, and `resolve_settings` takes those findings as
`Found`: `optim.lr: auto` the rate of the range test (run on a detached run before this one), and
`strategy.probe: auto` why the exact probe cannot apply (known once the model and its stages exist).
Without a finding such a setting stays as given, so a run resolves its settings, builds the model from
them (which reads neither) and resolves them again with what the model showed: the second pass decides
the probe and changes nothing else, since resolving resolved settings is a no-op. A resume resolves the
recorded settings the same way and gets them back unchanged.

Example:
    >>> settings = resolve_settings(cfg, backbone, TextClassification)
    >>> settings.strategy.name, settings.optim.lr, settings.head.pooling
    ('full', 5e-05, 'mean')
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftune.backbones import Backbone, load_backbone
from graftune.config import Config, DataConfig, RegularizeConfig, StrategyConfig
from graftune.errors import InputWarning, UserError
from graftune.hardware import resolve_precision, resolve_workers
from graftune.preprocessing import ImagePreprocess, Preprocess
from graftune.regularize import check as check_regularization
from graftune.strategies import resolve_name, strategy_defaults
from graftune.tasks import get_task
from graftune.tasks.base import Task

# Strategy settings and the strategies that read them: set for another strategy, they would do nothing.
STRATEGY_KEYS = {"unfreeze_every": ("gradual", "ulmfit"), "probe_epochs": ("lp-ft", "fastai"),
                 "plateau_patience": ("lp-ft", "custom"), "lora": ("lora",), "stages": ("custom",)}
# Body rates of strategies that train something other than a body from its pre-trained point.
STRATEGY_LR = {"linear-probe": 1e-2, "bitfit": 1e-3, "lora": 5e-4}
BODY_LR = {"text": 5e-5, "image": 3e-4, "video": 1e-4}  # a body that trains, by modality (video: VideoMAE's)


@dataclass(frozen=True)
class Found:
    """What a run found out that a default depends on (see the module docstring); None: not known (yet)."""

    lr: float | None = None  # optim.lr auto: the rate the range test picked
    # strategy.probe: why the exact probe cannot apply to this run's model and stages (empty: it can)
    probe_obstacles: tuple[str, ...] | None = None


def resolve_settings(cfg: Config, backbone: Backbone, task: type[Task], found: Found = Found()) -> Config:
    """The user's `cfg` with every default decided for this backbone and task (see the module docstring);
    `resolve_settings(resolved, ...)` is `resolved`.

    Rates: a head on a frozen body gets 1e-2 (a linear probe is a convex problem that tolerates, and
    needs, large steps); a body that trains gets 5e-5 (text), 3e-4 (images, and image networks run on
    video frames) or 1e-4 (video models such as VideoMAE) and its head 20x that, capped at 1e-3.
    Adapters and biases (lora, bitfit) learn from scratch-like starting points and take larger rates: 5e-4
    and 1e-3. `optim.lr: auto` takes `found.lr`; the strategy's own defaults are strategies.strategy_defaults';
    `strategy.probe: auto` is exact when `found.probe_obstacles` is empty, sgd when it names any.
    """
    name = resolve_name(cfg, task.default_strategy)
    _check_strategy(cfg, name)
    # A chained run scores task A on regularize.retain; a language model scores it as a second corpus.
    check_regularization(cfg, name, backbone.modality, task.evaluates_before or cfg.model.source.startswith("run:"))
    _warn_ignored(cfg, name, backbone.modality)
    lr = found_lr(cfg, found) or default_lr(cfg, name, backbone.modality)
    head_lr = cfg.optim.head_lr or (lr if name == "linear-probe" else min(1e-3, max(lr, lr * 20)))
    values = {
        "strategy.name": name, "strategy.probe": probe_choice(cfg.strategy.probe, found.probe_obstacles),
        "optim.lr": lr, "optim.head_lr": head_lr,
        "train.mixed_precision": resolve_precision(cfg.train.mixed_precision),
        "train.num_workers": resolve_workers(cfg.train.num_workers, backbone.modality),
        "train.early_stopping.metric": monitored_metric(cfg, task),
        "data.augment": task.default_augment if cfg.data.augment == "auto" else cfg.data.augment,
    }
    if isinstance(backbone.preprocess, ImagePreprocess):
        values["data.image_size"] = backbone.preprocess.size
    elif cfg.data.image_size:
        raise UserError(f"data.image_size: {cfg.model.source} reads text; data.image_size is for image models. "
                        "Remove it.")
    else:
        values["data.max_length"] = min(cfg.data.max_length, backbone.preprocess.max_length)
    if backbone.code:
        values["model.code_path"] = backbone.code["path"]
    return task.resolve(strategy_defaults(cfg.updated(values)), backbone)


def found_lr(cfg: Config, found: Found) -> float | None:
    """The range test's rate where the config says `optim.lr: auto`; None where it gives a rate or none."""
    if cfg.optim.lr != "auto":
        return None
    assert found.lr is not None, "optim.lr auto: run the range test first and give its rate (run.Run.setup)"
    return found.lr


def probe_choice(probe: str, obstacles: tuple[str, ...] | None) -> str:
    """`strategy.probe` decided: `auto` is exact where nothing stands in its way, else sgd; `exact` where
    something does is refused, naming it. Without `obstacles` (not known yet) the setting stays as it is."""
    if obstacles is None:
        return probe
    if probe == "exact" and obstacles:
        raise UserError(f"strategy.probe=exact: {'; '.join(obstacles)}. Use strategy.probe=sgd or auto.")
    return probe if probe != "auto" else "sgd" if obstacles else "exact"


def with_absolute_paths(cfg: Config) -> Config:
    """The config with every path made absolute, before anything is read: the recorded split, the settings
    and the model folder then name the same files from any working directory."""
    keys = {"data.train": cfg.data.train, "data.val": cfg.data.val, "data.test": cfg.data.test,
            "regularize.retain": cfg.regularize.retain, "model.weights": cfg.model.weights, "cache.dir": cfg.cache.dir,
            "model.code_path": cfg.model.code_path}
    values: dict[str, Any] = {key: str(Path(value).expanduser().resolve()) for key, value in keys.items() if value}
    prefix, _, ref = cfg.model.source.partition(":")
    if prefix in ("hf", "run") and ref and Path(ref).expanduser().exists():  # a local folder, not a hub id
        values["model.source"] = f"{prefix}:{Path(ref).expanduser().resolve()}"
    return cfg.updated(values)


def data_folders(cfg: Config) -> dict[str, str]:
    """The paths a run reads its examples from, by config key."""
    return {key: value for key, value in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                                          ("data.test", cfg.data.test), ("regularize.retain", cfg.regularize.retain))
            if value}


def refuse_output_in_data(out: str | Path, folders: dict[str, str], option: str = "--out") -> None:
    """Refuse an output folder that is, or lies inside, a data folder: the next read of that folder would take
    the run's own files (plots, predictions, checkpoints) as examples. Real paths, so links cannot hide it."""
    target = Path(out).expanduser().resolve()
    for key, value in folders.items():
        folder = Path(value).expanduser().resolve()
        if folder.is_dir() and target.is_relative_to(folder):
            raise UserError(f"{option} {out}: is inside the {key} folder {value}, so the next read of the data "
                            f"would take its files as examples. Choose an {option} outside {value}.")


def load_configured_backbone(cfg: Config, trust_code: bool = False) -> Backbone:
    """The pre-trained backbone `model.source` names, loaded with the config's model and head options, with
    the LM head when the task generates text."""
    return load_backbone(cfg.model.source, weights=cfg.model.weights, kwargs=cfg.model.kwargs,
                         replace=cfg.head.replace, cut_at=cfg.head.cut_at, image_size=cfg.data.image_size,
                         trust_remote_code=cfg.model.trust_remote_code, code_path=cfg.model.code_path,
                         trust_code=trust_code, lm=get_task(cfg.task).needs == "logits")


def run_preprocess(backbone: Backbone, settings: Config) -> Preprocess:
    """The backbone's input preparation with the run's resolved image size or token limit."""
    if isinstance(backbone.preprocess, ImagePreprocess):
        assert settings.data.image_size is not None, "resolve the settings first"
        return dataclasses.replace(backbone.preprocess, size=settings.data.image_size)
    return dataclasses.replace(backbone.preprocess, max_length=settings.data.max_length)


def _check_strategy(cfg: Config, name: str) -> None:
    body = cfg.freeze.body
    if body == "all" and name != "linear-probe":
        raise UserError(f"strategy {name} trains the body, but freeze.body=all keeps all of it frozen. "
                        "Use strategy linear-probe, or freeze fewer layers.")
    if name == "partial" and body == "none":
        raise UserError("strategy partial needs freeze.body: the number K of layer groups to keep frozen "
                        "(or name patterns), for example --freeze 4.")


def _warn_ignored(cfg: Config, strategy: str, modality: str) -> None:
    """Settings changed from their defaults that this run would not use: said, not silently dropped."""
    ignored = [f"strategy.{key} (used by {' and '.join(users)}, not {strategy})"
               for key, users in STRATEGY_KEYS.items()
               if strategy not in users and getattr(cfg.strategy, key) != _default(StrategyConfig, key)]
    if cfg.regularize.l2sp_head != _default(RegularizeConfig, "l2sp_head") and not cfg.regularize.l2sp:
        ignored.append("regularize.l2sp_head (used with regularize.l2sp only)")
    image_keys = ("image_size", "augment") if modality == "text" else ("max_length", "group_by_length")
    ignored += [f"data.{key} (for {'image' if modality == 'text' else 'text'} models)" for key in image_keys
                if getattr(cfg.data, key) not in (None, _default(DataConfig, key))]
    for item in ignored:
        warnings.warn(f"{item}: ignored.", InputWarning, stacklevel=3)


def _default(section: type[StrategyConfig] | type[RegularizeConfig] | type[DataConfig], key: str) -> Any:
    field = section.model_fields[key]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def default_lr(cfg: Config, strategy: str, modality: str) -> float:
    """The body rate a run with this strategy and body modality gets: the config's own, else the default
    (see resolve_settings); with `auto`, the default (what a search or a range test starts from)."""
    given = cfg.optim.lr if cfg.optim.lr != "auto" else None
    return given or STRATEGY_LR.get(strategy) or BODY_LR[modality]


def monitored_metric(cfg: Config, task: type[Task]) -> str:
    """The validation metric that picks the best epoch: train.early_stopping.metric, else the task's."""
    metric = cfg.train.early_stopping.metric or task.default_metric
    if metric not in task.metrics:
        raise UserError(f"train.early_stopping.metric: '{metric}' is not a metric of task {task.name}. "
                        f"Choose one of {', '.join(task.metrics)}.")
    return metric
