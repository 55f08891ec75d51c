"""`POST /score`: click probabilities of candidate items for one user or history, from a CTR run
(`userseq ctr train`). Mounted in the main service by `userseq serve RUN --ctr CTR_RUN`, and alone
by `userseq ctr serve CTR_RUN` (`serve.app.create_ctr_app`). The history is encoded once per
request (see `CTREstimator.score_request`); bad input answers 4xx with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from userseq.serve.routes import ERRORS
from userseq.serve.schemas import ScoreRequest, ScoreResponse
from userseq.serve.service import RequestError

NOT_LOADED = ("no CTR model is loaded: start the service with `userseq serve RUN --ctr CTR_RUN` "
              "(a run directory from `userseq ctr train`).")


class CTRService:
    """A loaded CTR run and the logic of `POST /score`."""

    def __init__(self, estimator: Any, run_dir: str | Path) -> None:
        self.estimator = estimator
        self.run_dir = Path(run_dir)
        self.model = estimator.config.model.name

    @classmethod
    def from_run(cls, run_dir: str | Path) -> CTRService:
        from userseq.ctr.estimator import CTREstimator

        return cls(CTREstimator.load(run_dir), run_dir)

    @property
    def n_items(self) -> int:
        return self.estimator.vocab_.n_items

    @property
    def n_users(self) -> int:
        return self.estimator.vocab_.n_users

    def info(self) -> dict[str, Any]:
        est = self.estimator
        return {"run_dir": str(self.run_dir), "model": self.model, "items": self.n_items,
                "users": self.n_users, "context": list(est.vocab_.context_cols),
                "data_fingerprint": est.data_fingerprint_}

    def score(self, req: ScoreRequest) -> dict[str, Any]:
        request = {"user": req.user, "history": req.history, "history_values": req.history_values,
                   "history_timestamps": req.history_timestamps, "timestamp": req.timestamp,
                   "context": req.context}
        probs = self.estimator.score_request(request, list(req.items))
        pairs = zip(req.items, probs, strict=True)
        scores = [{"item": i, "probability": float(p)} for i, p in pairs]
        return {"model": self.model, "scores": scores}


def mount(app: FastAPI, ctr: CTRService | None) -> None:
    """Add POST /score; without a CTR run it answers 404 saying how to load one."""

    @app.post("/score", response_model=ScoreResponse, responses=ERRORS, tags=["ctr"],
              summary="click probabilities of candidate items for one user or history")
    def score(req: ScoreRequest) -> Any:
        """Click probabilities of `items` for a training `user` (their stored history before
        `timestamp`) or an explicit `history`, with the CTR run given to `userseq serve --ctr`."""
        if ctr is None:
            raise RequestError(404, NOT_LOADED)
        return ctr.score(req)
