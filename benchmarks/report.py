"""What the run report costs: `write_report` on two real runs, timed three times each after the run.

    .venv/bin/python -m benchmarks.report [--out DIR]

- BBC News: 40 articles per topic (train / val / test split 70/15/15 by graftune), `minilm-l6`, linear
  probe (exact), 128 tokens, 3 epochs at most: text snippets in the worst examples.
- Fashion-MNIST: 30 training images per class (the same split), `efficientnet-lite0` at 64 px, gradual
  unfreezing above 6 frozen groups, 3 epochs: image thumbnails, and a stage timeline of three stages.

The run itself writes the report once at its end (the same function); printed per run: its wall-clock
seconds, and per rebuild the wall-clock and CPU seconds of `write_report` and the page's size;
OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.common import machine, print_aligned


def configs(root: Path) -> dict[str, dict[str, Any]]:
    from graftune.datasets import write_bbc_news, write_fashion_mnist

    news = write_bbc_news(root / "news", per_class=40, seed=0)
    fashion = root / "fashion"
    if not fashion.is_dir():
        write_fashion_mnist(fashion, per_class=30, split="train", seed=0)
    return {
        "bbc": {"task": "text-classification", "model": {"source": "minilm-l6"},
                "data": {"train": str(news), "max_length": 128}, "freeze": {"body": "all"},
                "train": {"epochs": 3, "progress": False}},
        "fashion": {"task": "image-classification", "model": {"source": "efficientnet-lite0"},
                    "data": {"train": str(fashion), "image_size": 64}, "freeze": {"body": 6},
                    "strategy": {"name": "gradual", "unfreeze_every": 1}, "train": {"epochs": 3, "progress": False}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/report"))
    args = parser.parse_args()
    import graftune
    from graftune.report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name, cfg in configs(args.out / "data").items():
        started = time.perf_counter()
        graftune.train(cfg, args.out / name, overwrite=True, console=Console(quiet=True))
        run_seconds = time.perf_counter() - started
        for attempt in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            page = write_report(args.out / name)
            rows.append({"run": name, "run_seconds": round(run_seconds, 1), "attempt": attempt + 1,
                         "wall_seconds": round(time.perf_counter() - wall, 3),
                         "cpu_seconds": round(time.process_time() - cpu, 3), "bytes": page.stat().st_size})
    print_aligned([("run", "run s", "rebuild", "wall s", "cpu s", "bytes"),
                   *[(r["run"], str(r["run_seconds"]), str(r["attempt"]), str(r["wall_seconds"]),
                      str(r["cpu_seconds"]), str(r["bytes"])) for r in rows]])
    (args.out / "report.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
