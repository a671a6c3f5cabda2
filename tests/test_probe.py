"""The exact linear probe: the head-only optimum matches scikit-learn's logistic regression on the same features,
the L2 strength is the one validation prefers, a probe run converges in one solved epoch, and lp-ft starts its
fine-tuning from the solved head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from torch import nn

import graftune
from graftune.errors import UserError
from graftune.loop import Evaluation, Step
from graftune.probe import ExactProbe, _minimize, linear_layer, standardized_solver


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


def blobs(n: int = 120, d: int = 6, classes: int = 3, seed: int = 0, noise: float = 1.5) -> \
        tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes: the optimum is finite and the L2 strength matters."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=generator)
    return centres[labels] + noise * torch.randn(n, d, generator=generator), labels


def cross_entropy_step(model: nn.Module, batch: dict[str, Any], train: bool) -> Step:
    logits = model(batch["inputs"])
    loss = nn.functional.cross_entropy(logits, batch["targets"])
    return Step(loss, len(batch["targets"]), {} if train else {"probs": logits.softmax(-1), "labels": batch["targets"]})


@pytest.mark.parametrize("l2", [1e-1, 1e-2, 1e-3])
def test_the_solve_matches_scikit_learns_logistic_regression(l2: float) -> None:
    x, y = blobs()
    x = 3.0 + x.double() * torch.linspace(0.1, 10, x.shape[1])  # off-centre, scales apart: as pooled features
    solver, standardized = standardized_solver(nn.Sequential(nn.Dropout(0.2), nn.Linear(x.shape[1], 3)), x)
    _minimize(solver, standardized, cross_entropy_step, {"inputs": {"features": x}, "targets": y}, l2)
    linear = nn.Linear(x.shape[1], 3).double()
    linear.load_state_dict(standardized.exported())
    # scikit-learn minimises C * sum(loss) + ||W||^2 / 2, i.e. mean(loss) + ||W||^2 / (2 C n): C = 1 / (l2 n)
    reference = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    # the probe stops at a gradient of 1e-6 (scikit-learn here at 1e-10): weights within 1e-4
    np.testing.assert_allclose(linear.weight.detach().numpy(), reference.coef_, atol=1e-4)
    bias = linear.bias.detach().numpy()  # softmax logits are defined up to a constant: compare centred biases
    np.testing.assert_allclose(bias - bias.mean(), reference.intercept_ - reference.intercept_.mean(),
                               rtol=1e-4, atol=1e-4)

    def objective(weight: torch.Tensor, bias: torch.Tensor) -> float:
        logits = x.double() @ weight.double().T + bias.double()
        return float(nn.functional.cross_entropy(logits, y) + 0.5 * l2 * weight.double().pow(2).sum())

    ours = objective(linear.weight.detach(), linear.bias.detach())
    assert ours <= objective(torch.tensor(reference.coef_), torch.tensor(reference.intercept_)) + 1e-6


def test_the_linear_layer_of_a_head() -> None:
    assert linear_layer(nn.Sequential(nn.Dropout(0.1), nn.Linear(4, 2))) is not None
    assert linear_layer(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))) is None
    assert linear_layer(nn.Sequential(nn.Conv1d(4, 4, 3), nn.Linear(4, 2))) is None


class FakeAccelerator:
    """What `evaluate` and the probe use of Accelerate, for one process."""

    @staticmethod
    def unwrap_model(model: nn.Module) -> nn.Module:
        return model

    @staticmethod
    def reduce(tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    @staticmethod
    def gather_for_metrics(value: Any) -> Any:
        return value


class HeadModel(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(width, classes))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(inputs["features"])


def accuracy(evaluation: Evaluation) -> dict[str, float]:
    predicted = evaluation.outputs["probs"].argmax(1)
    return {"val_accuracy": float(np.mean(predicted == evaluation.outputs["labels"])), "val_loss": evaluation.loss}


def test_validation_picks_the_l2_strength_and_its_weights_stay() -> None:
    x, y = blobs(n=60, d=40, seed=1, noise=2.5)  # few noisy examples, many features: L2 matters on held-out data
    val_x, val_y = blobs(n=300, d=40, seed=1, noise=2.5)
    val_x, val_y = val_x[60:], val_y[60:]  # the same centres (seed), other noise draws
    val = [{"inputs": {"features": val_x[i:i + 50]}, "targets": val_y[i:i + 50]} for i in range(0, len(val_y), 50)]
    model = HeadModel(40, 3)
    probe = ExactProbe(cross_entropy_step, accuracy, "val_loss", "min", FakeAccelerator(), grid=(1.0, 1e-2, 1e-5))
    train_loss, details = probe.solve(model, x.unsqueeze(0), y.tolist(), val)
    tried = {row["l2"]: row["val_loss"] for row in details["probe_tried"]}
    assert details["probe_l2"] == min(tried, key=tried.__getitem__) and details["probe_l2"] not in (1.0, 1e-5)
    assert set(tried) == {1.0, 1e-2, 1e-5, 1 / 60}  # the grid and scikit-learn's default strength
    chosen = details["probe_l2"]
    reference = LogisticRegression(C=1 / (chosen * 60), tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    np.testing.assert_allclose(model.head[1].weight.detach().numpy(), reference.coef_, atol=1e-4)
    with torch.no_grad():
        assert train_loss == pytest.approx(float(nn.functional.cross_entropy(model.eval()({"features": x}), y)),
                                           abs=1e-5)


def test_when_the_strongest_strength_wins_the_grid_goes_on_upward() -> None:
    """Labels that the features do not carry (pure noise): validation prefers ever stronger L2, so the probe goes
    past its grid's strongest end, and stops where validation stops improving or at MAX_L2."""
    from graftune.probe import MAX_L2

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 40, generator=generator), torch.arange(60) % 3
    val = [{"inputs": {"features": torch.randn(90, 40, generator=generator)}, "targets": torch.arange(90) % 3}]
    probe = ExactProbe(cross_entropy_step, accuracy, "val_loss", "min", FakeAccelerator(), grid=(1.0, 1e-2))
    _, details = probe.solve(HeadModel(40, 3), x.unsqueeze(0), y.tolist(), val)
    tried = [row["l2"] for row in details["probe_tried"]]
    assert tried[:3] == [1.0, 1 / 60, 1e-2] and tried[3] == 10.0 and max(tried) <= MAX_L2
    assert details["probe_l2"] > 1.0  # noise: the flattest head predicts held-out data best


