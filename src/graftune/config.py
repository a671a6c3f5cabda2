"""Run configuration: pydantic models, YAML loading, `--set a.b=c` overrides, clear errors.

A config names what to fine-tune (`model.source`), on what (`data`), how the new head looks (`head`),
what stays frozen (`freeze`), and how to train (`optim`, `train`). Every key has a default except the
task, the model source and the training data.

A `Config` is immutable: the user's is never changed. The run resolves every `auto` and unset default
once, after the backbone loads, into a new `Config` (graftune/settings.py), the one written to
RUN/config.yaml.

Example:
    >>> cfg = load_config("run.yaml", overrides=["train.epochs=5", "optim.lr=1e-4"])
"""

from __future__ import annotations

import codecs
import copy
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from graftune.errors import UserError, closest
from graftune.tasks import task_names

# A config is a few kB; these bound what a hostile or mistaken file can cost before it is refused.
MAX_CONFIG_BYTES = 1_000_000
MAX_ALIASED_VALUES = 10_000  # values that YAML aliases (*name) may repeat in one document, in all
# Accelerate's experiment trackers (accelerate.utils.LoggerType, without "all", which would pick whatever happens to
# be installed); each needs its own package, checked when a run starts.
TRACKERS = ("tensorboard", "aim", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored; values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode reads true as 1, so `batch_size: true` would train with batches of one: a number
        field (or list of numbers) that does not also take true/false refuses them."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        given = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in given) and _takes_numbers(annotation) and not _takes_bool(annotation):
            raise ValueError("expected a number, not true or false")
        return value


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types of a union (int | None -> int, None), or the annotation alone."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field's type has int or float in it, itself or as the items of a list."""
    for member in _members(annotation):
        items = typing.get_args(member)[0] if typing.get_origin(member) is list else None
        if member in (int, float) or (items is not None and _takes_numbers(items)):
            return True
    return False


def _takes_bool(annotation: Any) -> bool:
    return bool in _members(annotation)


class ModelConfig(Section):
    source: str = Field(description="hf:ID_OR_DIR, timm:NAME, torchvision:NAME, module:pkg.mod:factory, "
                                    "run:DIR, or a preset (minilm-l6, efficientnet-lite0)")
    weights: str | None = Field(None, description="weights file for module:, timm: and torchvision: sources "
                                                  "(.safetensors or a torch file, read with weights_only=True)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a module: factory, "
                                                                     "timm.create_model or torchvision's get_model")
    code_path: str | None = Field(None, description="folder to import a module: factory from before the Python "
                                                    "path; recorded by the run, so it rebuilds without PYTHONPATH")
    trust_remote_code: bool = False


class SplitConfig(Section):
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = 0


class DataConfig(Section):
    train: str
    val: str | None = None
    test: str | None = None
    format: Literal["auto", "folder", "csv", "jsonl"] = "auto"
    input_column: str | None = Field(None, description="column with the text or image path (auto: text/image/path)")
    label_column: str = "label"
    label_separator: str = Field("|", min_length=1, description="multi-label tasks: what separates the labels of "
                                                                "one example in a CSV cell ('business|politics')")
    encoding: str = Field("utf-8", description="text encoding of .txt, CSV and JSONL files (latin-1, cp1252, ...)")
    split: SplitConfig = SplitConfig()
    max_length: int = Field(256, gt=0, description="token limit for text backbones")
    image_size: int | None = Field(None, gt=0, description="input size; default: the backbone's own")
    augment: bool | Literal["auto"] = Field(
        "auto", description="random resized crop + horizontal flip on training images; for video, one crop per clip "
                            "and temporal jitter (see video.flip); auto: on, but off for regression, whose target a "
                            "flip or a crop can change (an angle, a position, a count)")
    skip_unreadable: bool = Field(False, description="leave out image and video files that do not decode (counted "
                                                     "in a warning) instead of stopping before training")
    group_by_length: bool = Field(True, description="text: training batches of similar lengths (shuffled "
                                                    "buckets), so little compute goes to padding")
    form: Literal["auto", "corpus", "pairs"] = Field(
        "auto", description="language models: a corpus of documents, or prompt/completion pairs; auto: pairs when "
                            "the table has both columns")
    block_size: int = Field(256, ge=8, description="language models: tokens per training sequence")
    prompt_column: str = Field("prompt", description="language-model pairs: the column of prompts")
    completion_column: str = Field("completion", description="language-model pairs: the column of completions")
    chat_template: bool | Literal["auto"] = Field(
        "auto", description="language-model pairs: render with the tokenizer's chat template (true/false); auto: "
                            "when it has one")
    document_separator: str | None = Field(
        None, description="a one-file corpus: the line between documents (default: an empty line); a folder: one "
                          "document per .txt file")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding '{value}' (for example utf-8, latin-1, cp1252)") from None
        return value


class HeadConfig(Section):
    pooling: Literal["auto", "mean", "max", "cls", "avg", "avgmax", "none"] = "auto"
    hidden: list[int] = Field(default_factory=list, description="widths of hidden layers before the output")
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    replace: str | None = Field(None, description="name of the classifier module to remove (auto when unset)")
    cut_at: str | None = Field(None, description="use this layer's output as the features; drop what follows")


class FreezeConfig(Section):
    body: str | int | list[str] = Field(
        "none", description="all | none | K (first K layer groups) | list of parameter-name regexes; "
                            "what the strategy never trains")
    batchnorm: Literal["frozen", "train", "affine-only"] = Field(
        "frozen", description="frozen: BatchNorm in frozen layers keeps statistics and affine; train: every "
                              "BatchNorm updates its statistics; affine-only: statistics fixed, affine trains")

    @field_validator("body")
    @classmethod
    def _parse_body(cls, value: str | int | list[str]) -> str | int | list[str]:
        """Read the spec once, here: 'all', 'none', '3' -> 3, 'a,b' -> ['a', 'b'] (regexes)."""
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                value = int(text)
            elif text not in ("all", "none"):
                return [part for part in text.split(",") if part]
            else:
                return text
        if isinstance(value, int) and value < 0:
            raise ValueError("the number of frozen layer groups cannot be negative")
        return "none" if value == 0 else value  # no group frozen: the same as none, and named so


Schedule = Literal["cosine", "linear", "constant", "one-cycle", "slanted-triangular"]


class StageConfig(Section):
    """One stage of a custom strategy."""

    name: str | None = None
    epochs: int | None = Field(None, ge=1, description="epochs of this stage; null: the rest of train.epochs")
    until_plateau: bool = Field(False, description="end the stage early when validation stops improving")
    train: Literal["head", "all", "bias"] | int = Field(
        "all", description="head | all | bias (biases and head) | K (the top K layer groups and the head)")
    lr_scale: float = Field(1.0, gt=0, description="multiplies optim.lr and optim.head_lr in this stage")
    schedule: Schedule | None = Field(None, description="default: optim.schedule")


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: list[str] | None = Field(None, description="module-name regexes; default: every linear layer "
                                                        "(1x1 convolutions in a CNN)")


class StrategyConfig(Section):
    """Which layer groups train, when, and at what rate (see `graftune strategies`)."""

    name: Literal["auto", "linear-probe", "partial", "full", "gradual", "discriminative", "lp-ft", "lora",
                  "bitfit", "fastai", "ulmfit", "custom"] = Field(
        "auto", description="auto: linear-probe, full or partial, from freeze.body")
    lr_decay: float | None = Field(None, gt=0, le=1, description="layer-wise rate factor per group down the "
                                                               "depth (discriminative); combinable with any")
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing one more group")
    probe_epochs: int | None = Field(None, ge=1, description="lp-ft, fastai: most epochs of the head-only stage")
    plateau_patience: int = Field(1, ge=1, description="epochs without improvement that end an until_plateau "
                                                       "stage")
    probe: Literal["auto", "exact", "sgd"] = Field(
        "auto", description="how a stage that trains only the head trains: exact (solved to the optimum on the "
                            "cached features, L2 chosen on validation; needs a linear head), or sgd (epochs of the "
                            "optimizer); auto: exact where it applies")
    lora: LoraConfig = LoraConfig()
    stages: list[StageConfig] | None = Field(None, description="custom stages (name: custom)")


class RegularizeConfig(Section):
    """Pulls toward what the model knew, and against overfitting small data."""

    l2sp: float = Field(0.0, ge=0, description="L2-SP strength: distance of the body to its pre-trained weights")
    l2sp_head: float = Field(0.01, ge=0, description="with L2-SP: plain L2 on the new head (beta)")
    ewc: float = Field(0.0, ge=0, description="EWC strength; needs regularize.retain")
    retain: str | None = Field(None, description="inputs of the original task (folder, CSV/JSONL, text file) "
                                                 "to estimate EWC's Fisher information")
    retain_examples: int = Field(256, ge=1, description="how many retain inputs to use for the Fisher")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(a, a) parameter for images; 0: off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(a, a) parameter for images; 0: off")


class OptimConfig(Section):
    lr: float | Literal["auto"] | None = Field(
        None, description="body learning rate; default depends on task and freezing; auto: the learning-rate range "
                          "test picks it when the run starts (see graftune lr-find)")
    head_lr: float | None = Field(None, gt=0,
                                  description="head learning rate; default: 20x lr capped at 1e-3, lr if body frozen")
    weight_decay: float = Field(0.01, ge=0)
    schedule: Schedule = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)

    @field_validator("lr", mode="before")
    @classmethod
    def _rate_or_auto(cls, value: Any) -> Any:
        """One message naming what is accepted, not one per member of the union."""
        if value is None or value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a positive number or 'auto', not {value!r}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"expected a positive number or 'auto', not {value!r}")
        return rate


