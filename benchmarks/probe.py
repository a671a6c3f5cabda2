"""The exact linear probe against scikit-learn's logistic regression on the same frozen features.

    .venv/bin/python -m benchmarks.probe [--out DIR] [--only bbc|fmnist] [--quick]

Data as in benchmarks/foundation.py: BBC News 600 / 200 / 400 (stratified, seed 0) with `minilm-l6` (256
tokens), Fashion-MNIST 1,000 / 500 / 1,000 at 64 px with `efficientnet-lite0` (no augmentation, so every
method sees one view of each image). Rows per task:

- graftune exact: `strategy linear-probe` with its default `strategy.probe: exact` (L-BFGS, L2 chosen on
  validation from 1e-6..1 and 1 / n);
- graftune sgd: `strategy.probe: sgd`, 10 epochs of AdamW at 1e-2 (the probe before the exact solver);
- scikit-learn C=1: `LogisticRegression()` (lbfgs, max_iter 5,000) fitted on graftune's training features;
- scikit-learn C on val: the same, C chosen on the validation features from the strengths graftune tries
  (C = 1 / (l2 n)), so the two differ only in the solver.

The features for scikit-learn are the frozen body's pooled encodings that graftune's run uses, taken with
`Run.detached` (the same model, preprocessing and pooling). Printed: test accuracy and the chosen strength;
OUT/probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import close, frozen_features, print_aligned, print_checks, write_report
from benchmarks.foundation import build_bbc, build_fmnist

TASKS = {
    "bbc": {"task": "text-classification", "model": {"source": "minilm-l6"}, "data": {"max_length": 256},
            "train": {"batch_size": 16, "eval_batch_size": 64}},
    "fmnist": {"task": "image-classification", "model": {"source": "efficientnet-lite0"},
               "data": {"image_size": 64, "augment": False}, "train": {"batch_size": 32, "eval_batch_size": 128}},
}


def config(task: str, root: Path, cache: Path, probe: str, epochs: int) -> dict[str, Any]:
    spec = TASKS[task]
    return {"task": spec["task"], "model": spec["model"],
            "data": {"train": str(root / "train"), "val": str(root / "val"), "test": str(root / "test"),
                     **spec["data"]},
            "strategy": {"name": "linear-probe", "probe": probe},
            "train": {"epochs": epochs, "seed": 0, "progress": False, "early_stopping": {"patience": None},
                      **spec["train"]},
            "cache": {"dir": str(cache)}}


def sklearn_rows(split: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    from graftune.probe import L2_GRID

    (x, y), (vx, vy), (tx, ty) = split["train"], split["val"], split["test"]
    started = time.perf_counter()
    plain = LogisticRegression(max_iter=5_000).fit(x, y)
    rows = [{"method": "scikit-learn C=1", "accuracy": float(plain.score(tx, ty)), "l2": 1 / len(y),
             "seconds": round(time.perf_counter() - started, 1)}]
    started = time.perf_counter()
    fits = []
    for l2 in sorted({*L2_GRID, 1 / len(y)}, reverse=True):
        model = LogisticRegression(C=1 / (l2 * len(y)), max_iter=5_000).fit(x, y)
        fits.append((model.score(vx, vy), l2, model))
    best = max(fits, key=lambda fit: fit[0])  # first (strongest) of the ties, as graftune breaks them by loss
    rows.append({"method": "scikit-learn C on val", "accuracy": float(best[2].score(tx, ty)), "l2": best[1],
                 "seconds": round(time.perf_counter() - started, 1)})
    return rows


def graftune_row(cfg: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    import graftune

    started = time.perf_counter()
    result = graftune.train(cfg, out / f"run-{name}", overwrite=True)
    first = json.loads((result.dir / "metrics.jsonl").read_text().splitlines()[0])
    return {"method": f"graftune {name}", "accuracy": result.test["accuracy"], "l2": first.get("probe_l2"),
            "epochs": result.epochs_run, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/probe"))
    parser.add_argument("--only", choices=sorted(TASKS))
    parser.add_argument("--quick", action="store_true", help="tiny subsets, for a smoke check")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task in [args.only] if args.only else list(TASKS):
        root = args.out / "data" / task
        if not (root / "test").is_dir():
            (build_bbc if task == "bbc" else build_fmnist)(root, args.quick)
        cache = args.out / "cache"
        task_rows = [graftune_row(config(task, root, cache, "exact", 10), args.out, "exact"),
                     graftune_row(config(task, root, cache, "sgd", 10), args.out, "sgd"),
                     *sklearn_rows(frozen_features(config(task, root, cache, "exact", 10))[0])]
        rows += [{"task": task, **row} for row in task_rows]
    print_aligned([("task", "method", "test accuracy", "L2 (1 / (C n))", "epochs", "seconds")] + [
        (r["task"], r["method"], f"{r['accuracy']:.4f}", f"{r['l2']:.1e}" if r["l2"] else "-",
         str(r.get("epochs", "-")), f"{r['seconds']:.1f}") for r in rows])
    checks = []
    for task in sorted({r["task"] for r in rows}):
        by = {r["method"]: r["accuracy"] for r in rows if r["task"] == task}
        best_sklearn = max(by["scikit-learn C=1"], by["scikit-learn C on val"])
        checks.append({"target": f"{task}: exact probe - best scikit-learn (points)",
                       "value": 100 * (by["graftune exact"] - best_sklearn), "bound": ">= 0",
                       "passed": by["graftune exact"] >= best_sklearn})
    print_checks(checks)
    return close(write_report(args.out, "probe", sys.argv[1:] if argv is None else argv, started, rows, [],
                              checks=checks), args.out)


if __name__ == "__main__":
    sys.exit(main())