def image_config(folder: Path, cache_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
        "data": {"train": str(folder), "image_size": 16, "augment": False},
        "strategy": {"name": "linear-probe"},
        "train": {"epochs": 3, "batch_size": 4, "progress": False, "early_stopping": {"patience": None}},
        "cache": {"dir": str(cache_dir)},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_linear_probe_run_is_solved_in_one_epoch(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=10)
    result = graftune.train(image_config(colours, tmp_path / "cache"), out=tmp_path / "run",
                            console=Console(quiet=True))
    rows = rows_of(tmp_path / "run")
    assert result.epochs_run == 1 and [row["solver"] for row in rows] == ["exact"]
    assert "probe: exact" in (tmp_path / "run" / "config.yaml").read_text()
    assert rows[0]["probe_l2"] in {row["l2"] for row in rows[0]["probe_tried"]}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stopped_early"] is False


def test_lp_ft_fine_tunes_from_the_solved_head(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=10)
    graftune.train(image_config(colours, tmp_path / "cache", strategy={"name": "lp-ft"}), out=tmp_path / "run",
                   console=Console(quiet=True))
    rows = rows_of(tmp_path / "run")
    assert [row["stage"] for row in rows] == ["probe", "fine-tune", "fine-tune"]
    assert rows[0]["solver"] == "exact" and "solver" not in rows[1]


@pytest.mark.parametrize(("sections", "reason"), [
    ({"head": {"hidden": [8]}}, "not one linear layer"),
    ({"strategy": {"name": "full", "probe": "exact"}}, "no stage that trains only the head"),
    ({"cache": {"features": False}}, "feature cache is off"),
])
def test_exact_where_it_cannot_apply_is_refused(tmp_path: Path, sections: dict[str, Any], reason: str) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=6)
    config = image_config(colours, tmp_path / "cache", **sections)
    config["strategy"] = {"probe": "exact", **config["strategy"]}
    with pytest.raises(UserError, match=reason):
        graftune.train(config, out=tmp_path / "run", console=Console(quiet=True))
    assert not (tmp_path / "run").exists()


def test_sgd_keeps_the_epochs(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=6)
    result = graftune.train(image_config(colours, tmp_path / "cache", strategy={"probe": "sgd"}),
                            out=tmp_path / "run", console=Console(quiet=True))
    assert result.epochs_run == 3 and all("solver" not in row for row in rows_of(tmp_path / "run"))