class EarlyStopConfig(Section):
    metric: str | None = Field(None, description="validation metric that picks the best epoch; default: the "
                                                 "task's (val_accuracy for classifiers)")
    patience: int | None = Field(3, ge=1, description="epochs without improvement before stopping; null: never")


class TrainConfig(Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="classifiers: balanced draws each epoch's examples with replacement, each class "
                               "equally often; shuffle: every example once per epoch")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="classifiers: balanced weighs each class's training loss by n / (classes x n_class), "
                            "as scikit-learn's class_weight='balanced', so rare classes count as much as common ones")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, else fp32 "
                            "(no)")
    seed: int = 0
    num_workers: int | Literal["auto"] = Field(
        "auto", description="data-loading processes; auto: up to 8 for images on a GPU machine, else 0")
    early_stopping: EarlyStopConfig = EarlyStopConfig()
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                                            "memory, about a third more time")
    progress: bool = True
    log_with: list[str] = Field(
        default_factory=list, description="experiment trackers that get every epoch's metrics and rates, through "
                                          "Accelerate: tensorboard (events in RUN/logs/RUN_NAME/), or a list; [] none")

    @field_validator("log_with", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        """One name, comma-separated names or a list, each one of Accelerate's trackers; none/[] for none."""
        if value is None or value in ("none", ""):
            return []
        names = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"expected a tracker name or a list of them ({', '.join(TRACKERS)}), got {value!r}")
        for name in names:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker '{name}'.{closest(name, list(TRACKERS))} Trackers: "
                                 f"{', '.join(TRACKERS)} (or none)")
        return list(dict.fromkeys(names))


