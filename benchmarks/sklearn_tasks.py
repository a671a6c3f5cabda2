"""Regression and multi-label against scikit-learn on the same frozen features.

    .venv/bin/python -m benchmarks.sklearn_tasks [--out DIR] [--only rotation|digests] [--quick]

Two tasks on real data available offline:

- rotation (image-regression): Fashion-MNIST images (upscaled to 64 px, bilinear) rotated by an angle drawn
  uniformly from [-45, 45] degrees (PIL, black fill); the target is the angle in degrees. 1,000 train /
  300 val (both from the train split, disjoint) / 600 test (t10k), 100 / 30 / 60 per class, seed 0;
  `efficientnet-lite0` at 64 px.
- digests (text-multilabel): BBC News leads: each example is the first LEAD_WORDS words of one article
  (labels: its topic) or of two articles of different topics, one after the other (labels: both topics);
  half of each split are pairs. 600 train / 200 val / 400 test; each article is used at most once in all
  (articles split disjointly first); `minilm-l6` at 256 tokens (a pair of leads fits, so both topics are
  visible to the model).

Rows per task:

- graftune exact: `strategy linear-probe` (exact solve on the cached features, L2 chosen on validation:
  ridge regression for the regression, per-label logistic regression for the multi-label), no augmentation;
- graftune defaults: no strategy named, nothing but the data and the input settings (image_size,
  max_length) given: whatever `auto` picks, with the default epochs, rates and augmentation;
- for rotation also graftune defaults with `data.augment: false` (the default augmentation flips images
  horizontally, which turns an angle into its negative while the target stays);
- for digests also `strategy linear-probe` with `cache.features: false`: the head trained by epochs of the
  optimizer through the frozen body. With the feature cache (as graftune runs a linear probe by default)
  text-multilabel's head-only stage stops with "AttributeError: 'list' object has no attribute 'to'": both
  probes collate the cached targets, lists of 0/1 per label, with `default_collate`, which gives a list of
  tensors for them (graftune/probe.py ExactProbe.solve, graftune/features.py collate_features). The
  exact row is still attempted and reported as failed, so the benchmark shows when that is fixed;
- scikit-learn, on the frozen body's pooled encodings that graftune's runs use (taken with `Run.detached`,
  as in benchmarks/probe.py): for rotation `RidgeCV` over alphas 10^-3..10^4 (leave-one-out on train, its
  default) and `Ridge` with alpha chosen on validation from the strengths graftune's probe tries
  (alpha = l2 n / 2); for digests `OneVsRestClassifier(LogisticRegression())` with C = 1 and thresholds
  0.5, the same with each label's threshold tuned on validation for its F1 (as graftune does), and with C
  chosen on validation (micro-F1 at tuned thresholds) from graftune's strengths (C = 1 / (l2 n L)).

Printed: a table per task with the ratios graftune / best scikit-learn, and the checks (each graftune row at
least as good as every scikit-learn row on the headline metric: RMSE for rotation, micro-F1 for digests);
OUT/sklearn_tasks.json. `--quick`: tiny subsets, one epoch; a smoke check of the script only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import close, frozen_features, print_aligned, print_checks, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 0
TASKS = ("rotation", "digests")
LEAD_WORDS = 90
ROTATION_PER_CLASS = {"train": 100, "val": 30, "test": 60}
DIGEST_SIZES = {"train": 600, "val": 200, "test": 400}
RIDGE_ALPHAS = tuple(10.0 ** k for k in np.arange(-3, 4.5, 0.5))


# --------------------------------------------------------------------------------------------- data

def build_rotation(root: Path, quick: bool) -> None:
    """ROOT/SPLIT/images.jsonl ({"image", "angle"}) and the PNGs beside it."""
    from PIL import Image

    from graftune.datasets import read_fashion_mnist

    per_class = {"train": 10, "val": 5, "test": 10} if quick else ROTATION_PER_CLASS
    rng = np.random.default_rng(SEED)
    for split, source, offset in (("train", "train", 0), ("val", "train", per_class["train"]),
                                  ("test", "t10k", 0)):
        images, labels = read_fashion_mnist(source)
        pick = np.random.default_rng(SEED)  # the same permutation for train and val: disjoint by offset
        chosen = sorted(int(n) for c in range(10)
                        for n in pick.permutation(np.flatnonzero(labels == c))[offset:offset + per_class[split]])
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for number in chosen:
            angle = round(float(rng.uniform(-45, 45)), 3)
            image = Image.fromarray(images[number]).resize((64, 64), Image.Resampling.BILINEAR)
            image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0).save(folder / f"{number:05d}.png")
            rows.append({"image": f"{number:05d}.png", "angle": angle})
        (folder / "images.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def lead(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split()[:LEAD_WORDS])


def build_digests(root: Path, quick: bool) -> None:
    """ROOT/SPLIT.jsonl ({"text", "topics"}): half single leads, half pairs of leads of different topics."""
    from sklearn.model_selection import train_test_split

    from graftune.datasets import bbc_news_root

    sizes = {"train": 60, "val": 30, "test": 40} if quick else DIGEST_SIZES
    files = sorted(bbc_news_root().glob("*/*.txt"))
    topics = [p.parent.name for p in files]
    needed = {split: count + count // 2 for split, count in sizes.items()}  # articles: singles + 2 per pair
    rest, test, rest_y, test_y = train_test_split(files, topics, test_size=needed["test"], stratify=topics,
                                                  random_state=SEED)
    train, val, train_y, val_y = train_test_split(rest, rest_y, train_size=needed["train"],
                                                  test_size=needed["val"], stratify=rest_y, random_state=SEED)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    for split, chosen, chosen_y in (("train", train, train_y), ("val", val, val_y), ("test", test, test_y)):
        pool = list(zip(chosen, chosen_y, strict=True))
        rng.shuffle(pool)
        singles, rest_pool = pool[:sizes[split] - sizes[split] // 2], pool[sizes[split] - sizes[split] // 2:]
        rows = [{"text": lead(path), "topics": [topic]} for path, topic in singles]
        by_topic: dict[str, list[Path]] = {}
        for path, topic in rest_pool:
            by_topic.setdefault(topic, []).append(path)
        while len(rows) < sizes[split]:
            # the topic with the most articles left, with another at random: never left with one topic only
            most = max(by_topic, key=lambda t: (len(by_topic[t]), rng.random()))
            other = rng.choice(sorted(t for t in by_topic if t != most and by_topic[t]))
            pair = [(by_topic[most].pop(), most), (by_topic[other].pop(), other)]
            rng.shuffle(pair)
            rows.append({"text": "\n\n".join(lead(path) for path, _ in pair), "topics": sorted([most, other])})
        rng.shuffle(rows)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


# ------------------------------------------------------------------------------------------- configs

def config(task: str, root: Path, cache: Path, quick: bool, strategy: dict[str, Any] | None,
           augment: bool | None = None) -> dict[str, Any]:
    """The run's settings: only the data and its input size, the strategy when given, and the seed."""
    if task == "rotation":
        data = {f"{s}": str(root / s / "images.jsonl") for s in ("train", "val", "test")}
        data |= {"label_column": "angle", "image_size": 64} | ({} if augment is None else {"augment": augment})
        head = {"task": "image-regression", "model": {"source": "efficientnet-lite0"}}
    else:
        data = {f"{s}": str(root / f"{s}.jsonl") for s in ("train", "val", "test")}
        data |= {"label_column": "topics", "max_length": 256}
        head = {"task": "text-multilabel", "model": {"source": "minilm-l6"}}
    train: dict[str, Any] = {"seed": SEED, "progress": False} | ({"epochs": 1} if quick else {})
    return {**head, "data": data, **({"strategy": strategy} if strategy else {}), "train": train,
            "cache": {"dir": str(cache)}}


