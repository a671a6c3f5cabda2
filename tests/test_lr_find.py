"""The learning-rate range test: fastai's rules on constructed curves, a test that leaves the model as it was,
scales every group together and stops when the loss diverges, and `optim.lr: auto` through a whole run."""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

import graftune
import graftune.run
from graftune.config import validate
from graftune.errors import UserError
from graftune.lr_find import Average, RangeTest, range_test_stage, suggest, valley_index
from graftune.run import Run, find_lr
from graftune.strategies import plan, strategy_defaults

QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.write_colour_folders(tmp_path_factory.mktemp("data") / "colours")


def config(data: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                           "data": {"train": str(data), "image_size": 16, "augment": False},
                           "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    return {**raw, **sections}


# --- the rules --------------------------------------------------------------------------------------------

# The longest strictly decreasing sequence is 3.0 2.9 2.6 2.0 1.5 1.4 1.3 1.2 (8 points, ending at point 9;
# 1.6 at point 8 is skipped, so it is not contiguous). valley: 9 - 8 + 8 // 3 + 8 // 6 = point 4. The loss
# falls fastest from point 3 to 4 (-0.6); its lowest is point 9.
CURVE = [3.0, 2.9, 3.1, 2.6, 2.0, 1.5, 1.4, 1.3, 1.6, 1.2, 2.5, 4.0]


def test_valley_on_a_constructed_curve() -> None:
    assert valley_index(np.array(CURVE)) == 4
    assert valley_index(np.array([1.0, 2.0, 3.0])) == 0  # never decreasing: the first point, as fastai


def test_the_rules_read_fastais_part_of_the_curve() -> None:
    """The first tenth of the steps (2 of 20) and, after divergence, the last 5 points are left out; so is
    everything from the first loss that is not finite."""
    rates = RangeTest(1e-5, 1.0, 20).rates()
    diverged = [9.0, 8.0, *CURVE, 5.0, 6.0, 7.0, 8.0, 40.0]  # stopped at step 19 of 20
    expected = {"valley": rates[2 + 4], "minimum/10": rates[2 + 9] / 10, "steepest": rates[2 + 3]}
    rounded = {name: float(f"{rate:.3g}") for name, rate in expected.items()}
    assert suggest(rates[:19], diverged, 20, diverged=True) == rounded
    ran_out = [9.0, 8.0, *CURVE, math.nan]  # reached no divergence but a NaN loss
    assert suggest(rates[:15], ran_out, 20, diverged=False) == rounded
    assert suggest(rates[:8], [1.0, 0.9, 0.8, 0.7, 0.6, 9, 9, 9], 20, diverged=True) is None  # 1 point left
    assert suggest(rates[:4], [1.0, 0.9, 0.8, 9.0], 5, diverged=True) is None  # fewer points than the end left out


def test_the_smoothed_loss_is_a_debiased_moving_average() -> None:
    constant = Average()
    assert [constant.add(2.0) for _ in range(3)] == pytest.approx([2.0, 2.0, 2.0])  # no pull toward zero
    falling = Average()
    assert [falling.add(1.0), falling.add(0.0)] == pytest.approx([1.0, 0.98 * 0.02 / (1 - 0.98 ** 2)])


@pytest.mark.parametrize(("strategy", "stage"), [("linear-probe", "linear-probe"), ("full", "full"),
                                                 ("gradual", "top-1"), ("lp-ft", "fine-tune"),
                                                 ("fastai", "unfrozen")])
def test_the_stage_tested_is_the_first_that_trains_the_body(strategy: str, stage: str, colours: Path) -> None:
    settings = validate(config(colours, strategy={"name": strategy}, optim={"lr": 1e-4, "head_lr": 1e-3}))
    stages = plan(strategy_defaults(settings), 4)
    assert stages[range_test_stage(stages)].name == stage


def test_a_range_it_cannot_test_is_refused() -> None:
    with pytest.raises(UserError, match="--start below --end"):
        RangeTest(1.0, 0.1)
    with pytest.raises(UserError, match="--steps 4"):
        RangeTest(steps=4)
    with pytest.raises(UserError, match="--start 0"):
        RangeTest(start=0.0)


# --- the test on a run ------------------------------------------------------------------------------------


def spy_on_steps(run: Run, record: Any) -> None:
    """Call `record()` before every training step the range test takes."""
    real = run.task.step

    def step(model: Any, batch: Any, train: bool) -> Any:
        record()
        return real(model, batch, train)

    run.task.step = step  # type: ignore[method-assign]


def test_the_model_and_random_state_are_left_as_they_were(colours: Path) -> None:
    run = Run.detached(validate(config(colours, strategy={"name": "full"})), QUIET, stage=range_test_stage)
    batchnorm = run.model.body.model.layer1[0].bn
    before = {name: tensor.clone() for name, tensor in run.model.state_dict().items()}
    statistics: list[torch.Tensor] = []
    spy_on_steps(run, lambda: statistics.append(batchnorm.running_mean.clone()))
    modes = [module.training for module in run.model.modules()]
    rates = [group["lr"] for group in run.optimizer.param_groups]
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    generators = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())

    finding = run.range_test(RangeTest(1e-4, 1.0, 12))

    assert not torch.equal(statistics[-1], before["body.model.layer1.0.bn.running_mean"])  # the test moved them
    after = run.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # bit for bit
    assert [module.training for module in run.model.modules()] == modes
    assert [group["lr"] for group in run.optimizer.param_groups] == rates and not run.optimizer.state
    assert random.getstate() == generators[0]
    assert np.array_equal(np.random.get_state()[1], generators[1])
    assert torch.equal(torch.get_rng_state(), generators[2])
    assert finding.stage == "full" and 1e-4 <= finding.lr <= 1.0


