"""HTTP scoring for a saved CTR run: `POST /score` (click probabilities of candidate items for one
user or history) and `GET /health`.

`create_ctr_app(run_dir)` is a complete FastAPI app (`userseq ctr serve RUN_DIR` runs it with
uvicorn); `add_score_route(app, estimator)` adds the same endpoint to another app, such as the
retrieval service's (`userseq.serve`), so one process can serve recommendations and CTR scores.
Bad input answers 422 with `{"detail": ..., "message": ...}`, never 500.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from userseq.core.errors import UserseqError

Id = Annotated[int | Annotated[str, Field(min_length=1, max_length=256)], Field(description="an id as in the data")]
MAX_HISTORY = 100_000
MAX_CANDIDATES = 100_000


class ScoreRequest(BaseModel):
    """One user (a training user's stored history) or an explicit history, and the candidates."""

    model_config = ConfigDict(extra="forbid")

    items: list[Id] = Field(..., min_length=1, max_length=MAX_CANDIDATES, description="candidate item ids")
    user: Id | None = Field(None, description="a training user: their stored history is used unless `history`")
    history: list[Id] | None = Field(None, max_length=MAX_HISTORY, description="item ids, oldest first")
    history_values: list[float] | None = Field(None, max_length=MAX_HISTORY,
                                               description="the rating/label of each history event")
    history_timestamps: list[float] | None = Field(None, max_length=MAX_HISTORY,
                                                   description="Unix seconds, one per history event")
    timestamp: float | None = Field(None, description="time of the impression: history events must be earlier")
    context: dict[str, float] | None = Field(None, description="the model's context features")

    @model_validator(mode="after")
    def _who(self) -> ScoreRequest:
        if self.user is None and self.history is None:
            raise ValueError("give `user` (a training user) or `history` (item ids, oldest first)")
        return self


class Score(BaseModel):
    item: Id
    probability: float


class ScoreResponse(BaseModel):
    model: str
    scores: list[Score]


def score(estimator: Any, req: ScoreRequest) -> ScoreResponse:
    """Score `req.items` for one history: the history is encoded once (see CTREstimator.score_candidates)."""
    base = {"item": req.items[0], "user": req.user, "history": req.history, "history_values": req.history_values,
            "history_timestamps": req.history_timestamps, "timestamp": req.timestamp, "context": req.context}
    beh, s = estimator.requests_to_samples([base])
    cand = estimator.vocab.item_index(list(req.items), "candidate item")
    probs = estimator._score_candidates(beh, s, cand)
    return ScoreResponse(model=estimator.config.model.name,
                         scores=[Score(item=i, probability=float(p)) for i, p in zip(req.items, probs, strict=True)])


def add_score_route(app: FastAPI, estimator: Any) -> None:
    """Add `POST /score` for `estimator` (a fitted or loaded CTREstimator) to `app`."""

    @app.post("/score", response_model=ScoreResponse, tags=["ctr"],
              summary="click probabilities of candidate items for one user or history")
    def _score(req: ScoreRequest) -> ScoreResponse:
        return score(estimator, req)


def create_ctr_app(run_dir: str | Path) -> FastAPI:
    """A FastAPI app serving one saved CTR run."""
    from userseq.ctr.estimator import CTREstimator

    est = CTREstimator.load(run_dir)
    app = FastAPI(title="userseq CTR", description="Click probabilities from a saved `userseq ctr train` run.")
    app.state.estimator = est

    @app.exception_handler(UserseqError)
    async def _user_error(request: Request, exc: UserseqError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg"))} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errs[:5])
        return JSONResponse({"detail": errs, "message": message}, status_code=422)

    @app.get("/health", tags=["service"])
    def _health() -> dict[str, Any]:
        return {"status": "ok", "model": est.config.model.name, "items": est.vocab.n_items,
                "users": est.vocab.n_users}

    add_score_route(app, est)
    return app
