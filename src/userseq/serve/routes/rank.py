"""`POST /rank`: two-stage recommendation, retrieval then ranking (`userseq serve RUN --ranker
CTR_RUN`).

Stage 1 (retrieval): the user's embedding from the next-item run (a known user's precomputed
vector, or the posted history encoded on the fly) and either the request's explicit `candidates`
or the `retrieve` best items of the run's index (seen items excluded). Stage 2 (ranking): the CTR
run scores every candidate for the same user (`CTREstimator.score_request`, the history encoded
once); the top `k` by ranking score come back with both scores.

Item spaces: the two runs are joined through the raw item ids of the data (not through their
internal indices, which differ whenever the runs were trained on different event tables). At
startup `RankService` maps every retrieval item to the ranker's index; when the ranker knows
fewer than `min_overlap` of the retrieval catalogue (e.g. it was trained on another dataset, or
its ids are strings where the retrieval run's are integers) the service refuses to start with a
message naming both runs and the overlap. Retrieved candidates are drawn only from the items both
runs know; an explicit candidate either run does not know answers 422 naming `candidates`.

The ranker reads the ranking run's own stored history of a user it knows when the request sends
no `history` (with the ratings its training saw), else the full history the retrieval stage used
(stored + posted, as raw ids; items the ranker does not know are skipped and listed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI

from userseq.core.errors import UserseqError
from userseq.ctr.requests import ScoringJob, index_history
from userseq.data.eventlog import lookup_ids
from userseq.serve.routes import ERRORS, json_response
from userseq.serve.routes.ctr import CTRService
from userseq.serve.schemas import RankRequest, RankResponse
from userseq.serve.service import Batcher, IdMap, RequestError, Service

DEFAULT_RETRIEVE = 100
MIN_OVERLAP = 0.5  # the ranker must know at least this share of the retrieval catalogue
NOT_LOADED = ("no ranking run is loaded: start the service with `userseq serve RUN --ranker "
              "CTR_RUN` (a run directory from `userseq ctr train` on the same items).")


class RankService:
    """A retrieval `Service` and a ranking `CTRService` joined through raw item ids."""

    def __init__(self, service: Service, ranker: CTRService,
                 min_overlap: float = MIN_OVERLAP, max_batch: int | None = None) -> None:
        self.service, self.ranker = service, ranker
        vocab = ranker.estimator.vocab_
        # ranker item index (1..n) of every retrieval row; 0: the ranker does not know the item
        self.ranker_index = lookup_ids(vocab.item_ids, service.items.ids, offset=1)
        known = self.ranker_index > 0
        self.shared = int(known.sum())
        self.overlap = self.shared / max(len(known), 1)
        self.unrankable = np.flatnonzero(~known).astype(np.int64)  # retrieval rows never ranked
        self.ranker_users = IdMap(vocab.user_ids, "user")
        max_batch = max_batch or service.batcher.max_batch
        if self.overlap < min_overlap:
            ex_r = service.items.values[:3]
            ex_c = vocab.item_ids.head(3).to_list()
            raise UserseqError(
                f"ranking run {ranker.run_dir} and retrieval run {service.run_dir} do not share "
                f"an item space: the ranker knows {self.shared:,} of the retrieval run's "
                f"{len(known):,} items ({self.overlap:.0%}; at least {min_overlap:.0%} needed). "
                f"Item ids: retrieval {service.items.ids.dtype} e.g. {ex_r}, ranker "
                f"{vocab.item_ids.dtype} e.g. {ex_c}. Train both runs on the same dataset "
                "(same item ids).")
        # concurrent requests share one ranking forward pass (`CTREstimator.score_jobs`)
        self.batcher = Batcher(self.rank_now, max_batch, "userseq-rank")

    def info(self) -> dict[str, Any]:
        return {**self.ranker.info(), "shared_items": self.shared,
                "retrieval_items": len(self.service.items), "overlap": round(self.overlap, 4)}

    # ------------------------------------------------------------------ stages
    def _candidates(self, req: RankRequest, vec: np.ndarray, seq: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(retrieval rows, retrieval scores, source) of the candidates."""
        svc = self.service
        if req.candidates is not None:
            rows, bad = svc.items.rows(list(req.candidates))
            if bad:
                raise RequestError(422, f"unknown item id(s) {bad[:10]} in `candidates`: not in "
                                        f"the retrieval run's catalogue ({svc.run_dir.name}).")
            unk = [req.candidates[j] for j in np.flatnonzero(self.ranker_index[rows] == 0)]
            if unk:
                raise RequestError(422, f"item id(s) {unk[:10]} in `candidates` are not in the "
                                        f"ranking run's catalogue ({self.ranker.run_dir.name}); "
                                        "it cannot score them.")
            scores = (svc.item_matrix[torch.from_numpy(rows)] @ torch.from_numpy(vec)).numpy()
            return rows, scores, "candidates"
        n = req.retrieve or DEFAULT_RETRIEVE
        excluded = np.unique(seq - 1) if req.exclude_seen else np.zeros(0, np.int64)
        if len(self.unrankable):
            excluded = np.union1d(excluded, self.unrankable)
        scores, rows, _ = svc.top_items(vec, n, excluded)
        if len(rows) == 0:
            raise RequestError(422, "`retrieve`: no candidate left after excluding the user's "
                                    "history and the items the ranker does not know.")
        return rows.astype(np.int64), scores, "retrieved"

    def _ranker_job(self, req: RankRequest, seq: np.ndarray, rows: np.ndarray
                    ) -> tuple[ScoringJob, str, list]:
        """The CTR job, in the ranker's indices (mapped through `ranker_index`, no id lookups):
        the ranker's stored history of a user it knows when no history was posted, else the
        retrieval stage's full history (items the ranker does not know skipped and listed)."""
        urow = self.ranker_users.row(req.user_id) if req.user_id is not None else None
        user = 0 if urow is None else urow + 1
        cand = self.ranker_index[rows]
        est = self.ranker.estimator
        if len(est.vocab_.context_cols):
            raise RequestError(422, f"ranking: request #0: missing context feature(s) "
                                    f"{list(est.vocab_.context_cols)}.")
        if not req.history and urow is not None and est.behaviours_ is not None:
            return (ScoringJob(est.stored_history(user), cand, user), "stored (ranking run)", [])
        hist = self.ranker_index[seq - 1]
        keep = hist > 0
        values = self.service.items.values
        skipped = [values[r] for r in (seq - 1)[~keep]]
        return (ScoringJob(index_history(hist[keep]), cand, user),
                "retrieval history (stored + posted)", skipped)

    def rank_now(self, jobs: list[ScoringJob]) -> list[np.ndarray]:
        """Probabilities of every job's candidates, all jobs in one forward pass (the batcher's
        function; the estimator is read per call: `--engine onnx` swaps it)."""
        return self.ranker.estimator.score_jobs(jobs)

    def close(self) -> None:
        self.batcher.close()

    async def rank(self, req: RankRequest) -> dict[str, Any]:
        svc = self.service
        t0 = time.perf_counter()
        row, seq, ignored = svc.resolve(req)
        vec = await svc.user_vector(row, seq, bool(req.history))
        rows, r_scores, source = self._candidates(req, vec, seq)
        t1 = time.perf_counter()
        job, ranker_history, skipped = self._ranker_job(req, seq, rows)
        try:
            probs = await asyncio.wrap_future(self.batcher.submit(job))
        except UserseqError as e:
            raise RequestError(422, f"ranking: {e}") from None
        t2 = time.perf_counter()
        r_rank = np.empty(len(rows), dtype=np.int64)
        r_rank[np.argsort(-r_scores, kind="stable")] = np.arange(1, len(rows) + 1)
        order = np.argsort(-probs, kind="stable")[: req.k]
        items = []
        for j in order:
            d = svc.item_info(int(rows[j]))
            d.update(rank_score=float(probs[j]), retrieval_score=float(r_scores[j]),
                     retrieval_rank=int(r_rank[j]))
            items.append(d)
        return {"user_id": req.user_id, "known_user": row is not None,
                "history_length": int(len(seq)), "ranker_history": ranker_history,
                "source": source, "candidates": int(len(rows)), "k": req.k,
                "ranker": self.ranker.model, "items": items,
                "ignored_items": [*ignored, *skipped],
                "timings_ms": {"retrieval": round((t1 - t0) * 1000, 3),
                               "ranking": round((t2 - t1) * 1000, 3)}}


def mount(app: FastAPI, ranker: RankService | None) -> None:
    """Add POST /rank; without a ranking run it answers 404 saying how to load one."""

    @app.post("/rank", response_model=RankResponse, responses=ERRORS, tags=["rank"],
              summary="two-stage recommendation: retrieve (or take) candidates, rank them")
    async def rank(req: RankRequest) -> Any:
        """Top-k items for a user (known `user_id` and/or a posted `history`): the explicit
        `candidates`, or `retrieve` items from the retrieval run, scored by the ranking run
        (`userseq serve RUN --ranker CTR_RUN`); each item carries both scores."""
        if ranker is None:
            raise RequestError(404, NOT_LOADED)
        return json_response(await ranker.rank(req))


def load(service: Service, ranker_dir: str | Path, min_overlap: float = MIN_OVERLAP
         ) -> tuple[CTRService, RankService]:
    """The CTR service of `ranker_dir` and its join with `service` (refused on an item-space
    mismatch)."""
    ctr = CTRService.from_run(ranker_dir)
    return ctr, RankService(service, ctr, min_overlap)
