"""`graftune demo`: fine-tune the offline MiniLM encoder on real BBC News articles, in a few minutes.

The articles go to graftune's cache (~/.cache/graftune/demo/, or under $XDG_CACHE_HOME), written once and
reused, never into the user's folders: only the run folder `--out` is theirs to see.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console

from graftune.config import validate
from graftune.datasets import write_bbc_news
from graftune.run import RunResult, train_run
from graftune.rundir import RunDir

DEMO_PER_CLASS = 80


def run_demo(out: Path, overwrite: bool = False, console: Console | None = None) -> RunResult:
    """Write 80 articles per topic as class folders, then fully fine-tune minilm-l6 on them."""
    console = console or Console(stderr=True)
    RunDir(out).check_target(overwrite)  # the checks a run makes of --out, before any article is written
    data = demo_data()
    console.print(f"BBC News: {DEMO_PER_CLASS} articles per topic in {data}")
    cfg = validate({
        "task": "text-classification",
        "model": {"source": "minilm-l6"},
        "data": {"train": str(data), "max_length": 128, "split": {"val": 0.15, "test": 0.25, "seed": 0}},
        "train": {"epochs": 3, "batch_size": 16},
    }, source="demo")
    return train_run(cfg, out, overwrite=overwrite, console=console)


def demo_data() -> Path:
    """The demo's articles in the cache; written under a temporary name and renamed, so a demo stopped while
    writing them never leaves a partial set that the next one would take as whole."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graftune" / "demo"
    data = cache / f"bbc-news-{DEMO_PER_CLASS}"
    if not data.is_dir():
        partial = cache / f".{data.name}.{os.getpid()}.tmp"
        write_bbc_news(partial, per_class=DEMO_PER_CLASS, seed=0)
        try:
            partial.rename(data)
        except OSError:  # another demo finished writing it first: theirs is as good
            shutil.rmtree(partial, ignore_errors=True)
    return data
