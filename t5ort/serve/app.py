"""The HTTP layer: FastAPI routes, error bodies, request ids, the body cap, streaming. Knows nothing of ONNX.

``create_app(runtime, config)`` returns the ASGI app. Its lifespan warms the model up and starts
the scheduler's background thread, and stops it (finishing in-flight work) at shutdown, so the
same app runs under ``t5ort serve`` (uvicorn), another ASGI server or a Ray Serve replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import json
import logging
import re
import time
import uuid
from collections import deque
from importlib import resources
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import SecurityConfig, ServeConfig
from .errors import error_response as _error_response
from .inflight import make_scheduler
from .metrics import ServeMetrics
from .scheduler import (
    Failed, Finished, QueueFull, RowResult, Scheduler, ScoreFinished, ShuttingDown, TokenEvent,
)
from .schemas import (
    CompletionRequest, ErrorResponse, GenerateRequest, GenerateResponse, ScoreRequest, ScoreResponse, StreamResponse,
)
from .security import ApiKeyAuth
from .validation import RequestError, TgiPlan, completion_plan, new_request_id, score_job, tgi_plan

log = logging.getLogger("t5ort.serve")
access_log = logging.getLogger("t5ort.serve.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("t5ort_request_id", default="-")
# (method, path) of the request being answered, for log lines
request_line_var: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "t5ort_request_line", default=(None, None))
NPZ = "application/x-npz"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FAILED_STATUS = {"timeout": 504, "shutdown": 503, "invalid": 422, "internal": 500}


# Probes and scrapes come every few seconds: their access lines are logged at DEBUG.
_QUIET_PATHS = frozenset({"/live", "/ready", "/health", "/v2/health/live", "/v2/health/ready", "/metrics"})


class RequestIdFilter(logging.Filter):
    """Gives every log record a ``request_id`` (the record's own, else the current request's, else "-"), and
    the current request's ``method`` and ``path`` where it has none (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "method"):
            record.method, record.path = request_line_var.get()
        return True


# ---- per-request channel: worker thread -> event loop --------------------------------


class KeepAlive:
    """What :meth:`AsyncChannel.get` returns when :meth:`AsyncChannel.poke` woke it without an event."""


KEEPALIVE = KeepAlive()
SSE_KEEPALIVE = b": keepalive\n\n"  # an SSE comment: clients skip it, proxies see traffic


class AsyncChannel:
    """The scheduler's :class:`~t5ort.serve.scheduler.Channel` for one request, read from the event loop.

    The worker thread appends each event to a deque and schedules one wake-up of the reader
    (``call_soon_threadsafe``) unless one is pending already, so events sent while the reader
    is busy share a wake-up. The reader awaits one future at a time; a client that leaves, or
    the HTTP side's deadline, interrupts it (:meth:`interrupt`) without a task or timer per event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._events: deque = deque()
        self._waiter: asyncio.Future | None = None  # the reader's, while it waits (event loop only)
        self._wake_pending = False
        self._closed = False
        self._poked = False
        self.interrupted: str | None = None  # why the reader stopped waiting: "disconnect" or "timeout"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def send(self, event) -> bool:
        """Worker thread: queue ``event`` for the reader; False once the reader is gone."""
        if self._closed:
            return False
        self._events.append(event)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is gone
                self._closed = True
                return False
        return True

    def _wake(self) -> None:
        self._wake_pending = False  # before the reader drains: an event sent after this schedules its own wake-up
        self._resolve()

    def _resolve(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def interrupt(self, reason: str) -> None:
        """Event loop: stop the reader's wait (``reason``: "disconnect" or "timeout"); :meth:`get` returns None."""
        if self.interrupted is None:
            self.interrupted = reason
        self._resolve()

    def poke(self) -> None:
        """Event loop: wake the reader; :meth:`get` returns :data:`KEEPALIVE` if no event is waiting."""
        self._poked = True
        self._resolve()

    async def get(self):
        """The next event; None once interrupted; :data:`KEEPALIVE` after a :meth:`poke` with no event."""
        while self.interrupted is None and not self._events and not self._poked:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._poked = False
        if self.interrupted is not None:
            return None
        return self._events.popleft() if self._events else KEEPALIVE


