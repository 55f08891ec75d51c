"""The FastAPI apps: `create_app` assembles the service of a next-item run (plus, optionally, a
detector run for /classify and a CTR run for /score) and `create_ctr_app` a CTR-only service.

This module owns what every route shares: the body-size limit, the error handlers, /health,
/info and the web page; the routes themselves are mounted from `serve.routes`, one module per
task. Every request is validated by pydantic; bad input answers 4xx with a clear message
(`{"detail": ..., "message": "..."}`), never 500. Bodies over `max_body_bytes` answer 413.

Hardening (docs/hardening.md): NaN/Infinity anywhere in a body answer 422 (the error echoes the
value as text, never as a JSON number the encoder would refuse); types are strict (`true` is not
1); at most `max_in_flight` requests are handled at once, the next answer 503 with `Retry-After`
at once instead of queueing without bound; /info names files relative to the run, never absolute.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from userseq.core.errors import UserseqError
from userseq.core.version import __version__
from userseq.serve.routes import context as context_routes
from userseq.serve.routes import ctr as ctr_routes
from userseq.serve.routes import detect as detect_routes
from userseq.serve.routes import explain as explain_routes
from userseq.serve.routes import generative as generative_routes
from userseq.serve.routes import nextitem as nextitem_routes
from userseq.serve.routes import rank as rank_routes
from userseq.serve.routes.ctr import CTRService
from userseq.serve.routes.detect import DetectorService
from userseq.serve.routes.rank import RankService
from userseq.serve.schemas import CTRHealth, Health, Info
from userseq.serve.service import RequestError, Service

STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = 1 << 20
MAX_IN_FLIGHT = 32  # requests handled at once; more answer 503 + Retry-After (0: no limit)
RETRY_AFTER_S = 1
UNLIMITED_PATHS = ("/health",)  # load balancers must see the service alive while it sheds load
DESCRIPTION = ("Next-item recommendations, similar items and users, and user embeddings computed "
               "on the fly from a behaviour history; with `--detector`, malicious-user scores "
               "(/classify); with `--ctr`, click probabilities (/score); with `--ranker`, "
               "two-stage retrieval + ranking (/rank) and /score. Ids are as in the input "
               "data.")


class BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes (declared or
    streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await _too_large(self.limit, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # no (or a small) declared length: buffer the body up to the limit, then replay it
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # client went away
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await _too_large(self.limit, send)
            chunks.append(body)
            more = msg.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InFlightLimit:
    """ASGI middleware: at most `limit` HTTP requests in the app at once; one more answers 503 with
    `Retry-After` at once (back-pressure: the accepted requests keep their latency, the client
    retries instead of waiting in an unbounded queue). One event loop: a plain counter is safe."""

    def __init__(self, app: Any, limit: int, retry_after: int = RETRY_AFTER_S) -> None:
        self.app, self.limit, self.retry_after = app, limit, retry_after
        self.active = 0
        self.rejected = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or self.limit <= 0
                or scope.get("path") in UNLIMITED_PATHS):
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            self.rejected += 1
            return await _overloaded(self.limit, self.retry_after, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _overloaded(limit: int, retry_after: int, send: Any) -> None:
    message = (f"the service is busy ({limit} requests in progress); retry after {retry_after} s")
    body = json.dumps({"detail": message, "message": message}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"retry-after", str(retry_after).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as text ("nan", "inf") and anything else JSON cannot
    hold as its string: safe for a strict JSON encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def relative_paths(value: Any, root: Path) -> Any:
    """`value` with every absolute path made relative to `root` (the run), or cut to its file name
    when it lies outside it: /info must not disclose the server's directory layout."""
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        try:
            return str(p.resolve().relative_to(root.resolve())) or "."
        except ValueError:
            return p.name
    return value


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps({"detail": f"request body too large: the limit is {limit} bytes",
                       "message": f"request body too large (limit {limit} bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts)


def _error(message: str, status: int, detail: Any = None, headers: Any = None) -> JSONResponse:
    return JSONResponse({"detail": message if detail is None else detail, "message": message},
                        status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers `{"detail": ..., "message": "one line"}`: 422 for invalid requests and
    `UserseqError`s, the status of a `RequestError`, 400 for an unreadable body."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = json_safe(exc.errors())  # NaN/Infinity in a body are echoed as text
        for e in errors:
            e.pop("url", None)
        return _error(_validation_message(errors), 422, detail=errors)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError) -> JSONResponse:
        return _error(str(exc), exc.status)

    @app.exception_handler(UserseqError)
    async def _user_error(request: Request, exc: UserseqError) -> JSONResponse:
        return _error(str(exc), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = ("the request body could not be read: send UTF-8 JSON with content-type "
                       "application/json")
        return _error(message, exc.status_code, headers=getattr(exc, "headers", None))


def create_app(service: Service, max_body_bytes: int = MAX_BODY_BYTES,
               detector: DetectorService | None = None, ctr: CTRService | None = None,
               max_in_flight: int = MAX_IN_FLIGHT, ranker: RankService | None = None,
               explainer: explain_routes.ConceptExplainer | None = None) -> FastAPI:
    """The app for one loaded next-item run, optionally with a detector run (/classify), a CTR
    run (/score) and its join with the next-item run (`ranker`: /rank); without them those routes
    answer 404 saying how to load one. `userseq serve` runs it with uvicorn. Past
    `max_in_flight` concurrent requests, 503 + Retry-After."""
    if ranker is not None and ctr is None:
        ctr = ranker.ranker
    app = FastAPI(title="userseq", version=__version__, description=DESCRIPTION)
    app.state.service = service
    add_error_handlers(app)
    nextitem_routes.mount(app, service)
    detect_routes.mount(app, detector)
    ctr_routes.mount(app, ctr)
    context_routes.mount(app)  # POST /context: app.state.context (userseq serve --context)
    rank_routes.mount(app, ranker)
    explainer = explainer or explain_routes.ConceptExplainer.for_service(service)
    explain_routes.mount(app, explainer)

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Any:
        return {"status": "ok", "items": len(service.items), "users": len(service.users)}

    @app.get("/info", response_model=Info, tags=["service"])
    async def info() -> Any:
        """Model, data fingerprint, evaluation metrics, index, and the detector and CTR runs
        (null when not loaded)."""
        info = {**service.info(), "detector": detector.info() if detector else None,
                "ctr": ctr.info() if ctr else None,
                "ranker": ranker.info() if ranker else None, "concepts": explainer.info()}
        return relative_paths(info, service.run_dir)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # the body limit wraps the whole app (it must see the raw body before FastAPI parses it);
    # the in-flight limit wraps that (added last = outermost: it refuses before reading a body)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(InFlightLimit, limit=max_in_flight)
    return app


def _single_run_app(title: str, description: str, health: Callable[[], Any],
                   info: Callable[[], Any], max_body_bytes: int = MAX_BODY_BYTES,
                   max_in_flight: int = MAX_IN_FLIGHT) -> FastAPI:
    """The scaffolding of a service of one run: the error handlers, GET /health and /info
    (answering `health()` and `info()`), the body-size and in-flight limits; the caller mounts
    its routes."""
    app = FastAPI(title=title, version=__version__, description=description)
    add_error_handlers(app)

    @app.get("/health", tags=["service"])
    async def _health() -> Any:
        return health()

    @app.get("/info", tags=["service"])
    async def _info() -> Any:
        return info()

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(InFlightLimit, limit=max_in_flight)
    return app


def create_generative_app(service: generative_routes.GenerativeService,
                          max_body_bytes: int = MAX_BODY_BYTES,
                          max_in_flight: int = MAX_IN_FLIGHT) -> FastAPI:
    """A service of one generative run (`userseq generative train`): POST /recommend (beam
    search or Diverse Beam Search over semantic IDs), GET /health and /info."""
    app = _single_run_app(
        "userseq generative", "Next items decoded as semantic IDs from a saved `userseq "
        "generative train` run.",
        lambda: {"status": "ok", "items": len(service.items), "users": len(service.users)},
        service.info, max_body_bytes, max_in_flight)
    app.state.service = service
    generative_routes.mount(app, service)
    return app


def create_detector_app(detector: DetectorService, max_body_bytes: int = MAX_BODY_BYTES,
                        max_in_flight: int = MAX_IN_FLIGHT) -> FastAPI:
    """A service of one detector run alone (`userseq serve --detector DETECT_RUN`, no next-item
    run): POST /classify, GET /health and /info."""
    app = _single_run_app(
        "userseq detector", "P(malicious) of one user from a posted sequence, from a saved "
        "`userseq detect train` run.",
        lambda: {"status": "ok", "model": detector.model},
        lambda: {"detector": relative_paths(detector.info(), detector.run_dir)},
        max_body_bytes, max_in_flight)
    app.state.detector = detector
    detect_routes.mount(app, detector)
    return app


def create_ctr_app(ctr: CTRService, max_body_bytes: int = MAX_BODY_BYTES,
                   max_in_flight: int = MAX_IN_FLIGHT) -> FastAPI:
    """A service of one CTR run alone: POST /score and GET /health (`userseq ctr serve`)."""
    app = FastAPI(title="userseq CTR", version=__version__,
                  description="Click probabilities from a saved `userseq ctr train` run.")
    app.state.ctr = ctr
    add_error_handlers(app)
    ctr_routes.mount(app, ctr)
    context_routes.mount(app)  # POST /context: app.state.context (userseq serve --context)

    @app.get("/health", response_model=CTRHealth, tags=["service"])
    async def health() -> Any:
        return {"status": "ok", "model": ctr.model, "items": ctr.n_items, "users": ctr.n_users}

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(InFlightLimit, limit=max_in_flight)
    return app
