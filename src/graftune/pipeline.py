"""One fine-tuning run from a validated config: data, backbone, surgery, freezing, training, test.

Each step hands plain objects (examples, a module, parameter groups, loaders) to the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from graftune.artifacts import load_weights, save_model_folder
from graftune.backbones import Backbone, ImagePreprocess, TextPreprocess, load_backbone
from graftune.backbones.base import Preprocess
from graftune.checkpoint import checkpoint_state, has_checkpoint, load_checkpoint
from graftune.config import Config, load_config
from graftune.data.readers import Example, read_examples, read_unlabelled, split_folders
from graftune.data.splits import Splits, check_labels, stratified_split
from graftune.errors import UserError
from graftune.evaluation import classification_metrics
from graftune.features import FeatureFeeds, FeatureStore, Split, default_cache_dir
from graftune.fit import FitState, Trainee, fit
from graftune.freezing import frozen_parameter_names
from graftune.hardware import resolve_precision, resolve_workers
from graftune.loop import predict_loader
from graftune.lora import add_lora, merge, save_adapter
from graftune.plots import confusion_matrix_plot, learning_curves
from graftune.regularize import AnchorPenalty, anchored, fisher_diagonal, mixing_collate
from graftune.regularize import check as check_regularization
from graftune.rundir import RunDir
from graftune.sampling import FixedBatches, ShuffledBatches, sorted_batches, token_lengths
from graftune.staging import StageSwitch
from graftune.strategies import Stage, plan, resolve_name, trainable_group_count
from graftune.surgery import FineTuneModel, build_head, parameter_summary, resolve_pooling
from graftune.tasks import Task, get_task


@dataclass
class RunResult:
    """What `graftune.train` returns: the run folder and the test metrics."""

    dir: Path
    test: dict[str, Any]
    best_epoch: int
    epochs_run: int


def train_run(cfg: Config, out: str | Path, overwrite: bool = False, console: Console | None = None) -> RunResult:
    """Fine-tune as `cfg` says and write everything into the run folder `out`."""
    run = RunDir(out)
    run.create(overwrite=overwrite)
    return _execute(cfg, run, resume=False, console=console or Console(stderr=True))


def resume_run(out: str | Path, console: Console | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own resolved config."""
    run = RunDir(out)
    if not run.config.is_file():
        raise UserError(f"{run.path}: no config.yaml here; not a graftune run to resume.")
    return _execute(load_config(run.config), run, resume=True, console=console or Console(stderr=True))


def _execute(cfg: Config, run: RunDir, resume: bool, console: Console) -> RunResult:
    set_seed(cfg.train.seed)
    task = get_task(cfg.task)
    splits = load_splits(cfg, task)
    labels = splits.labels()
    backbone = prepare_backbone(cfg, task)
    resolve_defaults(cfg, backbone)
    if not resume:
        run.config.write_text(cfg.to_yaml())
        run.write_json(run.splits, splits.record(cfg.data.split.seed if cfg.data.val is None else None))
    model = graft(cfg, backbone, len(labels))
    never = frozen_parameter_names(cfg.freeze.body, backbone.groups, backbone.body)
    stages = plan(cfg, trainable_group_count(backbone.groups, never))
    switch = StageSwitch(model, backbone.groups, stages, never, cfg.freeze.batchnorm, cfg.optim.weight_decay,
                         0.0 if anchored(cfg.regularize) else None, cfg.train.epochs)
    resuming = resume and has_checkpoint(run.last)
    state = FitState(**checkpoint_state(run.last)) if resuming else FitState()
    optimizer = switch.replay(state.stage)
    summary = parameter_summary(model)
    console.print(f"{backbone.source}: {summary['total']:,} parameters; {len(backbone.groups)} layer groups; "
                  f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test examples, "
                  f"{len(labels)} classes; precision {cfg.train.mixed_precision}")
    console.print(f"strategy {cfg.strategy.name}: " + " -> ".join(_stage_line(stage) for stage in stages))
    if not resume:
        run.write_json(run.strategy, {"name": cfg.strategy.name, "stages": [stage.to_json() for stage in stages],
                                      "groups": [group.name for group in backbone.groups]})
    trainee, test_loader = _prepare_training(cfg, task, backbone, model, splits, labels, optimizer, switch, state,
                                             console)
    if resuming:
        load_checkpoint(run.last, trainee.accelerator.unwrap_model(trainee.model), trainee.optimizer,
                        trainee.scheduler)
        run.truncate_metrics(state.epoch)
        console.print(f"resuming after epoch {state.epoch}, in stage {stages[state.stage].name}")
    if not state.stopped_early and state.epoch < cfg.train.epochs:
        state = fit(trainee, cfg.train, run, state, console)
    return _finish(cfg, run, trainee, test_loader, backbone, labels, state, console)


