"""`graftune serve`: a fine-tuned run as an HTTP service (FastAPI on uvicorn).

    POST /predict    the run's predictions, as `graftune predict --json` gives them (a classifier's labels, a
                     regression's values, label lists; the task's `prediction_model`): JSON {"texts": [...]}
                     for a text model, image or video files as multipart uploads (field `files`) for the others
    POST /generate   a causal-lm run's continuation of a prompt, as `graftune generate` writes it
    GET  /health, /metadata (task, what its outputs mean, source, preprocessing, provenance), /stats
    GET  /docs, /openapi.json

Inputs go through the task's own reading and prediction (`Task.read_inputs`, `FineTuned.predict`), so
the service answers what `graftune predict` answers. Concurrent /predict requests are micro-batched
(graftune/batching.py). Bad requests get a 4xx with a JSON `detail` that says what to change, whatever they
hold; every input is checked before it reaches the model:

    size       a body over `max_body_mb` is refused (413) from its Content-Length, or as soon as the bytes read pass
               the limit (a chunked body), whichever reader (JSON, multipart) was reading it
    time       a client gets `request_timeout` seconds to send its headers (else 408 and the socket closed; uvicorn
               itself only times out idle keep-alive connections) and as long between two parts of its body
    JSON       not UTF-8, not JSON, integers past Python's 4300 digits, or nested past the parser's recursion
               limit: 400; a text with a lone surrogate code point (which no UTF-8 text holds, and the
               tokenizer cannot read): 422 naming the field
    generate   a seed within what torch.manual_seed takes, a temperature of 0 or at least MIN_TEMPERATURE, and a
               prompt that, with max_new_tokens new tokens, fits the model's context (422 otherwise: refused,
               not truncated, so the continuation is one of the text sent and the work is bounded; a client that
               goes away mid-generation leaves at most a context's worth of work behind)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import h11
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from uvicorn.protocols.http.h11_impl import H11Protocol

from graftune.api import load
from graftune.artifacts import FineTuned
from graftune.batching import MicroBatcher
from graftune.errors import UserError
from graftune.generation import MAX_SEED, MIN_TEMPERATURE
from graftune.tasks.base import Task

log = logging.getLogger("graftune.serve")
ENVIRONMENT = "GRAFTUNE_SERVE"  # the settings of each uvicorn worker process, as JSON
REQUEST_TIMEOUT = 20.0  # seconds a client has for its headers, and between two parts of its body
UPLOAD_FIELD = "files"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


# --- requests and responses ----------------------------------------------------------------------------


def _unicode(text: str) -> str:
    """`text`, unless JSON's \\uD800-style escapes gave it a lone surrogate code point: no UTF-8 text holds one,
    the tokenizer cannot read it, and a response could not echo it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PydanticCustomError(
            "lone_surrogate", "holds a lone surrogate code point (U+{code}) at character {at}, which is no Unicode "
            "text; send the text as valid UTF-8", {"code": f"{ord(text[err.start]):04X}", "at": err.start}) from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class PredictTexts(BaseModel):
    """The texts to classify (a text model's /predict)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[Text] = Field(description="texts to classify, at most --max-batch of them")


class GenerateRequest(BaseModel):
    """A prompt to continue; unset options take the run's generation settings."""

    model_config = ConfigDict(extra="forbid")
    prompt: Text = Field(description="the text to continue; with max_new_tokens, within the model's context")
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, allow_inf_nan=False,
                                      description=f"0: greedy; else at least {MIN_TEMPERATURE:g}")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="what torch.manual_seed takes")

    @field_validator("temperature")
    @classmethod
    def _sampling_temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:  # the scaled logits would overflow to inf
            raise PydanticCustomError("temperature", "give 0 (greedy) or at least {least}",
                                      {"least": f"{MIN_TEMPERATURE:g}"})
        return value


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
    outputs: dict[str, Any] | None = Field(description="what the outputs mean: the task's labels.json (labels, "
                                                       "thresholds) or target.json (a regression's units)")
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
               trust_code: bool = False, fine_tuned: FineTuned | None = None,
               request_timeout: float = REQUEST_TIMEOUT, device: str = "auto") -> FastAPI:
    """The service of one run (loaded here unless `fine_tuned` is given). Raises UserError for a folder that
    is no finished run, or for settings that cannot work."""
    if max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: give at least 1.")
    if max_wait_ms < 0:
        raise UserError(f"--max-wait-ms {max_wait_ms:g}: give 0 or more milliseconds.")
    if max_body_mb <= 0:
        raise UserError(f"--max-body-mb {max_body_mb:g}: give a size above 0.")
    if not request_timeout > 0:
        raise UserError(f"--request-timeout {request_timeout:g}: give a number of seconds above 0.")
    model = fine_tuned or load(run_dir, trust_code=trust_code, device=device)
    task = model.task
    batcher: MicroBatcher[tuple[str, str], dict[str, Any]] = MicroBatcher(
        lambda items: model.predict(items, batch_size=len(items)), max_batch, max_wait_ms / 1000)
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb)
    generates = type(task).generate is not Task.generate
    row = task.prediction_model  # the task's own answer shape: labels, a value, label lists...
    predicts = not generates and row is not None
    # One input's prediction, as a line of `graftune predict --json` (fields that do not apply are left out).
    predictions_model = None if row is None else create_model(
        "Predictions", predictions=(list[row], ...))  # type: ignore[valid-type]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title=f"graftune: {task.name}", lifespan=lifespan,
                  description=f"The fine-tuned model of {Path(run_dir)} ({model.info.get('source')}).",
                  responses={400: {"model": Error}, 408: {"model": Error}, 413: {"model": Error},
                             415: {"model": Error}, 422: {"model": Error}})
    app.router.route_class = _JSONRoute  # before the routes: each reads its JSON body with _parse_json
    app.add_middleware(BodyLimit, megabytes=max_body_mb, timeout=request_timeout)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", task=task.name)

    @app.get("/metadata", response_model=Metadata)
    async def metadata() -> Metadata:
        info = model.info
        meaning = task.output_meaning()
        return Metadata(task=task.name, modality=task.modality, outputs=meaning[1] if meaning else None,
                        source=info.get("source", ""), preprocessing=info.get("preprocess", {}),
                        provenance=info.get("provenance", {}),
                        endpoints=["/predict"] if predicts else ["/generate"] if generates else [], limits=limits)

    @app.get("/stats", response_model=Stats)
    async def stats() -> Stats:
        seen = batcher.stats
        return Stats(requests=seen.requests, items=seen.items, batches=seen.batches, batch_sizes=dict(seen.sizes),
                     largest_batch=max(seen.sizes, default=0))

    @app.post("/predict", response_model=predictions_model, response_model_exclude_none=True,
              openapi_extra=_predict_body(task.modality))
    async def predict(request: Request) -> dict[str, list[dict[str, Any]]]:
        """Predictions for texts (JSON) or uploaded files (multipart), batched with concurrent requests."""
        if not predicts:
            raise HTTPException(400, f"/predict serves tasks that predict; this run's task is {task.name}. "
                                     + ("Use POST /generate." if generates else ""))
        kind = _media_type(request)
        if task.modality == "text":
            if kind != "application/json":
                raise HTTPException(415, 'this run reads texts: send JSON {"texts": [...]} with Content-Type '
                                         f"application/json (got {kind or 'no Content-Type'}).")
            texts = _texts(await _json(request), max_batch)
            return {"predictions": await batcher.submit(task.read_inputs([], texts))}
        if kind != "multipart/form-data":
            raise HTTPException(415, f"this run reads {task.modality}s: send {task.modality} files as a "
                                     f"multipart/form-data upload, field '{UPLOAD_FIELD}' (got "
                                     f"{kind or 'no Content-Type'}).")
        with tempfile.TemporaryDirectory(prefix="graftune-serve-") as folder:
            names, inputs = await _uploads(request, task, Path(folder), max_batch)
            results = await batcher.submit(inputs)
        return {"predictions": [{**result, "input": name, "file": name}  # the name sent, not the saved copy
                                for name, result in zip(names, results, strict=True)]}

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
    return _parse_json(await request.body())


