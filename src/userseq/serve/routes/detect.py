"""`POST /classify`: score one user with a detector run (`userseq detect train`) from a posted
sequence (`userseq serve RUN --detector DETECT_RUN`).

Event detectors ('gru', 'transformer') read `items` (pages) with one `timestamp` each: the
edit-time features are computed from the posted events exactly as `userseq detect score` computes
them from an events file (so `page_new_in_log` is relative to the posted sequence). Text detectors
('hlstm', 'cnn', 'minilm') read `posts`. Client mistakes raise `RequestError` (4xx).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from fastapi import FastAPI

from userseq.serve.routes import ERRORS
from userseq.serve.schemas import ClassifyRequest, ClassifyResponse
from userseq.serve.service import IdMap, RequestError

NOT_LOADED = ("no detector is loaded: start the service with `userseq serve RUN --detector "
              "DETECT_RUN` (a run directory from `userseq detect train`).")


class DetectorService:
    """A loaded detector run and the logic of `POST /classify`."""

    def __init__(self, detector: Any, run_dir: str | Path) -> None:
        self.detector = detector
        self.run_dir = Path(run_dir)
        self.kind = detector.kind  # "event" | "text"
        self.model = detector.config.model.name
        self.pages = IdMap(detector.pages_, "page") if detector.pages_ is not None else None
        # the detector caches per-dataset inputs: one request at a time
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> DetectorService:
        from userseq.detect.estimator import UserDetector

        return cls(UserDetector.load(run_dir), run_dir)

    def info(self) -> dict[str, Any]:
        reads = "items + timestamps" if self.kind == "event" else "posts"
        return {"run_dir": str(self.run_dir), "model": self.model, "reads": reads,
                "thresholds": self.detector.thresholds_}

    def _event_data(self, req: Any) -> tuple[Any, int]:
        from userseq.data.eventlog import EventLog
        from userseq.detect.data import event_data

        if req.items is None:
            raise RequestError(422, f"this detector ('{self.model}') reads edit events: send "
                                    "`items` (page ids, oldest first) with one `timestamps` entry "
                                    "each, not `posts`.")
        if req.timestamps is None:
            raise RequestError(422, "event detectors use the time between edits: give "
                                    "`timestamps` (one per item, ISO 8601 or Unix seconds).")
        assert self.pages is not None
        if self.pages.integer:
            native = [self.pages.native(v) for v in req.items]
            bad = [v for v, n in zip(req.items, native, strict=True) if n is None]
            if bad:
                raise RequestError(422, f"`items` {bad[:5]} are not integers; this detector's "
                                        "page ids are integers.")
            items: list[Any] = native
        else:
            items = [str(v) for v in req.items]
        ts = np.array([t.timestamp() if hasattr(t, "timestamp") else float(t)
                       for t in req.timestamps])
        out_of_order = int((np.diff(ts) < 0).sum())
        user = "" if req.user_id is None else str(req.user_id)
        frame = pl.DataFrame({"user_id": [user] * len(items), "item_id": items, "timestamp": ts})
        # stable sort by time
        log = EventLog.from_frame(frame, source="request", timestamp_kind="time")
        return event_data(log, None), out_of_order

    def _text_data(self, req: Any) -> Any:
        from userseq.detect.data import TextData

        if req.posts is None:
            raise RequestError(422, f"this detector ('{self.model}') reads post texts: send "
                                    "`posts` (oldest first), not `items`.")
        user = "" if req.user_id is None else str(req.user_id)
        return TextData(pl.Series("user_id", [user]), [list(req.posts)], None, source="request")

    def classify(self, req: Any) -> dict[str, Any]:
        out_of_order = 0
        if self.kind == "event":
            data, out_of_order = self._event_data(req)
            n = data.log.n_events
        else:
            data = self._text_data(req)
            n = len(req.posts)
        det = self.detector
        with self._lock:
            score = float(det.predict_proba(data, first_k=req.first_k)[0])
        k = req.first_k
        key = str(k) if k is not None and str(k) in det.thresholds_ else "all"
        threshold = float(det.thresholds_.get(key, 0.5))
        limit = det.config.model.max_len if self.kind == "event" else det.config.model.max_posts
        used = min(n, req.first_k or n, limit)
        return {"user_id": req.user_id, "model": self.model, "score": score,
                "flagged": score >= threshold, "threshold": threshold, "threshold_for": key,
                "length": n, "used": used, "reordered": out_of_order}


def mount(app: FastAPI, detector: DetectorService | None) -> None:
    """Add POST /classify; without a detector run it answers 404 saying how to load one."""

    @app.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["detect"])
    def classify(req: ClassifyRequest) -> Any:
        """P(malicious) of one user from a posted sequence, with the detector run given to
        `userseq serve --detector` (event detectors: `items` + `timestamps`; text detectors:
        `posts`)."""
        if detector is None:
            raise RequestError(404, NOT_LOADED)
        return detector.classify(req)

