"""The learning-rate finder on real data: the rate `graftune lr-find` picks, and a run at that rate (`optim.lr:
auto`) against a run at graftune's default rate.

    .venv/bin/python -m benchmarks.lr_find [--only bbc|fmnist] [--out DIR]

- BBC News: 24 / 16 / 40 articles per topic (train / val / test, disjoint), `minilm-l6`, strategy full,
  64 tokens (an article's headline and lead), batch 8, 3 epochs.
- Fashion-MNIST: 50 / 25 / 50 images per class (val from the train split, disjoint; test from t10k),
  `efficientnet-lite0` at 64 px without augmentation, strategy full, batch 32, 5 epochs.

For each: `graftune lr-find CONFIG` (the command, in a child process, timed from start to exit), then
`graftune.train` with the default rate and with `optim.lr: auto` (its time includes its own range test).
Printed: the rate picked and the test's seconds, and per run the rate used, test accuracy and seconds;
OUT/lr_find.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine, print_aligned, write_bbc_splits


def build_bbc(root: Path) -> Path:
    return write_bbc_splits(root, 80, lambda _topic: {"train": 24, "val": 16, "test": 40})


def build_fmnist(root: Path) -> Path:
    from graftune.datasets import write_fashion_mnist

    if (root / "done").is_file():
        return root
    write_fashion_mnist(root / "train", 50, split="train", seed=0, offset=0)
    write_fashion_mnist(root / "val", 25, split="train", seed=0, offset=50)  # the same permutation: disjoint
    write_fashion_mnist(root / "test", 50, split="t10k", seed=0)
    (root / "done").write_text("")
    return root


def config(task: str, data: Path, out: Path) -> dict[str, Any]:
    splits = {"train": str(data)}  # DATA/{train,val,test}/LABEL/: read as the user's own split
    common = {"strategy": {"name": "full"}, "cache": {"dir": str(out / "cache")}}
    if task == "bbc":
        return {"task": "text-classification", "model": {"source": "minilm-l6"}, "data": {**splits, "max_length": 64},
                "train": {"epochs": 3, "batch_size": 8, "seed": 0, "progress": False}, **common}
    return {"task": "image-classification", "model": {"source": "efficientnet-lite0"},
            "data": {**splits, "image_size": 64, "augment": False},
            "train": {"epochs": 5, "batch_size": 32, "eval_batch_size": 128, "seed": 0, "progress": False}, **common}


def lr_find(cfg: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    """`graftune lr-find` as a user runs it, timed from start to exit."""
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftune.cli", "lr-find", str(path), "--out", str(out / f"{name}-lr"),
                    "--overwrite"], check=True)
    found = json.loads((out / f"{name}-lr" / "lr_find.json").read_text())
    return {"lr": found["lr"], "suggestions": found["suggestions"], "stage": found["stage"],
            "steps_run": found["steps_run"], "stopped": found["stopped"], "test_seconds": found["seconds"],
            "command_seconds": round(time.perf_counter() - started, 1)}


def train(cfg: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    import graftune

    started = time.perf_counter()
    result = graftune.train(cfg, out / "runs" / name, overwrite=True)
    settings = yaml.safe_load((result.dir / "config.yaml").read_text())
    return {"run": name, "lr": settings["optim"]["lr"], "head_lr": settings["optim"]["head_lr"],
            "accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "examples": result.test["examples"], "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("bbc", "fmnist"))
    parser.add_argument("--out", default="bench-out/lr-find")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "tasks": {}}
    for task in [args.only] if args.only else ["bbc", "fmnist"]:
        data = build_bbc(out / "data-bbc") if task == "bbc" else build_fmnist(out / "data-fmnist")
        cfg = config(task, data, out)
        found = lr_find(cfg, out, task)
        runs = [train(cfg, out, f"{task}-default"),
                train({**cfg, "optim": {"lr": "auto"}}, out, f"{task}-auto")]
        report["tasks"][task] = {"lr_find": found, "runs": runs}
        (out / "lr_find.json").write_text(json.dumps(report, indent=2))
    print_aligned([("task", "lr-find pick", "stage", "steps", "lr-find s", "run", "optim.lr", "test accuracy",
                    "run s"),
                   *[(task, f"{entry['lr_find']['lr']:.3g}", entry["lr_find"]["stage"],
                      str(entry["lr_find"]["steps_run"]), f"{entry['lr_find']['command_seconds']:.0f}", run["run"],
                      f"{run['lr']:.3g}", f"{run['accuracy']:.4f}", f"{run['seconds']:.0f}")
                     for task, entry in report["tasks"].items() for run in entry["runs"]]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
