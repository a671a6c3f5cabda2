"""One fine-tuning run, for any task: set up one resource at a time, train, save (the shape of torchtune's
recipes). The path does not branch on the task; the task plugs in through graftune/tasks/base.py.

    run = Run.start(cfg, "runs/news", console)     # or Run.resume("runs/news", console)
    run.train()
    result = run.save()

`setup` reads the data, loads the backbone, resolves the settings, builds the model, the optimizer and
schedule, the loaders, the accelerator and the feature cache, and, when resuming, loads the last
checkpoint: resume is handled there and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from rich.console import Console
from torch.utils.data import DataLoader

from graftune.artifacts import save_model_folder
from graftune.backbones import Backbone
from graftune.checkpoint import checkpoint_state, has_checkpoint, load_checkpoint
from graftune.config import Config, load_config
from graftune.data.inputs import input_encoder
from graftune.data.readers import read_unlabelled
from graftune.errors import UserError
from graftune.features import EpochLoaders, FeatureFeeds, FeatureStore, Split, default_cache_dir
from graftune.fit import FitState, Monitor, Trainee, fit
from graftune.freezing import frozen_parameter_names
from graftune.grafted import GraftedModel, parameter_summary
from graftune.loaders import eval_batches, eval_loader, input_lengths
from graftune.loop import evaluate
from graftune.lora import add_lora, merge, save_adapter
from graftune.plots import learning_curves
from graftune.regularize import AnchorPenalty, anchored, fisher_diagonal
from graftune.rundir import RunDir
from graftune.sampling import ShuffledBatches, sorted_batches
from graftune.settings import load_configured_backbone, resolve_settings, run_preprocess
from graftune.staging import StageSwitch
from graftune.strategies import Stage, plan, trainable_group_count
from graftune.tasks import get_task
from graftune.tasks.base import Task, TaskData
from graftune.weights import load_weights


@dataclass
class RunResult:
    """What `graftune.train` returns: the run folder and the test metrics."""

    dir: Path
    test: dict[str, Any]
    best_epoch: int
    epochs_run: int


def train_run(cfg: Config, out: str | Path, overwrite: bool = False, console: Console | None = None) -> RunResult:
    """Fine-tune as `cfg` says and write everything into the run folder `out`."""
    run = Run.start(cfg, out, overwrite, console or Console(stderr=True))
    run.train()
    return run.save()


def resume_run(out: str | Path, console: Console | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own resolved settings."""
    run = Run.resume(out, console or Console(stderr=True))
    run.train()
    return run.save()