def test_every_group_moves_together_and_the_test_stops_when_the_loss_diverges(colours: Path) -> None:
    cfg = validate(config(colours, strategy={"name": "discriminative", "lr_decay": 0.5}))
    run = Run.detached(cfg, QUIET, stage=range_test_stage)
    stage_rates = [group["initial_lr"] for group in run.optimizer.param_groups]
    assert len(set(stage_rates)) > 2  # discriminative rates: the ratios are worth checking
    seen: list[list[float]] = []
    spy_on_steps(run, lambda: seen.append([group["lr"] for group in run.optimizer.param_groups]))

    finding = run.range_test(RangeTest(1e-3, 1e4, 30))

    assert finding.stopped in ("diverged", "not finite") and len(finding.rates) < 30
    smoothed = finding.smoothed
    assert not math.isfinite(smoothed[-1]) or smoothed[-1] > 4 * min(smoothed[:-1])
    assert finding.base_lr == run.settings.optim.lr == 3e-4 and len(seen) == len(finding.rates)
    for rate, rates in zip(finding.rates, seen, strict=True):
        assert [r / s for r, s in zip(rates, stage_rates, strict=True)] == pytest.approx(
            [rate / finding.base_lr] * len(rates))


def test_optim_lr_auto_trains_with_the_rate_found_and_records_it(colours: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 steps instead of 100 keep this test short; the path is the one every auto run takes.
    monkeypatch.setattr(graftune.run, "find_lr", functools.partial(find_lr, test=RangeTest(1e-5, 10.0, 30)))
    raw = config(colours, freeze={"body": 2}, optim={"lr": "auto"})
    graftune.train(raw, tmp_path / "auto", console=QUIET, trust_code=True)

    settings = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    found = json.loads((tmp_path / "auto" / "lr_find.json").read_text())
    assert isinstance(settings["optim"]["lr"], float) and settings["optim"]["lr"] == found["lr"]
    assert settings["optim"]["head_lr"] == min(1e-3, 20 * found["lr"])  # derived from the rate found
    assert found["stage"] == "partial" and found["rule"] == "valley" and found["steps"] == 30
    assert (tmp_path / "auto" / "plots" / "lr_find.png").stat().st_size > 0

    # The test left nothing behind: a run given that rate trains exactly the same way.
    given = config(colours, freeze={"body": 2}, optim={"lr": found["lr"]})
    graftune.train(given, tmp_path / "given", console=QUIET, trust_code=True)
    assert _rows(tmp_path / "auto") == _rows(tmp_path / "given")

    def searched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a resume searched again")

    monkeypatch.setattr(graftune.run, "find_lr", searched)
    graftune.train({}, tmp_path / "auto", overrides=["train.epochs=3"], resume=True, console=QUIET,
                   trust_code=True)
    assert json.loads((tmp_path / "auto" / "lr_find.json").read_text()) == found

    (tmp_path / "auto" / "config.yaml").write_text(yaml.safe_dump({**settings, "optim": {
        **settings["optim"], "lr": "auto"}}))
    with pytest.raises(UserError, match=r"optim\.lr is 'auto'"):
        graftune.train({}, tmp_path / "auto", overrides=["train.epochs=4"], resume=True, console=QUIET,
                       trust_code=True)


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if "seconds" not in key} for row in rows]
