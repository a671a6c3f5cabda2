"""The loop runs any task's step: training loss weighted by examples, scheduler steps per optimizer step,
the penalty in the gradient but not in the reported loss, and evaluation that keeps every output in order."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from graftune.loop import Batch, Step, evaluate, train_one_epoch


@pytest.fixture
def accelerator() -> Accelerator:
    AcceleratorState._reset_state()
    return Accelerator(cpu=True, mixed_precision="no")


def batches(sizes: list[int], seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [{"inputs": {"x": torch.randn(n, 3, generator=generator)}, "targets": torch.randn(n, generator=generator)}
            for n in sizes]


def squared_error(model: nn.Module, batch: Batch, train: bool) -> Step:
    """A regression step: mean squared error, with the predictions as outputs when evaluating."""
    predicted = model(batch["inputs"]["x"]).squeeze(-1)
    loss = (predicted - batch["targets"]).pow(2).mean()
    return Step(loss, len(batch["targets"]), {} if train else {"predicted": predicted, "true": batch["targets"]})


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def test_training_loss_is_the_mean_over_examples_not_batches(accelerator: Accelerator) -> None:
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no step changes the model: losses are comparable
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    data = batches([1, 7])
    loss = train_one_epoch(model, data, optimizer, scheduler, accelerator, squared_error, grad_clip=None)
    with torch.no_grad():
        per_example = torch.cat([(model(b["inputs"]["x"]).squeeze(-1) - b["targets"]).pow(2) for b in data])
    assert loss == pytest.approx(float(per_example.mean()), rel=1e-6)
    assert loss != pytest.approx(float(sum(e.mean() for e in per_example.split([1, 7])) / 2), rel=1e-3)


def test_scheduler_steps_once_per_optimizer_step_under_accumulation() -> None:
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = linear()
    optimizer = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda _: 1.0)
    train_one_epoch(model, batches([2, 2, 2, 2]), optimizer, scheduler, accelerator, squared_error, grad_clip=1.0)
    assert scheduler.last_epoch == 2  # four batches, two optimizer steps


def test_penalty_moves_the_weights_but_not_the_reported_loss(accelerator: Accelerator) -> None:
    data = batches([4, 4])
    results: dict[str, Any] = {}
    for name, strength in (("plain", 0.0), ("pulled", 10.0)):
        model = linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

        def penalty(model: nn.Module = model, strength: float = strength) -> torch.Tensor:
            return strength * model.weight.pow(2).sum()

        loss = train_one_epoch(model, data[:1], optimizer, scheduler, accelerator, squared_error, None,
                               penalty=penalty)
        results[name] = (loss, model.weight.detach().clone())
    assert results["plain"][0] == pytest.approx(results["pulled"][0])  # the first batch's loss, before any step
    assert results["pulled"][1].norm() < results["plain"][1].norm()


def test_evaluate_keeps_outputs_in_order_and_weights_the_loss(accelerator: Accelerator) -> None:
    model = linear()
    data = batches([3, 1, 5], seed=1)
    evaluation = evaluate(model, data, squared_error, accelerator)
    with torch.no_grad():
        predicted = torch.cat([model(b["inputs"]["x"]).squeeze(-1) for b in data])
    true = torch.cat([b["targets"] for b in data])
    assert evaluation.count == 9
    assert evaluation.outputs["predicted"] == pytest.approx(predicted.numpy(), abs=1e-6)
    assert evaluation.outputs["true"] == pytest.approx(true.numpy())
    assert evaluation.loss == pytest.approx(float((predicted - true).pow(2).mean()), rel=1e-6)
    assert not model.training


def test_evaluate_an_empty_loader(accelerator: Accelerator) -> None:
    evaluation = evaluate(linear(), [], squared_error, accelerator)
    assert (evaluation.loss, evaluation.count, evaluation.outputs) == (0.0, 0, {})
