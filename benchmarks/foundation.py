"""Foundation accuracy benchmark: does graftune reach the project's accuracy targets on real data?

    .venv/bin/python -m benchmarks.foundation [--quick] [--only bbc|fmnist] [--out DIR]

Targets (from the project's issue; benchmark figures, not tests):

- bbc:    BBC News (5 topics), stratified 600 train / 200 val / 400 test, preset `minilm-l6`,
          full fine-tuning (freeze.body: none): test accuracy >= 0.96.
- fmnist: Fashion-MNIST, 100 train images per class (1,000), 50 per class val (from the train split,
          disjoint), 100 per class test (1,000, from the t10k split), 64 px, preset
          `efficientnet-lite0`: test accuracy >= 0.80.

Each task builds its data subset deterministically as ROOT/{train,val,test}/LABEL/ folders, trains
through the Python API (`graftune.train`) in a fresh child process (so peak RSS is per run), and
reports: sizes, epochs run, best epoch, test accuracy, macro-F1, target, PASS/FAIL, wall seconds and
peak RSS. The table is printed and written to OUT/foundation.json; run folders go to OUT/runs/TASK.

`--quick` runs tiny subsets for one epoch: a smoke check of the script (about 2 minutes), not of the
targets (its rows are marked as such and never compared with them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, run_worker, write_report, write_row

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 0
TASKS = ("fmnist", "bbc")  # the order of a full run

# Full benchmark: the subset sizes of the targets and the hyperparameters we chose.
# Learning rates are left to graftune's defaults (pipeline.resolve_defaults): body 5e-5 (text) /
# 3e-4 (image), head 20x body capped at 1e-3. The resolved values are read back from RUN/config.yaml.
BBC_SIZES = {"train": 600, "val": 200, "test": 400}
FMNIST_PER_CLASS = {"train": 100, "val": 50, "test": 100}
TARGETS = {"bbc": 0.96, "fmnist": 0.80}
MODELS = {"bbc": "minilm-l6", "fmnist": "efficientnet-lite0"}


def bbc_config(root: Path, quick: bool) -> dict[str, Any]:
    return {
        "task": "text-classification",
        "model": {"source": "minilm-l6"},
        "data": {"train": str(root), "max_length": 128 if quick else 256},
        "freeze": {"body": "none"},
        "optim": {"schedule": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.01},
        "train": {"epochs": 1 if quick else 3, "batch_size": 16, "eval_batch_size": 64, "seed": SEED,
                  "early_stopping": {"metric": "val_accuracy", "patience": 3}, "progress": False},
    }


def fmnist_config(root: Path, quick: bool) -> dict[str, Any]:
    return {
        "task": "image-classification",
        "model": {"source": "efficientnet-lite0"},
        "data": {"train": str(root), "image_size": 64, "augment": False},
        "freeze": {"body": "none"},
        "optim": {"schedule": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.01},
        "train": {"epochs": 1 if quick else 10, "batch_size": 32, "eval_batch_size": 128, "seed": SEED,
                  "early_stopping": {"metric": "val_accuracy", "patience": 3}, "progress": False},
    }


# --------------------------------------------------------------------------------------------- data

def build_bbc(root: Path, quick: bool, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """All 2,225 articles, then a stratified train/val/test split by sklearn with a fixed seed."""
    from sklearn.model_selection import train_test_split

    from graftune.datasets import write_bbc_news

    sizes = sizes or ({"train": 100, "val": 50, "test": 100} if quick else BBC_SIZES)
    with tempfile.TemporaryDirectory(prefix="bbc-all-") as tmp:
        everything = write_bbc_news(Path(tmp))
        files = sorted(p for p in everything.glob("*/*.txt"))
        labels = [p.parent.name for p in files]
        rest, test, rest_y, _ = train_test_split(files, labels, test_size=sizes["test"], stratify=labels,
                                                 random_state=SEED)
        train, val, _, _ = train_test_split(rest, rest_y, train_size=sizes["train"], test_size=sizes["val"],
                                            stratify=rest_y, random_state=SEED)
        for split, chosen in (("train", train), ("val", val), ("test", test)):
            for file in chosen:
                target = root / split / file.parent.name
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target / file.name)
    return {split: len(list((root / split).glob("*/*.txt"))) for split in ("train", "val", "test")}


def build_fmnist(root: Path, quick: bool, per_class: dict[str, int] | None = None) -> dict[str, int]:
    """Train and val from Fashion-MNIST's train split (same permutation, disjoint by offset); test from t10k."""
    from graftune.datasets import write_fashion_mnist

    per_class = per_class or ({"train": 20, "val": 10, "test": 20} if quick else FMNIST_PER_CLASS)
    write_fashion_mnist(root / "train", per_class["train"], split="train", seed=SEED, offset=0)
    write_fashion_mnist(root / "val", per_class["val"], split="train", seed=SEED, offset=per_class["train"])
    write_fashion_mnist(root / "test", per_class["test"], split="t10k", seed=SEED, offset=0)
    return {split: len(list((root / split).glob("*/*.png"))) for split in ("train", "val", "test")}


