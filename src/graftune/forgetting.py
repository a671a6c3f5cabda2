"""What a chained run forgot of the task its model was fine-tuned for before.

A run on `model.source: run:DIR` starts from a classifier graftune fine-tuned before (task A). Its own head
was replaced for the new task (B), but DIR/model still holds A's head. So A can be scored on the body
as it is before training B (A's own model, exactly) and after: the new body under A's old head and
pooling, on A's test split as DIR/data_splits.json recorded it, or, when that split cannot be read (A's
data moved), on `regularize.retain` (labelled data of A). A's own test split comes first because
`regularize.retain` also feeds EWC's Fisher: scoring forgetting on the inputs a penalty was fitted to
would flatter it. `results.json` reports both scores under `forgetting`, with the drop.

    >>> original = OriginalTask.of("runs/a", retain=None, trust_code=False)
    >>> original.score(body, accelerator)        # A's scalar test scores: {"accuracy": ..., "examples": ...}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from graftune.artifacts import FineTuned, load_model, recorded_test_split
from graftune.data.readers import Example
from graftune.errors import InputWarning, UserError
from graftune.grafted import GraftedModel
from graftune.loaders import eval_batches, eval_loader
from graftune.loop import evaluate
from graftune.rundir import RunDir


@dataclass
class OriginalTask:
    """Task A of a chained run: its fine-tuned model (for the head, pooling and preprocessing) and examples."""

    folder: Path
    parent: FineTuned
    examples: list[Example]
    source: str  # where the examples come from: A's recorded test split or regularize.retain

    @classmethod
    def of(cls, run_dir: str | Path, retain: str | None, trust_code: bool) -> OriginalTask | None:
        """Task A of `run:run_dir` when it is a classifier-like task with a head of its own; None otherwise (a
        language model is its own head: its forgetting is the perplexity on `regularize.retain`)."""
        parent = load_model(run_dir, trust_code=trust_code)
        if parent.task.needs != "features":
            return None
        examples = _recorded_test_split(Path(run_dir), parent, warn=not retain)
        if examples:
            return cls(Path(run_dir), parent, examples, "test split of the run")
        if retain:
            return cls(Path(run_dir), parent, parent.task.read_labelled(retain, None, "label"), retain)
        return None

    def score(self, body: nn.Module, accelerator: Any) -> dict[str, Any]:
        """A's test metrics with `body` under A's head and pooling (the modules themselves, not copies)."""
        task, preprocess = self.parent.task, self.parent.preprocess
        model = GraftedModel(body, self.parent.model.head, self.parent.model.neck)
        model.head.to(accelerator.device)
        items = task.items(self.examples, preprocess)
        loader = accelerator.prepare_data_loader(eval_loader(items, task.collate(preprocess),
                                                             eval_batches(task, items, preprocess, 64)))
        with self.parent.autocast():  # A's precision, before and after: "before" is then A's own test, exactly
            results = task.test_results(evaluate(model, loader, task.step, accelerator))
        return {key: value for key, value in results.items() if isinstance(value, int | float)}

    def report(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """The `forgetting` section of results.json: both scores and how much A's headline score got worse (its
        `HEADLINE_drop`: positive when A is done worse after, for a score to raise or to lower alike)."""
        task, section = self.parent.task, {"task": str(self.folder), "examples": self.source, "before": before,
                                           "after": after}
        if task.headline is None or task.headline not in before or task.headline not in after:
            return section
        worse = before[task.headline] - after[task.headline]
        return {**section, f"{task.headline}_drop": worse if task.headline_direction() == "max" else -worse}


def _recorded_test_split(run_dir: Path, parent: FineTuned, warn: bool) -> list[Example]:
    """A's test examples as its run recorded them, read from its data as it is now; none (with a warning) when
    that data moved or changed."""
    if not RunDir(run_dir).splits.is_file():
        return []
    try:
        return recorded_test_split(run_dir, parent)
    except UserError as err:
        if not warn:
            return []
        warnings.warn(f"forgetting of {run_dir} not measured: its data cannot be read as recorded ({err}). Give "
                      "labelled data of that task with regularize.retain.", InputWarning, stacklevel=2)
        return []
