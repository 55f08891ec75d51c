"""`POST /context`: the Persona-Plug user context of one input (`userseq serve RUN --context
CONTEXT_RUN`): the history items most relevant to the input (retrieved context) and one user
vector of the run's `context_dim` (a soft-prompt slot for an external LLM). The input and history
texts are encoded by the run's text encoder (cached vectors are reused)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from userseq.core.errors import UserseqError
from userseq.serve.routes import ERRORS
from userseq.serve.service import RequestError

NOT_LOADED = ("no context run is loaded: start the service with `userseq serve RUN --context "
              "CONTEXT_RUN` (a run directory from `userseq context train`).")
MAX_TEXT = 20_000
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class ContextRequest(BaseModel):
    """A known `user_id` (their stored posts) or an explicit `history`, and the current input."""

    model_config = ConfigDict(extra="forbid")
    user_id: StrictInt | Annotated[str, Field(min_length=1, max_length=256)] | None = None
    history: list[Text] | None = Field(None, min_length=1, max_length=500,
                                       description="history texts, oldest first")
    input: Text = Field(description="the text the user is responding to (article, item, ...)")
    k: StrictInt | None = Field(None, ge=1, le=100, description="context items to return")

    @model_validator(mode="after")
    def _one_user(self) -> ContextRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of `user_id` (a user of the context run) or "
                             "`history` (texts, oldest first)")
        return self


class ContextItem(BaseModel):
    position: int = Field(description="index in the history (0 = oldest)")
    text: str
    weight: float


class ContextResponse(BaseModel):
    user_id: int | str | None
    input: str
    context: list[ContextItem]
    weights: list[float] = Field(description="every history item's weight, oldest first")
    vector: list[float] = Field(description="the user vector (context_dim floats)")
    context_dim: int


class ContextService:
    """A loaded context run (`userseq context train`)."""

    def __init__(self, estimator: Any, run_dir: str | Path) -> None:
        self.estimator = estimator
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()  # the text-vector memo is shared

    @classmethod
    def from_run(cls, run_dir: str | Path) -> ContextService:
        from userseq.context.estimator import UserContext

        return cls(UserContext.load(run_dir), run_dir)

    def info(self) -> dict[str, Any]:
        c = self.estimator.config
        return {"run_dir": str(self.run_dir), "context_dim": c.model.context_dim,
                "top_k": c.model.top_k, "text_encoder": c.model.text_encoder,
                "users": len(self.estimator.user_ids_)}

    def context(self, req: ContextRequest) -> dict[str, Any]:
        try:
            with self._lock:
                return self.estimator.context(req.input, user=req.user_id, history=req.history,
                                              k=req.k)
        except UserseqError as e:
            status = 404 if str(e).startswith("unknown user") else 422
            raise RequestError(status, str(e)) from None


def mount(app: FastAPI) -> None:
    """Add POST /context, answered by `app.state.context` (a ContextService; 404 without one)."""

    @app.post("/context", response_model=ContextResponse, responses=ERRORS, tags=["context"])
    def context(req: ContextRequest, request: Request) -> Any:
        """Retrieved context (the history items most relevant to `input`) and the user's context
        vector, from the context run given to `userseq serve --context`."""
        service = getattr(request.app.state, "context", None)
        if service is None:
            raise RequestError(404, NOT_LOADED)
        return service.context(req)
