"""Regression: one number per input (a price, a score, an age), from texts or images in a CSV/JSONL table with
the target in a column (`data.label_column`).

Targets are standardized with the training split's mean and standard deviation, so one learning rate and one
Huber threshold fit any unit; the head predicts the standardized value and everything the user sees (metrics,
predictions, the report) is back in the target's own units. The schema is `{"target": COLUMN, "mean": m,
"std": s, "train_count": n}`.

Loss `regression.loss`: mse (default) or huber (`regression.huber_delta` standard deviations). Metrics: RMSE
(early stopping on val_rmse, lower is better), MAE, R², Pearson's and Spearman's correlation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from torch import nn

from graftune.config import DataConfig
from graftune.data.readers import Example, number_label, read_examples
from graftune.data.splits import read_splits
from graftune.errors import UserError
from graftune.loop import Batch, Evaluation, Step
from graftune.pages import Section
from graftune.preprocessing import Preprocess
from graftune.tasks.base import Item, Prediction, TaskData
from graftune.tasks.pooled import TEXT_KEPT, PooledHead, in_split_order

WORST = 8  # largest errors the report lists


class ValuePrediction(Prediction):
    """A regression's answer: the predicted value, in the target's units."""

    value: float


class Regression(PooledHead):
    """A number per input; see the module docstring."""

    prediction_model = ValuePrediction

    metrics: ClassVar[dict[str, Literal["max", "min"]]] = {
        "val_rmse": "min", "val_mae": "min", "val_r2": "max", "val_pearson": "max", "val_spearman": "max",
        "val_loss": "min"}
    default_metric = "val_rmse"
    headline = "rmse"
    convex_head = True  # squared error of a linear head: the exact probe solves ridge regression
    prediction_fields: ClassVar[frozenset[str]] = frozenset({"target", "predicted"})

    @property
    def mean(self) -> float:
        return float(self.schema["mean"])

    @property
    def std(self) -> float:
        return float(self.schema["std"])

    @classmethod
    def read_data(cls, data: DataConfig) -> TaskData:
        splits = read_splits(data, cls.modality, number_label)
        targets = np.array([float(e.label) for e in splits.train])
        std = float(targets.std())
        if len(targets) < 2 or std == 0.0:
            raise UserError(f"{data.train}: every training target in column '{data.label_column}' is "
                            f"{targets[0]:g}; there is nothing to learn. Check data.label_column.")
        return TaskData(splits, {"target": data.label_column, "mean": float(targets.mean()), "std": std,
                                 "train_count": len(targets)})

    head_outputs = 1
    default_augment = False  # a flip turns an angle of +a into -a, a crop changes a count: the target may move

    def describe_schema(self) -> str:
        return f"target '{self.schema['target']}' (mean {self.mean:.4g}, std {self.std:.4g} in training)"

    def items(self, examples: list[Example], preprocess: Preprocess) -> list[Item]:
        return [(e.input, (float(e.label) - self.mean) / self.std) for e in examples]

    def step(self, model: nn.Module, batch: Batch, train: bool) -> Step:
        """Squared error (or Huber) on the standardized target; evaluation keeps predictions and targets."""
        # at least fp32 whatever the autocast (a bf16 target would lose its third digit); fp64 in the exact probe
        predicted = model(batch["inputs"]).squeeze(-1)
        predicted = predicted.to(torch.promote_types(predicted.dtype, torch.float32))
        targets = batch["targets"].to(predicted.device, predicted.dtype)
        options = self.settings.regression
        if options.loss == "huber":
            loss = nn.functional.huber_loss(predicted, targets, delta=options.huber_delta)
        else:
            loss = nn.functional.mse_loss(predicted, targets)
        if train:
            return Step(loss, len(targets))
        return Step(loss, len(targets), {"predicted": predicted, "targets": targets})

    def _units(self, evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) in the target's own units."""
        outputs = evaluation.outputs
        if "targets" not in outputs:
            return np.zeros(0), np.zeros(0)
        return (outputs["targets"].astype(np.float64) * self.std + self.mean,
                outputs["predicted"].astype(np.float64) * self.std + self.mean)

    def validation_metrics(self, evaluation: Evaluation) -> dict[str, float]:
        scores = scores_of(*self._units(evaluation))
        return {"val_loss": evaluation.loss, **{f"val_{k}": v for k, v in scores.items() if k != "examples"}}

    def test_results(self, evaluation: Evaluation) -> dict[str, Any]:
        true, predicted = self._units(evaluation)
        return {**scores_of(true, predicted), "loss": evaluation.loss, "target": self.schema["target"]}

    def test_predictions(self, evaluation: Evaluation, examples: list[Example]) -> list[dict[str, Any]] | None:
        """Per test example: where it came from, its input (a text, cut at TEXT_KEPT characters, or a file's
        path), the true and the predicted value and the error (predicted - true)."""
        def row(example: Example, pair: np.ndarray) -> dict[str, Any]:
            value, guess = float(pair[0]), float(pair[1])
            return {"where": example.where, "input": example.input[:TEXT_KEPT], "target": value,
                    "predicted": round(guess, 6), "error": round(guess - value, 6)}

        return in_split_order(evaluation, examples, np.stack(self._units(evaluation), axis=1), row)

    def report_sections(self, results: dict[str, Any], predictions: list[dict[str, Any]],
                        plots: Callable[[str], bytes | None], read_inputs: bool) -> list[Section]:
        from graftune.tasks.regression_report import regression_sections

        return regression_sections(results["test"], predictions)

    def output_meaning(self) -> tuple[str, dict[str, Any]] | None:
        """target.json: the model's output is the standardized target; value = output * std + mean."""
        return "target.json", {"target": self.schema["target"], "mean": self.mean, "std": self.std,
                               "value": "output * std + mean"}

    def summary(self, results: dict[str, Any]) -> str:
        return (f"RMSE {results['rmse']:.4g}  MAE {results['mae']:.4g}  R² {results['r2']:.4f}  "
                f"Spearman {results['spearman']:.4f}")

    def details(self, results: dict[str, Any]) -> list[str]:
        return [f"{results['examples']} examples; target '{results.get('target', self.schema['target'])}'; "
                f"Pearson {results['pearson']:.4f}"]

    def read_labelled(self, path: str | Path, input_column: str | None, label_column: str) -> list[Example]:
        return read_examples(path, self.modality, "auto", input_column, label_column, self.settings.data.encoding,
                             label_of=number_label)

    def predict(self, model: nn.Module, preprocess: Preprocess, inputs: list[tuple[str, str]],
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One row per input: its name, the input (text or file) and the predicted value in the target's units."""
        return [{**self.echoed(name, value), "value": float(output[0]) * self.std + self.mean}
                for name, value, output in self.outputs(model, preprocess, inputs, batch_size)]

    def format_prediction(self, result: dict[str, Any]) -> str:
        return f"{result['input']}\t{result['value']:.6g}"


def scores_of(true: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE, R², Pearson and Spearman (scikit-learn, SciPy); correlations are 0 where undefined (fewer
    than two examples, or a constant side)."""
    if len(true) == 0:
        return {"rmse": 0.0, "mae": 0.0, "r2": 0.0, "pearson": 0.0, "spearman": 0.0, "examples": 0}
    varied = len(true) > 1 and np.ptp(true) > 0 and np.ptp(predicted) > 0
    return {"rmse": float(math.sqrt(mean_squared_error(true, predicted))),
            "mae": float(mean_absolute_error(true, predicted)),
            "r2": float(r2_score(true, predicted)) if len(true) > 1 else 0.0,
            "pearson": float(pearsonr(true, predicted)[0]) if varied else 0.0,
            "spearman": float(spearmanr(true, predicted)[0]) if varied else 0.0,
            "examples": len(true)}


class TextRegression(Regression):
    """A number per text (a review's rating, a document's reading level)."""

    name = "text-regression"
    modality = "text"


class ImageRegression(Regression):
    """A number per image (an age, a count, a size)."""

    name = "image-regression"
    modality = "image"