# ------------------------------------------------------------------------------------------- graftune

def graftune_row(cfg: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    import yaml

    import graftune

    started = time.perf_counter()
    result = graftune.train(cfg, out / f"run-{name}", overwrite=True)
    epochs = [json.loads(line) for line in (result.dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resolved = yaml.safe_load((result.dir / "config.yaml").read_text())
    scores = {k: v for k, v in result.test.items() if isinstance(v, float)}
    return {"method": f"graftune {name}", **scores, "strategy": resolved["strategy"]["name"],
            "augment": resolved["data"].get("augment"), "epochs": result.epochs_run,
            "l2": epochs[0].get("probe_l2"), "seconds": round(time.perf_counter() - started, 1)}


def features(cfg: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The frozen features of every split (benchmarks/common.py) and the targets: regression's back in degrees,
    multi-label's the 0/1 indicator matrix in the task's label order."""
    split, task = frozen_features(cfg)
    if cfg["task"].endswith("regression"):
        return {name: (x, y.astype(np.float64) * task.std + task.mean) for name, (x, y) in split.items()}
    return {name: (x, y.astype(np.float64)) for name, (x, y) in split.items()}


# ------------------------------------------------------------------------------------------- scikit-learn

def ridge_rows(split: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    from sklearn.linear_model import Ridge, RidgeCV

    from graftune.probe import L2_GRID
    from graftune.tasks.regression import scores_of

    (x, y), (vx, vy), (tx, ty) = split["train"], split["val"], split["test"]
    started = time.perf_counter()
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
    rows = [{"method": "scikit-learn RidgeCV (LOO on train)", **_plain(scores_of(ty, model.predict(tx))),
             "alpha": float(model.alpha_), "l2": 2 * float(model.alpha_) / len(y),
             "seconds": round(time.perf_counter() - started, 1)}]
    started = time.perf_counter()
    fits = []
    for l2 in sorted({*L2_GRID, 1 / len(y)}, reverse=True):
        fitted = Ridge(alpha=l2 * len(y) / 2).fit(x, y)
        fits.append((scores_of(vy, fitted.predict(vx))["rmse"], l2, fitted))
    best = min(fits, key=lambda fit: fit[0])  # first (strongest) of the ties
    rows.append({"method": "scikit-learn Ridge, alpha on val", **_plain(scores_of(ty, best[2].predict(tx))),
                 "alpha": best[1] * len(y) / 2, "l2": best[1], "seconds": round(time.perf_counter() - started, 1)})
    return rows


def tuned_thresholds(truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each label's threshold where its F1 on validation peaks, as graftune's MultiLabel.calibrate."""
    from sklearn.metrics import precision_recall_curve

    thresholds = []
    for column in range(truth.shape[1]):
        if truth[:, column].sum() == 0:
            thresholds.append(0.5)
            continue
        precision, recall, cuts = precision_recall_curve(truth[:, column], probs[:, column])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds.append(float(cuts[int(np.argmax(f1))]))
    return np.array(thresholds)


def ovr_rows(split: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from graftune.probe import L2_GRID
    from graftune.tasks.multilabel import scores_of

    (x, y), (vx, vy), (tx, ty) = split["train"], split["val"], split["test"]
    y, vy, ty = y.astype(int), vy.astype(int), ty.astype(int)
    labels = y.shape[1]

    def fit(c: float) -> Any:
        return OneVsRestClassifier(LogisticRegression(C=c, max_iter=5_000)).fit(x, y)

    started = time.perf_counter()
    plain = fit(1.0)
    probs, val_probs = plain.predict_proba(tx), plain.predict_proba(vx)
    seconds = round(time.perf_counter() - started, 1)
    half = np.full(labels, 0.5)
    rows = [{"method": "scikit-learn OvR LR C=1, thresholds 0.5", **_plain(scores_of(ty, probs, half)), "C": 1.0,
             "l2": 1 / (len(y) * labels), "seconds": seconds},
            {"method": "scikit-learn OvR LR C=1, thresholds on val",
             **_plain(scores_of(ty, probs, tuned_thresholds(vy, val_probs))), "C": 1.0, "l2": 1 / (len(y) * labels),
             "seconds": seconds}]
    started = time.perf_counter()
    fits = []
    for l2 in sorted({*L2_GRID, 1 / len(y)}, reverse=True):
        model = fit(1 / (l2 * len(y) * labels))
        val_probs = model.predict_proba(vx)
        thresholds = tuned_thresholds(vy, val_probs)
        fits.append((scores_of(vy, val_probs, thresholds)["micro_f1"], l2, model, thresholds))
    best = max(fits, key=lambda fit: fit[0])  # first (strongest) of the ties
    rows.append({"method": "scikit-learn OvR LR, C and thresholds on val",
                 **_plain(scores_of(ty, best[2].predict_proba(tx), best[3])), "C": 1 / (best[1] * len(y) * labels),
                 "l2": best[1], "seconds": round(time.perf_counter() - started, 1)})
    return rows


def _plain(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if isinstance(v, float)}


# ------------------------------------------------------------------------------------------- parent

METRICS = {"rotation": (("rmse", "min"), ("mae", "min"), ("r2", "max"), ("pearson", "max"), ("spearman", "max")),
           "digests": (("micro_f1", "max"), ("macro_f1", "max"), ("map", "max"), ("subset_accuracy", "max"))}


def run_task(task: str, out: Path, quick: bool, only_rows: list[str] | None = None) -> \
        tuple[list[dict[str, Any]], list[str]]:
    root, cache = out / "data" / task, out / "cache"
    if not (root / "done").is_file():
        (build_rotation if task == "rotation" else build_digests)(root, quick)
        (root / "done").write_text("")
    augment = False if task == "rotation" else None
    runs = {"exact": config(task, root, cache, quick, {"name": "linear-probe", "probe": "exact"}, augment),
            "defaults": config(task, root, cache, quick, None)}
    if task == "rotation":
        runs["defaults, augment false"] = config(task, root, cache, quick, None, augment=False)
    else:  # head-only without the feature cache (so the SGD probe, through the frozen body, default epochs):
        # with the cache, both probes of text-multilabel stop on its list targets (see the module docstring)
        uncached = config(task, root, cache, quick, {"name": "linear-probe"})
        runs["linear-probe, cache off"] = {**uncached, "cache": {"features": False}}
    rows, failed = [], []
    for name, cfg in runs.items():
        if only_rows and name not in only_rows:
            continue
        try:
            rows.append(graftune_row(cfg, out / task, name))
        except Exception as error:  # a row that fails is reported, the others still run
            print(f"== {task}: graftune {name} failed: {type(error).__name__}: {error}", flush=True)
            failed.append(f"{task}: graftune {name} ({type(error).__name__}: {error})")
    split = features(runs["exact"])  # the same features whichever probe filled the cache
    rows += ridge_rows(split) if task == "rotation" else ovr_rows(split)
    sizes = {name: len(targets) for name, (_, targets) in split.items()}
    return [{"task": task, "sizes": sizes, **row} for row in rows], failed


def print_task(task: str, rows: list[dict[str, Any]]) -> None:
    metrics = METRICS[task]
    sklearn = [r for r in rows if r["method"].startswith("scikit-learn")]
    headline, mode = metrics[0]
    best = (min if mode == "min" else max)(r[headline] for r in sklearn)
    lines: list[tuple[str, ...]] = [("method", *(m for m, _ in metrics), f"{headline} / best sklearn", "L2 (strength)",
                                     "strategy", "epochs", "seconds")]
    for r in rows:
        lines.append((r["method"], *(f"{r[m]:.4f}" for m, _ in metrics), f"{r[headline] / best:.3f}",
                      f"{r['l2']:.1e}" if r.get("l2") else "-", str(r.get("strategy", "-")), str(r.get("epochs", "-")),
                      f"{r['seconds']:.1f}"))
    print(f"\n{task} ({rows[0]['sizes']})")
    print_aligned(lines)


def checks_of(task: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each graftune row against the best scikit-learn row on the headline metric (its ratio, bound 1)."""
    headline, mode = METRICS[task][0]
    sklearn = [r[headline] for r in rows if r["method"].startswith("scikit-learn")]
    best = min(sklearn) if mode == "min" else max(sklearn)
    checks = []
    for r in rows:
        if r["method"].startswith("graftune"):
            ratio = r[headline] / best
            checks.append({"target": f"{task}: {r['method']} {headline} / best scikit-learn", "value": ratio,
                           "bound": "<= 1" if mode == "min" else ">= 1",
                           "passed": ratio <= 1 if mode == "min" else ratio >= 1})
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/sklearn_tasks"))
    parser.add_argument("--only", choices=TASKS)
    parser.add_argument("--quick", action="store_true", help="tiny subsets, one epoch: a smoke check")
    parser.add_argument("--rows", help="only these graftune rows, comma-separated (exact, defaults, ...); the "
                                       "scikit-learn rows always run (seconds)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, checks, failed = [], [], []
    for task in [args.only] if args.only else list(TASKS):
        print(f"== {task}", flush=True)
        task_rows, task_failed = run_task(task, out, args.quick, args.rows.split(",") if args.rows else None)
        rows += task_rows
        failed += task_failed
        checks += checks_of(task, task_rows)
    for task in dict.fromkeys(r["task"] for r in rows):
        print_task(task, [r for r in rows if r["task"] == task])
    print_checks(checks)
    return close(write_report(out, "sklearn_tasks", sys.argv[1:] if argv is None else argv, started, rows, failed,
                              checks=checks, quick=args.quick), out)


if __name__ == "__main__":
    sys.exit(main())
