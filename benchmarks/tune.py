"""Tuning: the best trial of `graftune tune` against the default config, on a small BBC News subset.

    .venv/bin/python -m benchmarks.tune [--trials 6] [--out DIR]

Data: real BBC News articles, 20 per topic to train, 10 per topic to validate and 40 per topic to test
(100 / 50 / 200, disjoint): small data, where a config's defaults matter most and trials stay short.
The config is `minilm-l6` at 128 tokens with every other setting at its default (strategy auto, which
is full fine-tuning at 5e-5, 3 epochs). Two commands run as a user would type them, in child processes:

    graftune train OUT/news.yaml --out OUT/default
    graftune tune OUT/news.yaml --trials N --out OUT/study

The study picks its best trial on the validation split only; the test accuracy of that trial's run (it
was trained on the same split) is set against the default run's. Printed and written to OUT/tune.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from benchmarks.common import machine, print_aligned, write_bbc_splits


def build(root: Path) -> Path:
    return write_bbc_splits(root, 70, lambda _topic: {"train": 20, "val": 10, "test": 40})


def graftune(*args: Any) -> float:
    """Run the CLI in a child process; its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftune.cli", *[str(a) for a in args]], check=True)
    return round(time.perf_counter() - started, 1)


def run_row(run: Path, seconds: float | None) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    settings = yaml.safe_load((run / "config.yaml").read_text())
    return {"run": str(run), "strategy": settings["strategy"]["name"], "lr": settings["optim"]["lr"],
            "head_lr": settings["optim"]["head_lr"], "weight_decay": settings["optim"]["weight_decay"],
            "hidden": settings["head"]["hidden"], "freeze": settings["freeze"]["body"],
            "val_accuracy": results["best_val"]["val_accuracy"], "test_accuracy": results["test"]["accuracy"],
            "test_macro_f1": results["test"]["macro_f1"], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--out", default="bench-out/tune")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    data = build(out / "data")
    config = out / "news.yaml"
    config.write_text(yaml.safe_dump({
        "task": "text-classification", "model": {"source": "minilm-l6"},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                 "max_length": 128},
        "train": {"progress": False}, "cache": {"dir": str(out / "cache")}}))
    for stale in ("default", "study", "cache"):
        shutil.rmtree(out / stale, ignore_errors=True)
    default = run_row(out / "default", graftune("train", config, "--out", out / "default"))
    tuned_seconds = graftune("tune", config, "--trials", args.trials, "--out", out / "study")
    trials = list(csv.DictReader((out / "study" / "trials.csv").open()))
    best_number = optuna.load_study(study_name="graftune",
                                    storage=f"sqlite:///{out / 'study' / 'study.db'}").best_trial.number
    best = run_row(out / "study" / "trials" / f"{best_number:04d}", None)
    print_aligned([("row", "strategy", "lr", "weight decay", "hidden", "val acc", "test acc", "seconds"),
                   *[(name, r["strategy"], f"{r['lr']:.3g}", f"{r['weight_decay']:.3g}", str(r["hidden"]),
                      f"{r['val_accuracy']:.3f}", f"{r['test_accuracy']:.3f}", str(r["seconds"] or ""))
                     for name, r in (("default", default), (f"tune best (trial {best_number})", best))]])
    states = [t["state"] for t in trials]
    print(f"\n{len(trials)} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned; "
          f"tune took {tuned_seconds:.0f} s")
    report = {"benchmark": "tune", "command": " ".join(["python -m benchmarks.tune", *(argv or sys.argv[1:])]),
              "machine": machine(), "default": default, "best": best, "best_trial": best_number,
              "tune_seconds": tuned_seconds, "trials": trials}
    (out / "tune.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