def _stage_line(stage: Stage) -> str:
    length = "rest" if stage.epochs is None else f"{stage.epochs} ep"
    plateau = ", until plateau" if stage.plateau_patience else ""
    return f"{stage.name} (train {stage.train}, {length}{plateau})"


def load_splits(cfg: Config, task: Task) -> Splits:
    """Read train (and val/test, when given) and split what is missing, stratified by label."""
    data = cfg.data

    def read(path: str | Path) -> list[Example]:
        return read_examples(path, task.modality, data.format, data.input_column, data.label_column)

    folders = split_folders(Path(data.train)) if data.format in ("auto", "folder") else None
    paths: dict[str, str | Path | None] = {"train": data.train, "val": data.val, "test": data.test}
    if folders:
        paths = {"train": folders["train"], "val": data.val or folders.get("val"),
                 "test": data.test or folders.get("test")}
    train = read(paths["train"])  # type: ignore[arg-type]
    val = read(paths["val"]) if paths["val"] else None
    test = read(paths["test"]) if paths["test"] else None
    seed, val_frac, test_frac = data.split.seed, data.split.val, data.split.test
    if val is None and test is None:
        splits = stratified_split(train, val_frac, test_frac, seed)
    elif val is None:
        part = stratified_split(train, val_frac, 0.0, seed)
        splits = Splits(part.train, part.val, test or [])
    elif test is None:
        part = stratified_split(train, 0.0, test_frac, seed)
        splits = Splits(part.train, val, part.test)
    else:
        splits = Splits(train, val, test)
    if not splits.val:
        raise UserError("data: no validation examples. Give data.val or set data.split.val above 0.")
    check_labels(splits, {k: str(v) for k, v in paths.items() if v})
    return splits


def prepare_backbone(cfg: Config, task: Task) -> Backbone:
    backbone = load_backbone(cfg.model.source, weights=cfg.model.weights, kwargs=cfg.model.kwargs,
                             replace=cfg.head.replace, cut_at=cfg.head.cut_at, image_size=cfg.data.image_size,
                             trust_remote_code=cfg.model.trust_remote_code)
    if backbone.modality != task.modality:
        raise UserError(f"model.source: '{cfg.model.source}' is a {backbone.modality} model, but the task "
                        f"'{cfg.task}' needs a {task.modality} model.")
    if isinstance(backbone.preprocess, TextPreprocess):
        backbone.preprocess.max_length = min(cfg.data.max_length, _token_limit(backbone))
    return backbone


def _token_limit(backbone: Backbone) -> int:
    assert isinstance(backbone.preprocess, TextPreprocess)
    limit = backbone.preprocess.tokenizer.model_max_length
    return int(limit) if limit < 100_000 else 512


def resolve_defaults(cfg: Config, backbone: Backbone) -> None:
    """Name the strategy and fill learning rates left unset, then refuse combinations that do nothing.

    A head on a frozen body gets 1e-2 (a linear probe is a convex problem that tolerates, and needs,
    large steps); a body that trains gets 5e-5 (text) or 3e-4 (images) and its
    head 20x that, capped at 1e-3. Adapters and biases (lora, bitfit) learn from scratch-like
    starting points and take larger rates: 5e-4 and 1e-3.
    """
    name = resolve_name(cfg)
    _check_strategy(cfg, name)
    check_regularization(cfg, name, backbone.modality)
    cfg.strategy.name = name  # type: ignore[assignment]
    if cfg.optim.lr is None:
        body_lr = {"linear-probe": 1e-2, "bitfit": 1e-3, "lora": 5e-4}.get(name)
        cfg.optim.lr = body_lr or (5e-5 if backbone.modality == "text" else 3e-4)
    if cfg.optim.head_lr is None:
        cfg.optim.head_lr = cfg.optim.lr if name == "linear-probe" else min(1e-3, max(cfg.optim.lr, cfg.optim.lr * 20))
    if cfg.head.pooling == "auto":
        cfg.head.pooling = backbone.default_pooling  # type: ignore[assignment]
    cfg.train.mixed_precision = resolve_precision(cfg.train.mixed_precision)  # type: ignore[assignment]
    cfg.train.num_workers = resolve_workers(cfg.train.num_workers, backbone.modality)