def _parse_json(body: bytes) -> Any:
    """The body as JSON, or a 400 that says why not. Its depth is bounded by the parser's recursion limit (about
    a thousand levels; a request needs two): deeper is refused here, and what passes cannot recurse far in
    validation, which stops at the first level that is not the expected type."""
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPException(400, "the body is not valid JSON here: it nests deeper than the parser goes. Send "
                                 "the object the API docs (/docs) describe.") from None
    except ValueError as err:  # not JSON, not UTF-8 (UnicodeDecodeError), an integer past Python's 4300 digits
        raise HTTPException(400, f"the body is not valid JSON ({err}).") from None


class _JSONRequest(Request):
    """A request whose JSON body `_parse_json` reads: FastAPI answers any parser error but a syntax error (too
    deep, not UTF-8, too many digits) with one vague 400, 'There was an error parsing the body'."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _parse_json(await self.body())
        return self._json


class _JSONRoute(APIRoute):
    """FastAPI's documented way to give routes a custom Request class."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_json_request(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return with_json_request


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
            saved = folder / f"upload{i}{_suffix(name)}"  # only the suffix: the name is the client's
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


def _suffix(name: str) -> str:
    """The file name's suffix, as the readers choose a decoder by it; letters and digits only, so a client's
    name (a NUL byte) cannot make the saved copy's path unwritable."""
    suffix = Path(name).suffix.lower()[:8]
    return suffix if suffix[1:].isascii() and suffix[1:].isalnum() else ""


