"""One fine-tuning run, for any task: set up one resource at a time, train, save (the shape of torchtune's
recipes). The path does not branch on the task; the task plugs in through graftune/tasks/base.py.

    run = Run.start(cfg, "runs/news", overwrite=False, console=console)   # or Run.resume("runs/news", ...)
    run.train()
    result = run.save()

`setup` reads the data, loads the backbone, resolves the settings, builds the model, the optimizer and
schedule, the loaders, the accelerator and the feature cache, and, when resuming, loads the last
checkpoint: resume is handled there and nowhere else. A new run is set up in a hidden folder that
becomes the run folder only when setup succeeded (rundir.py).
"""

from __future__ import annotations

import gc
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from rich.console import Console
from torch.utils.data import DataLoader

from graftune.artifacts import save_model_folder
from graftune.backbones import Backbone
from graftune.backbones.sources import require_trust
from graftune.checkpoint import Checkpoints, FitState, LoopState, disk_refusal
from graftune.config import Config, changed_keys, load_config, value_at
from graftune.data import record
from graftune.data.inputs import input_encoder
from graftune.data.readers import read_unlabelled
from graftune.errors import InputWarning, UserError
from graftune.faults import reached
from graftune.features import EpochLoaders, FeatureFeeds, FeatureStore, Split, default_cache_dir
from graftune.fit import EpochHook, Monitor, Trainee, fit
from graftune.forgetting import OriginalTask
from graftune.freezing import frozen_parameter_names
from graftune.grafted import GraftedModel, parameter_summary
from graftune.loaders import eval_batches, eval_loader, local_loader
from graftune.loop import evaluate
from graftune.lora import add_lora, merge, save_adapter
from graftune.lr_find import Finding, RangeTest, Trial, find, kept_random_state, range_test_stage
from graftune.lr_find import write as write_finding
from graftune.plots import learning_curves_png
from graftune.probe import ExactProbe, exact_obstacles
from graftune.regularize import AnchorPenalty, anchored, fisher_diagonal
from graftune.report import write_report
from graftune.rundir import RunDir
from graftune.sampling import ShuffledBatches, sorted_batches
from graftune.settings import (
    Found,
    data_folders,
    load_configured_backbone,
    refuse_output_in_data,
    resolve_settings,
    run_preprocess,
    with_absolute_paths,
)
from graftune.staging import StageSwitch
from graftune.strategies import Stage, plan, trainable_group_count
from graftune.tasks import get_task
from graftune.tasks.base import Task, TaskData
from graftune.weights import load_weights

# Settings a resume may change: they decide how long or how visibly the run goes on, not what it learns.
RESUMABLE = ("train.epochs", "train.early_stopping.patience", "train.progress", "train.num_workers", "cache.dir",
             "train.log_with")


@dataclass
class RunResult:
    """What `graftune.train` returns: the run folder and the test metrics."""

    dir: Path
    test: dict[str, Any]
    best_epoch: int
    epochs_run: int


@dataclass(frozen=True)
class Permissions:
    """What the user allowed for this invocation only; recorded nowhere, so a resume asks again."""

    trust_code: bool = False  # import code that a run folder or a run's config names
    accept_changed_data: bool = False  # resume on the recorded split although files changed


def train_run(cfg: Config, out: str | Path, overwrite: bool = False, console: Console | None = None,
              permissions: Permissions = Permissions(), on_epoch: EpochHook | None = None) -> RunResult:
    """Fine-tune as `cfg` says and write everything into the run folder `out`."""
    run = Run.start(cfg, out, overwrite, console or Console(stderr=True), permissions)
    run.train(on_epoch)
    return run.save()


