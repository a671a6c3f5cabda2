"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's `lr_find`), and the rate it picks.

The test trains the stage that will train, one optimizer step at a time, while the rate rises
exponentially from `start` (1e-7) to `end` (10) over `steps` (100) steps, cycling the training batches
when an epoch is shorter. Each step's loss is smoothed by an exponential moving average with bias
correction (beta 0.98, as fastai); the test stops early when the smoothed loss exceeds 4x the best
seen so far, or is no longer finite.

Which stage: the first stage of the strategy that trains part of the body, or the first stage when
none does (linear-probe). Its optimizer groups keep the rates the strategy gives them relative to each
other (the body groups' discriminative rates and the head's); the test multiplies them all by one
factor, and the rate it reports is the value of `optim.lr` that factor amounts to.

The rate picked (`lr`) follows fastai's default rule, `valley`, on fastai's part of the curve (the first
tenth of the steps left out, where the loss has barely moved; and the last five points when the test
stopped on divergence): the longest strictly decreasing sequence of smoothed losses, and the rate
about halfway along it (point `end - L + floor(L/3) + floor(L/6)` for a sequence of L points ending at
point `end`). Also reported: `minimum/10` (a tenth of the rate at the lowest smoothed loss) and
`steepest` (the rate where the loss falls fastest against log rate). Each is rounded to 3 significant
digits, so the rate printed is the rate a run records.

Afterwards the model's parameters and buffers (BatchNorm statistics), its train/eval modes, the
optimizer's groups, rates and state and the random number generators are as they were: the test
leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graftune.errors import UserError
from graftune.loop import Batch, StepFn, train_one_epoch
from graftune.plots import lr_find_png
from graftune.progress import progress_bar
from graftune.safe_files import Confined
from graftune.strategies import Stage

BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGED = 4.0  # fastai's LRFinder: stop when the smoothed loss is 4x the best
SKIP_END = 5  # fastai's lr_find: the last points before divergence are the blow-up, not the valley
RULE = "valley"
MIN_STEPS = 5


@dataclass(frozen=True)
class RangeTest:
    """The rates tested: `steps` values of `optim.lr` from `start` to `end`, evenly spaced on a log scale."""

    start: float = 1e-7
    end: float = 10.0
    steps: int = 100

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and self.start > 0):
            raise UserError(f"--start {self.start:g}: the first rate tested must be a positive number.")
        if not (math.isfinite(self.end) and self.end > self.start):
            raise UserError(f"--start {self.start:g} --end {self.end:g}: the test needs --start below --end.")
        if self.steps < MIN_STEPS:
            raise UserError(f"--steps {self.steps}: the test needs at least {MIN_STEPS} steps to draw a curve.")

    def rates(self) -> list[float]:
        return [float(rate) for rate in np.geomspace(self.start, self.end, self.steps)]


@dataclass
class Trial:
    """What the test trains: a run's model and optimizer as its stage starts (Accelerate-prepared), the
    stage's training batches and the task's step."""

    model: nn.Module
    optimizer: Any  # Accelerate's wrapper; its groups' `initial_lr` are the stage's rates (optim.build_schedule)
    accelerator: Any
    batches: Iterable[Batch]  # one epoch of the stage's training batches (live, or cached encodings)
    step: StepFn
    base_lr: float  # the optim.lr the stage's rates were made from
    grad_clip: float | None = None
    penalty: Callable[[], torch.Tensor] | None = None


