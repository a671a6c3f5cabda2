"""Strategy comparison: every named strategy on BBC News (minilm-l6) and Fashion-MNIST (efficientnet-lite0).

    .venv/bin/python -m benchmarks.strategies [--quick] [--only bbc|fmnist] [--strategies a,b] [--out DIR]

Data subsets are the foundation benchmark's (benchmarks/foundation.py): BBC News stratified
600/200/400 and Fashion-MNIST 1,000 train / 500 val / 1,000 test at 64 px. Every strategy gets the
same epoch budget, batch size, seed and early-stopping rule on a task, and graftune's default
learning rates for that strategy, so the table compares strategies as a user would meet them.
BBC runs 3 epochs at 64 tokens (an article's headline and lead; it keeps the 12 BBC runs near 20
minutes on 2 cores); Fashion-MNIST 6 epochs without augmentation. Besides the named strategies, a
few regularization rows: L2-SP and EWC (text; the EWC retain set is general English from Debian's
fortunes, when installed) and mixup/cutmix and augmentation (images), all on top of `full`.

Each run trains in a fresh child process (peak RSS is per run) and reports test accuracy, macro-F1,
wall seconds of `graftune.train`, the most trainable parameters of any stage, peak RSS, and how far the
body moved from its pre-trained weights (relative L2 distance; a proxy for forgetting). The table is
printed and written to OUT/strategies.json. `--quick` uses tiny subsets and 2 epochs: a smoke check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, run_worker, write_report, write_row
from benchmarks.foundation import SEED, build_bbc, build_fmnist

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STRATEGIES = ("linear-probe", "partial", "full", "gradual", "discriminative", "lp-ft", "lora", "bitfit", "fastai",
              "ulmfit")
EXTRAS = {"bbc": ("full+l2sp", "full+ewc"), "fmnist": ("full+mixup", "full+augment")}
MODELS = {"bbc": "minilm-l6", "fmnist": "efficientnet-lite0"}
FORTUNES = Path("/usr/share/games/fortunes")


def config(task: str, root: Path, variant: str, quick: bool) -> dict[str, Any]:
    strategy, _, extra = variant.partition("+")
    epochs = 2 if quick else (3 if task == "bbc" else 6)
    cfg: dict[str, Any] = {
        "task": "text-classification" if task == "bbc" else "image-classification",
        "model": {"source": MODELS[task]},
        "data": {"train": str(root / "data"), "max_length": 64} if task == "bbc" else
                {"train": str(root / "data"), "image_size": 64, "augment": extra == "augment"},
        "strategy": {"name": strategy},
        "train": {"epochs": epochs, "batch_size": 16 if task == "bbc" else 32, "seed": SEED, "progress": False,
                  "early_stopping": {"metric": "val_accuracy", "patience": 3}},
    }
    if strategy == "partial":
        cfg["freeze"] = {"body": 3 if task == "bbc" else 9}  # about half the layer groups
    if extra == "l2sp":
        cfg["regularize"] = {"l2sp": 0.1}
    if extra == "ewc":
        cfg["regularize"] = {"ewc": 0.1, "retain": str(root / "retain.txt")}
    if extra == "mixup":
        cfg["regularize"] = {"mixup": 0.2, "cutmix": 1.0}
    return cfg


def write_retain(path: Path, count: int = 256) -> bool:
    """General English sentences for EWC's Fisher: the first fortunes of Debian's fortunes package."""
    texts: list[str] = []
    for file in sorted(FORTUNES.glob("*")) if FORTUNES.is_dir() else []:
        if file.suffix or not file.is_file():
            continue
        for entry in file.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            if 20 < len(entry) < 400:
                texts.append(" ".join(entry.split()))
    if len(texts) < count:
        return False
    path.write_text("\n".join(texts[:count]) + "\n", encoding="utf-8")
    return True


def body_shift(run_dir: Path, source: str) -> float:
    """||w - w0|| / ||w0|| over the body's weights that exist in both (merged LoRA included)."""
    from safetensors.torch import load_file

    from graftune.backbones import load_backbone

    pretrained = {f"body.{k}": v for k, v in load_backbone(source).body.state_dict().items()}
    tuned = load_file(str(run_dir / "model" / "model.safetensors"))
    shared = [k for k in pretrained if k in tuned and pretrained[k].is_floating_point() and "running" not in k]
    moved = sum(float((tuned[k].float() - pretrained[k].float()).pow(2).sum()) for k in shared)
    size = sum(float(pretrained[k].float().pow(2).sum()) for k in shared)
    return (moved / size) ** 0.5


