"""Next-item routes over a `Service` (a `userseq train` run and its index): recommendations,
embeddings, similar items and users, the catalogue (items, users, search) and the item map."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi import Path as PathParam

from userseq.serve.routes import ERRORS, json_response
from userseq.serve.schemas import (
    MAX_K,
    EmbedRequest,
    EmbedResponse,
    EventsRequest,
    EventsResponse,
    IdList,
    ItemInfo,
    ItemSearch,
    MapResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    UserInfo,
)
from userseq.serve.service import Service

K = Annotated[int, Query(ge=1, le=MAX_K, description="number of results")]
PathId = Annotated[str, PathParam(min_length=1, max_length=256,
                                  description="an id as in the input data")]


def mount(app: FastAPI, service: Service) -> None:
    """Add the next-item routes of `service` to `app`."""
    _mount_recommend(app, service)
    _mount_similar(app, service)
    _mount_catalogue(app, service)
    _mount_stream(app, service)


def _mount_recommend(app: FastAPI, service: Service) -> None:
    @app.post("/recommend", response_model=RecommendResponse, responses=ERRORS,
              tags=["recommend"])
    async def recommend(req: RecommendRequest) -> Any:
        """Top-k next items for a known user and/or an explicit recent history (new users work)."""
        return json_response(await service.recommend(req))

    @app.post("/embed", response_model=EmbedResponse, responses=ERRORS, tags=["recommend"])
    async def embed(req: EmbedRequest) -> Any:
        """The user embedding after a history (known user and/or explicit items)."""
        return json_response(await service.embed(req))


def _mount_similar(app: FastAPI, service: Service) -> None:
    @app.get("/items/{item_id}/similar", response_model=SimilarResponse, responses=ERRORS,
             tags=["similar"])
    async def similar_items(item_id: PathId, k: K = 10) -> Any:
        """Items whose embeddings are closest (cosine) to this item's."""
        return json_response(service.similar_items(item_id, k))

    @app.get("/users/{user_id}/similar", response_model=SimilarResponse, responses=ERRORS,
             tags=["similar"])
    async def similar_users(user_id: PathId, k: K = 10) -> Any:
        """Training users whose embeddings are closest (cosine) to this user's."""
        return json_response(service.similar_users(user_id, k))


def _mount_catalogue(app: FastAPI, service: Service) -> None:
    @app.get("/items/{item_id}", response_model=ItemInfo, responses=ERRORS, tags=["catalogue"])
    async def item(item_id: PathId) -> Any:
        """Title, genres and training count of one item."""
        return service.item(item_id)

    @app.get("/items", response_model=ItemSearch, responses=ERRORS, tags=["catalogue"])
    async def search_items(
        q: Annotated[str, Query(max_length=200, description="text in the id or title")] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> Any:
        """Items whose id or title contains `q`, most frequent first."""
        return service.search_items(q, limit)

    @app.get("/users/{user_id}", response_model=UserInfo, responses=ERRORS, tags=["catalogue"])
    async def user(user_id: PathId, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> Any:
        """A training user's most recent history (with item titles where known)."""
        return service.user(user_id, limit)

    @app.get("/users", response_model=IdList, responses=ERRORS, tags=["catalogue"])
    async def users(offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> Any:
        """Training user ids, in the order of the run's id map."""
        return service.list_users(offset, limit)

    @app.get("/map", response_model=MapResponse, responses=ERRORS, tags=["catalogue"])
    async def item_map(n: Annotated[int, Query(
            ge=2, le=20_000, description="most frequent items")] = 5000) -> Any:
        """2-D PCA projection of item embeddings, with each item's first genre where known."""
        return service.item_map(n)


def _mount_stream(app: FastAPI, service: Service) -> None:
    @app.post("/users/{user_id}/events", response_model=EventsResponse, responses=ERRORS,
              tags=["recommend"])
    async def append_events(user_id: PathId, req: EventsRequest) -> Any:
        """Append events to the user's streaming state (ssm and gru4rec runs: O(1) per event, the
        history is not re-encoded; the state persists across restarts) and recommend from it."""
        return json_response(service.append_events(user_id, req))