def resume_run(out: str | Path, overrides: list[str] | None = None, console: Console | None = None,
               permissions: Permissions = Permissions(), on_epoch: EpochHook | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own settings and recorded split."""
    run = Run.resume(out, console or Console(stderr=True), overrides, permissions)
    run.train(on_epoch)
    return run.save()


class Run:
    """A run folder and everything one training in it needs (see the module docstring)."""

    def __init__(self, folder: RunDir | None, console: Console, permissions: Permissions,
                 stage: Callable[[list[Stage]], int] = lambda stages: 0) -> None:
        self.folder, self.console, self.permissions = folder, console, permissions
        self.resume_note: dict[str, Any] = {}
        self.first_stage = stage  # the stage a new run is set up in: the first, but for a range test
        self.finding: Finding | None = None  # optim.lr auto: the range test that decided the rate

    @classmethod
    def start(cls, cfg: Config, out: str | Path, overwrite: bool, console: Console,
              permissions: Permissions = Permissions()) -> Run:
        refuse_output_in_data(out, data_folders(cfg))
        target = RunDir(out)
        staged = target.stage(overwrite)
        run = cls(staged, console, permissions)
        try:
            run.setup(cfg, resume=False)
        except BaseException as err:
            # the system's own refusal only: a bug that happens while the disk is low stays a bug
            reason = disk_refusal(err, staged.path) if isinstance(err, OSError) else None
            staged.discard()
            if reason is None:
                raise
            raise UserError(f"{target.path}: cannot write the new run's files ({reason}); nothing was kept, and no "
                            "checkpoint exists to resume. Free space or fix the permissions, then run the same command "
                            "again.") from None
        target.adopt(staged)
        run.folder = target
        return run

    @classmethod
    def detached(cls, cfg: Config, console: Console, permissions: Permissions = Permissions(),
                 data: TaskData | None = None, stage: Callable[[list[Stage]], int] = lambda stages: 0) -> Run:
        """Everything a new run sets up (the model, its stages, loaders and feature cache), with no run folder:
        for the commands that look at a task before training it (plan, lr-find). `data` replaces what
        `cfg.data` reads (a sample of it); `stage` picks the stage it is set up in, from the strategy's
        stages (as a resume in that stage would be: its frozen set, optimizer groups and rates)."""
        run = cls(None, console, permissions, stage)
        run.setup(cfg, resume=False, data=data)
        return run

    @classmethod
    def resume(cls, out: str | Path, console: Console, overrides: list[str] | None = None,
               permissions: Permissions = Permissions()) -> Run:
        folder = RunDir(out).require_resumable()
        saved = load_config(folder.config)
        if saved.optim.lr == "auto":
            raise UserError(f"{folder.config}: optim.lr is 'auto', but a run records the rate its range test found "
                            "(lr_find.json). Put that number back, or start a new run.")
        if saved.model.source.startswith("module:") or saved.model.trust_remote_code:
            spec = saved.model.source + (" with model.trust_remote_code" if saved.model.trust_remote_code else "")
            require_trust(spec, folder.config, permissions.trust_code)
        cfg, changed = _resume_settings(saved, overrides or [])
        run = cls(folder, console, permissions)
        run.resume_note = {"changed": changed} if changed else {}
        run.setup(cfg, resume=True)
        return run

    @property
    def run_folder(self) -> RunDir:
        assert self.folder is not None, "a detached run has no folder"
        return self.folder

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.run_folder.checkpoints, self.run_folder.metrics, self.run_folder.files)

    # --- setup, one resource at a time ------------------------------------------------------------------

    def setup(self, cfg: Config, resume: bool, data: TaskData | None = None) -> None:
        cfg = with_absolute_paths(cfg)
        set_seed(cfg.train.seed)
        self._setup_data(cfg, resume, data)
        self._setup_backbone(cfg, Found(lr=self._setup_lr(cfg)))
        self._setup_model()
        self._setup_state(resume)
        self._setup_loaders()
        self._setup_accelerator()
        self._setup_regularization()
        self._setup_cache()
        self._setup_forgetting()
        self._announce()
        if resume:
            self._load_checkpoint()
        elif self.folder is not None:
            self._record()

    def _setup_data(self, cfg: Config, resume: bool, given: TaskData | None = None) -> None:
        """The task's data; on resume, the split recorded at the start, taken from the data as it is now."""
        self.task_type: type[Task] = get_task(cfg.task)
        data = given or self.task_type.read_data(cfg.data)
        if resume:
            folder = self.run_folder
            saved = folder.read_json(folder.splits)
            splits, changes = record.restore(saved, data.splits, self.task_type.modality,
                                             self.permissions.accept_changed_data, folder.splits)
            if changes:
                self.resume_note["accepted_data_changes"] = {"changed": changes.changed, "missing": changes.missing,
                                                             "new": changes.new}
                self.console.print(f"resuming on the recorded split as the data now is: {changes.describe()}")
            data = TaskData(splits, saved.get("schema") or data.schema)
        self.data: TaskData = data

    def _setup_lr(self, cfg: Config) -> float | None:
        """optim.lr auto: the rate the range test picks, found on a detached run of the same config and data
        before anything of this run exists (None without auto); resolve_settings records it. The random
        generators are kept, so this run then draws as one given that rate would (a resume reads the rate from
        config.yaml and never gets here with auto)."""
        if cfg.optim.lr != "auto":
            return None
        self.console.print("optim.lr auto: learning-rate range test first")
        with kept_random_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)  # this run's setup says the same just after
            self.finding = find_lr(cfg, Console(quiet=True), self.permissions, data=self.data,
                                   progress=cfg.train.progress)
        gc.collect()  # the detached run's model and loaders, before this run loads its own
        finding = self.finding
        self.console.print(f"optim.lr auto -> {finding.lr:.3g} ({finding.rule} of the range test on stage "
                           f"{finding.stage}; {len(finding.rates)} steps, {finding.seconds:.0f} s)")
        return finding.lr

    def _setup_backbone(self, cfg: Config, found: Found) -> None:
        """Load the backbone, then decide every default of the run for it, but the probe (`_settle_probe`)."""
        backbone = load_configured_backbone(cfg, self.permissions.trust_code)
        if backbone.modality not in self.task_type.accepted_modalities():
            wanted = " or ".join(self.task_type.accepted_modalities())
            article = "an" if wanted[0] in "aeiou" else "a"
            raise UserError(f"model.source: '{cfg.model.source}' is a {backbone.modality} model, but the task "
                            f"'{cfg.task}' reads {self.task_type.modality}s. Choose {article} {wanted} model.")
        self.settings = resolve_settings(cfg, backbone, self.task_type, found)
        if self.settings.strategy.name == "lora":
            backbone = add_lora(backbone, self.settings.strategy.lora)
        self.backbone: Backbone = backbone
        self.task = self.task_type(self.settings, self.data.schema)
        self.preprocess = run_preprocess(backbone, self.settings)

    def _setup_model(self) -> None:
        """The task's model, and the strategy's stages over the layer groups freeze.body leaves trainable."""
        groups, settings = self.backbone.groups, self.settings
        self.model: GraftedModel = self.task.build_model(self.backbone)
        never = frozen_parameter_names(settings.freeze.body, groups, self.backbone.body)
        self.stages = plan(settings, trainable_group_count(groups, never))
        self.switch = StageSwitch(self.model, groups, self.stages, never, settings.freeze.batchnorm,
                                  settings.optim.weight_decay, 0.0 if anchored(settings.regularize) else None,
                                  settings.train.epochs)
        self._settle_probe()
        _check_batchnorm_batches(self.model, settings)
        if settings.train.gradient_checkpointing:
            _enable_checkpointing(self.model, self.backbone.source)

    def _settle_probe(self) -> None:
        """`strategy.probe`, the one setting that waits for the model (graftune/probe.py says what the exact probe
        needs): the settings resolved again with what stands in its way, which changes nothing else, and the task
        rebuilt from them, so that the run's record and its model folder hold one copy of the settings."""
        obstacles = exact_obstacles(self.settings, self.stages, self.task, self.model.head, self._cached_views())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)  # the first pass said what these settings leave unused
            settings = resolve_settings(self.settings, self.backbone, self.task_type, Found(probe_obstacles=obstacles))
        assert settings == self.settings.updated({"strategy.probe": settings.strategy.probe}), \
            "resolving resolved settings changes nothing but the probe"
        self.settings = settings
        self.task = self.task_type(settings, self.data.schema)

    def _setup_state(self, resume: bool) -> None:
        """The loop state (the last checkpoint's when resuming) and the optimizer of its stage."""
        self.latest = self.checkpoints.latest() if resume else None
        self.fit_state = self.checkpoints.loop_state(self.latest)[0] if self.latest else \
            FitState(stage=self.first_stage(self.stages))
        if self.fit_state.epoch > self.settings.train.epochs:
            raise UserError(f"train.epochs={self.settings.train.epochs}: this run has already trained "
                            f"{self.fit_state.epoch} epochs. Give more epochs, or none, to --resume.")
        self.optimizer: Any = self.switch.replay(self.fit_state.stage)  # Accelerate wraps it in setup_accelerator

    def _setup_loaders(self) -> None:
        task, train, preprocess = self.task, self.settings.train, self.preprocess
        splits, workers = self.data.splits, int(train.num_workers)
        self.items = {name: task.items(part, preprocess) for name, part in
                      (("train", splits.train), ("val", splits.val), ("test", splits.test))}
        self.lengths = task.lengths(self.items["train"], preprocess)
        self.batches = ShuffledBatches(train.batch_size, train.seed, size=len(self.items["train"]),
                                       lengths=self.lengths if self.settings.data.group_by_length else None,
                                       weights=task.sample_weights(self.items["train"]))
        self.train_loader: Any = DataLoader(self.items["train"], batch_sampler=self.batches,  # type: ignore[arg-type]
                                            collate_fn=task.training_collate(preprocess), num_workers=workers)
        self.val_batches = eval_batches(task, self.items["val"], preprocess, train.eval_batch_size)
        collate = task.collate(preprocess)
        self.val_loader: Any = eval_loader(self.items["val"], collate, self.val_batches, workers)
        self.test_loader: Any = eval_loader(self.items["test"], collate,
                                            eval_batches(task, self.items["test"], preprocess, train.eval_batch_size),
                                            workers, indexed=True)  # test predictions name their examples
        retained = task.forgetting_examples(self.settings.regularize.retain) if self.settings.regularize.retain \
            else None
        self.retain_loader: Any = None
        if retained:
            items = task.items(retained, preprocess)
            self.retain_loader = eval_loader(items, collate, eval_batches(task, items, preprocess,
                                                                          train.eval_batch_size), workers)

    def _setup_accelerator(self) -> None:
        # Accelerate keeps one state per process and refuses a second Accelerator with another precision;
        # each graftune run owns its settings, so the run-level state is cleared (the distributed
        # PartialState, which holds the process group, is kept).
        AcceleratorState._reset_state()
        train = self.settings.train
        trackers = _trackers(train.log_with) if self.folder is not None else []  # a detached run logs nowhere
        project = ProjectConfiguration(project_dir=str(self.run_folder.path), logging_dir=str(self.run_folder.logs)) \
            if trackers else None
        self.accelerator = Accelerator(mixed_precision=train.mixed_precision,
                                       gradient_accumulation_steps=train.grad_accum, log_with=trackers or None,
                                       project_config=project)
        accelerator = self.accelerator
        if accelerator.num_processes > train.batch_size:
            raise UserError(f"train.batch_size={train.batch_size} is the batch of all {accelerator.num_processes} "
                            "processes together: each needs at least one example. Give a larger batch size.")
        self.batches.for_process(accelerator.process_index, accelerator.num_processes)
        self.prepared, self.optimizer, self.val_loader, self.test_loader = accelerator.prepare(
            self.model, self.optimizer, self.val_loader, self.test_loader)
        self.train_loader = local_loader(self.train_loader, accelerator)
        if self.retain_loader is not None:
            self.retain_loader = self.accelerator.prepare_data_loader(self.retain_loader)
        self.steps_per_epoch = -(-len(self.train_loader) // train.grad_accum)
        scheduler = self.switch.schedule(self.fit_state.stage, self.optimizer.optimizer, self.fit_state.stage_start,
                                         self.steps_per_epoch)
        self.loop = LoopState(self.fit_state, scheduler)
        self.accelerator.register_for_checkpointing(self.loop)

    def _setup_regularization(self) -> None:
        """L2-SP / EWC anchors are the pre-trained weights: taken here, before a checkpoint is loaded."""
        reg = self.settings.regularize
        self.penalty = None
        if anchored(reg):
            fisher = self._retain_fisher() if reg.ewc else None
            self.penalty = AnchorPenalty(self.model, reg, fisher)

    def _retain_fisher(self) -> dict[str, torch.Tensor]:
        reg = self.settings.regularize
        assert reg.retain is not None
        inputs = read_unlabelled(reg.retain, self.task.modality, encoding=self.settings.data.encoding)
        inputs = inputs[:reg.retain_examples]
        loader: DataLoader[Any] = DataLoader(inputs, batch_size=8,  # type: ignore[arg-type]
                                             collate_fn=input_encoder(self.preprocess))
        return fisher_diagonal(self.model, loader, seed=self.settings.train.seed)

    def _setup_cache(self) -> None:
        settings, task = self.settings, self.task
        feeds = None
        if settings.cache.features:
            eval_size = settings.train.eval_batch_size
            feeds = FeatureFeeds(
                self.model, self.accelerator, lambda augment: task.collate(self.preprocess, augment),
                Split(self.items["train"], sorted_batches(self.lengths, eval_size, len(self.items["train"]))),
                Split(self.items["val"], self.val_batches), self.batches, views=self._cached_views(),
                augment=task.augment, store=FeatureStore(default_cache_dir(settings.cache.dir), self.console),
                preprocess=self.preprocess, modality=task.modality, seed=settings.train.seed,
                num_workers=int(settings.train.num_workers), console=self.console)
        self.loaders = EpochLoaders(self.train_loader, self.val_loader, feeds, self.switch.head_only)

    def _setup_forgetting(self) -> None:
        """A chained run (`run:DIR` of a classifier) scores task A before and after, on A's own head."""
        source = self.settings.model.source
        self.original = OriginalTask.of(source.removeprefix("run:"), self.settings.regularize.retain,
                                        self.permissions.trust_code) if source.startswith("run:") else None
        if self.original is not None:
            self.console.print(f"forgetting: task A of {self.original.folder} is scored before and after, on "
                               f"{len(self.original.examples)} examples ({self.original.source})")

    def _cached_views(self) -> int:
        """Training views to cache: one plain view, K augmented ones, or 0 (train live) when inputs are mixed."""
        if self.task.mixes_inputs:
            return 0
        return self.settings.cache.views if self.task.augment else 1

    def _load_checkpoint(self) -> None:
        """Resume: the last committed epoch's state and rows (none before the first commit), and a record of
        what this resume changed."""
        checkpoints = self.checkpoints
        checkpoints.tidy()  # what a kill left half-written
        if self.latest is None:
            self.rows: list[dict[str, Any]] = []
            self.run_folder.write_text(self.run_folder.metrics, "")
            self.console.print("resuming from the start: no epoch was checkpointed")
        else:
            self.rows = checkpoints.restore(self.accelerator, self.latest)
            self.console.print(f"resuming after epoch {self.fit_state.epoch}, in stage "
                               f"{self.stages[self.fit_state.stage].name}")
        if self.resume_note:
            folder = self.run_folder
            folder.write_text(folder.config, self.settings.to_yaml())
            history = folder.read_json(folder.resumes) if folder.resumes.is_file() else []
            entry = {"after_epoch": self.fit_state.epoch, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **self.resume_note}
            folder.write_json(folder.resumes, [*history, entry])

    def _record(self) -> None:
        """What a new run writes before its first epoch: the resolved settings, the split, the strategy."""
        data, folder = self.settings.data, self.run_folder
        self.rows = []
        folder.write_text(folder.config, self.settings.to_yaml())
        seed = data.split.seed if data.val is None else None
        folder.write_json(folder.splits, record.record(self.data.splits, self.task.modality, seed, self.data.schema))
        folder.write_json(folder.strategy, {"name": self.settings.strategy.name,
                                            "stages": [stage.to_json() for stage in self.stages],
                                            "groups": [group.name for group in self.backbone.groups]})
        if self.finding is not None:
            write_finding(self.finding, folder.files, folder.lr_find, folder.plots / "lr_find.png")

    def _announce(self) -> None:
        splits, summary = self.data.splits, parameter_summary(self.model)
        parts = [f"{self.backbone.source}: {summary['total']:,} parameters",
                 f"{len(self.backbone.groups)} layer groups",
                 f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test examples",
                 self.task.describe_schema(), f"precision {self.settings.train.mixed_precision}"]
        self.console.print("; ".join(part for part in parts if part))
        self.console.print(f"strategy {self.settings.strategy.name}: "
                           + " -> ".join(_stage_line(stage) for stage in self.stages))

    # --- the range test, and train and save ----------------------------------------------------------------

    def range_test(self, test: RangeTest, progress: bool = False) -> Finding:
        """The learning-rate range test (lr_find.py) on the stage this run is set up in; the run is left as it
        was."""
        optim, stage = self.settings.optim, self.stages[self.fit_state.stage]
        assert isinstance(optim.lr, float), "resolve the settings first"
        if stage.train == "head" and self.settings.strategy.probe == "exact":
            raise UserError(f"strategy {self.settings.strategy.name} trains only the head, which is solved exactly "
                            "(strategy.probe: exact): no rate to find. Give a number for optim.lr, or set "
                            "strategy.probe=sgd to train the head by epochs at a found rate.")
        trial = Trial(self.prepared, self.optimizer, self.accelerator, self.loaders.for_epoch().train, self.task.step,
                      optim.lr, optim.grad_clip, self.penalty)
        self.console.print(f"range test on stage {stage.name}: optim.lr from {test.start:g} to {test.end:g} over "
                           f"{test.steps} steps")
        return find(trial, test, stage.name, progress)

    def train(self, on_epoch: EpochHook | None = None) -> FitState:
        """Run the epochs left (none when a resumed run had already finished them). `on_epoch(epoch, row)` is
        called after each epoch's checkpoint is committed; what it raises stops the run there."""
        train, state = self.settings.train, self.fit_state
        if state.stopped_early or state.converged or state.epoch >= train.epochs:
            return state
        folder = self.run_folder
        if (self.task.evaluates_before or self.original is not None) and not folder.before.is_file():
            # the pre-trained model, for before/after: its test scores when the task has them before training
            before = self._scores(test=self.task.evaluates_before)
            folder.write_json(folder.before, before)
        trainee = Trainee(self.prepared, self.optimizer, self.accelerator, self.loop, self.loaders, self.batches,
                          self.task.step, self.task.validation_metrics, self.settings.optim.grad_clip, self.switch,
                          self.steps_per_epoch, self.checkpoints, self.rows, self.penalty, on_epoch=on_epoch)
        metric = str(train.early_stopping.metric)
        if self.settings.strategy.probe == "exact":
            trainee.probe = ExactProbe(self.task.step, self.task.validation_metrics, metric, self.task.metrics[metric],
                                       self.accelerator)
        tracking = bool(train.log_with)
        if tracking:
            # Setup ran in the hidden staging folder, since renamed to the run folder: log there.
            self.accelerator.project_configuration.logging_dir = str(folder.logs)
            # Named after the run folder: tensorboard writes RUN/logs/NAME/, so `tensorboard --logdir runs` tells
            # runs apart by name.
            self.accelerator.init_trackers(folder.path.name)
        try:
            fit(trainee, train, Monitor(metric, self.task.metrics[metric], train.early_stopping.patience),
                self.console)
        finally:
            if tracking:
                self.accelerator.end_training()  # flushes the event files, also when the run stops early
        self.prepared = trainee.model  # a stage change may have prepared the model again
        return state

    def save(self) -> RunResult:
        """Restore the best weights, score the test split, save the model folder, results and plots."""
        folder, state, task = self.run_folder, self.fit_state, self.task
        if not self.checkpoints.best.is_file():
            raise UserError(f"{self.checkpoints.best}: missing, so the run's best weights are lost; start a new run.")
        model = self.accelerator.unwrap_model(self.prepared)
        load_weights(model, self.checkpoints.best)
        if task.calibrates:  # on the validation features the cache holds, when the body is frozen
            task.calibrate(evaluate(self.prepared, self.loaders.for_epoch().val, task.step, self.accelerator))
        scores = self._scores(predictions=True)
        test = scores["test"]
        reached("save:tested", state.epoch)
        if self.accelerator.is_main_process:
            try:
                self._write_results(model, scores)
            except Exception as err:
                reason = disk_refusal(err, folder.path)
                if reason is None:
                    raise
                raise UserError(f"{folder.path}: cannot save the model ({reason}); the checkpoints are intact. Free "
                                f"space, then finish with: graftune train --resume {folder.path}") from None
        self.console.print(f"test {task.summary(test)}; best epoch {state.best_epoch}")
        if self.original is not None:
            headline = self.original.parent.task.headline
            if headline in scores["original"]:
                self.console.print(f"task A ({self.original.folder}): {headline} "
                                   f"{scores['original'][headline]:.4f} after training on this task")
        self.console.print(f"run saved in {folder.path}")
        return RunResult(folder.path, test, state.best_epoch, state.epoch)

    def _scores(self, test: bool = True, predictions: bool = False) -> dict[str, Any]:
        """The model's test results and report (with `test`; with `predictions` also each test example's row for
        test_predictions.jsonl), its score on the retained inputs (when given) and on task A of a chained run."""
        task, model = self.task, self.accelerator.unwrap_model(self.prepared)
        scores: dict[str, Any] = {}
        if test:
            evaluation = evaluate(self.prepared, self.test_loader, task.step, self.accelerator)
            scores["test"] = {**task.test_results(evaluation), **task.report(model, self.preprocess,
                                                                              self.data.splits.test)}
            if predictions:
                scores["predictions"] = task.test_predictions(evaluation, self.data.splits.test)
        if self.original is not None:
            scores["original"] = self.original.score(model.body, self.accelerator)
        if self.retain_loader is not None:
            scores["retained"] = task.test_results(evaluate(self.prepared, self.retain_loader, task.step,
                                                            self.accelerator))
        return scores

    def _write_results(self, model: GraftedModel, scores: dict[str, Any]) -> None:
        folder, state = self.run_folder, self.fit_state
        metric = str(self.settings.train.early_stopping.metric)
        self._save_model(model)
        reached("save:model", state.epoch)
        results: dict[str, Any] = {"test": scores["test"], "strategy": self.settings.strategy.name,
                                   "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                                   "stopped_early": state.stopped_early, "best_val": {metric: state.best_score}}
        if folder.before.is_file():
            before = folder.read_json(folder.before)
            if "test" in before:
                results["before"] = before["test"]
            if "retained" in scores:
                results["forgetting"] = {"before": before.get("retained"), "after": scores["retained"]}
            if self.original is not None and "original" in before:
                results["forgetting"] = self.original.report(before["original"], scores["original"])
        folder.write_json(folder.results, results)
        predictions = scores.get("predictions")
        if predictions is not None:
            folder.write_text(folder.predictions, "".join(json.dumps(row) + "\n" for row in predictions))
        plots = {"learning_curves.png": learning_curves_png(folder.read_metrics(), metric),
                 **self.task.plots(scores["test"])}
        for name, png in plots.items():
            folder.write_bytes(folder.plots / name, png)
        started = time.perf_counter()
        write_report(folder.path, read_inputs=True)  # the inputs are the data this run has just read
        self.console.print(f"report written to {folder.report} ({time.perf_counter() - started:.2f} s)")

    def _save_model(self, model: GraftedModel) -> None:
        """The model folder, written under a temporary name and renamed: never half of one."""
        files = self.run_folder.files
        for stale in self.run_folder.path.glob(".model.*.tmp"):  # left by a run killed while saving
            files.remove(stale)
        staged = files.temporary_folder(self.run_folder.path, "model")
        if self.settings.strategy.name == "lora":  # the adapter for sharing, merged weights for plain loading
            save_adapter(model, staged)
            merge(model)
        source = self.settings.model.source
        save_model_folder(staged, model, self.backbone, self.task, self.preprocess,
                          parent=source if source.startswith("run:") else None)
        files.replace_folder(staged, self.run_folder.model)


def find_lr(cfg: Config, console: Console, permissions: Permissions = Permissions(), test: RangeTest = RangeTest(),
            data: TaskData | None = None, progress: bool = False) -> Finding:
    """The learning-rate range test for `cfg` (`graftune lr-find`, `optim.lr: auto`), on a detached run set up
    in the stage that will train (lr_find.range_test_stage); `optim.lr: auto` tests around the default rate."""
    base = cfg.updated({"optim.lr": None}) if cfg.optim.lr == "auto" else cfg
    run = Run.detached(base, console, permissions, data, stage=range_test_stage)
    return run.range_test(test, progress)


def _resume_settings(saved: Config, overrides: list[str]) -> tuple[Config, dict[str, list[Any]]]:
    """The saved settings with the overrides a resume may make; any other override is refused by name."""
    changed_cfg = load_config(None, overrides, base=saved.model_dump(mode="json")) if overrides else saved
    before, after = saved.model_dump(mode="json"), changed_cfg.model_dump(mode="json")
    changed = {key: [value_at(before, key), value_at(after, key)] for key in changed_keys(before, after)}
    refused = [key for key in changed if key not in RESUMABLE]
    if refused:
        raise UserError(f"--resume continues a run with its own settings; {', '.join(refused)} cannot change (that "
                        f"would make it another run). A resume may change {', '.join(RESUMABLE)}; for anything else "
                        "start a new run with --out.")
    return changed_cfg, changed


def _trackers(names: list[str]) -> list[str]:
    """train.log_with, refused by name when a tracker's package is not installed (Accelerate would skip it)."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in names if name not in available]
    if missing:
        hint = "pip install 'graftune[tensorboard]'" if missing == ["tensorboard"] else \
            f"pip install {' '.join(missing)}"
        raise UserError(f"train.log_with: {', '.join(missing)} is not installed. Install it ({hint}) or remove it "
                        "from train.log_with.")
    return names


def _check_batchnorm_batches(model: GraftedModel, settings: Config) -> None:
    """BatchNorm cannot train on one example per batch: refuse batch size 1 where a BatchNorm would train."""
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.body.modules())
    policy, name = settings.freeze.batchnorm, settings.strategy.name
    trains = policy == "train" or (policy == "frozen" and name != "linear-probe")
    if settings.train.batch_size == 1 and has_batchnorm and trains:
        raise UserError("train.batch_size=1: the body's BatchNorm layers cannot train on one example per batch. "
                        "Use a batch size of 2 or more, freeze.batchnorm=affine-only, or strategy linear-probe.")


def _enable_checkpointing(model: GraftedModel, source: str) -> None:
    """Transformers' gradient checkpointing on the outermost model of the body that has it."""
    for module in model.body.modules():
        enable: Any = getattr(module, "gradient_checkpointing_enable", None)
        if callable(enable):
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise UserError(f"train.gradient_checkpointing: {source} has no gradient checkpointing (Transformers models "
                    "do). Remove the setting.")


def _stage_line(stage: Stage) -> str:
    length = "rest" if stage.epochs is None else f"{stage.epochs} ep"
    plateau = ", until plateau" if stage.plateau_patience else ""
    return f"{stage.name} (train {stage.train}, {length}{plateau})"
