"""`graftune serve` on tiny runs: every endpoint answers, /predict answers what FineTuned.predict does,
concurrent requests run in shared batches and each gets its own answer, bad requests get the right 4xx and
message, and the real command serves on a free port."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rich.console import Console

import graftune
from graftune.artifacts import FineTuned
from graftune.batching import MicroBatcher
from graftune.data.motion_clips import write_motion_clips
from graftune.serve import create_app

QUIET = Console(quiet=True)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@dataclass
class Runs:
    text: Path  # tiny BERT on BBC News, five topics
    image: Path  # module:helpers:tiny_cnn on colour squares
    video: Path  # module:helpers:tiny_cnn per frame on motion clips
    lm: Path  # tiny Llama on BBC News text
    clips: Path
    images: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from graftune.datasets import write_bbc_news

    root = tmp_path_factory.mktemp("serve")
    news = write_bbc_news(root / "news", per_class=6, seed=0)
    corpus = root / "corpus"
    corpus.mkdir()
    for article in sorted((news / "tech").glob("*.txt"))[:3]:
        (corpus / article.name).write_text(article.read_text()[:600])
    bert = helpers.write_tiny_bert(root / "bert", mean_pooling=True)
    llama = helpers.write_tiny_llama(root / "llama")
    images = helpers.write_colour_folders(root / "images", per_class=6)
    clips = root / "clips"
    write_motion_clips(clips, per_class=4, frames=4, size=32, classes=("grow", "shrink"))
    quiet = {"epochs": 1, "progress": False}
    # Probes by SGD and a fully trained tiny LM: seconds, where the exact probe's solve is slower on a busy CPU.
    graftune.train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                    "data": {"train": str(news), "max_length": 32},
                    "strategy": {"name": "linear-probe", "probe": "sgd"}, "train": quiet}, root / "text", console=QUIET)
    graftune.train({"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                    "data": {"train": str(images), "image_size": 16, "augment": False}, "freeze": {"body": 2},
                    "train": {**quiet, "batch_size": 8}}, root / "image", console=QUIET, trust_code=True)
    graftune.train({"task": "video-classification", "model": {"source": "module:helpers:tiny_cnn"},
                    "data": {"train": str(clips), "image_size": 16}, "video": {"frames": 4},
                    "freeze": {"body": "all"}, "train": {**quiet, "batch_size": 4}}, root / "video", console=QUIET,
                   trust_code=True)
    graftune.train({"task": "causal-lm", "model": {"source": f"hf:{llama}"}, "strategy": {"name": "full"},
                    "data": {"train": str(corpus), "block_size": 32, "split": {"val": 0.34, "test": 0.0}},
                    "train": {**quiet, "batch_size": 4}, "generation": {"samples": 0, "max_new_tokens": 4}},
                   root / "lm", console=QUIET)
    return Runs(root / "text", root / "image", root / "video", root / "lm", clips, images)


@pytest.fixture(scope="module")
def text_model(runs: Runs) -> FineTuned:
    return graftune.load(runs.text)


@pytest.fixture(scope="module")
def text_client(runs: Runs, text_model: FineTuned) -> TestClient:
    return TestClient(create_app(runs.text, max_batch=8, max_wait_ms=50, max_body_mb=0.01, fine_tuned=text_model))


@pytest.fixture(scope="module")
def image_client(runs: Runs) -> TestClient:
    return TestClient(create_app(runs.image, max_batch=4, trust_code=True))


@pytest.fixture(scope="module")
def lm_client(runs: Runs) -> TestClient:
    return TestClient(create_app(runs.lm))  # tiny Llama: a context of 256 positions


JSON = {"content-type": "application/json"}
ARTICLES = ["The striker scored twice in the second half.", "Shares fell after the bank cut its forecast.",
            "The minister defended the new budget in parliament.", "A new phone with a folding screen went on sale.",
            "The film won three awards at the festival."]


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def close_to(served: list[dict[str, Any]], direct: list[dict[str, Any]], tolerance: float = 1e-5) -> bool:
    """Same inputs, labels and probabilities within `tolerance` (padding to another batch's longest text moves
    float sums in the last digits)."""
    return len(served) == len(direct) and all(
        s["input"] == d["input"] and s["label"] == d["label"] and s["probabilities"].keys() == d["probabilities"].keys()
        and all(abs(s["probabilities"][k] - d["probabilities"][k]) <= tolerance for k in d["probabilities"])
        for s, d in zip(served, direct, strict=True))


# --- every endpoint ---------------------------------------------------------------------------------------


def test_health_metadata_stats_and_docs(text_client: TestClient, text_model: FineTuned) -> None:
    assert text_client.get("/health").json() == {"status": "ok", "task": "text-classification"}
    meta = text_client.get("/metadata").json()
    assert meta["outputs"]["labels"] == text_model.task.schema["labels"] == [
        "business", "entertainment", "politics", "sports", "tech"]
    assert meta["source"] == text_model.info["source"] and meta["preprocessing"] == text_model.info["preprocess"]
    assert meta["provenance"] == text_model.info["provenance"] and meta["endpoints"] == ["/predict"]
    assert meta["limits"] == {"max_batch": 8, "max_wait_ms": 50, "max_body_mb": 0.01}
    assert set(text_client.get("/stats").json()) == {"requests", "items", "batches", "batch_sizes", "largest_batch"}
    spec = text_client.get("/openapi.json").json()
    assert {"/predict", "/generate", "/health", "/metadata", "/stats"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["properties"]["texts"]["type"] == "array"
    assert "LabelPrediction" in spec["components"]["schemas"] and "GenerateRequest" in spec["components"]["schemas"]
    assert text_client.get("/docs").status_code == 200


def test_text_predictions_are_those_of_predict(text_client: TestClient, text_model: FineTuned) -> None:
    served = text_client.post("/predict", json={"texts": ARTICLES})
    assert served.status_code == 200, served.text
    direct = text_model.predict(text_model.task.read_inputs([], ARTICLES))
    assert close_to(served.json()["predictions"], direct)
    assert served.json()["predictions"][0]["input"] == "text 1"


def test_image_predictions_are_those_of_predict(image_client: TestClient, runs: Runs) -> None:
    files = sorted((runs.images / "red").glob("*.png"))[:2] + sorted((runs.images / "blue").glob("*.png"))[:1]
    served = image_client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert served.status_code == 200, served.text
    model = graftune.load(runs.image, trust_code=True)
    direct = model.predict(model.task.read_inputs([str(f) for f in files], []))
    for row, file in zip(direct, files, strict=True):
        row["input"] = file.name
    assert close_to(served.json()["predictions"], direct, tolerance=1e-6)


def test_video_clips_are_served_as_uploads(runs: Runs) -> None:
    clip = sorted((runs.clips / "grow").iterdir())[0]
    client = TestClient(create_app(runs.video, trust_code=True))
    served = client.post("/predict", files=[("files", (clip.name, clip.read_bytes(), "video/mp4"))])
    assert served.status_code == 200, served.text
    model = graftune.load(runs.video, trust_code=True)
    [direct] = model.predict(model.task.read_inputs([str(clip)], []))
    assert close_to(served.json()["predictions"], [{**direct, "input": clip.name}], tolerance=1e-6)
    bad = client.post("/predict", files=[("files", ("clip.mp4", b"not a video at all", "video/mp4"))])
    assert bad.status_code == 422 and "clip.mp4" in bad.json()["detail"]


def test_served_rows_state_their_input_and_decision_rule(text_client: TestClient, runs: Runs) -> None:
    """Rows carry what `graftune predict --json` prints: the text, or the uploaded file's name (not the server's
    copy of it), the argmax and the rule that decided; fields that do not apply are left out, not null."""
    [row] = text_client.post("/predict", json={"texts": ARTICLES[:1]}).json()["predictions"]
    assert row["text"] == ARTICLES[0] and "file" not in row
    assert row["decision"] == {"rule": "argmax"} and row["argmax"] == row["label"]
    clip = sorted((runs.clips / "grow").iterdir())[0]
    client = TestClient(create_app(runs.video, trust_code=True))
    served = client.post("/predict", files=[("files", (clip.name, clip.read_bytes(), "video/mp4"))])
    [row] = served.json()["predictions"]
    threshold = json.loads((runs.video / "model" / "graftune.json").read_text())["schema"]["threshold"]
    assert row["file"] == row["input"] == clip.name and "text" not in row
    assert row["decision"] == {"rule": "threshold", "on": "shrink", "threshold": threshold}
    probabilities = row["probabilities"]
    assert row["argmax"] == max(probabilities, key=probabilities.__getitem__)


def test_generate_is_what_generate_writes(runs: Runs) -> None:
    model = graftune.load(runs.lm)
    client = TestClient(create_app(runs.lm, fine_tuned=model))
    request = {"prompt": "the new computer", "max_new_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 3}
    served = client.post("/generate", json=request)
    assert served.status_code == 200, served.text
    direct = model.task.generate(model.model, model.preprocess, "the new computer", lambda _: None,
                                 max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    assert served.json() == {"prompt": "the new computer", "completion": direct}
    assert client.get("/metadata").json()["endpoints"] == ["/generate"]
    wrong = client.post("/predict", json={"texts": ["hello"]})
    assert wrong.status_code == 400 and "/predict serves tasks that predict" in wrong.json()["detail"]
    assert "causal-lm" in wrong.json()["detail"]
    empty = client.post("/generate", json={"prompt": "  "})
    assert empty.status_code == 422 and empty.json()["detail"] == "prompt: empty prompt."
    negative = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 0})
    assert negative.status_code == 422 and "max_new_tokens" in negative.json()["detail"]


def test_generate_on_a_classifier_is_refused(text_client: TestClient) -> None:
    response = text_client.post("/generate", json={"prompt": "hello"})
    assert response.status_code == 400
    assert "generate is for tasks that produce text" in response.json()["detail"]
    assert "text-classification" in response.json()["detail"]


# --- batching ---------------------------------------------------------------------------------------------


def test_concurrent_requests_share_batches_and_get_their_own_answers(runs: Runs, text_model: FineTuned) -> None:
    app = create_app(runs.text, max_batch=16, max_wait_ms=200, fine_tuned=text_model)
    texts = [f"{ARTICLES[i % 5]} Item {i}." for i in range(16)]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await asyncio.gather(*(client.post("/predict", json={"texts": [t]}) for t in texts))

    responses = asyncio.run(send_all())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for text, response in zip(texts, responses, strict=True):
        assert close_to(response.json()["predictions"], text_model.predict(text_model.task.read_inputs([], [text])))
    stats = TestClient(app).get("/stats").json()
    assert stats["requests"] == 16 and stats["items"] == 16
    assert stats["largest_batch"] > 1 and stats["batches"] < 16, stats


def test_a_bad_request_in_a_batch_fails_alone() -> None:
    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("thirteen")
        return [item * 2 for item in items]

    async def send() -> tuple[list[Any], MicroBatcher[int, int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_wait=0.2)
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in (1, 13, 3)), return_exceptions=True)
        await batcher.close()
        return results, batcher

    results, batcher = asyncio.run(send())
    assert results[0] == [2, 202] and results[2] == [6, 206]
    assert isinstance(results[1], ValueError)
    assert batcher.stats.sizes[2] == 2  # the first batch of 6 failed, then each request ran alone


def test_a_batch_holds_no_more_than_max_batch() -> None:
    seen: list[int] = []

    def run(items: list[int]) -> list[int]:
        seen.append(len(items))
        return items

    async def send() -> list[list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=4, max_wait=0.2)
        results = await asyncio.gather(*(batcher.submit([i] * 3) for i in range(5)))
        await batcher.close()
        return results

    assert asyncio.run(send()) == [[i] * 3 for i in range(5)]
    assert max(seen) <= 4 and sum(seen) == 15


# --- bad requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_kwargs", "status", "fragment"), [
    ({"json": {"text": ["hi"]}}, 422, "texts: Field required"),
    ({"json": {"texts": ["hi"], "extra": 1}}, 422, "extra: Extra inputs are not permitted"),
    ({"json": {"texts": "hi"}}, 422, "texts: Input should be a valid list"),
    ({"json": {"texts": [1]}}, 422, "texts.0: Input should be a valid string"),
    ({"json": {"texts": []}}, 422, "texts: empty list"),
    ({"json": {"texts": ["a", " "]}}, 422, "texts[1]: empty text"),
    ({"json": {"texts": ["a"] * 9}}, 422, "texts: 9 items; at most 8 per request"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "this run reads texts"),
    ({"files": [("files", ("a.png", png((1, 2, 3)), "image/png"))]}, 415, "this run reads texts"),
    ({"json": {"texts": ["x" * 20_000]}}, 413, "over the limit of 10485 bytes (--max-body-mb 0.01)"),
    # issue 20: whatever a body holds, a 4xx that says what is wrong, never a 500
    ({"content": b'{"texts": ' + b"[" * 1000 + b"]" * 1000 + b"}", "headers": JSON}, 400,
     "nests deeper than the parser goes"),
    ({"content": b"[" * 4000 + b"]" * 4000, "headers": JSON}, 400, "nests deeper than the parser goes"),
    ({"content": b'{"texts": ' + b"[" * 500 + b"]" * 500 + b"}", "headers": JSON}, 422,
     "texts.0: Input should be a valid string"),
    ({"content": b'{"texts": ["fine", "a \\ud800 b"]}', "headers": JSON}, 422,
     "texts.1: holds a lone surrogate code point (U+D800) at character 2"),
    ({"content": b'{"texts": ["a"], "x\\udfff": 1}', "headers": JSON}, 422, "Input should be a valid string"),
    ({"content": b'{"texts": [' + b"9" * 5000 + b"]}", "headers": JSON}, 400, "Exceeds the limit (4300 digits)"),
    ({"content": b'{"texts": ["caf\xe9"]}', "headers": JSON}, 400, "can't decode byte 0xe9"),
])
def test_bad_text_requests(text_client: TestClient, request_kwargs: dict[str, Any], status: int,
                           fragment: str) -> None:
    response = text_client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"], response.json()


def test_an_oversize_body_without_a_length_is_refused_before_it_is_all_read(text_client: TestClient) -> None:
    sent = {"chunks": 0}

    async def chunks() -> Any:
        yield b'{"texts": ["'
        for _ in range(100):  # 100 KB against a 10 KB limit, without a Content-Length
            sent["chunks"] += 1
            yield b"x" * 1024
        yield b'"]}'

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=text_client.app)  # streams the body to the app chunk by chunk
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/predict", content=chunks(), headers={"content-type": "application/json"})

    response = asyncio.run(post())
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]
    assert sent["chunks"] < 20, "the body was read past its limit"


@pytest.mark.parametrize(("request_kwargs", "status", "fragment"), [
    ({"json": {"texts": ["a cat"]}}, 415, "this run reads images: send image files as a multipart"),
    ({"files": [("files", ("notes.png", b"not an image", "image/png"))]}, 422,
     "notes.png: cannot read image notes.png"),
    ({"files": [("files", ("notes.txt", b"hello", "text/plain"))]}, 422, "notes.txt: not an image file"),
    ({"files": [("image", ("a.png", png((1, 2, 3)), "image/png"))]}, 422, "multipart field 'image'"),
    ({"files": [("files", (None, b"a.png"))]}, 422, "multipart field 'files': not a file upload"),
    ({"files": [("files", (f"{i}.png", png((i, 2, 3)), "image/png")) for i in range(5)]}, 422,
     "'files': 5 items; at most 4 per request"),
    ({"files": [("files", (f"{i}.png", png((i, 2, 3)), "image/png")) for i in range(40)]}, 422,
     "Too many files. Maximum number of files is 5. At most 4 files per request"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422,
     "'files': empty list"),
])
def test_bad_image_requests(image_client: TestClient, request_kwargs: dict[str, Any], status: int,
                            fragment: str) -> None:
    response = image_client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"], response.json()


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b'{"prompt": "a \\ud800 b"}', 422, "prompt: holds a lone surrogate code point (U+D800) at character 2"),
    (b'{"prompt": "hi", "seed": 1180591620717411303424}', 422,  # 2**70
     "seed: Input should be less than or equal to 18446744073709551615"),
    (b'{"prompt": "hi", "seed": -1}', 422, "seed: Input should be greater than or equal to 0"),
    (b'{"prompt": "hi", "temperature": 1e-300}', 422, "temperature: give 0 (greedy) or at least 0.01"),
    (b'{"prompt": "hi", "temperature": Infinity}', 422, "temperature: Input should be a finite number"),
    (b'{"prompt": "hi", "top_p": NaN}', 422, "top_p"),
    (b'{"prompt": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, "nests deeper than the parser goes"),
    (b'{"prompt": "hi", "max_new_tokens": ' + b"9" * 5000 + b"}", 400, "Exceeds the limit (4300 digits)"),
    (b'{"prompt": "caf\xe9"}', 400, "can't decode byte 0xe9"),
    # the context: 256 positions, prompt and new tokens together; refused, not truncated
    (b'{"prompt": "hi", "max_new_tokens": 300}', 422,
     "max_new_tokens 300: with the prompt's 1 token that is over the model's context of 256 tokens. Give "
     "max_new_tokens at most 255"),
    (b'{"prompt": "' + b"word " * 50_000 + b'"}', 422,
     "prompt: 50000 tokens; the model reads at most 256 (its context), new tokens included"),
    (b'{"prompt": "' + b"word " * 250 + b'", "max_new_tokens": 10}', 422, "Give max_new_tokens at most 6"),
])
def test_bad_generate_requests(lm_client: TestClient, body: bytes, status: int, fragment: str) -> None:
    started = time.monotonic()
    response = lm_client.post("/generate", content=body, headers=JSON)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"], response.json()
    assert time.monotonic() - started < 10, "a refused request still ran the model"


def test_generate_fills_the_context_exactly(lm_client: TestClient) -> None:
    """The bound is the context, not less: 250 prompt tokens and 6 new ones are 256."""
    response = lm_client.post("/generate", json={"prompt": "word " * 250, "max_new_tokens": 6, "seed": 2**64 - 1})
    assert response.status_code == 200, response.text


def chunked(head: bytes, filler: bytes, count: int, tail: bytes, sent: dict[str, int],
            pause: float = 0.0) -> Any:
    """A request body without a Content-Length, sent part by part (httpx streams it to the app as it is made)."""

    async def parts() -> Any:
        yield head
        for _ in range(count):
            sent["parts"] += 1
            if pause:
                await asyncio.sleep(pause)
            yield filler
        yield tail

    return parts()


def post_streamed(app: Any, path: str, body: Any, content_type: str) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=30) as client:
            return await client.post(path, content=body, headers={"content-type": content_type})

    return asyncio.run(post())


def test_an_oversize_chunked_upload_is_413(runs: Runs) -> None:
    """The multipart parser reported the cut-off body as malformed (400); the limit's 413 is the answer."""
    app = create_app(runs.image, max_batch=4, max_body_mb=0.01, trust_code=True)
    sent = {"parts": 0}
    head = b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    body = chunked(head, b"\0" * 1024, 100, b"\r\n--x--\r\n", sent)
    response = post_streamed(app, "/predict", body, "multipart/form-data; boundary=x")
    assert response.status_code == 413, response.text
    assert "over the limit of 10485 bytes (--max-body-mb 0.01)" in response.json()["detail"]
    assert sent["parts"] < 20, "the body was read past its limit"