# ---- ASGI middleware: request id, body cap -------------------------------------------


class RequestContext:
    """Sets the request id (a sane ``x-request-id`` header, else a new one), puts it on every response, and
    logs one access line per request (method, path without the query, status, duration; no headers).

    A request whose client left before any answer is logged with status 499.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else new_request_id()
        method, path = scope.get("method", "-"), scope.get("path", "-")
        tokens = request_id_var.set(request_id), request_line_var.set((method, path))
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            status = status or 499
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            access_log.log(logging.DEBUG if path in _QUIET_PATHS else logging.INFO, "%s %s %d %.1f ms", method,
                           path, status, duration_ms, extra={"status": status, "duration_ms": duration_ms})
            request_id_var.reset(tokens[0])
            request_line_var.reset(tokens[1])


class BodyLimit:
    """Refuses bodies over ``max_body_bytes`` with 413 (by Content-Length, else while reading), then replays it."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body, too_big = await self._read_body(dict(scope.get("headers") or []), receive)
        if too_big:
            response = _error_response(413, f"the request body is over this server's max_body_bytes="
                                       f"{self.max_body_bytes}; send a smaller request.", "validation",
                                       scope["path"], "body")
            return await response(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, headers, receive) -> tuple[bytes, bool]:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


# ---- error bodies ----------------------------------------------------------------------


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "tuple"}


def _loc(loc) -> str:
    """``("body", "parameters", "stop", 0)`` -> ``parameters.stop[0]``; union member tags left out."""
    out = ""
    for p in loc:
        p = str(p)
        if p == "body" or p in _TYPE_TAGS or "[" in p or "-" in p:
            continue
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One message per field at fault (for a union, the member's own complaint if it has one), first field."""
    by_field: dict[str, str] = {}
    for err in exc.errors():
        field = _loc(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            field, message = "body", f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})"
        elif err.get("type") == "missing" and field == "body":
            message = "the body is missing: send a JSON object"
        else:
            message = f"{field}: {err.get('msg', 'invalid')}"
        if field not in by_field or (err.get("type") == "value_error" and "Value error" not in by_field[field]):
            by_field[field] = message
    first = next(iter(by_field), None)
    return "; ".join(list(by_field.values())[:5]), first


# ---- the app -------------------------------------------------------------------------