class GenerationConfig(Section):
    """Language models: the samples a run generates from test prompts before and after fine-tuning."""

    samples: int = Field(3, ge=0, description="test prompts to generate from before and after; 0: none")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0, description="0: greedy, the same text every time")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0


class VideoConfig(Section):
    """Video tasks: which frames a clip gives, and how the model reads them in order (graftune/data/videos.py)."""

    frames: int = Field(8, ge=1, description="frames sampled per clip (K)")
    sampling: Literal["uniform", "segments"] = Field(
        "uniform", description="uniform: K evenly spaced frames, jittered together in training; segments (TSN): "
                               "one frame from each of K equal segments, a random one in training")
    temporal: Literal["auto", "mean", "conv", "attention"] = Field(
        "auto", description="the head over the frames' features; auto: conv (it beat mean pooling and "
                            "attention on motion in benchmarks/video.py)")
    inflate: int = Field(0, ge=0, description="temporal kernel size to inflate the image CNN's convolutions "
                                              "into 3D ones (I3D); 0: the body sees frames one by one")
    flip: bool = Field(False, description="mirror training clips; off because mirroring turns clockwise into "
                                          "counter-clockwise and left into right")


class RegressionConfig(Section):
    """Regression tasks: a number per input (graftune/tasks/regression.py)."""

    loss: Literal["mse", "huber"] = Field("mse", description="mean squared error, or Huber (less pulled by outliers)")
    huber_delta: float = Field(1.0, gt=0, description="where Huber turns linear, in standard deviations of the "
                                                      "training targets (they are standardized for training)")


