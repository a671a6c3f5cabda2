"""What every benchmark script shares: one child process per row, the JSON report, aligned tables.

A row runs in a fresh process (`python -m MODULE --worker ... --out OUT`), so its peak RSS is its own;
the worker writes its row to OUT/NAME.row.json and the parent collects it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_worker(module: str, worker_args: Sequence[str], out: Path, name: str, quick: bool,
               quiet: bool = False, options: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run one row in a child process; its row, or None when it failed (the reason is in its output)."""
    row_file = out / f"{name}.row.json"
    row_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, "--worker", *worker_args, "--out", str(out), *(["--quick"] * quick),
               *options]
    code = subprocess.call(command, stdout=subprocess.DEVNULL if quiet else None)
    if code != 0 or not row_file.is_file():
        print(f"== {name}: worker failed (exit code {code})", flush=True)
        return None
    row: dict[str, Any] = json.loads(row_file.read_text())
    return row


def write_row(out: Path, name: str, row: dict[str, Any]) -> None:
    """The worker's side of `run_worker`."""
    (out / f"{name}.row.json").write_text(json.dumps(row, indent=2))


def write_report(out: Path, benchmark: str, argv: Sequence[str], started: float, rows: list[dict[str, Any]],
                 failed: list[str], **extra: Any) -> dict[str, Any]:
    """OUT/BENCHMARK.json: the command, the machine, the total time, the rows and what failed."""
    report = {"benchmark": benchmark, "command": " ".join([f"python -m benchmarks.{benchmark}", *argv]),
              "machine": machine(), "total_seconds": round(time.perf_counter() - started, 1), "rows": rows,
              "failed": failed, **extra}
    (out / f"{benchmark}.json").write_text(json.dumps(report, indent=2))
    return report


def close(report: dict[str, Any], out: Path) -> int:
    """The last lines of every benchmark, and its exit status: 1 when a row failed to run."""
    print(f"\ntotal {report['total_seconds']:.0f} s; written to {out / (report['benchmark'] + '.json')}")
    if report["failed"]:
        print(f"failed: {', '.join(report['failed'])}")
    return 1 if report["failed"] else 0


def machine() -> dict[str, Any]:
    import torch

    return {"cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}


def print_aligned(lines: Sequence[tuple[str, ...]]) -> None:
    """Print rows as aligned columns, the first row as a header underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_checks(checks: Sequence[dict[str, Any]]) -> None:
    """The targets table: each check's target, measured value, bound and PASS/FAIL; nothing when none."""
    if checks:
        print()
        print_aligned([("target", "measured", "bound", "result")] +
                      [(c["target"], f"{c['value']:.3f}", c["bound"], "PASS" if c["passed"] else "FAIL")
                       for c in checks])


def write_bbc_splits(root: Path, pool_size: int, slices: Callable[[str], dict[str, int]]) -> Path:
    """BBC News as ROOT/SPLIT/TOPIC/*.txt: `pool_size` articles sampled per topic (seed 0), in name order, cut
    into consecutive slices of `slices(topic)` articles, split by split in the dict's order. Written once."""
    from graftune.datasets import write_bbc_news

    if (root / "done").is_file():
        return root
    pool = write_bbc_news(root / "pool", per_class=pool_size, seed=0)
    for topic in sorted(p for p in pool.iterdir() if p.is_dir()):
        files, start = sorted(topic.glob("*.txt")), 0
        for split, count in slices(topic.name).items():
            (root / split / topic.name).mkdir(parents=True, exist_ok=True)
            for file in files[start:start + count]:
                shutil.copy(file, root / split / topic.name / file.name)
            start += count
    shutil.rmtree(pool)
    (root / "done").write_text("")
    return root


def frozen_features(cfg: dict[str, Any]) -> tuple[dict[str, tuple[Any, Any]], Any]:
    """(per split, the frozen body's pooled encodings (float64, examples x features) as graftune's run computes
    them, read through its feature cache (a run of `cfg` stored train and val), and the items' targets stacked
    (class indices, standardized values or 0/1 label vectors, as the task makes them); the run's task): what a
    scikit-learn peer fits on, so both sides see the same features."""
    import numpy as np
    from rich.console import Console

    from graftune.config import validate
    from graftune.features import Split
    from graftune.run import Run
    from graftune.sampling import sorted_batches

    run = Run.detached(validate(cfg), Console(stderr=True, quiet=True))
    assert run.loaders.cache is not None
    out = {}
    for split, items in run.items.items():
        lengths = run.task.lengths(items, run.preprocess)
        batches = sorted_batches(lengths, run.settings.train.eval_batch_size, len(items))
        encoded = run.loaders.cache.encodings(Split(items, batches))
        out[split] = (encoded.numpy().astype(np.float64), np.stack([np.asarray(target) for _, target in items]))
    return out, run.task