class ServeState:
    """What the routes share: runtime, config, metrics, scheduler, and the server's phase (``app.state.t5ort``).

    ``phase``: "loading" (the model loads and warms up in the background: /live answers, /ready and the
    model routes 503), "ready", "draining" (after SIGTERM: /ready 503 so that load balancers stop sending,
    requests still served), "stopped", or "failed" (the model could not be loaded: ``load_error``).
    ``startup()`` and ``shutdown()`` (finish in-flight work) run in the app's lifespan; a host that runs no
    ASGI lifespan can call them itself. ``on_load_failure(exc)``: what the server does when loading fails
    (``t5ort serve`` exits); by default the error is logged and /ready stays 503.
    """

    def __init__(self, runtime, config: ServeConfig, scheduler_factory):
        self._loader: Callable[[], Any] | None = None if hasattr(runtime, "generate") else runtime
        self.runtime = None if self._loader else runtime
        self.config = config
        self.metrics = ServeMetrics()
        self._scheduler_factory = scheduler_factory
        self.scheduler: Scheduler | None = None
        self.phase = "loading"
        self.load_error: BaseException | None = None
        self.on_load_failure: Callable[[BaseException], None] | None = None
        self._loading: asyncio.Task | None = None
        self.started = time.time()

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    @property
    def loaded(self) -> bool:
        return self.scheduler is not None

    async def startup(self) -> None:
        """A loaded runtime is warmed up before this returns; a loader runs in the background."""
        if self._loader is None:
            await self._load()
        elif self._loading is None:
            self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        if self.loaded:
            return
        try:
            runtime = self.runtime if self._loader is None else await asyncio.to_thread(self._loader)
            _check_runtime(runtime)
            await asyncio.to_thread(_warm_up, runtime)
            scheduler = self._scheduler_factory(runtime, self.config, self.metrics)
            scheduler.start()
        except Exception as exc:
            if self._loader is None:
                raise
            self.phase, self.load_error = "failed", exc
            log.error("could not load the model: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure(exc)
            return
        self.runtime, self.scheduler = runtime, scheduler
        if self.phase == "loading":
            self.phase = "ready"
        log.info("ready: %s, limits %s", runtime.directory, json.dumps(self.config.as_dict()))

    def drain(self) -> None:
        """Stop being ready (SIGTERM): load balancers polling /ready stop sending; requests are still served."""
        if self.phase in ("loading", "ready"):
            self.phase = "draining"

    async def shutdown(self) -> None:
        if self.phase != "failed":
            self.phase = "stopped"
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.scheduler is not None:
            log.info("shutting down: finishing in-flight requests (grace %.0f s)", self.config.shutdown_grace)
            await asyncio.to_thread(self.scheduler.stop, self.config.shutdown_grace)


def _check_runtime(runtime) -> None:
    if runtime.tokenizer is None:
        raise ValueError(f"{runtime.directory} has no tokenizer; t5ort serve takes text and needs one: re-export "
                         "the model with its tokenizer.")


def create_app(runtime, config: ServeConfig | None = None,
               scheduler_factory: Callable[..., Scheduler] = make_scheduler, *,
               security: SecurityConfig | None = None, tracer=None) -> FastAPI:
    """The ASGI app serving ``runtime`` with ``config``'s limits.

    ``runtime``: a loaded :class:`~t5ort.T5Runtime`, warmed up in the lifespan's startup; or a function
    that loads one (``lambda: t5ort.load(path)``), which then runs in the background while the server
    already answers: /live 200, /ready and the model routes 503 until it is loaded.

    ``scheduler_factory(runtime, config, metrics)`` builds the scheduler (by default the one
    ``config.batching`` names: in-flight, dynamic or none); the app talks to it only through
    ``submit(job, channel)``. ``security``: API keys and CORS origins (default: none, all routes open).
    ``tracer``: an OpenTelemetry tracer (:func:`~t5ort.serve.tracing.otlp_tracer_provider`'s ``get_tracer``):
    a server span per request (:class:`~t5ort.serve.tracing.Tracing`).
    """
    config = (config or ServeConfig()).validate()
    security = (security or SecurityConfig()).validate()
    if hasattr(runtime, "generate"):
        _check_runtime(runtime)
    state = ServeState(runtime, config, scheduler_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(title="t5ort serve", version=_version(), lifespan=lifespan,
                  description="T5 with per-step log-probs, top-n alternatives and raw logits: TGI- and "
                              "OpenAI-compatible routes, /score, /metrics and a /playground page.")
    app.state.t5ort = state
    _install_error_handlers(app, state)
    _install_routes(app, state)
    _install_middleware(app, state, security, tracer)
    return app


def _install_middleware(app: FastAPI, state: ServeState, security: SecurityConfig, tracer) -> None:
    """From the outside in: request id, tracing, CORS (preflights answered without a key), API keys (before the
    body is read), body cap."""
    paths = {getattr(route, "path", None) for route in app.routes}

    def refused(path: str) -> None:
        state.metrics.failures.labels(reason="unauthorized").inc()
        state.metrics.requests.labels(route=path if path in paths else "unmatched", status="401").inc()

    # add_middleware wraps what is there: the last added runs first
    app.add_middleware(BodyLimit, max_body_bytes=state.config.max_body_bytes)
    if security.api_keys or security.metrics_api_keys:
        app.add_middleware(ApiKeyAuth, api_keys=security.api_keys, metrics_keys=security.metrics_api_keys,
                           on_refused=refused)
    if security.cors_allow_origins:
        # keys travel in the Authorization header, never in cookies: no credentials mode
        app.add_middleware(CORSMiddleware, allow_origins=list(security.cors_allow_origins),
                           allow_methods=["GET", "POST"], allow_credentials=False, max_age=600,
                           allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])
    if tracer is not None:
        from .tracing import Tracing

        app.add_middleware(Tracing, tracer=tracer)
    app.add_middleware(RequestContext)


def _version() -> str:
    from .. import __version__

    return __version__


def _warm_up(runtime) -> None:
    runtime.generate(["warm up"], max_new_tokens=2, output_logits=False)


def _install_error_handlers(app: FastAPI, state: ServeState) -> None:
    def count(request: Request, status: int) -> None:
        state.metrics.requests.labels(route=_route_label(request), status=str(status)).inc()

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        message, field = _validation_message(exc)
        count(request, 422)
        return _error_response(422, message, "validation", request.url.path, field)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError):
        count(request, exc.status)
        headers = {"Retry-After": str(exc.retry_after)} if getattr(exc, "retry_after", None) else None
        return _error_response(exc.status, str(exc), exc.error_type, request.url.path, exc.field, headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        count(request, exc.status_code)
        message = {404: f"no route {request.url.path}; see /docs", 405: f"method {request.method} is not allowed on "
                   f"{request.url.path}; see /docs"}.get(exc.status_code, str(exc.detail))
        return _error_response(exc.status_code, message, "validation" if exc.status_code < 500 else "internal",
                               request.url.path)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unexpected error: %s", exc)
        count(request, 500)
        return _error_response(500, f"internal error: {type(exc).__name__}", "internal", request.url.path)


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


# ---- answers -----------------------------------------------------------------------------


def _token(id_: int, text: str, logprob: float | None, special: bool) -> dict:
    return {"id": id_, "text": text, "logprob": logprob, "special": special}


def _alternatives(top) -> list[dict]:
    return [_token(a.id, a.text, a.logprob, a.special) for a in top]


def _tgi_details(plan: TgiPlan, runtime, row: RowResult, top_n: int) -> dict:
    start = runtime.manifest.special_tokens.decoder_start_token_id
    prefill = [{"id": start, "text": runtime.tokenizer.token_string(start), "logprob": None}] \
        if plan.decoder_input_details else []
    return {
        "finish_reason": row.finish_reason,
        "generated_tokens": len(row.ids),
        "seed": plan.seed,
        "prefill": prefill,
        "tokens": [_token(*t) for t in zip(row.ids, row.texts, row.logprobs, row.specials)],
        "top_tokens": [_alternatives(t) for t in row.top] if top_n else None,
        **({"entropy": list(row.entropies)} if row.entropies is not None else {}),
    }


def _tgi_response(plan: TgiPlan, runtime, finished: Finished) -> dict:
    rows = finished.rows
    head = plan.inputs if plan.return_full_text else ""
    out: dict[str, Any] = {"generated_text": head + rows[0].text}
    if plan.details:
        details = _tgi_details(plan, runtime, rows[0], plan.job.top_n)
        if len(rows) > 1:  # other return sequences, in TGI's best_of_sequences shape
            details["best_of_sequences"] = [
                {"generated_text": head + r.text, **_tgi_details(plan, runtime, r, plan.job.top_n)} for r in rows[1:]
            ]
        out["details"] = details
    return out


def _npz(finished: Finished) -> bytes:
    steps = max(len(r.ids) for r in finished.rows)
    vocab = finished.rows[0].logits.shape[-1]
    sequences = np.zeros((len(finished.rows), steps), np.int64)  # [rows, steps], pad 0 after a row's end
    logits = np.zeros((len(finished.rows), steps, vocab), np.float32)  # [rows, steps, vocab], raw
    logprobs = np.zeros((len(finished.rows), steps), np.float32)
    for i, r in enumerate(finished.rows):
        n = len(r.ids)
        sequences[i, :n], logits[i, :n], logprobs[i, :n] = r.ids, r.logits[:n], r.logprobs
    buffer = io.BytesIO()
    np.savez(buffer, sequences=sequences, logits=logits, token_logprobs=logprobs)
    return buffer.getvalue()


def _sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


# ---- routes --------------------------------------------------------------------------


class Exchange:
    """The routes' side of the scheduler boundary: submit a job, read its channel, count the answer."""

    def __init__(self, state: ServeState):
        self.state = state

    @staticmethod
    def request_id(request: Request) -> str:
        return request.scope.get("state", {}).get("request_id") or new_request_id()

    def runtime(self):
        """The loaded runtime; 503 with Retry-After while the model is loading (or could not be loaded)."""
        if self.state.loaded:
            return self.state.runtime
        if self.state.phase == "failed":
            raise RequestError(None, "the model could not be loaded; see the server's log", 503, "unavailable")
        error = RequestError(None, "the model is loading; retry once /ready answers 200", 503, "loading")
        error.retry_after = 1
        raise error

    def done(self, request: Request, status: int) -> None:
        self.state.metrics.requests.labels(route=_route_label(request), status=str(status)).inc()

    def submit(self, job) -> AsyncChannel:
        """Queue ``job``; 429 (with Retry-After) when the queue is full, 503 while shutting down."""
        channel = AsyncChannel(asyncio.get_running_loop())
        try:
            self.state.scheduler.submit(job, channel)
        except QueueFull as exc:
            self.state.metrics.failures.labels(reason="overloaded").inc()
            error = RequestError(None, f"Model is overloaded: {exc}", 429, "overloaded")
            error.retry_after = exc.retry_after
            raise error from exc
        except ShuttingDown as exc:
            raise RequestError(None, str(exc), 503, "shutdown") from exc
        return channel

    async def events(self, request: Request, channel: AsyncChannel, deadline: float,
                     keepalive: bool = False) -> AsyncIterator:
        """The channel's events until the final one; stops (closing the channel) if the client leaves.

        ``keepalive``: also :data:`KEEPALIVE` whenever ``sse_keepalive`` seconds pass without an event (one
        timer per interval, none per event).
        """
        loop = asyncio.get_running_loop()
        disconnect = asyncio.ensure_future(_wait_disconnect(request))
        disconnect.add_done_callback(lambda _: channel.interrupt("disconnect"))
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), channel.interrupt, "timeout")
        interval = self.state.config.sse_keepalive if keepalive else 0.0
        last = time.monotonic()
        ticker = None

        def tick() -> None:
            nonlocal ticker
            idle = time.monotonic() - last
            if idle >= interval:
                channel.poke()
            ticker = loop.call_later(interval - idle if idle < interval else interval, tick)

        if interval > 0:
            ticker = loop.call_later(interval, tick)
        try:
            while True:
                event = await channel.get()
                last = time.monotonic()
                if event is None:
                    if channel.interrupted == "disconnect":
                        return
                    limit = self.state.config.request_timeout
                    yield Failed("timeout", f"the request did not finish within {limit:g} s")
                    return
                yield event
                if not isinstance(event, (TokenEvent, KeepAlive)):
                    return
        finally:
            timer.cancel()
            if ticker is not None:
                ticker.cancel()
            channel.close()
            disconnect.cancel()

    async def final(self, request: Request, channel: AsyncChannel, job) -> Finished | ScoreFinished:
        """The job's answer (TokenEvents skipped); its failure as a RequestError."""
        async for event in self.events(request, channel, job.deadline + 5.0):
            if isinstance(event, Failed):
                raise RequestError(None, event.message, _FAILED_STATUS[event.kind], event.kind)
            if isinstance(event, (Finished, ScoreFinished)):
                return event
        raise RequestError(None, "the client went away", 499, "cancelled")


