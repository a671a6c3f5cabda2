"""The task contract: what a kind of problem supplies to the one run path, and what nothing else knows.

The run path (graftune/run.py) calls a task in this order:

    TaskClass.read_data(cfg.data)          -> TaskData: examples split into train/val/test, and the
                                              schema (what the model predicts: a classifier's labels)
    TaskClass.resolve(cfg, backbone)       -> the task's own defaults filled in (a classifier's pooling)
    task = TaskClass(settings, schema)        bound to one run; everything below reads its settings
    task.build_model(backbone)             -> the GraftedModel to train (body, neck, new head)
    task.items(examples, preprocess)       -> what batches are made of: (input, target) pairs
    task.lengths(items, preprocess)        -> tokens per item, for batches of similar length (or None)
    task.sample_weights(items)             -> how often to draw each training item (None: each once an epoch)
    task.encoder(preprocess, augment)      -> inputs (texts, file paths) to the tensors the model takes
    task.collate(preprocess) / .training_collate(preprocess)
                                           -> items to {"inputs": {...}, "targets": ...}
    task.step(model, batch, train)         -> the loss with the per-example outputs metrics need
    task.validation_metrics(evaluation)    -> each epoch's val_* numbers, the keys of `metrics`
    task.calibrate(evaluation)             -> what validation settles once training is done, into the schema
                                              (a binary classifier's decision threshold), when `calibrates`
    task.test_results(evaluation)          -> the "test" section of results.json; task.plots, task.summary
    task.report(model, preprocess, examples) -> what else the test split shows (generated samples, ROUGE),
                                              before training too when `evaluates_before`
    task.test_predictions(evaluation, examples) -> one row per test example (RUN/test_predictions.jsonl), or None
    task.report_sections(results, predictions) -> the run report's sections on the test (graftune/report.py)
    task.save_weights / task.load_weights  -> the model folder's weights (a language model's: Transformers')
    task.read_labelled / read_inputs / predict / format_prediction
                                           -> `graftune evaluate` and `graftune predict`

A task's schema is plain JSON: it is saved in the model folder and hands a loaded model back to the
same task. Adding a task: see docs/DESIGN.md, "Adding a task".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import default_collate

from graftune.backbones.base import Backbone
from graftune.config import Config, DataConfig
from graftune.data.inputs import EncodeInputs, input_encoder
from graftune.data.readers import Example, read_prediction_inputs
from graftune.data.splits import Splits
from graftune.errors import UserError
from graftune.generation import GenerationRoom
from graftune.grafted import GraftedModel
from graftune.loop import Batch, Evaluation, Step
from graftune.pages import Section
from graftune.preprocessing import ImagePreprocess, Modality, Preprocess, TextPreprocess
from graftune.sampling import token_lengths
from graftune.weights import load_weights, save_weights

Item = tuple[str, Any]  # (input: a text or a file path, target: what the loss compares with)


class Prediction(BaseModel):
    """What every `predict` row starts with: the input's name and the input itself (tasks add their answer)."""

    input: str = Field(description="the input's name: 'text N' (the Nth text), or a file's path as given")
    text: str | None = Field(None, description="the text (a text model)")
    file: str | None = Field(None, description="the file read (an image or video model)")
Collate = Callable[[list[Item]], Batch]


@dataclass(frozen=True)
class TaskData:
    """A task's data for one run: the split examples and the schema the model is built for."""

    splits: Splits
    schema: dict[str, Any]


