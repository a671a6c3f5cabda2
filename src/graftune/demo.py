"""`graftune demo`: fine-tune the offline MiniLM encoder on real BBC News articles, in a few minutes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from graftune.config import validate
from graftune.datasets import write_bbc_news
from graftune.run import RunResult, train_run

DEMO_PER_CLASS = 80


def run_demo(out: Path, overwrite: bool = False, console: Console | None = None) -> RunResult:
    """Write 80 articles per topic as class folders, then fully fine-tune minilm-l6 on them."""
    console = console or Console(stderr=True)
    data = out.parent / f"{out.name}-data"
    if not data.exists():
        write_bbc_news(data, per_class=DEMO_PER_CLASS, seed=0)
    console.print(f"BBC News: {DEMO_PER_CLASS} articles per topic written to {data}")
    cfg = validate({
        "task": "text-classification",
        "model": {"source": "minilm-l6"},
        "data": {"train": str(data), "max_length": 128, "split": {"val": 0.15, "test": 0.25, "seed": 0}},
        "train": {"epochs": 3, "batch_size": 16},
    }, source="demo")
    return train_run(cfg, out, overwrite=overwrite, console=console)
