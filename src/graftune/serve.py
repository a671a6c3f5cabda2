"""`graftune serve`: a fine-tuned run as an HTTP service (FastAPI on uvicorn).

    POST /predict    a classifier's predictions, as `graftune predict --json` gives them: JSON {"texts": [...]}
                     for a text model, image or video files as multipart uploads (field `files`) for the others
    POST /generate   a causal-lm run's continuation of a prompt, as `graftune generate` writes it
    GET  /health, /metadata (task, labels, source, preprocessing, provenance), /stats (batch sizes run)
    GET  /docs, /openapi.json

Inputs go through the task's own reading and prediction (`Task.read_inputs`, `FineTuned.predict`), so
the service answers what `graftune predict` answers. Concurrent /predict requests are micro-batched
(graftune/batching.py). Bad requests get a 4xx with a JSON `detail` that says what to change; a body over
`max_body_mb` is refused (413) from its Content-Length, or as soon as the bytes read pass the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from graftune.api import load
from graftune.artifacts import FineTuned
from graftune.batching import MicroBatcher
from graftune.errors import UserError
from graftune.tasks.base import Task

log = logging.getLogger("graftune.serve")
ENVIRONMENT = "GRAFTUNE_SERVE"  # the settings of each uvicorn worker process, as JSON
UPLOAD_FIELD = "files"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


# --- requests and responses ----------------------------------------------------------------------------


class PredictTexts(BaseModel):
    """The texts to classify (a text model's /predict)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="texts to classify, at most --max-batch of them")


class Decision(BaseModel):
    """The rule that decided a prediction's label."""

    rule: Literal["argmax", "threshold"]
    on: str | None = Field(None, description="threshold: the label whose probability meets the threshold")
    threshold: float | None = Field(None, description="threshold: the validated threshold on that probability")


class Prediction(BaseModel):
    """One input's prediction, as a line of `graftune predict --json` (fields that do not apply are left out)."""

    input: str = Field(description="'text N' (the Nth text of the request), or the uploaded file's name")
    text: str | None = Field(None, description="the text classified (a text model)")
    file: str | None = Field(None, description="the uploaded file's name (an image or video model)")
    label: str = Field(description="the decided label")
    argmax: str = Field(description="the most probable label, whatever the rule decided")
    decision: Decision
    probabilities: dict[str, float]


class Predictions(BaseModel):
    predictions: list[Prediction]


class GenerateRequest(BaseModel):
    """A prompt to continue; unset options take the run's generation settings."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, description="0: greedy")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None


class Generated(BaseModel):
    prompt: str
    completion: str


class Health(BaseModel):
    status: str
    task: str


class Limits(BaseModel):
    max_batch: int = Field(description="items per request and per model batch")
    max_wait_ms: float = Field(description="how long a batch waits for more requests")
    max_body_mb: float


class Metadata(BaseModel):
    task: str
    modality: str
    labels: list[str] | None
    source: str
    preprocessing: dict[str, Any]
    provenance: dict[str, Any]
    endpoints: list[str]
    limits: Limits


class Stats(BaseModel):
    requests: int = Field(description="/predict requests answered in batches")
    items: int
    batches: int
    batch_sizes: dict[int, int] = Field(description="items in a batch -> how many batches had that many")
    largest_batch: int


class Error(BaseModel):
    detail: str


# --- the app -------------------------------------------------------------------------------------------


def create_app(run_dir: str | Path, max_batch: int = 32, max_wait_ms: float = 5.0, max_body_mb: float = 16.0,
               trust_code: bool = False, fine_tuned: FineTuned | None = None) -> FastAPI:
    """The service of one run (loaded here unless `fine_tuned` is given). Raises UserError for a folder that
    is no finished run, or for settings that cannot work."""
    if max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: give at least 1.")
    if max_wait_ms < 0:
        raise UserError(f"--max-wait-ms {max_wait_ms:g}: give 0 or more milliseconds.")
    if max_body_mb <= 0:
        raise UserError(f"--max-body-mb {max_body_mb:g}: give a size above 0.")
    model = fine_tuned or load(run_dir, trust_code=trust_code)
    task = model.task
    batcher: MicroBatcher[tuple[str, str], dict[str, Any]] = MicroBatcher(
        lambda items: model.predict(items, batch_size=len(items)), max_batch, max_wait_ms / 1000)
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb)
    generates = type(task).generate is not Task.generate
    classifies = not generates and "labels" in task.schema

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title=f"graftune: {task.name}", lifespan=lifespan,
                  description=f"The fine-tuned model of {Path(run_dir)} ({model.info.get('source')}).",
                  responses={400: {"model": Error}, 413: {"model": Error}, 415: {"model": Error},
                             422: {"model": Error}})
    app.add_middleware(BodyLimit, megabytes=max_body_mb)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", task=task.name)

    @app.get("/metadata", response_model=Metadata)
    async def metadata() -> Metadata:
        info = model.info
        return Metadata(task=task.name, modality=task.modality, labels=task.schema.get("labels"),
                        source=info.get("source", ""), preprocessing=info.get("preprocess", {}),
                        provenance=info.get("provenance", {}),
                        endpoints=["/predict"] if classifies else ["/generate"] if generates else [], limits=limits)

    @app.get("/stats", response_model=Stats)
    async def stats() -> Stats:
        seen = batcher.stats
        return Stats(requests=seen.requests, items=seen.items, batches=seen.batches, batch_sizes=dict(seen.sizes),
                     largest_batch=max(seen.sizes, default=0))

    @app.post("/predict", response_model=Predictions, response_model_exclude_none=True,
              openapi_extra=_predict_body(task.modality))
    async def predict(request: Request) -> Predictions:
        """Predictions for texts (JSON) or uploaded files (multipart), batched with concurrent requests."""
        if not classifies:
            raise HTTPException(400, f"/predict serves classifiers; this run's task is {task.name}. "
                                     + ("Use POST /generate." if generates else ""))
        kind = _media_type(request)
        if task.modality == "text":
            if kind != "application/json":
                raise HTTPException(415, 'this run classifies texts: send JSON {"texts": [...]} with Content-Type '
                                         f"application/json (got {kind or 'no Content-Type'}).")
            texts = _texts(await _json(request), max_batch)
            return Predictions(predictions=[Prediction(**result) for result in
                                            await batcher.submit(task.read_inputs([], texts))])
        if kind != "multipart/form-data":
            raise HTTPException(415, f"this run classifies {task.modality}s: send {task.modality} files as a "
                                     f"multipart/form-data upload, field '{UPLOAD_FIELD}' (got "
                                     f"{kind or 'no Content-Type'}).")
        with tempfile.TemporaryDirectory(prefix="graftune-serve-") as folder:
            names, inputs = await _uploads(request, task, Path(folder), max_batch)
            results = await batcher.submit(inputs)
        return Predictions(predictions=[Prediction(**{**result, "input": name, "file": name})  # not the saved copy
                                        for name, result in zip(names, results, strict=True)])

    @app.post("/generate", response_model=Generated)
    async def generate(body: GenerateRequest) -> Generated:
        """The continuation of a prompt (a causal-lm run); not batched: each request has its own sampling."""
        if not generates:
            raise HTTPException(400, f"/generate is for tasks that produce text; this run's task is {task.name}. "
                                     "Use POST /predict.")
        if not body.prompt.strip():
            raise HTTPException(422, "prompt: empty prompt.")
        options = body.model_dump(exclude={"prompt"}, exclude_none=True)
        text = await batcher.run_alone(lambda: task.generate(model.model, model.preprocess, body.prompt,
                                                             lambda _: None, **options))
        return Generated(prompt=body.prompt, completion=text)

    return app


def _predict_body(modality: str) -> dict[str, Any]:
    """The OpenAPI request body of /predict for this run: JSON texts, or multipart files."""
    if modality == "text":
        content = {"application/json": {"schema": PredictTexts.model_json_schema()}}
    else:
        files = {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": f"{modality} files, at most --max-batch of them"}
        content = {"multipart/form-data": {"schema": {"type": "object", "properties": {UPLOAD_FIELD: files},
                                                      "required": [UPLOAD_FIELD]}}}
    return {"requestBody": {"required": True, "content": content}}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"the body is not valid JSON ({err}).") from None


def _texts(body: Any, max_batch: int) -> list[str]:
    try:
        texts = PredictTexts.model_validate(body).texts
    except ValidationError as err:
        raise HTTPException(422, _describe(err.errors())) from None
    _check_count(len(texts), "texts", max_batch)
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"texts[{i}]: empty text.")
    return texts


def _check_count(count: int, what: str, max_batch: int) -> None:
    if count == 0:
        raise HTTPException(422, f"{what}: empty list; give at least one.")
    if count > max_batch:
        raise HTTPException(422, f"{what}: {count} items; at most {max_batch} per request (--max-batch). Split "
                                 "them over several requests.")


async def _uploads(request: Request, task: Task, folder: Path,
                   max_batch: int) -> tuple[list[str], list[tuple[str, str]]]:
    """The uploaded files saved into `folder` under their own suffix, checked by the task as `graftune predict`
    checks files: their names and (path, path) inputs."""
    try:
        form = await request.form(max_files=max_batch + 1, max_fields=max_batch + 1)
    except (StarletteHTTPException, MultiPartException) as err:  # a malformed body, too many parts
        detail = str(getattr(err, "detail", None) or getattr(err, "message", err))
        if "Too many" in detail:
            raise HTTPException(422, f"multipart body: {detail} At most {max_batch} files per request "
                                     "(--max-batch).") from None
        raise HTTPException(400, f"multipart body: {detail}") from None
    try:
        others = sorted({key for key, value in form.multi_items() if key != UPLOAD_FIELD or
                         not isinstance(value, UploadFile)})
        if others:
            raise HTTPException(422, f"multipart field {', '.join(repr(k) for k in others)}: not a file upload "
                                     f"this service reads; send each {task.modality} file as field "
                                     f"'{UPLOAD_FIELD}'.")
        files = [value for value in form.getlist(UPLOAD_FIELD) if isinstance(value, UploadFile)]
        _check_count(len(files), f"'{UPLOAD_FIELD}'", max_batch)
        names: list[str] = []
        paths: list[str] = []
        for i, upload in enumerate(files):
            name = upload.filename or f"file {i + 1}"
            saved = folder / f"{i}{Path(name).suffix.lower()[:8]}"  # only the suffix: the name is the client's
            saved.write_bytes(await upload.read())
            names.append(name)
            paths.append(str(saved))
    finally:
        await form.close()
    try:  # decodes each file as `graftune predict` does, off the event loop; a bad one is named
        checked = await asyncio.to_thread(lambda: [task.read_inputs([path], [])[0] for path in paths])
    except UserError as err:
        message = str(err)
        for name, path in zip(names, paths, strict=True):  # the client's names, not those of the saved copies
            message = message.replace(path, name).replace(Path(path).name, name)
        raise HTTPException(422, message) from None
    return names, checked


def _describe(errors: Any) -> str:
    """Pydantic's errors as one line: `field: what is wrong` for each."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) + "."


async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return JSONResponse({"detail": _describe(errors)}, status_code=status)


async def _user_error(_: Request, error: UserError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=422)


class BodyLimit:
    """ASGI middleware: 413 for a body over `megabytes` (MiB), from its Content-Length before any of it is read,
    or once the bytes received pass it (a chunked body)."""

    def __init__(self, app: ASGIApp, megabytes: float) -> None:
        self.app, self.megabytes, self.limit = app, megabytes, int(megabytes * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse({"detail": self._message(length.decode(errors="replace"))}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message(f"more than {received}"))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: str) -> str:
        return (f"request body of {size} bytes is over the limit of {self.limit} bytes (--max-body-mb "
                f"{self.megabytes:g}); send fewer or smaller items per request.")


# --- running it ----------------------------------------------------------------------------------------


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process, from the settings `serve` put in the environment."""
    settings = json.loads(os.environ[ENVIRONMENT])
    return create_app(**settings)


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_batch: int = 32,
          max_wait_ms: float = 5.0, max_body_mb: float = 16.0, trust_code: bool = False,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the run until interrupted. The run is loaded and the address tried before uvicorn starts, so a
    folder that is no run or a port in use is a UserError, not a server that dies starting."""
    import uvicorn

    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1.")
    app = create_app(run_dir, max_batch, max_wait_ms, max_body_mb, trust_code)
    _check_address(host, port)
    if on_ready is not None:
        on_ready(f"serving {run_dir} at http://{host}:{port} (API docs at /docs); Ctrl-C stops it")
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app  # each worker process loads its own model
    os.environ[ENVIRONMENT] = json.dumps({"run_dir": str(Path(run_dir).resolve()), "max_batch": max_batch,
                                          "max_wait_ms": max_wait_ms, "max_body_mb": max_body_mb,
                                          "trust_code": trust_code})
    uvicorn.run("graftune.serve:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info")


def _check_address(host: str, port: int) -> None:
    """Bind and release host:port as uvicorn will (SO_REUSEADDR), so a port in use is said before starting."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror}). Use 127.0.0.1, or "
                        "0.0.0.0 for every interface.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror}). Give a free "
                            "--port, or stop what uses it.") from None