class Run:
    """A run folder and everything one training in it needs (see the module docstring)."""

    def __init__(self, folder: RunDir, console: Console) -> None:
        self.folder, self.console = folder, console

    @classmethod
    def start(cls, cfg: Config, out: str | Path, overwrite: bool, console: Console) -> Run:
        folder = RunDir(out)
        folder.create(overwrite=overwrite)
        run = cls(folder, console)
        run.setup(cfg, resume=False)
        return run

    @classmethod
    def resume(cls, out: str | Path, console: Console) -> Run:
        folder = RunDir(out)
        if not folder.config.is_file():
            raise UserError(f"{folder.path}: no config.yaml here; not a graftune run to resume.")
        run = cls(folder, console)
        run.setup(load_config(folder.config), resume=True)
        return run

    # --- setup, one resource at a time ------------------------------------------------------------------

    def setup(self, cfg: Config, resume: bool) -> None:
        set_seed(cfg.train.seed)
        self._setup_data(cfg)
        self._setup_backbone(cfg)
        self._setup_model()
        self._setup_state(resume)
        self._setup_loaders()
        self._setup_accelerator()
        self._setup_regularization()
        self._setup_cache()
        self._announce()
        if resume:
            self._load_checkpoint()
        else:
            self._record()

    def _setup_data(self, cfg: Config) -> None:
        self.task_type: type[Task] = get_task(cfg.task)
        self.data: TaskData = self.task_type.read_data(cfg.data)

    def _setup_backbone(self, cfg: Config) -> None:
        """Load the backbone, then decide every default of the run for it, once."""
        backbone = load_configured_backbone(cfg)
        if backbone.modality != self.task_type.modality:
            raise UserError(f"model.source: '{cfg.model.source}' is a {backbone.modality} model, but the task "
                            f"'{cfg.task}' reads {self.task_type.modality}s. Choose a {self.task_type.modality} model.")
        self.settings = resolve_settings(cfg, backbone, self.task_type)
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

    def _setup_state(self, resume: bool) -> None:
        """The loop state (a checkpoint's when resuming) and the optimizer of its stage."""
        self.resuming = resume and has_checkpoint(self.folder.last)
        self.state = FitState(**checkpoint_state(self.folder.last)) if self.resuming else FitState()
        self.optimizer: Any = self.switch.replay(self.state.stage)  # Accelerate wraps it in setup_accelerator

    def _setup_loaders(self) -> None:
        task, train = self.task, self.settings.train
        splits, workers = self.data.splits, int(train.num_workers)
        self.items = {name: task.items(part) for name, part in
                      (("train", splits.train), ("val", splits.val), ("test", splits.test))}
        self.lengths = input_lengths(self.items["train"], self.preprocess)
        self.batches = ShuffledBatches(train.batch_size, train.seed, size=len(self.items["train"]),
                                       lengths=self.lengths if self.settings.data.group_by_length else None)
        self.train_loader: Any = DataLoader(self.items["train"], batch_sampler=self.batches,  # type: ignore[arg-type]
                                            collate_fn=task.training_collate(self.preprocess), num_workers=workers)
        self.val_batches = eval_batches(self.items["val"], self.preprocess, train.eval_batch_size)
        collate = task.collate(self.preprocess)
        self.val_loader: Any = eval_loader(self.items["val"], collate, self.preprocess, train.eval_batch_size,
                                           workers, self.val_batches)
        self.test_loader: Any = eval_loader(self.items["test"], collate, self.preprocess, train.eval_batch_size,
                                            workers)

    def _setup_accelerator(self) -> None:
        # Accelerate keeps one state per process and refuses a second Accelerator with another precision;
        # each graftune run owns its settings, so the run-level state is cleared (the distributed
        # PartialState, which holds the process group, is kept).
        AcceleratorState._reset_state()
        train = self.settings.train
        self.accelerator = Accelerator(mixed_precision=train.mixed_precision,
                                       gradient_accumulation_steps=train.grad_accum)
        self.prepared, self.optimizer, self.train_loader, self.val_loader, self.test_loader = self.accelerator.prepare(
            self.model, self.optimizer, self.train_loader, self.val_loader, self.test_loader)
        self.steps_per_epoch = -(-len(self.train_loader) // train.grad_accum)
        self.scheduler = self.switch.schedule(self.state.stage, self.optimizer.optimizer, self.state.stage_start,
                                              self.steps_per_epoch)

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

    def _cached_views(self) -> int:
        """Training views to cache: one plain view, K augmented ones, or 0 (train live) when inputs are mixed."""
        if self.task.mixes_inputs:
            return 0
        return self.settings.cache.views if self.task.augment else 1

    def _load_checkpoint(self) -> None:
        if not self.resuming:  # stopped before its first checkpoint: it starts from epoch 1
            return
        load_checkpoint(self.folder.last, self.accelerator.unwrap_model(self.prepared), self.optimizer,
                        self.scheduler)
        self.folder.truncate_metrics(self.state.epoch)
        self.console.print(f"resuming after epoch {self.state.epoch}, in stage {self.stages[self.state.stage].name}")

    def _record(self) -> None:
        """What a new run writes before its first epoch: the resolved settings, the split, the strategy."""
        data = self.settings.data
        self.folder.config.write_text(self.settings.to_yaml())
        seed = data.split.seed if data.val is None else None
        self.folder.write_json(self.folder.splits, self.data.splits.record(seed))
        self.folder.write_json(self.folder.strategy, {"name": self.settings.strategy.name,
                                                      "stages": [stage.to_json() for stage in self.stages],
                                                      "groups": [group.name for group in self.backbone.groups]})

    def _announce(self) -> None:
        splits, summary = self.data.splits, parameter_summary(self.model)
        parts = [f"{self.backbone.source}: {summary['total']:,} parameters",
                 f"{len(self.backbone.groups)} layer groups",
                 f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test examples",
                 self.task.describe_schema(), f"precision {self.settings.train.mixed_precision}"]
        self.console.print("; ".join(part for part in parts if part))
        self.console.print(f"strategy {self.settings.strategy.name}: "
                           + " -> ".join(_stage_line(stage) for stage in self.stages))

    # --- train and save ---------------------------------------------------------------------------------

    def train(self) -> FitState:
        """Run the epochs left (none when a resumed run had already finished them)."""
        train = self.settings.train
        if not self.state.stopped_early and self.state.epoch < train.epochs:
            trainee = Trainee(self.prepared, self.optimizer, self.scheduler, self.accelerator, self.loaders,
                              self.batches, self.task.step, self.task.validation_metrics,
                              self.settings.optim.grad_clip, self.switch, self.steps_per_epoch, self.penalty)
            metric = str(train.early_stopping.metric)
            monitor = Monitor(metric, self.task.metrics[metric], train.early_stopping.patience)
            self.state = fit(trainee, train, monitor, self.folder, self.state, self.console)
            self.prepared = trainee.model  # a stage change may have prepared the model again
        return self.state

    def save(self) -> RunResult:
        """Restore the best weights, score the test split, save the model folder, results and plots."""
        folder, state, task = self.folder, self.state, self.task
        model = self.accelerator.unwrap_model(self.prepared)
        load_weights(model, folder.best / "model.safetensors")
        test = task.test_results(evaluate(self.prepared, self.test_loader, task.step, self.accelerator))
        metric = str(self.settings.train.early_stopping.metric)
        if self.accelerator.is_main_process:
            source = self.settings.model.source
            if self.settings.strategy.name == "lora":  # the adapter for sharing, merged weights for plain loading
                save_adapter(model, folder.model)
                merge(model)
            save_model_folder(folder.model, model, self.backbone, task, self.preprocess,
                              parent=source if source.startswith("run:") else None)
            folder.write_json(folder.results, {"test": test, "strategy": self.settings.strategy.name,
                                               "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                                               "stopped_early": state.stopped_early,
                                               "best_val": {metric: state.best_score}})
            folder.plots.mkdir(exist_ok=True)
            learning_curves(folder.read_metrics(), metric, folder.plots / "learning_curves.png")
            task.plots(test, folder.plots)
        self.console.print(f"test {task.summary(test)}; best epoch {state.best_epoch}")
        self.console.print(f"run saved in {folder.path}")
        return RunResult(folder.path, test, state.best_epoch, state.epoch)


def _stage_line(stage: Stage) -> str:
    length = "rest" if stage.epochs is None else f"{stage.epochs} ep"
    plateau = ", until plateau" if stage.plateau_patience else ""
    return f"{stage.name} (train {stage.train}, {length}{plateau})"
