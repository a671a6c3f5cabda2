"""`graftune plan`: which pre-trained model, which strategy, what to freeze and at what rate, decided before training.

For each candidate model, on a stratified sample of the training split, the frozen body's pooled encodings
come from the feature cache (computed once; a later run on the same inputs finds them there). Each
candidate gets:

- LogME (graftune/transferability.py): how well a Bayesian linear model explains the labels from the
  features, per example; it ranks candidate models (higher is better);
- a cross-validated linear probe: scikit-learn's logistic regression on standardised features, k-fold
  (k = 5, or the smallest class's count in the sample), mean accuracy;
- separability: that accuracy above chance, as a share of what is left above chance,
  (accuracy - chance) / (1 - chance), chance being the largest class's share.

The best candidate by LogME is the model. Its regime follows the usual data-size x similarity table,
with two stated thresholds: data is *few* below FEW_PER_CLASS training examples in the median class,
and the task is *similar* to what the model learned when separability reaches SIMILAR_SEPARABILITY:

                      similar (features separate)       different (they do not)
    few examples      linear-probe: freeze all          partial: freeze the lower half of the groups
    many examples     lp-ft: probe, then fine-tune all  full: fine-tune everything

The plan is printed, saved as OUT/plan.json (every candidate's evidence, the regime and the reasons) and
as OUT/plan.yaml, a config `graftune train OUT/plan.yaml --out RUN` runs as it is.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from graftune.config import Config, load_config
from graftune.data.splits import Splits
from graftune.errors import UserError
from graftune.features import Split
from graftune.run import Permissions, Run
from graftune.safe_files import Confined
from graftune.sampling import sorted_batches
from graftune.settings import BODY_LR, with_absolute_paths
from graftune.tasks import get_task
from graftune.tasks.base import TaskData
from graftune.transferability import logme

FEW_PER_CLASS = 100  # below this many training examples in the median class, training a whole body overfits
SIMILAR_SEPARABILITY = 0.75  # a linear probe on the frozen features gets 3/4 of the way from chance to perfect
MAX_FOLDS = 5


@dataclass(frozen=True)
class Evidence:
    """What the sample shows about one candidate."""

    model: str
    modality: str  # the backbone's: it decides the default body rate
    parameters: int
    layer_groups: int
    feature_dim: int
    examples: int
    logme: float
    cv_accuracy: float
    cv_folds: int
    chance: float
    separability: float
    seconds: float


@dataclass(frozen=True)
class Recommendation:
    """The regime of the chosen model and the settings it calls for."""

    model: str
    examples_per_class: float
    few: bool
    similar: bool
    strategy: str
    freeze: str | int
    lr: float | None  # None: a linear probe is solved exactly, no rate to choose
    reasons: list[str]


def recommend(evidence: Evidence, examples_per_class: float) -> Recommendation:
    """The data-size x similarity table (see the module docstring) for the chosen candidate."""
    few = examples_per_class < FEW_PER_CLASS
    similar = evidence.separability >= SIMILAR_SEPARABILITY
    size = (f"{examples_per_class:g} training examples in the median class: "
            f"{'few' if few else 'many'} (threshold {FEW_PER_CLASS})")
    likeness = (f"a linear probe on the frozen features reaches {evidence.cv_accuracy:.3f} (chance "
                f"{evidence.chance:.3f}, separability {evidence.separability:.2f}): "
                f"{'similar' if similar else 'different'} (threshold {SIMILAR_SEPARABILITY})")
    lr = BODY_LR[evidence.modality]
    if few and similar:
        choice: tuple[str, str | int, float | None, str] = (
            "linear-probe", "all", None, "the frozen features already separate the classes and few examples "
            "would overfit a trained body: train only the head (solved exactly)")
    elif few:
        frozen = max(1, evidence.layer_groups // 2)
        choice = ("partial", frozen, lr, f"the top features do not fit the task but few examples cannot retrain "
                  f"everything: keep the lower {frozen} of {evidence.layer_groups} layer groups (general features) "
                  "frozen, train the rest")
    elif similar:
        choice = ("lp-ft", "none", lr, "the features fit and there is enough data to adapt them: solve the head "
                  "first, then fine-tune everything at a low rate, so a random head does not distort the features")
    else:
        choice = ("full", "none", lr, "the features do not fit and there is enough data: fine-tune everything")
    strategy, freeze, rate, why = choice
    return Recommendation(evidence.model, examples_per_class, few, similar, strategy, freeze, rate,
                          [size, likeness, why])


def sample(data: TaskData, size: int, seed: int) -> TaskData:
    """At most `size` training examples, the same share of each class (all of a class smaller than its share)."""
    by_label: dict[str, list[Any]] = defaultdict(list)
    for example in data.splits.train:
        by_label[example.label].append(example)
    share = math.ceil(size / max(1, len(by_label)))
    rng = random.Random(seed)
    chosen = [e for label in sorted(by_label) for e in rng.sample(by_label[label], min(share, len(by_label[label])))]
    # The plan reads only the training sample; a few validation and test examples keep the run's setup whole.
    splits = Splits(chosen, data.splits.val[:8], data.splits.test[:8])
    return TaskData(splits, data.schema)


def score(cfg: Config, data: TaskData, console: Console, permissions: Permissions) -> Evidence:
    """Encode the sample with the candidate's frozen body (through the feature cache) and score it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    run = Run.detached(cfg, console, permissions, data=data)
    assert run.loaders.cache is not None, "plan configs keep the feature cache on"
    items = run.items["train"]
    batches = sorted_batches(run.lengths, run.settings.train.eval_batch_size, len(items))
    encoded = run.loaders.cache.encodings(Split(items, batches))
    # One vector per example: per-frame encodings (video) are averaged over frames for the scores.
    features = encoded.reshape(len(items), -1, encoded.shape[-1]).mean(1).double().numpy()
    labels = np.array([target for _, target in items])
    counts = Counter(labels.tolist())
    folds = min(MAX_FOLDS, min(counts.values()))
    if folds < 2 or len(counts) < 2:
        raise UserError(f"--data {cfg.data.train}: plan needs two classes or more with at least 2 examples each in "
                        f"the sample (counts: {dict(sorted(Counter(e.label for e in data.splits.train).items()))}).")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2_000))
    accuracy = float(np.mean(cross_val_score(probe, features, labels,
                                             cv=StratifiedKFold(folds, shuffle=True, random_state=0))))
    chance = max(counts.values()) / len(labels)
    parameters = sum(p.numel() for p in run.model.body.parameters())
    return Evidence(cfg.model.source, run.backbone.modality, parameters, len(run.backbone.groups), features.shape[1],
                    len(labels), logme(features, labels), accuracy, folds, chance, (accuracy - chance) / (1 - chance),
                    round(time.perf_counter() - started, 1))