def _describe(errors: Any) -> str:
    """Pydantic's errors as one line: `field: what is wrong` for each. A field name is the client's (an extra
    key), so a lone surrogate in it is written as its escape: the line must encode as UTF-8."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return ("; ".join(parts) + ".").encode("utf-8", "backslashreplace").decode("utf-8")


async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return _error(status, _describe(errors))


async def _user_error(_: Request, error: UserError) -> JSONResponse:
    """A UserError of the task's own checks (an unreadable upload, a prompt past the model's context): 422."""
    return _error(422, str(error))


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class BodyLimit:
    """ASGI middleware: 413 for a body over `megabytes` (MiB), from its Content-Length before any of it is read,
    or once the bytes received pass it (a chunked body); 408 for a body that stalls `timeout` seconds between
    two parts. The refusal is the answer whatever the reader made of the cut-off body: a multipart parser
    reports it as a malformed body, FastAPI's JSON reading as a vague 400."""

    def __init__(self, app: ASGIApp, megabytes: float, timeout: float = REQUEST_TIMEOUT) -> None:
        self.app, self.megabytes, self.limit, self.timeout = app, megabytes, int(megabytes * 1024 * 1024), timeout

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _error(413, self._message(length.decode(errors="replace")))(scope, receive, send)
            return
        received, complete = 0, False
        refused: list[HTTPException] = []

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body, a receive waits for the client to leave: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                refused.append(HTTPException(408, f"the request body stalled: nothing arrived for {self.timeout:g} "
                                                  "s (--request-timeout). Send the body without pauses."))
                raise refused[0] from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    refused.append(HTTPException(413, self._message(f"more than {received}")))
                    raise refused[0]
            return message

        async def answer(message: Message) -> None:
            if not refused:
                await send(message)
            elif message["type"] == "http.response.start":  # the app's answer to a refused body is the refusal
                await _error(refused[0].status_code, str(refused[0].detail))(scope, receive, send)

        await self.app(scope, limited, answer)

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
          on_ready: Callable[[str], None] | None = None, request_timeout: float = REQUEST_TIMEOUT,
          device: str = "auto") -> None:
    """Serve the run until interrupted. The run is loaded and the address tried before uvicorn starts, so a
    folder that is no run or a port in use is a UserError, not a server that dies starting."""
    import uvicorn

    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1.")
    app = create_app(run_dir, max_batch, max_wait_ms, max_body_mb, trust_code, request_timeout=request_timeout,
                     device=device)
    _check_address(host, port)
    # A class uvicorn builds each connection's protocol from (config= and the rest added), picklable by name
    # for worker processes; uvicorn types the option as a class, hence Any.
    protocol: Any = functools.partial(HeaderDeadline, header_timeout=request_timeout)
    if on_ready is not None:
        on_ready(f"serving {run_dir} at http://{host}:{port} (API docs at /docs); Ctrl-C stops it")
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info", http=protocol)
        return
    del app  # each worker process loads its own model
    os.environ[ENVIRONMENT] = json.dumps({"run_dir": str(Path(run_dir).resolve()), "max_batch": max_batch,
                                          "max_wait_ms": max_wait_ms, "max_body_mb": max_body_mb,
                                          "trust_code": trust_code, "request_timeout": request_timeout,
                                          "device": device})
    uvicorn.run("graftune.serve:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info", http=protocol)


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's line and headers. uvicorn times out only a
    keep-alive connection idle after a response, so a client that connects and sends half its headers (or
    nothing) would hold its socket, and a slot of the server's, forever. Past the deadline the client gets a
    408 with a JSON detail, and the socket is closed. The body has its own deadline (BodyLimit)."""

    def __init__(self, *args: Any, header_timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self.header_deadline is None:  # the first bytes of a next request
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or broke the protocol, and uvicorn said so)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a pipelined next request
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        """Answer by hand: h11 cannot send a response to a request it has not read."""
        self.header_deadline = None
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": f"the request's headers did not arrive within {self.header_timeout:g} s "
                                     "(--request-timeout). Send the request line and headers at once."}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


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
