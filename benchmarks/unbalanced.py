"""Unbalanced classes: balanced accuracy with and without class weights or a balanced sampler, on real BBC News.

    .venv/bin/python -m benchmarks.unbalanced [--rare tech] [--out DIR]

Train: 100 articles of each topic but one, which keeps a tenth (10); validation and test: 30 of every topic
(balanced, so that the rare topic's recall is measured on as many articles as the others'). `minilm-l6`
with its body frozen (a linear probe on cached features, 10 epochs, max 128 tokens), the same run with and
without class weights (`train.class_weights: balanced`) and with a balanced sampler (`train.sampler:
balanced`). Printed: test accuracy, balanced accuracy, the rare topic's recall; OUT/unbalanced.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_aligned, write_bbc_splits


def build(root: Path, rare: str) -> Path:
    return write_bbc_splits(root, 160, lambda topic: {"val": 30, "test": 30, "train": 10 if topic == rare else 100})


ROWS = {"plain": {}, "class weights": {"class_weights": "balanced"}, "balanced sampler": {"sampler": "balanced"}}


def run(data: Path, out: Path, name: str) -> dict[str, Any]:
    import graftune

    config = {"task": "text-classification", "model": {"source": "minilm-l6"},
              "data": {"train": str(data), "max_length": 128}, "freeze": {"body": "all"},
              "strategy": {"probe": "sgd"},  # the figures in docs/BENCHMARKS.md were measured with the SGD probe
              "train": {"epochs": 10, "progress": False, "early_stopping": {"patience": None}, **ROWS[name]},
              "cache": {"dir": str(out / "cache")}}
    started = time.perf_counter()
    result = graftune.train(config, out / f"run-{name.replace(' ', '-')}", overwrite=True)
    return {"row": name, "seconds": round(time.perf_counter() - started, 1), **{
        key: result.test[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
        "recall": {label: row["recall"] for label, row in result.test["per_class"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rare", default="tech", help="the topic kept at a tenth in training")
    parser.add_argument("--out", default="bench-out/unbalanced")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    data = build(out / "data", args.rare)
    rows = [run(data, out, name) for name in ROWS]
    print_aligned([("row", "test accuracy", "balanced accuracy", f"recall of {args.rare}", "seconds"),
                   *[(r["row"], f"{r['accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}",
                      f"{r['recall'][args.rare]:.3f}", f"{r['seconds']:.0f}") for r in rows]])
    (out / "unbalanced.json").write_text(json.dumps({"rare": args.rare, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
