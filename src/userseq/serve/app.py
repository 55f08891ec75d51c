"""The FastAPI app: JSON endpoints over a `Service`, the OpenAPI schema, and the web page.

Every request is validated by pydantic; bad input answers 4xx with a clear message
(`{"detail": ..., "message": "..."}`), never 500. Bodies over `max_body_bytes` answer 413.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from userseq.core.errors import UserseqError
from userseq.serve.routes.detect import DetectorService
from userseq.serve.schemas import (
    MAX_K,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    Health,
    IdList,
    Info,
    ItemInfo,
    ItemSearch,
    MapResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    UserInfo,
)
from userseq.serve.service import RequestError, Service

STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = 1 << 20

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "unreadable body (not UTF-8 JSON)"},
    404: {"model": ErrorResponse, "description": "unknown id"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request"},
}
K = Annotated[int, Query(ge=1, le=MAX_K, description="number of results")]
PathId = Annotated[str, PathParam(min_length=1, max_length=256, description="an id as in the input data")]


class BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes (declared or streamed)."""

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


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps({"detail": f"request body too large: the limit is {limit} bytes",
                       "message": f"request body too large (limit {limit} bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _json(content: Any) -> Response:
    """A pre-serialised JSON answer: the hot endpoints build plain dicts that already follow their
    response model, so FastAPI's second validation pass is skipped (the schema still documents them)."""
    try:
        import orjson

        return Response(orjson.dumps(content), media_type="application/json")
    except ImportError:
        return Response(json.dumps(content, separators=(",", ":")), media_type="application/json")


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts)


def create_app(service: Service, max_body_bytes: int = MAX_BODY_BYTES, detector: DetectorService | None = None) -> FastAPI:
    """The app for one loaded run (and optionally a detector run for /classify). `userseq serve`
    runs it with uvicorn."""
    app = FastAPI(
        title="userseq", version=_version(),
        description="Next-item recommendations, similar items and users, and user embeddings computed on the "
                    "fly from a behaviour history. Ids are as in the input data.",
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = json.loads(json.dumps(exc.errors(), default=str))
        for e in errors:
            e.pop("url", None)
        return JSONResponse({"detail": errors, "message": _validation_message(errors)}, status_code=422)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=exc.status)

    @app.exception_handler(UserseqError)
    async def _user_error(request: Request, exc: UserseqError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be read: send UTF-8 JSON with content-type application/json"
        return JSONResponse({"detail": message, "message": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.post("/recommend", response_model=RecommendResponse, responses=_ERRORS, tags=["recommend"])
    async def recommend(req: RecommendRequest) -> Any:
        """Top-k next items for a known user and/or an explicit recent history (new users work)."""
        return _json(await service.recommend(req))

    @app.post("/embed", response_model=EmbedResponse, responses=_ERRORS, tags=["recommend"])
    async def embed(req: EmbedRequest) -> Any:
        """The user embedding after a history (known user and/or explicit items)."""
        return _json(await service.embed(req))

    @app.post("/classify", response_model=ClassifyResponse, responses=_ERRORS, tags=["detect"])
    def classify(req: ClassifyRequest) -> Any:
        """P(malicious) of one user from a posted sequence, with the detector run given to
        `userseq serve --detector` (event detectors: `items` + `timestamps`; text detectors: `posts`)."""
        if detector is None:
            raise RequestError(404, "no detector is loaded: start the service with `userseq serve RUN --detector "
                                    "DETECT_RUN` (a run directory from `userseq detect train`).")
        return detector.classify(req)

    @app.get("/items/{item_id}/similar", response_model=SimilarResponse, responses=_ERRORS, tags=["similar"])
    async def similar_items(item_id: PathId, k: K = 10) -> Any:
        """Items whose embeddings are closest (cosine) to this item's."""
        return _json(service.similar_items(item_id, k))

    @app.get("/users/{user_id}/similar", response_model=SimilarResponse, responses=_ERRORS, tags=["similar"])
    async def similar_users(user_id: PathId, k: K = 10) -> Any:
        """Training users whose embeddings are closest (cosine) to this user's."""
        return _json(service.similar_users(user_id, k))

    @app.get("/items/{item_id}", response_model=ItemInfo, responses=_ERRORS, tags=["catalogue"])
    async def item(item_id: PathId) -> Any:
        """Title, genres and training count of one item."""
        return service.item(item_id)

    @app.get("/items", response_model=ItemSearch, responses=_ERRORS, tags=["catalogue"])
    async def search_items(q: Annotated[str, Query(max_length=200, description="text in the id or title")] = "",
                           limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> Any:
        """Items whose id or title contains `q`, most frequent first."""
        return service.search_items(q, limit)

    @app.get("/users/{user_id}", response_model=UserInfo, responses=_ERRORS, tags=["catalogue"])
    async def user(user_id: PathId, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> Any:
        """A training user's most recent history (with item titles where known)."""
        return service.user(user_id, limit)

    @app.get("/users", response_model=IdList, responses=_ERRORS, tags=["catalogue"])
    async def users(offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> Any:
        """Training user ids, in the order of the run's id map."""
        return service.list_users(offset, limit)

    @app.get("/map", response_model=MapResponse, responses=_ERRORS, tags=["catalogue"])
    async def item_map(n: Annotated[int, Query(ge=2, le=20_000, description="most frequent items")] = 5000) -> Any:
        """2-D PCA projection of item embeddings, with each item's first genre where known."""
        return service.item_map(n)

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Any:
        return {"status": "ok", "items": len(service.items), "users": len(service.users)}

    @app.get("/info", response_model=Info, tags=["service"])
    async def info() -> Any:
        """Model, data fingerprint, evaluation metrics and index description."""
        return service.info()

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # the body limit wraps the whole app (it must see the raw body before FastAPI parses it)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


def _version() -> str:
    from userseq.core.version import __version__

    return __version__