def run_one(task: str, variant: str, out: Path, quick: bool) -> dict[str, Any]:
    from graftune.api import train  # imported before the clock starts: `import graftune` is lazy

    root = out / "data" / task
    cfg = config(task, root, variant, quick)
    started = time.perf_counter()
    result = train(cfg, out=out / "runs" / task / variant, overwrite=True)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (result.dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"task": task, "model": MODELS[task], "variant": variant, "quick": quick,
            "test_accuracy": float(result.test["accuracy"]), "test_macro_f1": float(result.test["macro_f1"]),
            "seconds": round(seconds, 1), "trainable_params": max(r["trainable_params"] for r in rows),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "body_shift": round(body_shift(result.dir, MODELS[task]), 5),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "stages": [r["stage"] for r in rows], "val_accuracy": [round(r["val_accuracy"], 4) for r in rows],
            "config": cfg}


def prepare_data(task: str, out: Path, quick: bool) -> bool:
    root = out / "data" / task
    if root.exists():
        shutil.rmtree(root)
    (build_bbc if task == "bbc" else build_fmnist)(root / "data", quick)
    return write_retain(root / "retain.txt") if task == "bbc" else True


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("task", "strategy", "test acc", "macro-F1", "seconds", "trainable params", "peak RSS", "body shift",
            "best/run")
    lines = [head] + [(r["task"], r["variant"], f"{r['test_accuracy']:.4f}", f"{r['test_macro_f1']:.4f}",
                       f"{r['seconds']:.0f}", f"{r['trainable_params']:,}", f"{r['peak_rss_mib']:.0f} MiB",
                       f"{r['body_shift']:.4f}", f"{r['best_epoch']}/{r['epochs_run']}") for r in rows]
    print_aligned(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strategies", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 2 epochs: a smoke check")
    parser.add_argument("--only", choices=MODELS, help="run one task")
    parser.add_argument("--strategies", help="comma-separated subset of the variants")
    parser.add_argument("--out", type=Path, default=Path("bench-out/strategies"), help="output folder")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        task, variant = args.worker
        write_row(out, f"{task}.{variant}", run_one(task, variant, out, args.quick))
        return 0

    chosen = set(args.strategies.split(",")) if args.strategies else None
    rows, failed = [], []
    started = time.perf_counter()
    for task in [args.only] if args.only else list(MODELS):
        has_retain = prepare_data(task, out, args.quick)
        for variant in (*STRATEGIES, *EXTRAS[task]):
            if chosen and variant not in chosen:
                continue
            if variant.endswith("+ewc") and not has_retain:
                print(f"== {task} {variant}: skipped, Debian's fortunes (retain text) not installed", flush=True)
                continue
            print(f"== {task} {variant}", flush=True)
            row = run_worker("benchmarks.strategies", [task, variant], out, f"{task}.{variant}", args.quick)
            if row is None:
                failed.append(f"{task} {variant}")
                continue
            rows.append(row)
            print(f"   test accuracy {row['test_accuracy']:.4f}, {row['seconds']:.0f} s", flush=True)
    report = write_report(out, "strategies", argv or sys.argv[1:], started, rows, failed, quick=args.quick)
    print()
    print_table(rows)
    return close(report, out)


if __name__ == "__main__":
    sys.exit(main())