def candidate_config(task: str, model: str, data: str, overrides: list[str]) -> Config:
    """The candidate's config: a frozen body with the cache on, no augmentation (plain encodings)."""
    base = {"task": task, "model": {"source": model}, "data": {"train": data},
            "strategy": {"name": "linear-probe"}, "train": {"progress": False}}
    cfg = load_config(None, overrides, base=base)
    return with_absolute_paths(cfg.updated({"data.augment": False, "cache.features": True,
                                            "strategy.name": "linear-probe", "freeze.body": "all"}))


def make_plan(task: str, models: list[str], data: str, overrides: list[str], sample_size: int, console: Console,
              permissions: Permissions = Permissions()) -> dict[str, Any]:
    """Score every candidate on one sample and recommend; returns what plan.json holds."""
    if not models:
        raise UserError("--model: give at least one candidate model (repeat --model to compare several).")
    if not get_task(task).plannable:
        raise UserError(f"--task {task}: plan scores how well frozen features separate classes, so it ranks models "
                        "for classification tasks only. For this task, compare candidates with short runs (graftune "
                        "tune, or graftune train with --epochs 1 on each).")
    configs = [candidate_config(task, model, data, overrides) for model in models]
    full = get_task(task).read_data(configs[0].data)
    chosen = sample(full, sample_size, seed=configs[0].train.seed)
    evidence = []
    for cfg in configs:
        console.print(f"plan: encoding {len(chosen.splits.train)} examples with {cfg.model.source}")
        evidence.append(score(cfg, chosen, console, permissions))
    ranked = sorted(evidence, key=lambda e: (e.logme, e.cv_accuracy), reverse=True)
    counts = Counter(example.label for example in full.splits.train)
    recommendation = recommend(ranked[0], float(np.median(list(counts.values()))))
    return {"task": task, "data": configs[0].data.train, "sample": len(chosen.splits.train),
            "train_counts": dict(sorted(counts.items())), "candidates": [asdict(e) for e in ranked],
            "recommendation": asdict(recommendation),
            "config": runnable(task, configs[0].data.train, recommendation, overrides),
            "thresholds": {"few_per_class": FEW_PER_CLASS, "similar_separability": SIMILAR_SEPARABILITY}}


def runnable(task: str, data: str, rec: Recommendation, overrides: list[str]) -> dict[str, Any]:
    """The config `graftune train` runs as it is: the user's overrides, then the recommendation."""
    base = {"task": task, "model": {"source": rec.model}, "data": {"train": data}}
    user = load_config(None, overrides, base=base).model_dump(mode="json", exclude_defaults=True)
    user["freeze"] = {**user.get("freeze", {}), "body": rec.freeze}
    user["strategy"] = {**user.get("strategy", {}), "name": rec.strategy}
    if rec.lr is not None:
        user["optim"] = {**user.get("optim", {}), "lr": rec.lr}
    load_config(None, base=user)  # the plan only writes what `graftune train` accepts
    return user


def write_plan(plan: dict[str, Any], out: Path) -> None:
    """OUT/plan.json and OUT/plan.yaml (written under temporary names, then renamed)."""
    import json

    import yaml

    out.mkdir(parents=True, exist_ok=True)
    files = Confined(out, "plan folder")
    for name, text in (("plan.json", json.dumps(plan, indent=2)),
                       ("plan.yaml", yaml.safe_dump(plan["config"], sort_keys=False))):
        files.write_text(out / name, text)


def show_plan(plan: dict[str, Any], console: Console) -> None:
    """The evidence as a table, best candidate first, then the recommendation and its reasons."""
    from rich.table import Table

    table = Table(title=f"candidates on {plan['sample']} training examples (best first)")
    for column in ("model", "parameters", "features", "LogME", "CV probe accuracy", "separability", "seconds"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for e in plan["candidates"]:
        table.add_row(e["model"], f"{e['parameters']:,}", str(e["feature_dim"]), f"{e['logme']:.3f}",
                      f"{e['cv_accuracy']:.3f} ({e['cv_folds']}-fold)", f"{e['separability']:.2f}",
                      f"{e['seconds']:.1f}")
    console.print(table)
    rec = plan["recommendation"]
    rate = "solved exactly, no rate" if rec["lr"] is None else f"lr {rec['lr']:g}"
    console.print(f"recommended: {rec['model']}, strategy {rec['strategy']}, freeze.body {rec['freeze']}, {rate}")
    for reason in rec["reasons"]:
        console.print(f"  - {reason}")
