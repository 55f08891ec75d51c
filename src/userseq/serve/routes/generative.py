"""`POST /recommend` for a generative run (`userseq generative train`): the next items decoded
with trie-constrained beam search or Diverse Beam Search (`userseq serve GENERATIVE_RUN`).

The request is the next-item one (a known `user_id` and/or an explicit `history`, `k`,
`exclude_seen`) plus the decoding settings (`decode`, `beams`, `groups`, `diversity`) and an
optional `preference` text for runs with a preference slot. Decoding runs in a worker thread,
one request at a time (the model is small; requests queue instead of competing for the cores).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from userseq.core.errors import UserseqError
from userseq.serve.routes import ERRORS, json_response
from userseq.serve.schemas import MAX_K, HistoryInput, Id
from userseq.serve.service import IdMap, RequestError, resolve_history

MAX_BEAMS = 1000


class GenerativeRecommendRequest(HistoryInput):
    """Top-k next items decoded from the user's history."""

    k: int = Field(10, ge=1, le=MAX_K, description="number of items (at most `beams`)")
    exclude_seen: bool = Field(True, description="never generate items of the user's history")
    decode: Literal["beam", "diverse"] | None = Field(
        None, description="beam search or Diverse Beam Search (default: the run's)")
    beams: int | None = Field(None, ge=1, le=MAX_BEAMS, description="beams B (default: the run's)")
    groups: int | None = Field(None, ge=1, le=MAX_BEAMS,
                               description="diverse: groups G, dividing B")
    diversity: float | None = Field(None, ge=0, le=1000,
                                    description="diverse: Hamming diversity penalty λ")
    preference: str | None = Field(None, max_length=2000,
                                   description="a preference text (runs with a preference slot)")


class GeneratedItem(BaseModel):
    item_id: Id
    score: float = Field(description="log-probability of the item's semantic ID")
    semantic_id: list[int]


class GenerativeRecommendResponse(BaseModel):
    user_id: Id | None
    known_user: bool
    history_length: int
    k: int
    decode: dict[str, Any] = Field(description="method, beams, groups, diversity")
    items: list[GeneratedItem]
    ignored_items: list[Id] = Field(default_factory=list)


class GenerativeService:
    """A loaded generative run and the logic of its `POST /recommend`."""

    def __init__(self, rec: Any, run_dir: str | Path) -> None:
        self.rec = rec
        self.run_dir = Path(run_dir)
        self.items = IdMap(rec.item_ids, "item")
        self.users = IdMap(rec.user_ids, "user")
        self.offsets, self.hist_items = rec.histories_
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> GenerativeService:
        from userseq.generative.estimator import GenerativeRecommender

        return cls(GenerativeRecommender.load(run_dir), run_dir)

    def info(self) -> dict[str, Any]:
        c = self.rec.config
        return {"run_dir": str(self.run_dir), "task": "generative", "items": len(self.items),
                "users": len(self.users), "decode": c.decode.model_dump(),
                "semantic_ids": self.rec.semantic_ids_.report,
                "preference_slot": c.model.preference}

    def _history(self, req: GenerativeRecommendRequest) -> tuple[int | None, np.ndarray, list]:
        row, seq, ignored = resolve_history(req, self.users, self.items, self.offsets,
                                            self.hist_items)
        if len(seq) == 0:
            raise RequestError(422, "no known item in the history; nothing to decode from.")
        return row, seq.astype(np.int64), ignored

    def recommend_now(self, req: GenerativeRecommendRequest) -> dict[str, Any]:
        rec = self.rec
        row, seq, ignored = self._history(req)
        try:
            settings = rec.settings(req.decode, req.beams, req.groups, req.diversity)
            prefs = None
            if req.preference is not None or row is not None:
                stored = rec.user_preferences(np.array([row])) if row is not None else None
                prefs = rec.preference_vectors(
                    1, None if req.preference is None else [req.preference], stored)
            with self._lock:
                top, scores = rec.decode_csr(np.array([0, len(seq)]), seq, req.k, settings,
                                             req.exclude_seen, prefs)
        except UserseqError as e:
            raise RequestError(422, str(e)) from None
        codes = rec.semantic_ids_.codes
        items = [{"item_id": self.items.values[int(i) - 1], "score": float(s),
                  "semantic_id": codes[int(i)].tolist()}
                 for i, s in zip(top[0], scores[0], strict=True) if np.isfinite(s)]
        return {"user_id": req.user_id, "known_user": row is not None,
                "history_length": int(len(seq)), "k": req.k,
                "decode": {"method": "diverse" if settings.groups > 1 or settings.diversity
                           else "beam", "beams": settings.beams, "groups": settings.groups,
                           "diversity": settings.diversity},
                "items": items, "ignored_items": ignored}

    async def recommend(self, req: GenerativeRecommendRequest) -> dict[str, Any]:
        return await run_in_threadpool(self.recommend_now, req)


def mount(app: FastAPI, service: GenerativeService) -> None:
    @app.post("/recommend", response_model=GenerativeRecommendResponse, responses=ERRORS,
              tags=["recommend"])
    async def recommend(req: GenerativeRecommendRequest) -> Any:
        """Top-k next items decoded as semantic IDs (beam search or Diverse Beam Search)."""
        return json_response(await service.recommend(req))