@dataclass(frozen=True)
class Finding:
    """A range test's curve and the rates read from it; `lr` is the one picked (by `rule`)."""

    stage: str
    base_lr: float
    test: RangeTest
    rates: list[float]  # values of optim.lr, one per step run
    losses: list[float]  # each step's loss (the mean over its batches)
    smoothed: list[float]
    stopped: str  # "end", "diverged" (4x the best smoothed loss) or "not finite"
    suggestions: dict[str, float]
    seconds: float
    rule: str = RULE

    @property
    def lr(self) -> float:
        return self.suggestions[self.rule]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: losses that are not finite become null."""
        return {"lr": self.lr, "rule": self.rule, "suggestions": self.suggestions, "stage": self.stage,
                "base_lr": self.base_lr, **asdict(self.test), "steps_run": len(self.rates), "stopped": self.stopped,
                "seconds": round(self.seconds, 3), "rates": self.rates, "losses": _plain(self.losses),
                "smoothed": _plain(self.smoothed)}


def range_test_stage(stages: list[Stage]) -> int:
    """The stage the test trains: the first that trains part of the body, or the first (linear-probe)."""
    return next((i for i, stage in enumerate(stages) if stage.train != "head"), 0)


def find(trial: Trial, test: RangeTest, stage: str, progress: bool = False) -> Finding:
    """Run the range test on `trial`, leave it as it was, and read the rates off the curve."""
    started = time.perf_counter()
    with left_as_it_was(trial):
        rates, losses, smoothed, stopped = _run(trial, test, progress)
    seconds = time.perf_counter() - started
    suggestions = suggest(rates, smoothed, test.steps, diverged=stopped != "end")
    if suggestions is None:
        raise UserError(f"the learning-rate range test stopped after {len(rates)} of {test.steps} steps (the loss "
                        f"{'was no longer finite' if stopped == 'not finite' else 'diverged'} at optim.lr="
                        f"{rates[-1]:.3g}): too few points to pick a rate from. Start lower (lr-find --start) or "
                        "give optim.lr.")
    return Finding(stage, trial.base_lr, test, rates, losses, smoothed, stopped, suggestions, seconds)


def _run(trial: Trial, test: RangeTest, progress: bool) -> tuple[list[float], list[float], list[float], str]:
    rates = test.rates()
    optimizer = trial.optimizer.optimizer if hasattr(trial.optimizer, "optimizer") else trial.optimizer
    # Every group moves by the same factor from its stage rate (`initial_lr`); train_one_epoch steps the
    # schedule after each optimizer step, so step i runs at rates[i].
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: rates[min(i, len(rates) - 1)] / trial.base_lr)
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped = Average(), math.inf, "end"
    batches = _cycled(trial.batches)
    with progress_bar(progress, "range test", test.steps) as advance:
        try:
            for _ in rates:
                loss = train_one_epoch(trial.model, _one_step(batches, trial.accelerator), trial.optimizer, schedule,
                                       trial.accelerator, trial.step, trial.grad_clip, penalty=trial.penalty)
                losses.append(loss)
                smoothed.append(average.add(loss))
                advance()
                if not math.isfinite(smoothed[-1]):
                    stopped = "not finite"
                    break
                best = min(best, smoothed[-1])
                if smoothed[-1] > DIVERGED * best:
                    stopped = "diverged"
                    break
        finally:
            batches.close()
    return rates[:len(losses)], losses, smoothed, stopped


class Average:
    """fastai's smoothed loss: an exponential moving average from zero, divided by (1 - beta^n) so the
    first values are not pulled toward zero."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta, self.value, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.value = self.beta * self.value + (1 - self.beta) * loss
        return self.value / (1 - self.beta ** self.count)


def _cycled(loader: Iterable[Batch]) -> Generator[Batch, None, None]:
    """The training batches epoch after epoch (epochs 1, 2, ... as the run would draw them)."""
    epoch = 0
    try:
        while True:
            epoch += 1
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise UserError("the range test has no training batches to train on.")
    finally:
        end = getattr(loader, "end", None)
        if callable(end):
            end()  # an Accelerate loader left mid-epoch would otherwise stay the active one


def _one_step(batches: Iterator[Batch], accelerator: Any) -> Iterator[Batch]:
    """The batches of one optimizer step: Accelerate steps after train.grad_accum batches (or at an epoch's
    end), so with accumulation a step of the test is the step the run would take."""
    while True:
        yield next(batches)
        if accelerator.sync_gradients:
            return


# ------------------------------------------------------------------------------------------ the rules