_ERRORS_DOC = {code: {"model": ErrorResponse, "description": what} for code, what in
               ((422, "invalid request (the error names the field)"), (413, "body or raw logits over budget"),
                (429, "queue full; see Retry-After"), (504, "request timeout"))}
_STREAM_DOC = {200: {"description": "server-sent events: one StreamResponse per token",
                     "content": {"text/event-stream": {"schema": StreamResponse.model_json_schema()}}}}


def _install_routes(app: FastAPI, state: ServeState) -> None:
    ex = Exchange(state)
    _tgi_routes(app, state, ex)
    _openai_routes(app, state, ex)
    _operation_routes(app, state, ex)


def _tgi_routes(app: FastAPI, state: ServeState, ex: Exchange) -> None:
    """TGI's /generate, /generate_stream and /, and t5ort's /logits and /score."""
    config = state.config

    # ---- TGI ----

    async def generate(request: Request, body: GenerateRequest):
        runtime = ex.runtime()
        want_npz = NPZ in request.headers.get("accept", "")
        plan = tgi_plan(runtime, config, body, ex.request_id(request), stream=False, want_logits=want_npz)
        finished = await ex.final(request, ex.submit(plan.job), plan.job)
        ex.done(request, 200)
        if want_npz:
            return Response(_npz(finished), media_type=NPZ)
        return JSONResponse(_tgi_response(plan, runtime, finished))

    async def generate_stream(request: Request, body: GenerateRequest):
        if body.parameters.decoder_input_details:
            raise RequestError("parameters.decoder_input_details", "is not available when streaming (as TGI).")
        plan = tgi_plan(ex.runtime(), config, body, ex.request_id(request), stream=True)
        channel = ex.submit(plan.job)

        async def sse() -> AsyncIterator[bytes]:
            held = None
            async for event in ex.events(request, channel, plan.job.deadline + 5.0, keepalive=True):
                if event is KEEPALIVE:
                    yield SSE_KEEPALIVE
                elif isinstance(event, TokenEvent):
                    if held is not None:
                        yield _sse(held)
                    held = {"index": event.step + 1, "token": _token(event.id, event.text, event.logprob,
                                                                        event.special),
                            "top_tokens": _alternatives(event.top), "generated_text": None, "details": None}
                    if event.entropy is not None:
                        held["entropy"] = event.entropy
                elif isinstance(event, Finished):
                    row = event.rows[0]
                    held["generated_text"] = (plan.inputs if plan.return_full_text else "") + row.text
                    if plan.details:
                        held["details"] = {"finish_reason": row.finish_reason, "generated_tokens": len(row.ids),
                                           "seed": plan.seed, "input_length": event.input_length}
                    yield _sse(held)
                elif isinstance(event, Failed):
                    if held is not None:
                        yield _sse(held)
                    yield _sse({"error": event.message, "error_type": event.kind})

        ex.done(request, 200)
        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.post("/generate", tags=["TGI"], summary="Generate (TGI). Accept: application/x-npz returns raw logits",
             responses={200: {"model": GenerateResponse,
                              "content": {NPZ: {}}, "description": "the answer, or .npz with sequences, raw logits "
                              "[rows, steps, vocab] and token_logprobs"}, **_ERRORS_DOC})(generate)
    app.post("/generate_stream", tags=["TGI"], summary="Generate, streamed as server-sent events (TGI)",
             responses={**_STREAM_DOC, **_ERRORS_DOC})(generate_stream)

    @app.post("/", tags=["TGI"], summary="TGI's compat route: a list of one answer, or a stream with `stream: true`",
              responses={200: {"model": list[GenerateResponse]}, **_ERRORS_DOC})
    async def compat(request: Request, body: GenerateRequest):
        if body.stream:
            return await generate_stream(request, body)
        response = await generate(request, body)
        if isinstance(response, JSONResponse):
            return JSONResponse([json.loads(response.body)])
        return response

    @app.post("/logits", tags=["t5ort"], summary="Generate and return the raw per-step logits as .npz",
              responses={200: {"content": {NPZ: {}}, "description": "np.load() gives sequences [rows, steps], "
                               "logits [rows, steps, vocab] (raw) and token_logprobs [rows, steps]"}, **_ERRORS_DOC})
    async def logits(request: Request, body: GenerateRequest):
        plan = tgi_plan(ex.runtime(), config, body, ex.request_id(request), stream=False, want_logits=True)
        finished = await ex.final(request, ex.submit(plan.job), plan.job)
        ex.done(request, 200)
        return Response(_npz(finished), media_type=NPZ)

    # ---- scoring ----

    @app.post("/score", tags=["t5ort"], summary="Teacher-forced log-probs of targets given sources",
              responses={200: {"model": ScoreResponse}, **_ERRORS_DOC})
    async def score(request: Request, body: ScoreRequest):
        runtime = ex.runtime()
        job = score_job(runtime, config, body, ex.request_id(request))
        result = await ex.final(request, ex.submit(job), job)
        ex.done(request, 200)
        tok = runtime.tokenizer
        return {"scores": [
            {"total_logprob": total, "tokens": [{"id": t, "text": tok.token_string(t), "logprob": lp}
                                                for t, lp in zip(ids, lps)]}
            for ids, lps, total in zip(result.target_ids, result.token_logprobs, result.total_logprobs)
        ]}