class Task(ABC):
    """One kind of problem (see the module docstring for the order of calls)."""

    name: ClassVar[str]
    modality: ClassVar[Modality]  # what the data files hold
    # The backbones the task builds on, by modality; default: its own (a video task also takes image networks).
    backbone_modalities: ClassVar[tuple[Modality, ...] | None] = None
    # Validation metrics the task reports every epoch, and whether higher ("max") or lower is better;
    # train.early_stopping.metric must be one of them.
    metrics: ClassVar[dict[str, Literal["max", "min"]]]
    default_metric: ClassVar[str]
    # The test score that says most in one number (a key of `test_results`; its direction is that of
    # "val_" + it in `metrics`): what forgetting compares and what a run prints of a task it came from. None: the
    # task names none, and forgetting shows its scores before and after without a drop.
    headline: ClassVar[str | None] = None
    # What the body must give: features for a new head, or a language model's own next-token logits.
    needs: ClassVar[Literal["features", "logits"]] = "features"
    default_strategy: ClassVar[str | None] = None  # strategy `auto` with nothing frozen; None: full
    # The training loss is convex in a linear head's weights (cross-entropy, squared error), so a head-only
    # stage on cached features can be solved exactly (graftune/probe.py) instead of trained by epochs.
    convex_head: ClassVar[bool] = False
    # Score the test split (and `forgetting_examples`) with the pre-trained model too, for a before/after.
    evaluates_before: ClassVar[bool] = False
    # A text model's Transformers `problem_type` for `export --format hf` (single_label_classification,
    # multi_label_classification), when a Transformers head computes what the task's head does; None: no hf export.
    hf_problem_type: ClassVar[str | None] = None
    # What `data.augment: auto` becomes: random crops and flips keep a class, but may change a number.
    default_augment: ClassVar[bool] = True
    # `graftune plan` scores candidates by how well their frozen features separate the task's classes.
    plannable: ClassVar[bool] = False
    # One `predict` row's shape (the /predict response of `graftune serve`); None: the task does not predict.
    prediction_model: ClassVar[type[Prediction] | None] = None
    # The fields every row of `test_predictions` has (RUN/test_predictions.jsonl), checked when the report reads it.
    prediction_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Config, schema: dict[str, Any]) -> None:
        self.settings = settings
        self.schema = schema

    @classmethod
    def headline_direction(cls) -> Literal["max", "min"]:
        return cls.metrics.get(f"val_{cls.headline}", "min")

    # --- before the model exists -----------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        """Read, check and split the data; say what the model will predict."""

    @classmethod
    def resolve(cls, cfg: Config, backbone: Backbone) -> Config:
        """Fill in this task's own `auto` settings for `backbone`; refuse combinations that cannot work."""
        return cfg

    # --- training -------------------------------------------------------------------------------------

    def describe_schema(self) -> str:
        """A few words on what the model predicts, for the line that opens a run."""
        return ""

    @abstractmethod
    def build_model(self, backbone: Backbone) -> GraftedModel:
        """The trainable model: the backbone's body with this task's new head."""

    @abstractmethod
    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        """Examples as (input, target) pairs; targets are what `collate` stacks (`default_collate`)."""

    def lengths(self, items: list[Item], preprocess: Preprocess) -> list[int] | None:
        """Tokens per item, for batches of texts of similar length; None when all items are alike (images)."""
        return token_lengths([x for x, _ in items], preprocess) if isinstance(preprocess, TextPreprocess) else None

    @classmethod
    def accepted_modalities(cls) -> tuple[Modality, ...]:
        """The kinds of backbone the task builds on."""
        return cls.backbone_modalities or (cls.modality,)

    def sample_weights(self, items: list[Item]) -> list[float] | None:
        """Relative chances of the training items in each epoch's draw (a balanced sampler); None: a shuffle."""
        return None

    @property
    def augment(self) -> bool:
        """Whether training inputs are random views (image crops and flips, clip jitter), new every epoch."""
        return self.settings.data.augment is True and self.modality in ("image", "video")

    @property
    def mixes_inputs(self) -> bool:
        """Whether training batches blend examples' inputs (mixup), so no cache can stand in for the body."""
        return False

    def encoder(self, preprocess: Preprocess, augment: bool = False) -> EncodeInputs:
        """Inputs to the tensors the model takes: image pixels or token ids by default (data/inputs.py)."""
        return input_encoder(preprocess, augment)

    def collate(self, preprocess: Preprocess, augment: bool = False) -> Collate:
        """Items to a batch: inputs as the body takes them, targets stacked."""
        encode = self.encoder(preprocess, augment)

        def collate(items: list[Item]) -> Batch:
            return {"inputs": encode([x for x, _ in items]), "targets": default_collate([t for _, t in items])}

        return collate

    def training_collate(self, preprocess: Preprocess) -> Collate:
        """The collate of training batches: augmented when the task augments."""
        return self.collate(preprocess, self.augment)

    @abstractmethod
    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        """The loss of a batch (the training loss with `train`), and the outputs metrics need when not."""

    @abstractmethod
    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        """This epoch's validation numbers: every key of `metrics`."""

    # --- after training -------------------------------------------------------------------------------

    @property
    def calibrates(self) -> bool:
        """Whether `calibrate` wants the best model's validation outputs before the test (costs one pass)."""
        return False

    def calibrate(self, evaluation: Evaluation) -> None:
        """Settle, from the validation outputs of the best model, what the saved schema should hold."""
        return None

    @abstractmethod
    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        """The test section of results.json (also what `graftune evaluate` returns)."""

    def plots(self, results: dict[str, Any]) -> dict[str, bytes]:
        """Task-specific plots of the test results: file name in the run's plots/ -> PNG bytes; none by default."""
        return {}

    def report(self, model: nn.Module, preprocess: Preprocess, examples: list[Example]) -> dict[str, Any]:
        """What else the test examples show beyond `test_results` (generated samples, ROUGE); none by default."""
        return {}

    def test_predictions(self, evaluation: Evaluation, examples: list[Example]) -> list[dict[str, Any]] | None:
        """One JSON row per test example, in the split's order (RUN/test_predictions.jsonl, read by the report);
        `evaluation.outputs["index"]` says which item each output row is. None: the task writes none."""
        return None

    def report_sections(self, results: dict[str, Any], predictions: list[dict[str, Any]],
                        plots: Callable[[str], bytes | None], read_inputs: bool) -> list[Section]:
        """The run report's sections on the test: `results` is results.json as the run wrote it (`test`, and
        `before` for a task that evaluates before training), `predictions` the rows of `test_predictions`, `plots`
        gives a PNG the run drew (by its name in plots/, None when absent) to embed rather than draw again; with
        `read_inputs` the input files the rows name may be read (thumbnails) — they may lie outside the run folder,
        so only for the run's own data, never for a received folder unless the user asks; the report adds the run's
        own sections (graftune/report.py)."""
        return []

    def example_shape(self, preprocess: ImagePreprocess) -> tuple[int, ...]:
        """One example's pixel tensor, for exports: (3, size, size); a task over clips adds its frames."""
        return (3, preprocess.size, preprocess.size)

    def input_steps(self, spec: dict[str, Any]) -> dict[str, Any]:
        """An export's preprocessing.json for image inputs, given the image steps: as they are by default; a task
        over clips says how frames are picked and stacked."""
        return spec

    def output_meaning(self) -> tuple[str, dict[str, Any]] | None:
        """How an export's outputs become predictions: a companion file's name and its JSON (a classifier's labels
        and threshold, a regression's target mean and std); None when the outputs speak for themselves."""
        return None

    def forgetting_examples(self, path: str) -> list[Example] | None:
        """Inputs of the original task (`regularize.retain`) to score before and after: what the model forgot.
        None: the task does not measure forgetting this way (EWC may still use the inputs)."""
        return None

    def save_weights(self, model: GraftedModel, folder: Path, preprocess: Preprocess) -> None:
        """The model folder's weights; graftune's own layout by default."""
        save_weights(model, folder / "model.safetensors")

    def load_weights(self, model: GraftedModel, folder: Path) -> None:
        load_weights(model, folder / "model.safetensors")

    def generate(self, model: GraftedModel, preprocess: Preprocess, prompt: str, on_text: Callable[[str], None],
                 **options: Any) -> str:
        """`graftune generate`: text that continues `prompt`, streamed to `on_text` as it comes. Raises UserError
        (see `check_generation`) for a prompt and `max_new_tokens` that do not fit the model's context."""
        raise UserError(f"generate is for tasks that produce text; this run's task is {self.name}. Use predict.")

    def generation_room(self, model: GraftedModel, preprocess: Preprocess, prompt: str) -> GenerationRoom | None:
        """How many tokens `prompt` takes as `generate` reads it, and how many the model reads at most; None for
        a task that does not generate or a model whose context is unknown."""
        return None

    @abstractmethod
    def summary(self, results: dict[str, Any]) -> str:
        """One line on the test results."""

    def details(self, results: dict[str, Any]) -> list[str]:
        """More lines for `graftune evaluate`."""
        return []

    @abstractmethod
    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        """New labelled data for `graftune evaluate`, checked against the schema."""

    def echoed(self, name: str, value: str) -> dict[str, str]:
        """The start of a `predict` row: the input's name and the input itself, as `Prediction` has them."""
        return {"input": name, "text" if self.modality == "text" else "file": value}

    def read_inputs(self, files: list[str], texts: list[str]) -> list[tuple[str, str]]:
        """(name, input) pairs for `graftune predict`."""
        return read_prediction_inputs(files, texts, self.modality, self.settings.data.encoding)

    @abstractmethod
    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One JSON-able result per (name, input)."""

    @abstractmethod
    def format_prediction(self, result: dict[str, Any]) -> str:
        """One line of `graftune predict` output."""