def _check_strategy(cfg: Config, name: str) -> None:
    body = str(cfg.freeze.body)
    if body == "all" and name != "linear-probe":
        raise UserError(f"strategy {name} trains the body, but freeze.body=all keeps all of it frozen. "
                        "Use strategy linear-probe, or freeze fewer layers.")
    if name == "partial" and body == "none":
        raise UserError("strategy partial needs freeze.body: the number K of layer groups to keep frozen "
                        "(or name patterns), for example --freeze 4.")


def graft(cfg: Config, backbone: Backbone, num_classes: int) -> FineTuneModel:
    """New head on the body (with LoRA adapters for the lora strategy); the stages decide what trains."""
    pooling = resolve_pooling(cfg.head, backbone)
    if pooling == "avgmax" and backbone.feature_rank == 2:
        raise UserError(f"head.pooling=avgmax: {backbone.source} already gives one vector per example; "
                        "use head.pooling=none (or cut earlier with head.cut_at).")
    if cfg.strategy.name == "lora":
        add_lora(backbone, cfg.strategy.lora)
    head = build_head(cfg.head, backbone.feature_dim, num_classes, pooling)
    return FineTuneModel(backbone.body, pooling, head, cfg.freeze.batchnorm)


def _prepare_training(cfg: Config, task: Task, backbone: Backbone, model: FineTuneModel, splits: Splits,
                      labels: list[str], optimizer: torch.optim.Optimizer, switch: StageSwitch,
                      state: FitState, console: Console) -> tuple[Trainee, Any]:
    index = {label: i for i, label in enumerate(labels)}
    workers = int(cfg.train.num_workers)  # resolve_defaults made it a number
    train_items = _items(splits.train, index)
    lengths = _lengths(backbone.preprocess, train_items)
    batches = ShuffledBatches(cfg.train.batch_size, cfg.train.seed, size=len(train_items),
                              lengths=lengths if cfg.data.group_by_length else None)
    augment = cfg.data.augment and isinstance(backbone.preprocess, ImagePreprocess)
    collate = task.make_collate(backbone.preprocess, augment)
    reg = cfg.regularize
    if reg.mixup or reg.cutmix:
        collate = mixing_collate(collate, len(labels), reg.mixup, reg.cutmix)
    train_loader: Any = DataLoader(train_items, batch_sampler=batches, collate_fn=collate,  # type: ignore[arg-type]
                                   num_workers=workers)
    val_batches = eval_batches(backbone, splits.val, cfg.train.eval_batch_size)
    val_loader = eval_loader(task, backbone, splits.val, index, cfg.train.eval_batch_size, workers,
                             val_batches)
    test_loader = eval_loader(task, backbone, splits.test, index, cfg.train.eval_batch_size, workers)
    # Accelerate keeps one state per process and refuses a second Accelerator with another precision;
    # each graftune run owns its settings, so the run-level state is cleared (the distributed
    # PartialState, which holds the process group, is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                              gradient_accumulation_steps=cfg.train.grad_accum)
    prepared, wrapped, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader)
    steps_per_epoch = -(-len(train_loader) // cfg.train.grad_accum)
    scheduler = switch.schedule(state.stage, optimizer, state.stage_start, steps_per_epoch)
    penalty = None
    if anchored(reg):  # anchors are the pre-trained weights: taken before a checkpoint is loaded
        fisher = _retain_fisher(cfg, task, backbone, model) if reg.ewc else None
        penalty = AnchorPenalty(model, reg, fisher)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    feeds = None
    if cfg.cache.features:
        feeds = FeatureFeeds(
            model, accelerator, lambda aug: task.make_collate(backbone.preprocess, aug),
            Split(train_items, sorted_batches(lengths, cfg.train.eval_batch_size, len(train_items))),
            Split(_items(splits.val, index), val_batches),
            batches, views=_cached_views(cfg, augment), augment=augment,
            store=FeatureStore(default_cache_dir(cfg.cache.dir), console), preprocess=backbone.preprocess,
            modality=task.modality, seed=cfg.train.seed, num_workers=workers, console=console)
    trainee = Trainee(prepared, wrapped, scheduler, accelerator, train_loader, val_loader, batches, loss_fn,
                      cfg.optim.grad_clip, switch, steps_per_epoch, penalty, feeds)
    return trainee, test_loader


def _cached_views(cfg: Config, augment: bool) -> int:
    """Training views to cache: one plain view, K augmented ones, or 0 (train live) when inputs are mixed."""
    if cfg.regularize.mixup or cfg.regularize.cutmix:
        return 0
    return cfg.cache.views if augment else 1


def _items(examples: list[Example], index: dict[str, int]) -> list[tuple[str, int]]:
    return [(e.input, index[e.label]) for e in examples]


def _lengths(preprocess: Preprocess, items: list[tuple[str, int]]) -> list[int] | None:
    """Tokens per text (for batching by length); None for images, which all have one size."""
    return token_lengths([x for x, _ in items], preprocess) if isinstance(preprocess, TextPreprocess) else None


def _retain_fisher(cfg: Config, task: Task, backbone: Backbone, model: FineTuneModel) -> dict[str, torch.Tensor]:
    assert cfg.regularize.retain is not None
    inputs = read_unlabelled(cfg.regularize.retain, task.modality)[:cfg.regularize.retain_examples]
    loader: DataLoader[Any] = DataLoader([(x, 0) for x in inputs], batch_size=8,  # type: ignore[arg-type]
                                         collate_fn=task.make_collate(backbone.preprocess, False))
    return fisher_diagonal(model, loader, seed=cfg.train.seed)


def eval_loader(task: Task, backbone: Backbone, examples: list[Example], index: dict[str, int],
                batch_size: int, num_workers: int = 0, batches: FixedBatches | None = None) -> DataLoader[Any]:
    """Unshuffled, unaugmented batches for validation, test and `graftune evaluate`; texts come
    longest first, so batches hold texts of similar length and little padding."""
    batches = batches if batches is not None else eval_batches(backbone, examples, batch_size)
    return DataLoader(_items(examples, index), batch_sampler=batches,  # type: ignore[arg-type]
                      collate_fn=task.make_collate(backbone.preprocess, False), num_workers=num_workers)


def eval_batches(backbone: Backbone, examples: list[Example], batch_size: int) -> FixedBatches:
    items = [(e.input, 0) for e in examples]
    return sorted_batches(_lengths(backbone.preprocess, items), batch_size, len(items))


def _finish(cfg: Config, run: RunDir, trainee: Trainee, test_loader: Any, backbone: Backbone, labels: list[str],
            state: FitState, console: Console) -> RunResult:
    """Restore the best weights, score the test split, save the model folder, results and plots."""
    model = trainee.accelerator.unwrap_model(trainee.model)
    load_weights(model, run.best / "model.safetensors")
    test = classification_metrics(predict_loader(trainee.model, test_loader, trainee.accelerator), labels)
    if trainee.accelerator.is_main_process:
        parent = cfg.model.source if cfg.model.source.startswith("run:") else None
        if cfg.strategy.name == "lora":  # the adapter for sharing, merged weights for plain loading
            save_adapter(model, run.model)
            merge(model)
        save_model_folder(run.model, model, backbone, labels, cfg, parent)
        rows = run.read_metrics()
        run.write_json(run.results, {"test": test, "strategy": cfg.strategy.name, "best_epoch": state.best_epoch,
                                     "epochs_run": state.epoch,
                                     "stopped_early": state.stopped_early,
                                     "best_val": {cfg.train.early_stopping.metric: state.best_score}})
        run.plots.mkdir(exist_ok=True)
        learning_curves(rows, run.plots / "learning_curves.png")
        confusion_matrix_plot(test["confusion_matrix"], labels, run.plots / "confusion_matrix.png")
    console.print(f"test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  "
                  f"({test['examples']} examples; best epoch {state.best_epoch})")
    console.print(f"run saved in {run.path}")
    return RunResult(run.path, test, state.best_epoch, state.epoch)


def results_of(run: RunDir) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run.results.read_text())
    return data