def test_an_oversize_chunked_prompt_is_413(runs: Runs) -> None:
    app = create_app(runs.lm, max_body_mb=0.01)
    sent = {"parts": 0}
    response = post_streamed(app, "/generate", chunked(b'{"prompt": "', b"word " * 200, 100, b'"}', sent),
                             "application/json")
    assert response.status_code == 413 and "over the limit" in response.json()["detail"], response.text
    assert sent["parts"] < 20


def test_a_stalled_body_is_408(runs: Runs, text_model: FineTuned) -> None:
    app = create_app(runs.text, request_timeout=0.3, fine_tuned=text_model)
    sent = {"parts": 0}
    started = time.monotonic()
    response = post_streamed(app, "/predict", chunked(b'{"texts": ["', b"word ", 5, b'"]}', sent, pause=2.0),
                             "application/json")
    assert response.status_code == 408, response.text
    assert "the request body stalled: nothing arrived for 0.3 s (--request-timeout)" in response.json()["detail"]
    assert time.monotonic() - started < 1.8 and sent["parts"] == 1
    quick = post_streamed(app, "/predict", chunked(b'{"texts": ["', b"word ", 3, b'"]}', sent, pause=0.05),
                          "application/json")
    assert quick.status_code == 200, quick.text


def test_a_client_filename_cannot_break_the_saved_copy(image_client: TestClient) -> None:
    """A NUL byte in the upload's name made the saved copy's path unwritable: a 500."""
    body = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.p\x00g"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png((9, 9, 9)) + b"\r\n--x--\r\n")
    response = image_client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("a.p\x00g: not an image file (.bmp"), response.json()


