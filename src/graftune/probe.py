"""The exact linear probe: a head-only stage on cached features solved to its optimum, not trained by epochs.

When only the head trains, its inputs are fixed encodings (the feature cache) and a head whose only
parameterised layer is one `nn.Linear` makes the task's loss convex in that layer's weights: for a
classifier, multinomial logistic regression. So the stage does not need epochs of SGD: L-BFGS on the
whole cached training set minimises

    task loss (as the task trains: class weights, label smoothing) + l2 / 2 * ||W||^2   (bias not penalised)

for each L2 strength of a grid, from the strongest down (each solve starts from the last), and keeps the
strength whose head scores best on validation by the run's monitored metric (ties: the strongest, as
scikit-learn's LogisticRegressionCV breaks them). The grid spans 1e-6..1 and includes 1 / n, the
strength of scikit-learn's default `C=1`, so the probe tries what `LogisticRegression()` would fit. When its
strongest end wins (features that carry the target weakly: a ridge regression wants more), it goes on
upward by tens, to 1e4 at most, while validation keeps improving.
`strategy.probe: sgd` keeps the epoch-by-epoch head.

    >>> probe = ExactProbe(task.step, task.validation_metrics, monitor, accelerator)
    >>> train_loss, details = probe.solve(model, cached_train, val_loader)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import default_collate

from graftune.loop import Evaluation, StepFn, evaluate

if TYPE_CHECKING:
    from graftune.config import Config
    from graftune.strategies import Stage
    from graftune.tasks.base import Task

L2_GRID = tuple(10.0 ** k for k in range(0, -7, -1))  # strongest first: each solve warm-starts the next
MAX_L2 = 1e4  # the grid goes on upward from its strongest end, while that end wins, to at most this
MAX_ITERATIONS = 300
# On the gradient of the mean loss (max over coordinates); scikit-learn's lbfgs stops at 1e-4 by default.
GRADIENT_TOLERANCE = 1e-6


def exact_obstacles(settings: Config, stages: list[Stage], task: Task, head: nn.Module,
                    cached_views: int) -> tuple[str, ...]:
    """What keeps the exact probe from this run (none: it applies): it needs a stage that trains only the head,
    a task whose loss is convex in a linear head, a head that is one linear layer, and fixed cached features to
    solve on (`cached_views` training views cached, 0: none)."""
    return tuple(reason for reason, failed in (
        (f"strategy {settings.strategy.name} has no stage that trains only the head",
         not any(stage.train == "head" for stage in stages)),
        (f"task {task.name} does not say its loss is convex in a linear head", not task.convex_head),
        (f"the head is not one linear layer (head.hidden={list(settings.head.hidden)} or a task head with "
         "parameters of its own)", linear_layer(head) is None),
        ("the feature cache is off, or the body's outputs change every epoch (cache.views=0, mixup, or "
         "freeze.batchnorm other than frozen)", not settings.cache.features or not cached_views
         or settings.freeze.batchnorm != "frozen"),
    ) if failed)


def linear_layer(head: nn.Module) -> nn.Linear | None:
    """The head's one parameterised layer when it is an `nn.Linear` (dropout, pooling and other
    parameter-free modules aside): then the head-only loss is convex. None otherwise."""
    weighted = [module for module in head.modules() if any(True for _ in module.parameters(recurse=False))]
    return weighted[0] if len(weighted) == 1 and isinstance(weighted[0], nn.Linear) else None


class HeadOnly(nn.Module):
    """The head as the task's step calls a model on cached features, outside Accelerate's autocast wrapper."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.head(inputs["features"])


