"""Video benchmark: temporal heads on a frozen efficientnet-lite0 against mean pooling, on classes defined by motion.

    .venv/bin/python -m benchmarks.video [--quick] [--rows mean,conv,attention,conv-live,i3d] [--out DIR]

Data (graftune/data/motion_clips.py, real h264 files): four classes, a random spinning polygon that grows,
shrinks (a growing clip played backwards), grows then shrinks, or shrinks then grows; every class shows each
size equally often, so only the order of the frames tells the class. 16-frame clips at 64x64; 40 clips per
class to train, 10 to validate, 20 to test (seeds 0, 1, 2).

Rows, each in its own process with its own empty feature cache: `mean`, `conv`, `attention` train only the
temporal head on the frozen body (`--freeze all`), 8 frames per clip (uniform sampling, jittered in training,
4 cached views), images at 96 px, 30 epochs at 3e-3, best epoch on validation; `conv-live` is `conv` with
`cache.features: false` (the body runs every epoch on frames decoded once and kept in memory), for the time
the cache saves; `i3d` inflates the CNN into 3D (temporal kernel 3) and fine-tunes all of it with a mean head
for 3 epochs.

Printed: test accuracy (chance 0.25), the time of each row, clips per second for decoding (every clip once,
measured here), feature extraction (the epoch that filled the cache) and training (the training passes of
the other epochs), and the targets of the issue with PASS/FAIL. Everything goes to OUT/video.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, run_worker, write_report, write_row

SPLITS = {"train": (40, 0), "val": (10, 1), "test": (20, 2)}
QUICK_SPLITS = {"train": (6, 0), "val": (3, 1), "test": (3, 2)}
FRAMES, SIZE = 8, 96
ROWS = {
    "mean": {"video.temporal": "mean"},
    "conv": {"video.temporal": "conv"},
    "attention": {"video.temporal": "attention"},
    "conv-live": {"video.temporal": "conv", "cache.features": False},
    "i3d": {"video.temporal": "mean", "video.inflate": 3},
}


def build(root: Path, quick: bool) -> dict[str, float]:
    """Write the clips (once) and time decoding every one of them."""
    from graftune.data.motion_clips import write_motion_clips
    from graftune.data.videos import DecodedClips

    if not (root / "done").is_file():
        for split, (count, seed) in (QUICK_SPLITS if quick else SPLITS).items():
            write_motion_clips(root / split, per_class=count, frames=16, size=64, seed=seed)
        (root / "done").write_text("")
    clips = sorted(str(p) for p in root.rglob("*.mp4"))
    decoded, started = DecodedClips(), time.perf_counter()
    for clip in clips:
        decoded.frames(clip, SIZE)
    seconds = time.perf_counter() - started
    return {"clips": len(clips), "decode_seconds": round(seconds, 2),
            "decode_clips_per_s": round(len(clips) / seconds, 1)}


def worker(name: str, data: Path, out: Path, quick: bool) -> None:
    import graftune

    settings: dict[str, Any] = ROWS[name]
    inflated = "video.inflate" in settings
    epochs = 3 if inflated else 30
    config = {"task": "video-classification", "model": {"source": "efficientnet-lite0"},
              "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                       "image_size": SIZE},
              "freeze": {"body": "none" if inflated else "all"},
              "strategy": {"name": "full" if inflated else "linear-probe"},
              "optim": {"lr": 3e-4 if inflated else 3e-3},
              "train": {"epochs": 2 if quick else epochs, "batch_size": 8, "progress": False,
                        "early_stopping": {"patience": None}},
              "cache": {"dir": str(out / f"cache-{name}")}, "video": {"frames": FRAMES}}
    for key, value in settings.items():
        section, field = key.split(".")
        config.setdefault(section, {})[field] = value
    started = time.perf_counter()
    result = graftune.train(config, out / f"run-{name}", overwrite=True)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (result.dir / "metrics.jsonl").read_text().splitlines()]
    train_clips = sum(1 for _ in (data / "train").rglob("*.mp4"))
    val_clips = sum(1 for _ in (data / "val").rglob("*.mp4"))
    later = rows[1:] or rows
    train_seconds = sum(r["train_seconds"] for r in later)
    write_row(out, name, {
        "name": name, "accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
        "best_epoch": result.best_epoch, "seconds": round(seconds, 1),
        "feature_seconds": rows[0]["feed_seconds"], "cached": rows[0]["cached_features"],
        # the first epoch's feed: 4 jittered views of every training clip, and every validation clip, decoded and
        # run through the body
        "extract_clips_per_s": round((train_clips * 4 + val_clips) / rows[0]["feed_seconds"], 1)
        if rows[0]["cached_features"]
        else None,
        "train_clips_per_s": round(train_clips * len(later) / train_seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny splits, two epochs: a smoke check")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    parser.add_argument("--out", default="bench-out/video")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / ("clips-quick" if args.quick else "clips")
    if args.worker:
        worker(args.worker, data, out, args.quick)
        return 0
    started = time.perf_counter()
    decoding = build(data, args.quick)
    print(f"{decoding['clips']} clips decoded in {decoding['decode_seconds']} s "
          f"({decoding['decode_clips_per_s']} clips/s)", flush=True)
    rows, failed = [], []
    for name in args.rows.split(","):
        print(f"== {name}", flush=True)
        row = run_worker("benchmarks.video", [name], out, name, args.quick, quiet=True)
        if row is None:
            failed.append(name)
        else:
            rows.append(row)
    by_name = {row["name"]: row for row in rows}
    print_aligned([("row", "test accuracy", "seconds", "extract clips/s", "train clips/s", "peak RSS MiB"),
                   *[(r["name"], f"{r['accuracy']:.3f}", f"{r['seconds']:.0f}", str(r["extract_clips_per_s"] or "-"),
                      str(r["train_clips_per_s"]), str(r["peak_rss_mib"])) for r in rows]])
    targets = {}
    if "conv" in by_name and "mean" in by_name:
        targets["default head >= 0.9 test accuracy"] = by_name["conv"]["accuracy"] >= 0.9
        targets["mean pooling near chance (<= 0.4)"] = by_name["mean"]["accuracy"] <= 0.4
    if "conv" in by_name and "conv-live" in by_name:
        saved = by_name["conv-live"]["seconds"] - by_name["conv"]["seconds"]
        print(f"the cache saved {saved:.0f} s of {by_name['conv-live']['seconds']:.0f} "
              f"({by_name['conv-live']['seconds'] / by_name['conv']['seconds']:.1f}x faster)")
    for target, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {target}")
    report = write_report(out, "video", sys.argv[1:] if argv is None else argv, started, rows, failed,
                          decoding=decoding, targets=targets)
    return close(report, out)


if __name__ == "__main__":
    sys.exit(main())