# --- the real command -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(run: Path, *flags: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`graftune serve RUN` on a free port of 127.0.0.1, once it answers /health; stopped by SIGTERM after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS),
                                                        os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "graftune.cli", "serve", str(run), "--port", str(port), *flags],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server did not answer within 60 s"
                time.sleep(0.2)
        yield port, server
    finally:
        if server.poll() is None:
            server.terminate()
        server.communicate(timeout=30)


@pytest.mark.e2e
def test_the_serve_command_answers_on_a_free_port(runs: Runs) -> None:
    with serving(runs.text) as (port, server):
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert health.json() == {"status": "ok", "task": "text-classification"}
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ARTICLES[:2]}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        server.terminate()
        output = server.communicate(timeout=30)[0]
    # SIGTERM: uvicorn shuts down cleanly, then ends by the signal it caught
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    assert f"serving {runs.text} at http://127.0.0.1:{port}" in output


def until_closed(client: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes the socket, and when it closed it (its socket timeout, 10 s, fails
    the test: a server that holds the socket open)."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received, time.monotonic()


@pytest.mark.e2e
def test_a_client_that_sends_half_its_headers_is_cut_off(runs: Runs) -> None:
    """uvicorn times out only idle keep-alive connections: half a request's headers, or nothing at all, held a
    socket open for good. With --request-timeout 1 the server answers 408 and closes, whole requests still work."""
    with serving(runs.text, "--request-timeout", "1") as (port, _):
        half, silent = (socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2))
        with half, silent:
            started = time.monotonic()
            half.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic")
            reply, closed = until_closed(half)
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
            detail = json.loads(reply.split(b"\r\n\r\n", 1)[1])["detail"]
            assert "headers did not arrive within 1 s (--request-timeout)" in detail
            assert 0.8 < closed - started < 5, closed - started
            assert until_closed(silent)[0].startswith(b"HTTP/1.1 408")  # connected, never wrote: the same
        # a keep-alive connection: one whole request answered, then the next one's half headers cut off
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = kept.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK"), first
            kept.sendall(b"GET /health HTTP/1.1\r\nHo")
            later, closed = until_closed(kept)
            assert b"HTTP/1.1 408" in first + later and closed - started < 15
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ARTICLES[:1]}, timeout=30)
        assert answer.status_code == 200, answer.text