class Standardized(nn.Module):
    """What L-BFGS solves for in place of a linear layer: the layer on centred, scaled inputs (x - mean) / scale.

    A change of variables, not of the problem: `exported()` gives the weights W = weight / scale and bias
    b = bias - W mean of the same function, and `penalty()` is ||W||^2, so the optimum is the original
    problem's. `set_strength(l2)` picks scale_j = sqrt(var_j / 4 + l2), which makes the diagonal of the
    Hessian about 1 in every coordinate (softmax curvature is at most 1/4 per unit of input variance, the
    penalty adds l2), keeping the function as it is. Pooled features have means far from zero and scales
    far apart: without this L-BFGS needs hundreds of iterations per strength where it needs tens.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    scale: torch.Tensor

    def __init__(self, linear: nn.Linear, inputs: torch.Tensor) -> None:
        super().__init__()
        flat = inputs.reshape(-1, linear.in_features).double()
        # A layer without a bias cannot absorb the centring.
        self.register_buffer("mean", flat.mean(0) if linear.bias is not None else torch.zeros_like(flat[0]))
        self.register_buffer("variance", (flat - self.mean).pow(2).mean(0))
        self.register_buffer("scale", torch.ones_like(self.variance))
        self.weight = nn.Parameter(torch.zeros(linear.out_features, linear.in_features, dtype=torch.float64,
                                               device=flat.device))
        self.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=torch.float64, device=flat.device)) \
            if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear((x - self.mean) / self.scale, self.weight, self.bias)

    def penalty(self) -> torch.Tensor:
        return (self.weight / self.scale).pow(2).sum()

    def set_strength(self, l2: float) -> None:
        """Rescale for the L2 strength about to be solved; the function stays the same (a warm start)."""
        with torch.no_grad():
            weight = self.weight / self.scale
            self.scale.copy_((self.variance / 4 + l2).sqrt().clamp(min=1e-12))
            self.weight.copy_(weight * self.scale)

    def exported(self) -> dict[str, torch.Tensor]:
        """The state dict of the linear layer this stands for."""
        with torch.no_grad():
            weight = self.weight / self.scale
            state = {"weight": weight.clone()}
            if self.bias is not None:
                state["bias"] = self.bias - weight @ self.mean
        return state


def standardized_solver(head: nn.Module, features: torch.Tensor) -> tuple[HeadOnly, Standardized]:
    """A float64 copy of `head` with its linear layer replaced by a `Standardized` one fitted to the inputs that
    layer sees on `features` (whatever parameter-free modules come before it). Dropout is off (eval mode):
    the optimum of the plain loss."""
    solver = HeadOnly(copy.deepcopy(head).double()).eval()
    linear = linear_layer(solver.head)
    assert linear is not None, "the exact probe needs a linear head"
    name = next(n for n, m in solver.head.named_modules() if m is linear)
    seen: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    with torch.no_grad():
        solver({"features": features})
    hook.remove()
    standardized = Standardized(linear, seen[0])
    parent_name, _, child = name.rpartition(".")
    parent = solver.head.get_submodule(parent_name) if parent_name else solver.head
    if child:
        setattr(parent, child, standardized)
    else:  # the head is the linear layer itself
        solver.head = standardized
    return solver, standardized


@dataclass
class ExactProbe:
    """Solves a head-only stage (see the module docstring); `monitor` is the validation metric and its mode."""

    step: StepFn
    validation_metrics: Callable[[Evaluation], dict[str, float]]
    metric: str
    mode: str  # "max" | "min"
    accelerator: Any
    grid: tuple[float, ...] = L2_GRID

    def solve(self, model: nn.Module, features: torch.Tensor, targets: list[Any], val_loader: Any) -> \
            tuple[float, dict[str, Any]]:
        """Fit the head of `model` on every cached view (`features`: views x N x ...) and leave the best
        strength's weights in it; return the training loss there (without the L2 term) and what was tried."""
        head = self.accelerator.unwrap_model(model).head
        target = linear_layer(head)
        assert target is not None, "the exact probe needs a linear head"
        device = target.weight.device
        # float64: weakly regularised problems are ill-conditioned, and float32 L-BFGS stops about 1e-3 away
        # from the optimum there.
        batch = {"inputs": {"features": features.reshape(-1, *features.shape[2:]).to(device, torch.float64)},
                 "targets": default_collate(list(targets) * features.shape[0]).to(device)}
        solver, standardized = standardized_solver(head, batch["inputs"]["features"])
        grid = sorted({*self.grid, 1.0 / len(batch["targets"])}, reverse=True)
        tried: list[dict[str, Any]] = []
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None

        def attempt(l2: float) -> None:
            nonlocal best, best_state
            iterations = _minimize(solver, standardized, self.step, batch, l2)
            target.load_state_dict({name: value.to(target.weight.dtype)
                                    for name, value in standardized.exported().items()})
            scores = self.validation_metrics(evaluate(model, val_loader, self.step, self.accelerator))
            tried.append({"l2": l2, "iterations": iterations, self.metric: scores[self.metric],
                          "val_loss": scores["val_loss"]})
            rank = scores[self.metric] if self.mode == "max" else -scores[self.metric]
            # strict: among equals the first tried stays (downward the strongest, upward the weaker)
            if best is None or rank > best[0]:
                best = (rank, l2)
                best_state = {name: value.detach().clone() for name, value in target.state_dict().items()}

        for l2 in grid:
            attempt(l2)
        # The strongest strength won: the features carry little (ridge regression on a weakly encoded target),
        # so go on upward while validation keeps improving, as RidgeCV's grid would.
        strength = grid[0]
        while best is not None and best[1] == strength and strength < MAX_L2:
            strength *= 10
            attempt(strength)
        assert best is not None and best_state is not None
        target.load_state_dict(best_state)
        with torch.no_grad():
            train_loss = float(self.step(HeadOnly(head).eval(), _float32(batch), True).loss)
        return train_loss, {"solver": "exact", "probe_l2": best[1], "probe_tried": tried}


def _float32(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "inputs": {"features": batch["inputs"]["features"].float()}}


def _minimize(solver: nn.Module, linear: Standardized, step: StepFn, batch: dict[str, Any], l2: float) -> int:
    """L-BFGS with a strong-Wolfe line search on the whole batch; returns the iterations it took."""
    linear.set_strength(l2)
    params = [p for p in (linear.weight, linear.bias) if p is not None]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=MAX_ITERATIONS, max_eval=4 * MAX_ITERATIONS,
                                  history_size=20, tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = step(solver, batch, True).loss + 0.5 * l2 * linear.penalty()
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    return int(state.get("n_iter", 0))
