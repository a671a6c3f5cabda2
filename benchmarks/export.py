"""How far each export is from the run's PyTorch model, on real pre-trained weights.

    .venv/bin/python -m benchmarks.export [--out DIR] [--skip-lm]

Runs (each trained once, then read again): `minilm-l6` frozen, one (exactly solved) epoch on 12 BBC News
articles per topic, at 128 tokens; `smollm2-135m` with LoRA (the default), one epoch on 18 short
sentences packed in blocks of 64 tokens. Each is exported in every format it allows (the classifier's
hf is a sentence-transformers folder; the language model's a Transformers one) and the export's own
check is reported: the largest absolute difference from PyTorch on the first test examples, the limit
(1e-4 x max(1, the largest output)) and the seconds the export took, check included. OUT/export.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, write_report

SENTENCES = ["The striker scored twice in the final minutes", "A late goal won the cup for the home side",
             "Shares fell sharply after the bank cut its forecast", "Inflation rose faster than markets expected",
             "The new phone has a faster chip and a better camera", "Engineers released an update to the software",
             "The keeper saved a penalty in extra time", "The company reported record profits this quarter",
             "A security flaw was found in the web browser", "She won the race by a second on the last lap",
             "Investors sold bonds as interest rates climbed", "The laptop battery now lasts a whole day",
             "The team lost the match after a red card", "The central bank held rates steady on Tuesday",
             "Researchers trained a larger language model", "Fans cheered as the champions lifted the trophy",
             "Oil prices jumped after the supply cut", "The startup built a chip for machine learning"]


def runs(root: Path, skip_lm: bool) -> dict[str, tuple[Path, dict[str, Any]]]:
    from graftune.datasets import write_bbc_news

    bbc = root / "bbc"
    if not bbc.is_dir():
        write_bbc_news(bbc, per_class=12, seed=0)
    corpus = root / "corpus"
    for i, sentence in enumerate(SENTENCES):
        (corpus / f"{i:02d}.txt").parent.mkdir(parents=True, exist_ok=True)
        (corpus / f"{i:02d}.txt").write_text(sentence)
    chosen = {"minilm-l6": (root / "minilm", {
        "task": "text-classification", "model": {"source": "minilm-l6"}, "freeze": {"body": "all"},
        "data": {"train": str(bbc), "max_length": 128}, "train": {"epochs": 1, "progress": False}})}
    if not skip_lm:
        chosen["smollm2-135m"] = (root / "smollm2", {
            "task": "causal-lm", "model": {"source": "smollm2-135m"}, "generation": {"samples": 0},
            "data": {"train": str(corpus), "block_size": 64},
            "train": {"epochs": 1, "batch_size": 4, "progress": False}})
    return chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/export"))
    parser.add_argument("--skip-lm", action="store_true", help="leave out smollm2-135m")
    args = parser.parse_args(argv)
    from rich.console import Console

    import graftune

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name, (run, config) in runs(args.out, args.skip_lm).items():
        if not (run / "results.json").is_file():
            graftune.train(config, run, overwrite=True, console=Console(quiet=True))
        for form in ("onnx", "hf", "torchscript"):
            begun = time.perf_counter()
            done = graftune.export(run, form, overwrite=True)
            rows.append({"run": name, "format": form, "exporter": done.exporter, "seconds": time.perf_counter() - begun,
                         **done.check.to_json()})
            print(f"{name} {form}: {done.check.line()}", flush=True)
    print_aligned([("run", "format", "max |export - PyTorch|", "limit", "check batch", "seconds")] +
                  [(r["run"], r["format"], f"{r['max_abs_diff']:.3g}", f"{r['limit']:.3g}", f"{r['examples']} test "
                    "examples", f"{r['seconds']:.1f}") for r in rows])
    return close(write_report(args.out, "export", argv, started, rows, []), args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
