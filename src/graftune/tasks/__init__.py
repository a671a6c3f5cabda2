"""Tasks: one module per kind of problem, registered by name (the contract is in tasks/base.py).

Built-in tasks are named here with the module and class that define them, so the names are known
(config validation, `--help`) without importing torch. A task defined elsewhere is added with
`register(MyTask)`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from graftune.errors import UserError, closest

if TYPE_CHECKING:
    from graftune.tasks.base import Task

BUILTIN = {
    "image-classification": "graftune.tasks.image_classification:ImageClassification",
    "text-classification": "graftune.tasks.text_classification:TextClassification",
    "causal-lm": "graftune.tasks.causal_lm:CausalLM",
    "video-classification": "graftune.tasks.video_classification:VideoClassification",
    "text-regression": "graftune.tasks.regression:TextRegression",
    "image-regression": "graftune.tasks.regression:ImageRegression",
    "text-multilabel": "graftune.tasks.multilabel:TextMultiLabel",
    "image-multilabel": "graftune.tasks.multilabel:ImageMultiLabel",
}
_REGISTERED: dict[str, type[Task]] = {}


def register(task: type[Task]) -> type[Task]:
    """Make `task` available by its `name` in configs and on the command line; usable as a decorator."""
    _REGISTERED[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted({*BUILTIN, *_REGISTERED})


def get_task(name: str) -> type[Task]:
    """The task class registered as `name`."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise UserError(f"task: unknown task '{name}'.{closest(name, task_names())} "
                        f"Tasks: {', '.join(task_names())}.")
    module, _, cls = BUILTIN[name].partition(":")
    task: type[Task] = getattr(importlib.import_module(module), cls)
    return task
