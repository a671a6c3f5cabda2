"""The saved model folder (RUN/model/) and loading it back for evaluate, predict and `run:` sources.

    model/model.safetensors   weights of body + head
    model/graftune.json       format, task and its schema (a classifier's labels), source, surgery, the
                              run's resolved settings, preprocessing, provenance
    model/body/               files the architecture needs to rebuild offline (HF config, tokenizer)
    model/adapter/            PEFT adapter and head (strategy lora only)

The task and settings in graftune.json rebuild the same model the run trained: the task builds its
head from the settings, the source rebuilds the body from its spec and `body/`.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from graftune.backbones import Backbone, read_model_info, rebuild_backbone
from graftune.backbones.sources import MODEL_FORMAT, require_trust
from graftune.config import validate
from graftune.data import record
from graftune.data.readers import Example
from graftune.errors import MissingColumn, UserError
from graftune.grafted import GraftedModel
from graftune.hardware import resolve_device
from graftune.loaders import eval_batches, eval_loader
from graftune.loop import evaluate
from graftune.lora import ADAPTER_DIR, attach_adapter
from graftune.preprocessing import Preprocess
from graftune.rundir import RunDir
from graftune.settings import load_configured_backbone, run_preprocess
from graftune.tasks import get_task
from graftune.tasks.base import Task

# How `evaluate` (the command and graftune.evaluate) takes the column names, for its errors to name.
EVALUATE_COLUMN_FLAGS = {"input": "--input-column", "label": "--label-column"}


def save_model_folder(folder: Path, model: GraftedModel, backbone: Backbone, task: Task, preprocess: Preprocess,
                      parent: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    task.save_weights(model, folder, preprocess)
    if backbone.save_files is not None:
        backbone.save_files(folder / "body")
    info = {
        "format": MODEL_FORMAT,
        "task": task.name,
        "schema": task.schema,
        "source": backbone.source,
        "surgery": backbone.surgery,
        "build_kwargs": backbone.build_kwargs,
        "code": backbone.code,
        "produces": backbone.produces,
        "preprocess": preprocess.to_json(),
        "settings": task.settings.model_dump(mode="json"),
        "provenance": {"started_from": parent or backbone.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "graftune": version("graftune"), "torch": torch.__version__,
                       "python": platform.python_version()},
    }
    (folder / "graftune.json").write_text(json.dumps(info, indent=2))


@dataclass
class FineTuned:
    """A fine-tuned model loaded from a run, ready to predict or evaluate."""

    model: GraftedModel
    preprocess: Preprocess
    task: Task
    info: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """The precision the run computed in ('no', 'bf16', 'fp16'): inference uses it too, so that `evaluate`
        reproduces the run's test metrics and `predict` its test predictions."""
        return str(self.task.settings.train.mixed_precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's autocast (as Accelerate applies it in training), or nothing for full precision."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def predict(self, inputs: Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 32) -> list[dict[str, Any]]:
        """One result per input; for a classifier: its name and the input itself, the decided label, the argmax and
        the rule that decided, every class's probability (see `Classification.predict`).

        Inputs are plain strings: texts for a text model (named "text N"), file paths for an image or video model
        (named by their path), read and checked as `graftune predict` reads them; or (name, input) pairs as
        `task.read_inputs` gives them, used as they are. A list mixing the two is a TypeError.
        """
        with self.autocast():
            return self.task.predict(self.model, self.preprocess, self._named(inputs), batch_size)

    def _named(self, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """(name, input) pairs for `inputs`, plain or paired."""
        if isinstance(inputs, str):  # a lone string would be taken for a list of one-character texts
            raise TypeError("predict takes a list of inputs; wrap a single one: predict([text]).")
        pairs = [value for value in inputs if not isinstance(value, str)]
        if len(pairs) == len(inputs):
            return pairs
        if pairs:
            raise TypeError("predict takes plain inputs (str) or (name, input) pairs, not a mixture of both.")
        plain = [value for value in inputs if isinstance(value, str)]
        if self.task.modality == "text":
            return self.task.read_inputs([], plain)
        return self.task.read_inputs(plain, [])

    def read_labelled(self, path: str | Path, input_column: str | None = None,
                      label_column: str | None = None) -> list[Example]:
        """New labelled data for `evaluate`, read with the run's own column names (its data.input_column and
        data.label_column) unless others are given. A column that is not there is named with the flag that
        sets it here (--label-column), not with the config key of training."""
        data = self.task.settings.data
        try:
            return self.task.read_labelled(path, input_column or data.input_column, label_column or data.label_column)
        except MissingColumn as err:
            raise err.set_by(EVALUATE_COLUMN_FLAGS[err.role]) from None

    def evaluate(self, examples: list[Example], batch_size: int = 64) -> dict[str, Any]:
        """The task's test metrics on labelled examples, computed as the run computed its own."""
        from accelerate import Accelerator

        items = self.task.items(examples, self.preprocess)
        batches = eval_batches(self.task, items, self.preprocess, batch_size)
        loader = eval_loader(items, self.task.collate(self.preprocess), batches)
        accelerator = Accelerator(cpu=self.device.type == "cpu")
        with self.autocast():  # the batches go where the model is
            return self.task.test_results(evaluate(self.model, accelerator.prepare_data_loader(loader),
                                                   self.task.step, accelerator))


def load_model(run_dir: str | Path, adapter: bool = False, trust_code: bool = False,
               device: str = "auto") -> FineTuned:
    """A run's saved model on `device` (auto: the GPU when there is one), computing in the run's precision;
    with `adapter`, the pre-trained body plus the run's LoRA adapter and head instead of the merged weights.
    Code the model folder names (a `module:` source) is imported only with `trust_code`."""
    placed = resolve_device(device)  # refused before anything loads
    run = RunDir(run_dir).require()
    folder = run.model
    info = read_model_info(folder)
    settings = validate(info["settings"], source=str(folder / "graftune.json"))
    task = get_task(info["task"])(settings, info["schema"])
    if adapter:
        if not (folder / ADAPTER_DIR).is_dir():
            raise UserError(f"{folder}: no LoRA adapter here; only runs with strategy lora save one.")
        if settings.model.source.startswith("module:"):
            require_trust(settings.model.source, folder / "graftune.json", trust_code, info.get("code"))
        backbone = load_configured_backbone(settings, trust_code)
        model = task.build_model(backbone)
        attach_adapter(model, folder, backbone.peft_target)
    else:
        backbone = rebuild_backbone(info, folder, trust_code)
        model = task.build_model(backbone)
        task.load_weights(model, folder)
    model.to(placed).eval()
    return FineTuned(model, run_preprocess(backbone, settings), task, info)


def recorded_test_split(run_dir: str | Path, fine_tuned: FineTuned) -> list[Example]:
    """The run's test examples as its data_splits.json recorded them, read from its data as it is now. A
    UserError names what stands in the way: no split record, data that moved, changed or cannot be read."""
    run = RunDir(run_dir)
    if not run.splits.is_file():
        raise UserError(f"{run.splits}: missing, so the run's test split is unknown.")
    data = type(fine_tuned.task).read_data(fine_tuned.task.settings.data)
    splits, _ = record.restore(run.read_json(run.splits), data.splits, fine_tuned.task.modality, False, run.splits)
    return splits.test
