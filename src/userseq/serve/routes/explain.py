"""`GET /explain`: a user's top concepts and why items are recommended (SESA concept head,
`userseq.nextitem.concepts`), from the served next-item run.

The concept map is the run's saved one (`userseq explain RUN --fit` writes RUN/concepts.*); a run
without one gets a map fitted in memory on the first request from the served item metadata's
`genres` (ML-1M, ml-latest-small), or 404 saying how to fit one. The user is a known `user_id`
and/or a `history` of item ids (repeat the parameter); with `item_id` the answer explains that
item, else the user's top `items` recommendations (seen items excluded).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from userseq.core.errors import UserseqError
from userseq.nextitem.concepts import ConceptHead, explain_vector, fit_concepts
from userseq.serve.routes import ERRORS, json_response
from userseq.serve.schemas import MAX_HISTORY
from userseq.serve.service import RequestError, Service

NO_CONCEPTS = ("no concept map for this run and no item genres to fit one: fit it with `userseq "
               "explain RUN --fit --concepts FILE` (item_id + concepts) and restart the service.")


class _HistoryQuery(BaseModel):
    """The `resolve_history` view of the query parameters."""

    user_id: Any = None
    history: list[Any] | None = None
    timestamps: None = None
    unknown_items: str = "error"


class ConceptExplainer:
    """The concept head of a served run (loaded, or fitted in memory on first use)."""

    def __init__(self, service: Service, head: ConceptHead | None = None) -> None:
        self.service = service
        self.head = head
        self.fitted_here = False
        self._lock = threading.Lock()

    @classmethod
    def for_service(cls, service: Service) -> ConceptExplainer:
        head = ConceptHead.load(service.run_dir) if ConceptHead.exists(service.run_dir) else None
        return cls(service, head)

    def concept_head(self) -> ConceptHead:
        with self._lock:
            if self.head is None:
                svc = self.service
                if svc.genres is None:
                    raise RequestError(404, NO_CONCEPTS)
                labels = {svc.items.values[r]: g for r, g in enumerate(svc.genres) if g}
                try:
                    self.head = fit_concepts(svc.item_vectors, svc.items.ids, labels,
                                             source="served item metadata (genres)")
                except UserseqError as e:
                    raise RequestError(404, f"{NO_CONCEPTS} ({e})") from None
                self.fitted_here = True
            return self.head

    def info(self) -> dict[str, Any] | None:
        h = self.head
        if h is None:
            return None
        return {"concepts": len(h.names), "source": h.source, "metrics": h.metrics,
                "fitted_in_memory": self.fitted_here}

    async def explain(self, user_id: Any, history: list[Any] | None, item_id: Any,
                      n: int, items: int) -> dict[str, Any]:
        svc = self.service
        head = self.concept_head()
        q = _HistoryQuery(user_id=user_id, history=history)
        if user_id is None and not history:
            raise RequestError(422, "give `user_id` (a known user) and/or `history` (item ids; "
                                    "repeat the parameter)")
        row, seq, ignored = svc.resolve(q)
        vec = await svc.user_vector(row, seq, bool(history))
        if item_id is not None:
            rows = [_item_row(svc, item_id)]
        else:
            _, top, _ = svc.top_items(vec, items, np.unique(seq - 1))
            rows = [int(r) for r in top]
        e = explain_vector(head, vec, svc.item_vectors, rows, n)
        explained = [{**svc.item_info(d.pop("row"), d.pop("score")), **d} for d in e["items"]]
        return {"user_id": user_id, "known_user": row is not None,
                "history_length": int(len(seq)), "user_concepts": e["user_concepts"],
                "items": explained, "explained": "item" if item_id is not None else
                "top recommendations", "ignored_items": ignored,
                "concept_map": {"concepts": len(head.names), "source": head.source,
                                "heldout_top1_accuracy": head.metrics.get("top1_accuracy")}}


def _item_row(svc: Service, item_id: Any) -> int:
    r = svc.items.row(item_id)
    if r is None:
        raise RequestError(404, f"unknown item id {item_id!r} in `item_id`: not in the model's "
                                "catalogue.")
    return r


class ConceptScore(BaseModel):
    concept: str
    score: float


class SharedConcept(BaseModel):
    concept: str
    weight: float = Field(description="p_user(c) p_item(c), normalised over the concepts")
    user: float = Field(description="the user's concept probability")
    item: float = Field(description="the item's concept probability")


class ExplainedItem(BaseModel):
    item_id: Any
    score: float = Field(description="retrieval score (user . item)")
    title: str | None = None
    genres: list[str] | None = None
    labels: list[str] | None = Field(description="the item's own concepts (None: unlabelled)")
    item_concepts: list[ConceptScore]
    shared: list[SharedConcept]


class ExplainResponse(BaseModel):
    user_id: Any
    known_user: bool
    history_length: int
    user_concepts: list[ConceptScore]
    items: list[ExplainedItem]
    explained: str
    ignored_items: list[Any] = Field(default_factory=list)
    concept_map: dict[str, Any]


IdQuery = Annotated[str | None, Query(min_length=1, max_length=256)]


def mount(app: FastAPI, explainer: ConceptExplainer) -> None:
    @app.get("/explain", response_model=ExplainResponse, responses=ERRORS, tags=["explain"])
    async def explain(
        user_id: IdQuery = None,
        history: Annotated[list[str] | None, Query(
            max_length=MAX_HISTORY, description="item ids, oldest first (repeat the "
                                                "parameter)")] = None,
        item_id: IdQuery = None,
        n: Annotated[int, Query(ge=1, le=50, description="concepts per list")] = 5,
        items: Annotated[int, Query(ge=1, le=20, description="recommendations explained "
                                                             "(without item_id)")] = 3,
    ) -> Any:
        """The user's top concepts and the shared concepts behind one item (`item_id`) or the
        user's top recommendations."""
        return json_response(await explainer.explain(user_id, history, item_id, n, items))