def _openai_routes(app: FastAPI, state: ServeState, ex: Exchange) -> None:
    """OpenAI's /v1/completions and /v1/models."""
    config = state.config

    # ---- OpenAI ----

    @app.post("/v1/completions", tags=["OpenAI"], summary="OpenAI completions (temperature 0: greedy)",
              responses={**_STREAM_DOC, **_ERRORS_DOC})
    async def completions(request: Request, body: CompletionRequest):
        plan = completion_plan(ex.runtime(), config, body, ex.request_id(request))
        channels = []
        try:
            for job in plan.jobs:
                channels.append(ex.submit(job))
        except RequestError:
            for c in channels:
                c.close()
            raise
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            ex.done(request, 200)
            return StreamingResponse(
                _completion_stream(request, plan, channels, ex.events, completion_id, created, config.model_name),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        results = await asyncio.gather(*(ex.final(request, c, j) for c, j in zip(channels, plan.jobs)))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p, finished in enumerate(results):
            prompt_tokens += finished.input_length
            for j, row in enumerate(finished.rows):
                completion_tokens += len(row.ids)
                choices.append({"index": p * plan.n + j, "text": row.text,
                                "logprobs": _openai_logprobs(row) if plan.logprobs is not None else None,
                                "finish_reason": "length" if row.finish_reason == "length" else "stop"})
        ex.done(request, 200)
        return {"id": completion_id, "object": "text_completion", "created": created, "model": config.model_name,
                "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                              "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/v1/models", tags=["OpenAI"], summary="The one model served")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": int(state.started),
                                            "owned_by": "t5ort"}]}