# ------------------------------------------------------------------------------------------- worker

def run_task(task: str, out: Path, quick: bool) -> dict[str, Any]:
    """Build the data, train, and return one table row. Runs in its own process."""
    import torch

    from graftune.api import train  # imported before the clock starts: `import graftune` is lazy

    data_root = out / "data" / task
    if data_root.exists():
        shutil.rmtree(data_root)
    sizes = build_bbc(data_root, quick) if task == "bbc" else build_fmnist(data_root, quick)
    config = bbc_config(data_root, quick) if task == "bbc" else fmnist_config(data_root, quick)
    torch.manual_seed(SEED)
    started = time.perf_counter()
    result = train(config, out=out / "runs" / task, overwrite=True)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    import yaml

    resolved = yaml.safe_load((result.dir / "config.yaml").read_text())
    epochs = [json.loads(line) for line in (result.dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accuracy = float(result.test["accuracy"])
    target = TARGETS[task]
    return {
        "task": task, "model": MODELS[task], "quick": quick,
        "train": sizes["train"], "val": sizes["val"], "test": sizes["test"],
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "test_accuracy": accuracy, "test_macro_f1": float(result.test["macro_f1"]),
        "target": target, "passed": None if quick else accuracy >= target,
        "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib, 1),
        "epoch_seconds": [row["seconds"] for row in epochs],
        "val_accuracy_per_epoch": [round(row["val_accuracy"], 4) for row in epochs],
        "train_loss_per_epoch": [round(row["train_loss"], 4) for row in epochs],
        "config": config,
        "resolved": {"lr": resolved["optim"]["lr"], "head_lr": resolved["optim"]["head_lr"],
                     "pooling": resolved["head"]["pooling"], "max_length": resolved["data"]["max_length"],
                     "image_size": resolved["data"]["image_size"]},
        "run_dir": str(result.dir),
    }


# ------------------------------------------------------------------------------------------- parent

def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("task", "model", "train/val/test", "epochs", "best", "test acc", "macro-F1", "target", "result",
            "seconds", "peak RSS")
    lines = [head]
    for r in rows:
        verdict = "smoke" if r["quick"] else ("PASS" if r["passed"] else "FAIL")
        lines.append((r["task"], r["model"], f"{r['train']}/{r['val']}/{r['test']}", str(r["epochs_run"]),
                      str(r["best_epoch"]), f"{r['test_accuracy']:.4f}", f"{r['test_macro_f1']:.4f}",
                      f">= {r['target']:.2f}", verdict, f"{r['seconds']:.0f}", f"{r['peak_rss_mib']:.0f} MiB"))
    print_aligned(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.foundation", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, one epoch: a smoke check")
    parser.add_argument("--only", choices=TASKS, help="run one task")
    parser.add_argument("--out", type=Path, default=Path("bench-out/foundation"), help="output folder")
    parser.add_argument("--worker", choices=TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.worker:  # child process: one task, its row to OUT/TASK.row.json
        write_row(out, args.worker, run_task(args.worker, out, args.quick))
        return 0

    rows, failed = [], []
    started = time.perf_counter()
    for task in [args.only] if args.only else list(TASKS):
        print(f"== {task}", flush=True)
        row = run_worker("benchmarks.foundation", [task], out, task, args.quick)
        if row is None:
            failed.append(task)
        else:
            rows.append(row)
    report = write_report(out, "foundation", argv or sys.argv[1:], started, rows, failed, quick=args.quick)
    print()
    print_table(rows)
    return close(report, out)


if __name__ == "__main__":
    sys.exit(main())