class CacheConfig(Section):
    """Body features computed once for the stages that train only the head (see graftune/features.py)."""

    features: bool = Field(True, description="cache a frozen body's features while only the head trains")
    dir: str | None = Field(None, description="cache folder; default $GRAFTUNE_CACHE_DIR or "
                                              "~/.cache/graftune/features")
    views: int = Field(4, ge=0, description="with data.augment: augmented views cached per training image; "
                                            "0: run the body on fresh crops every epoch")


class Config(Section):
    """A whole run. `graftune train` writes the resolved version to RUN/config.yaml."""

    task: str = Field(description="what the new model does: image-classification, text-classification, ...")
    model: ModelConfig
    data: DataConfig
    head: HeadConfig = HeadConfig()
    freeze: FreezeConfig = FreezeConfig()
    strategy: StrategyConfig = StrategyConfig()
    regularize: RegularizeConfig = RegularizeConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    video: VideoConfig = VideoConfig()
    regression: RegressionConfig = RegressionConfig()
    cache: CacheConfig = CacheConfig()

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        names = task_names()
        if value not in names:
            raise ValueError(f"unknown task '{value}'.{closest(value, names)} Tasks: {', '.join(names)}")
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def updated(self, values: dict[str, Any], source: str = "resolved settings") -> Config:
        """A new, validated config with `values` at their dotted keys ({"optim.lr": 1e-3}); errors name `source`."""
        raw = self.model_dump(mode="json")
        for key, value in values.items():
            _set_key(raw, key, value)
        return validate(raw, source=source)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from `base`), apply `key=value` overrides and validate."""
    raw: dict[str, Any] = copy.deepcopy(base or {})
    lines: dict[tuple[str, ...], int] = {}
    source = "config"
    if path is not None:
        source = str(path)
        raw, lines = _read_yaml(Path(path))
    for item in overrides or []:
        _apply_override(raw, item)
    return validate(raw, source=source, lines=lines)


def as_config(config: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None) -> Config:
    """A `Config` from what the API takes: a YAML path, a dict or a `Config`, with `key=value` overrides."""
    if isinstance(config, Config):
        return config if not overrides else load_config(None, overrides, base=config.model_dump(mode="json"))
    if isinstance(config, dict):
        return load_config(None, overrides, base=config) if overrides else validate(config)
    return load_config(config, overrides)


def validate(raw: dict[str, Any], source: str = "config", lines: dict[tuple[str, ...], int] | None = None) -> Config:
    """Validate a plain dict into a `Config`, turning pydantic's report into a `UserError`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err, source, lines or {})) from None


