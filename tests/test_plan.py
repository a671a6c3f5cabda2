"""`graftune plan`: the data-size x similarity table on constructed cases, separability that sees whether labels
follow the features, candidates ranked by LogME, the cache reused, and a plan.yaml that trains as it is."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import helpers
import pytest
import yaml
from rich.console import Console

import graftune
from graftune.plan import FEW_PER_CLASS, SIMILAR_SEPARABILITY, Evidence, make_plan, recommend
from tests.e2e.cli import run_cli

QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))  # module:helpers:...
    monkeypatch.setenv("GRAFTUNE_CACHE_DIR", str(tmp_path / "cache"))


def evidence(separability: float, groups: int = 6) -> Evidence:
    accuracy = 0.25 + 0.75 * separability
    return Evidence("m", "image", 1000, groups, 16, 100, -0.5, accuracy, 5, 0.25, separability, 1.0)


@pytest.mark.parametrize(("per_class", "separability", "strategy", "freeze"), [
    (FEW_PER_CLASS / 2, 0.95, "linear-probe", "all"),
    (FEW_PER_CLASS / 2, SIMILAR_SEPARABILITY - 0.2, "partial", 3),  # the lower half of 6 groups
    (FEW_PER_CLASS * 5, 0.95, "lp-ft", "none"),
    (FEW_PER_CLASS * 5, SIMILAR_SEPARABILITY - 0.2, "full", "none"),
])
def test_the_table(per_class: float, separability: float, strategy: str, freeze: str | int) -> None:
    rec = recommend(evidence(separability), per_class)
    assert (rec.strategy, rec.freeze) == (strategy, freeze)
    assert (rec.lr is None) == (strategy == "linear-probe")  # a probe is solved: no rate to pick
    assert rec.few == (per_class < FEW_PER_CLASS) and rec.similar == (separability >= SIMILAR_SEPARABILITY)


def shuffled_labels(source: Path, target: Path) -> Path:
    """The same images with their class folders shuffled: labels no feature can predict."""
    files = sorted(source.glob("*/*.png"))
    labels = [f.parent.name for f in files]
    random.Random(0).shuffle(labels)
    for n, (file, label) in enumerate(zip(files, labels, strict=True)):
        (target / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target / label / f"{n}.png")
    return target


def test_separable_classes_score_far_above_shuffled_labels(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=20)
    noise = shuffled_labels(colours, tmp_path / "noise")
    settings = ["data.image_size=16"]
    clean = make_plan("image-classification", ["module:helpers:tiny_cnn"], str(colours), settings, 1000, QUIET)
    shuffled = make_plan("image-classification", ["module:helpers:tiny_cnn"], str(noise), settings, 1000, QUIET)
    good, bad = clean["candidates"][0], shuffled["candidates"][0]
    assert good["separability"] > 0.8 and bad["separability"] < 0.4
    assert good["logme"] > bad["logme"]
    assert clean["recommendation"]["similar"] and not shuffled["recommendation"]["similar"]
    assert good["examples"] == len(list(colours.glob("*/*.png"))) * 0.7  # the training split (70%), all of it


def test_candidates_are_ranked_by_logme_and_the_sample_is_stratified(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=20)
    plan = make_plan("image-classification", ["module:helpers:tiny_cnn", "module:helpers:counting_cnn"],
                     str(colours), ["data.image_size=16"], 12, QUIET)
    scores = [c["logme"] for c in plan["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 2
    assert plan["sample"] == 12 and all(c["examples"] == 12 for c in plan["candidates"])  # 4 of each colour
    assert plan["recommendation"]["model"] == plan["candidates"][0]["model"]


def test_the_cli_writes_a_plan_that_trains_and_reuses_the_cache(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=12)
    args = ["plan", "--task", "image-classification", "--data", colours, "--model", "module:helpers:counting_cnn",
            "--set", "data.image_size=16", "--out", tmp_path / "plan"]
    helpers.BODY_EXAMPLES["count"] = 0
    code, output = run_cli(*args)
    assert code == 0, output
    first = helpers.BODY_EXAMPLES["count"]
    assert first > 0 and "recommended: module:helpers:counting_cnn" in output
    code, output = run_cli(*args, "--overwrite")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    # The second time the encodings come from the feature cache: the body sees only the loader's probe inputs.
    assert code == 0 and helpers.BODY_EXAMPLES["count"] - first < plan["sample"] / 4
    config = yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text())
    assert config["strategy"]["name"] == plan["recommendation"]["strategy"]
    assert config["data"]["image_size"] == 16  # the user's --set travels into the config
    result = graftune.train(tmp_path / "plan" / "plan.yaml", out=tmp_path / "run",
                            overrides=["train.epochs=1", "train.progress=false"], console=QUIET)
    assert result.epochs_run == 1


def test_an_existing_plan_is_kept(tmp_path: Path) -> None:
    colours = helpers.write_colour_folders(tmp_path / "colours", per_class=6)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.json").write_text("mine")
    code, output = run_cli("plan", "--task", "image-classification", "--data", colours, "--model",
                           "module:helpers:tiny_cnn", "--out", tmp_path / "plan")
    assert code == 2 and "already holds a plan" in output
    assert (tmp_path / "plan" / "plan.json").read_text() == "mine"
