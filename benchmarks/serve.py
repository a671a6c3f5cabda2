"""Load test of `graftune serve` (micro-batched) against a plain FastAPI endpoint that calls the same model one
request at a time.

    .venv/bin/python -m benchmarks.serve [--out DIR] [--requests 1000] [--concurrency 16] [--quick]

The model: `minilm-l6` (128 tokens) trained briefly on BBC News (40 articles per topic for training, 10 for
validation, seed 0) with its body frozen (`strategy linear-probe`, the exact probe). Each server runs in its
own process on a free port of 127.0.0.1:

- graftune serve: `graftune serve RUN --max-batch 16 --max-wait-ms 5` (one uvicorn worker);
- plain FastAPI: this script's `--plain RUN` app, one `def` endpoint that takes a lock and calls
  `FineTuned.predict` on the request's texts, so the model runs one request at a time, off the event loop.

The client (httpx.AsyncClient, in this process) sends `--requests` POST /predict requests, each one BBC News
test article (`{"texts": [ARTICLE]}`, cycling over 100 of them), `--concurrency` at a time, after 32 warm-up
requests; every response must be a 200 with the label the other server gives (zero errors required). Printed:
requests/s, p50 and p99 latency, the mean batch graftune ran (its /stats), and the ratios; OUT/serve.json.
Client and servers share the machine's cores, as a sidecar client would.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, write_bbc_splits, write_report

WARMUP = 32
MAX_BATCH = 16


def train_model(out: Path, quick: bool) -> Path:
    """minilm-l6 with a frozen body on BBC News; trained once per OUT."""
    import graftune

    run = out / "run"
    if (run / "model").is_dir():
        return run
    per_topic = {"train": 8, "val": 4, "test": 20} if quick else {"train": 40, "val": 10, "test": 20}
    data = write_bbc_splits(out / "data", sum(per_topic.values()), lambda _: per_topic)
    graftune.train({"task": "text-classification", "model": {"source": "minilm-l6"},
                    "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                             "max_length": 128},
                    "strategy": {"name": "linear-probe"},
                    "train": {"epochs": 1, "seed": 0, "progress": False, "eval_batch_size": 32}}, run, overwrite=True)
    return run


def test_articles(out: Path) -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted((out / "data" / "test").rglob("*.txt"))]


def plain_app(run: Path) -> Any:
    """The baseline: FastAPI calling the model once per request, one request at a time."""
    from fastapi import FastAPI

    import graftune

    model = graftune.load(run)
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict[str, list[str]]) -> dict[str, Any]:
        with lock:
            return {"predictions": model.predict(model.task.read_inputs([], body["texts"]))}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """A server process, once its /health answers."""
    import httpx

    server = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
            return server
        except httpx.HTTPError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"{command[:4]} did not start; see {log}") from None
            time.sleep(0.5)


async def load(port: int, texts: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    """Send the requests `concurrency` at a time: latencies, errors, and each text's label."""
    import httpx

    url = f"http://127.0.0.1:{port}/predict"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    labels: dict[int, str] = {}
    next_request = 0

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def send(n: int, record: bool) -> None:
            index = n % len(texts)
            began = time.perf_counter()
            try:
                response = await client.post(url, json={"texts": [texts[index]]})
                elapsed = time.perf_counter() - began
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
                labels[index] = response.json()["predictions"][0]["label"]
            except httpx.HTTPError as err:
                errors.append(repr(err))
                return
            if record:
                latencies.append(elapsed)

        async def worker(record: bool, total: int) -> None:
            nonlocal next_request
            while next_request < total:
                n, next_request = next_request, next_request + 1
                await send(n, record)

        await asyncio.gather(*(worker(False, WARMUP) for _ in range(concurrency)))
        next_request = 0
        began = time.perf_counter()
        await asyncio.gather(*(worker(True, requests) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    latencies.sort()
    return {"requests": requests, "seconds": round(seconds, 2), "errors": len(errors), "first_errors": errors[:3],
            "requests_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(1000 * statistics.quantiles(latencies, n=100)[49], 1),
            "p99_ms": round(1000 * statistics.quantiles(latencies, n=100)[98], 1), "labels": labels}


def measure(name: str, command: list[str], port: int, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    server = start(command, port, args.out / f"{name.replace(' ', '-')}.log")
    try:
        row = {"server": name, **asyncio.run(load(port, texts, args.requests, args.concurrency))}
        if name == "graftune serve":
            stats = httpx.get(f"http://127.0.0.1:{port}/stats").json()
            row["mean_batch"] = round(stats["items"] / max(1, stats["batches"]), 2)
            row["batch_sizes"] = stats["batch_sizes"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"== {name}: {row['requests_per_s']} requests/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
          f"{row['errors']} errors", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a smaller training set and 200 requests")
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # the baseline server's own process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain is not None:
        import uvicorn

        uvicorn.run(plain_app(args.plain), host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    started, load_before = time.perf_counter(), Path("/proc/loadavg").read_text().split()[:3]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.requests = min(args.requests, 200)
    run = train_model(args.out, args.quick)
    texts = test_articles(args.out)
    ports = free_port(), free_port()
    rows = [measure("graftune serve", [sys.executable, "-m", "graftune.cli", "serve", str(run), "--port",
                                       str(ports[0]), "--max-batch", str(MAX_BATCH), "--max-wait-ms", "5"],
                    ports[0], texts, args),
            measure("plain FastAPI", [sys.executable, "-m", "benchmarks.serve", "--plain", str(run), "--port",
                                      str(ports[1])], ports[1], texts, args)]
    served, plain = rows
    agree = sum(served["labels"][i] == plain["labels"].get(i) for i in served["labels"]) / max(1, len(served["labels"]))
    for row in rows:
        row.pop("labels")
    print()
    print_aligned([("server", "requests/s", "p50 ms", "p99 ms", "errors", "mean batch")] +
                  [(r["server"], f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                    str(r["errors"]), str(r.get("mean_batch", 1))) for r in rows])
    ratios = {"throughput": round(served["requests_per_s"] / plain["requests_per_s"], 2),
              "p50": round(served["p50_ms"] / plain["p50_ms"], 2), "p99": round(served["p99_ms"] / plain["p99_ms"], 2)}
    print(f"\ngraftune serve / plain: throughput x{ratios['throughput']}, p50 x{ratios['p50']}, p99 x{ratios['p99']}; "
          f"labels agree on {agree:.1%} of the test articles")
    failed = [r["server"] for r in rows if r["errors"]]
    report = write_report(args.out, "serve", sys.argv[1:] if argv is None else argv, started, rows, failed,
                          ratios=ratios, label_agreement=agree, load_average_before=load_before,
                          load_average_after=Path("/proc/loadavg").read_text().split()[:3])
    return close(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