def _operation_routes(app: FastAPI, state: ServeState, ex: Exchange) -> None:
    """Probes (/live, /ready, /health and KServe's /v2/health/*), /info, /metrics, /playground."""
    config, metrics = state.config, state.metrics

    # ---- probes ----

    def readiness(**extra) -> JSONResponse:
        body: dict[str, Any] = {**extra, "status": state.phase}
        if state.load_error is not None:
            body["error"] = str(state.load_error)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/live", tags=["probes"], summary="Liveness: 200 while the process runs (also while loading)")
    async def live():
        return {"status": "live"}

    @app.get("/ready", tags=["probes"], summary="Readiness: 200 once the model is loaded; 503 while loading or "
                                                "draining after SIGTERM (the body says which)")
    async def ready():
        return readiness()

    @app.get("/v2/health/live", tags=["probes"], summary="KServe/Triton name of /live")
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["probes"], summary="KServe/Triton name of /ready")
    async def v2_ready():
        return readiness(ready=state.ready)

    @app.get("/health", tags=["probes"], summary="TGI's: 200 once the model is loaded and warmed up, else 503")
    async def health():
        if not state.loaded or state.phase == "stopped":
            return JSONResponse({"status": "starting" if state.phase == "loading" else state.phase}, status_code=503)
        return {"status": "ok"}

    # ---- operations ----

    @app.get("/info", tags=["operations"], summary="Model geometry, dtype, parity figures, limits, version")
    async def info():
        runtime = ex.runtime()
        m = runtime.manifest
        return {
            "model_id": config.model_name,
            "model_dir": str(runtime.directory),
            "model_type": m.model_type,
            "dtype": m.dtype,
            "quantization": m.quantization,
            "geometry": {k: getattr(m.geometry, k) for k in m.geometry.__dataclass_fields__},
            "parity": m.parity,
            "limits": config.as_dict(),
            "runtime_limits": {"max_input_tokens": runtime.limits.max_input_tokens,
                               "max_new_tokens": runtime.limits.max_new_tokens,
                               "max_result_bytes": runtime.limits.max_result_bytes},
            "batching": type(state.scheduler).__name__,
            "version": _version(),
            "router": "t5ort",
        }

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus():
        metrics.queue_depth.set(state.scheduler.queue_depth if state.scheduler is not None else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/playground", tags=["operations"], summary="A page to try the model: tokens shaded by probability",
             response_class=HTMLResponse)
    async def playground():
        page = resources.files("t5ort.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _openai_logprobs(row: RowResult) -> dict:
    """OpenAI's completions ``logprobs`` for the row's text tokens (EOS and other special tokens left out)."""
    tokens, logprobs, tops, offsets, offset = [], [], [], [], 0
    for text, lp, special, top in zip(row.texts, row.logprobs, row.specials, row.top):
        if special:
            continue
        tokens.append(text)
        logprobs.append(lp)
        tops.append({a.text: a.logprob for a in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


async def _completion_stream(request, plan, channels, events, completion_id, created, model) -> AsyncIterator[bytes]:
    """OpenAI's stream: one chunk per token per choice, then each choice's finish_reason, usage, [DONE]."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, channel, job):
        offsets = [0] * plan.n
        async for event in events(request, channel, job.deadline + 5.0, keepalive=True):
            await queue.put((p, event, offsets))
        await queue.put((p, None, None))

    tasks = [asyncio.ensure_future(pump(p, c, j)) for p, (c, j) in enumerate(zip(channels, plan.jobs))]
    open_, prompt_tokens, completion_tokens = len(tasks), 0, 0
    try:
        while open_:
            p, event, offsets = await queue.get()
            if event is None:
                open_ -= 1
                continue
            if event is KEEPALIVE:
                yield SSE_KEEPALIVE
                continue

            def chunk(choice):
                return _sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                             "choices": [choice]})

            if isinstance(event, TokenEvent):
                completion_tokens += 1
                text = "" if event.special else event.text
                logprobs = None
                if event.special:  # EOS: no text, and left out of OpenAI's logprobs (as without streaming)
                    continue
                if plan.logprobs is not None:
                    logprobs = {"tokens": [event.text], "token_logprobs": [event.logprob],
                                "top_logprobs": [{a.text: a.logprob for a in event.top}],
                                "text_offset": [offsets[event.row]]}
                offsets[event.row] += len(text)
                if text or logprobs is not None:
                    yield chunk({"index": p * plan.n + event.row, "text": text, "logprobs": logprobs,
                                 "finish_reason": None})
            elif isinstance(event, Finished):
                prompt_tokens += event.input_length
                for j, row in enumerate(event.rows):
                    yield chunk({"index": p * plan.n + j, "text": "", "logprobs": None,
                                 "finish_reason": "length" if row.finish_reason == "length" else "stop"})
            elif isinstance(event, Failed):
                yield _sse({"error": {"message": event.message, "type": "server_error", "param": None,
                                      "code": event.kind}})
        if plan.include_usage:
            yield _sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                        "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                 "completion_tokens": completion_tokens,
                                                 "total_tokens": prompt_tokens + completion_tokens}})
        yield b"data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        for c in channels:
            c.close()