def suggest(rates: list[float], smoothed: list[float], steps: int, diverged: bool) -> dict[str, float] | None:
    """valley, minimum/10 and steepest on the part of the curve fastai reads (see the module docstring),
    up to the first loss that is not finite; None when fewer than two points are left."""
    keep = slice(steps // 10, max(0, len(smoothed) - SKIP_END) if diverged else len(smoothed))
    r, losses = np.asarray(rates[keep], dtype=float), np.asarray(smoothed[keep], dtype=float)
    finite = np.isfinite(losses)
    if not finite.all():
        r, losses = r[:int(np.argmin(finite))], losses[:int(np.argmin(finite))]
    if len(losses) < 2:
        return None
    found = {RULE: r[valley_index(losses)], "minimum/10": r[int(np.argmin(losses))] / 10,
             "steepest": r[steepest_index(r, losses)]}
    return {name: float(f"{rate:.3g}") for name, rate in found.items()}


def valley_index(losses: np.ndarray) -> int:
    """fastai's `valley`: the longest strictly decreasing sequence of losses (not necessarily contiguous;
    the first to reach that length), and the point about halfway along it."""
    longest = np.ones(len(losses), dtype=int)  # points in the longest decreasing sequence ending at i
    for i in range(1, len(losses)):
        before = longest[:i][losses[:i] > losses[i]]
        if before.size:
            longest[i] = before.max() + 1
    end = int(np.argmax(longest))
    length = int(longest[end])
    return max(0, end - length + length // 3 + length // 6)


def steepest_index(rates: np.ndarray, losses: np.ndarray) -> int:
    """fastai's `steep`: the start of the segment where the loss falls fastest against log rate."""
    return int(np.argmin(np.diff(losses) / np.diff(np.log(rates))))


# ------------------------------------------------------------------------------- leaving no trace

@contextmanager
def left_as_it_was(trial: Trial) -> Iterator[None]:
    """Restore, exactly, what training changes: parameters and buffers, train/eval modes, the optimizer's
    groups (with their rates) and state, Accelerate's fp16 loss scale and the random number generators."""
    model, optimizer = trial.model, getattr(trial.optimizer, "optimizer", trial.optimizer)
    tensors = {name: tensor.detach().to("cpu", copy=True) for name, tensor in _tensors(model)}
    modes = {module: module.training for module in model.modules()}
    groups = [{**group, "params": list(group["params"])} for group in optimizer.param_groups]
    state = {param: {key: value.clone() if torch.is_tensor(value) else value for key, value in entry.items()}
             for param, entry in optimizer.state.items()}
    scaler = getattr(trial.accelerator, "scaler", None)
    scale = scaler.state_dict() if scaler is not None else None
    with kept_random_state():
        try:
            yield
        finally:
            with torch.no_grad():
                for name, tensor in _tensors(model):
                    tensor.copy_(tensors[name])
            for module, mode in modes.items():
                module.training = mode
            optimizer.param_groups[:] = groups
            optimizer.state.clear()
            optimizer.state.update(state)
            if scaler is not None:
                scaler.load_state_dict(scale)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer, non-persistent buffers too (state_dict leaves those out)."""
    yield from model.named_parameters()
    yield from ((name, buffer) for name, buffer in model.named_buffers() if buffer is not None)


@contextmanager
def kept_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's generators (CPU and every CUDA device) as they were before."""
    python, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


# ------------------------------------------------------------------------------------------ output

def output_folder(path: str | Path, overwrite: bool) -> Path:
    """The folder `lr-find --out` writes into, refused before any work when it holds something already."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: exists and is a file. Choose another --out.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"--out {folder}: the folder is not empty. Choose another --out, or give --overwrite to "
                        "replace lr_find.json and lr_find.png in it (nothing else is touched).")
    return folder


def write(finding: Finding, files: Confined, json_path: Path, plot_path: Path) -> None:
    """lr_find.json and the loss-versus-rate plot, inside the folder `files` guards (a run, or lr-find's --out)."""
    files.write_text(json_path, json.dumps(finding.to_json(), indent=2))
    files.write_bytes(plot_path, lr_find_png(finding.rates, finding.losses, finding.smoothed, finding.suggestions,
                                             finding.rule, f"Range test, stage {finding.stage}"))


def _plain(values: list[float]) -> list[float | None]:
    return [value if math.isfinite(value) else None for value in values]
