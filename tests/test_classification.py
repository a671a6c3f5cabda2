"""The classifier's loss and metrics for unbalanced classes: class weights, balanced accuracy, ROC AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

from graftune.config import validate
from graftune.loop import Evaluation
from graftune.preprocessing import ImagePreprocess
from graftune.tasks.image_classification import ImageClassification


def task(class_weights: str, counts: list[int]) -> ImageClassification:
    settings = validate({"task": "image-classification", "model": {"source": "efficientnet-lite0"},
                         "data": {"train": "x"}, "train": {"class_weights": class_weights}})
    return ImageClassification(settings, {"labels": [f"c{i}" for i in range(len(counts))], "train_counts": counts})


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits


def test_balanced_class_weights_weigh_each_class_by_its_rarity() -> None:
    counts = [90, 10]
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    batch = {"inputs": {}, "targets": targets}
    plain = task("none", counts).step(Fixed(logits), batch, train=True).loss
    weighted_task = task("balanced", counts)
    weights = weighted_task.class_weights()
    assert weights is not None
    torch.testing.assert_close(weights, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))  # n / (k * n_c)
    weighted = weighted_task.step(Fixed(logits), batch, train=True).loss
    per_example = nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(plain, per_example.mean())
    w = weights[targets]
    torch.testing.assert_close(weighted, (w * per_example).sum() / w.sum())  # PyTorch's weighted mean
    evaluation_loss = weighted_task.step(Fixed(logits), batch, train=False).loss
    torch.testing.assert_close(evaluation_loss, plain)  # validation loss stays comparable across settings


def test_balanced_accuracy_exposes_a_model_that_never_finds_the_rare_class() -> None:
    y = np.array([0] * 18 + [1] * 2)
    probs = np.tile([0.8, 0.2], (20, 1))
    probs[18] = [0.7, 0.3]  # the rare ones rank higher, but never win
    probs[19] = [0.6, 0.4]
    metrics = task("none", [18, 2]).validation_metrics(Evaluation(0.3, 20, {"labels": y, "probs": probs}))
    assert metrics["val_accuracy"] == pytest.approx(0.9)
    assert metrics["val_balanced_accuracy"] == pytest.approx(0.5) == balanced_accuracy_score(y, probs.argmax(1))
    assert metrics["val_roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1])) == pytest.approx(1.0)


def test_roc_auc_of_several_classes_is_one_against_the_rest() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    results = task("none", [20, 20, 20]).test_results(Evaluation(1.0, 60, {"labels": y, "probs": probs}))
    assert results["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert results["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))


def test_a_two_class_model_decides_at_the_threshold_chosen_on_validation() -> None:
    """The rare class scores 0.3-0.45 and the common one 0.1-0.25: argmax never finds the rare one; the
    threshold where TPR - FPR peaks on validation (0.3) finds every one, and the test reports both."""
    binary = task("none", [90, 10])
    assert binary.calibrates and not task("none", [5, 5, 5]).calibrates
    rng = np.random.default_rng(0)

    def outputs(n_common: int, n_rare: int) -> dict[str, np.ndarray]:
        p = np.concatenate([rng.uniform(0.1, 0.25, n_common), [0.3, *rng.uniform(0.3, 0.45, n_rare - 1)]])
        return {"labels": np.array([0] * n_common + [1] * n_rare), "probs": np.stack([1 - p, p], axis=1)}

    binary.calibrate(Evaluation(0.4, 50, outputs(45, 5)))
    assert binary.schema["threshold"] == pytest.approx(0.3)
    results = binary.test_results(Evaluation(0.4, 50, outputs(45, 5)))
    assert results["balanced_accuracy"] == pytest.approx(0.5)  # argmax: always the common class
    assert results["at_threshold"]["balanced_accuracy"] == pytest.approx(1.0)
    assert results["at_threshold"]["recall"] == {"c0": 1.0, "c1": 1.0}


def test_predict_uses_the_threshold() -> None:
    binary = task("none", [90, 10])
    binary.schema = {**binary.schema, "threshold": 0.3}

    class Model(nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.log(torch.tensor([[0.65, 0.35], [0.8, 0.2]]))

    binary.encoder = lambda preprocess, augment=False: lambda values: {}  # type: ignore[method-assign]
    results = binary.predict(Model(), ImagePreprocess(), [("a", "x"), ("b", "y")])
    assert [r["label"] for r in results] == ["c1", "c0"]


def test_a_balanced_sampler_draws_every_class_about_equally_often() -> None:
    from graftune.sampling import ShuffledBatches

    balanced = task("none", [90, 10]).settings.updated({"train.sampler": "balanced"})
    items = [(f"x{i}", 0) for i in range(90)] + [(f"y{i}", 1) for i in range(10)]
    weights = ImageClassification(balanced, {"labels": ["c0", "c1"], "train_counts": [90, 10]}).sample_weights(items)
    assert weights is not None and weights[0] == pytest.approx(1 / 90) and weights[-1] == pytest.approx(1 / 10)
    assert task("none", [90, 10]).sample_weights(items) is None  # the default: a plain shuffle
    batches = ShuffledBatches(10, seed=0, size=100, weights=weights)
    drawn: list[int] = []
    for epoch in range(20):
        batches.set_epoch(epoch)
        drawn += [i for batch in batches for i in batch]
    rare = sum(1 for i in drawn if i >= 90) / len(drawn)
    assert len(drawn) == 20 * 100 and rare == pytest.approx(0.5, abs=0.05)
    batches.set_epoch(3)
    again = ShuffledBatches(10, seed=0, size=100, weights=weights)
    again.set_epoch(3)
    assert list(batches) == list(again)  # the same draw for the same (seed, epoch): resume sees it again