class _Loader(yaml.SafeLoader):
    """PyYAML reads `1e-3` as a string (YAML 1.1); users mean a float, as YAML 1.2 says. A key given twice
    in one mapping is an error: PyYAML would silently keep the last. Aliases may repeat at most
    MAX_ALIASED_VALUES values in all: a few hundred bytes of nested anchors ("billion laughs") would
    otherwise expand to billions of values and hang whatever walks the config."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.expanded: dict[int, int] = {}  # id of a composed node -> the values it stands for, aliases expanded
        self.aliased = 0  # values that aliases repeat, so far

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        alias = self.peek_event() if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if node is not None:
            self._count(node, alias)
        return node

    def _count(self, node: yaml.Node, alias: yaml.AliasEvent | None) -> None:
        """Record a new node's expanded size (its children went through compose_node first), or add an
        alias's to the total it may not pass."""
        if alias is None:
            children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) \
                else node.value if isinstance(node, yaml.SequenceNode) else []
            self.expanded[id(node)] = 1 + sum(self.expanded[id(child)] for child in children)
            return
        if id(node) not in self.expanded:  # the anchor is still open: expanding it would never end
            raise _alias_error(alias, f"alias *{alias.anchor} is inside its own anchor")
        self.aliased += self.expanded[id(node)]
        if self.aliased > MAX_ALIASED_VALUES:
            raise _alias_error(alias, f"aliases repeat more than {MAX_ALIASED_VALUES:,} values (at *{alias.anchor}); "
                                      "write the values out instead of nesting anchors")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # PyYAML itself refuses keys it cannot hash
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _alias_error(alias: yaml.AliasEvent, problem: str) -> yaml.YAMLError:
    # The stubs also allow libyaml's Mark, which this pure-Python composer never makes.
    return yaml.composer.ComposerError(None, None, problem, cast(yaml.error.Mark, alias.start_mark))


# YAML 1.1 also reads yes/no/on/off as booleans, so `mixed_precision: no` would become False; as in YAML 1.2,
# only true and false are booleans here (pydantic still reads "no" or "off" as false for boolean keys).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A value as `--set` reads it: YAML, with 1e-3 a float and only true/false booleans (see _Loader)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: builds no arbitrary objects


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    text = _config_text(path)
    try:
        data = parse_value(text)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as err:  # its own message spans two lines and counts characters, not lines
        line = text.count("\n", 0, err.position) + 1
        raise UserError(f"{path}:{line}: not valid YAML (the control character U+{err.character:04X} is not "
                        "allowed); remove it.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', err)}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping of keys (task:, model:, data: ...).")
    lines: dict[tuple[str, ...], int] = {}
    _index_lines(node, (), lines)
    return data, lines


def _config_text(path: Path) -> str:
    """The text of a config file, refused with a message when it is missing, huge or not UTF-8."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found.")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {size:,} bytes is too large for a config (at most {MAX_CONFIG_BYTES:,}); is it "
                        "the right file?")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                        "save the file as UTF-8.") from None


def _index_lines(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, out)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, for example train.epochs=5.")
    key, _, text = item.partition("=")
    try:
        value = parse_value(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    _set_key(raw, key.strip(), value)


def _set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Put `value` at the dotted `key`, making the sections on the way (validation then names unknown ones)."""
    *parents, last = key.split(".")
    target = raw
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[last] = value


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dumps."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [key for name in after for key in changed_keys(before.get(name), after[name], f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if before != after else []


def value_at(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a config dump."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the section that `loc` points into."""
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(getattr(model, "model_fields", {}).keys())


def _describe(err: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    messages = []
    for problem in err.errors():
        loc = tuple(str(p) for p in problem["loc"])
        key = ".".join(loc)
        line = _nearest_line(loc, lines)
        where = f"{source}:{line}" if line else source
        if problem["type"] == "extra_forbidden":
            hint = closest(loc[-1], _fields_at(loc[:-1]))
            messages.append(f"{where}: unknown key '{key}'.{hint}")
        elif problem["type"] == "missing":
            messages.append(f"{where}: missing required key '{key}'.")
        else:
            messages.append(f"{where}: '{key}': {problem['msg']}.")
    return "\n".join(messages)


def _nearest_line(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
