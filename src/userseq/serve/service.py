"""The serving logic, independent of HTTP: id conversion, on-the-fly encoding with request
batching, ANN retrieval with filters, similar items/users, item metadata and the embedding map.

Errors a client can fix raise `RequestError(status, message)`; the HTTP layer turns them into
4xx answers.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core.errors import UserseqError
from userseq.index.run import RunIndex
from userseq.index.vector import IndexConfig

_INTEGER = re.compile(r"[+-]?[0-9]+")
MAP_CACHE = 8  # /map projections kept (one per distinct n, least recently used dropped)


class RequestError(UserseqError):
    """A bad request: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IdMap:
    """Original ids <-> 0-based rows, accepting ints or strings whatever the model's id type."""

    def __init__(self, ids: pl.Series, what: str) -> None:
        self.ids = ids
        self.what = what
        self.integer = ids.dtype.is_integer()
        values = ids.to_list()
        self._row = {v: i for i, v in enumerate(values)}
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def native(self, value: Any) -> Any:
        """The id in the model's type, or None when it cannot be one (e.g. "abc" for integer
        ids)."""
        if self.integer:
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value
            if isinstance(value, str):
                v = value.strip()
                if _INTEGER.fullmatch(v):  # ASCII digits only: int() rejects "²" and "+-5"
                    return int(v)
            return None
        return value if isinstance(value, str) else str(value)

    def row(self, value: Any) -> int | None:
        v = self.native(value)
        return None if v is None else self._row.get(v)

    def rows(self, values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        """Rows of `values` (-1 for unknown) and the unknown values."""
        out = np.empty(len(values), dtype=np.int64)
        bad = []
        get = self._row.get
        native = self.native
        for j, v in enumerate(values):
            r = get(native(v))
            if r is None:
                bad.append(v)
                out[j] = -1
            else:
                out[j] = r
        return out, bad


class Batcher:
    """Runs `fn(jobs) -> results` (one result per job) on one worker thread, taking every job
    that is waiting at once as one batch (at most `max_batch`): under load, concurrent requests
    share a forward pass instead of queueing for the CPU one by one. `submit(job)` returns a
    future; when `fn` raises, every job of that batch gets the exception. `batches` / `jobs`
    count the calls of `fn` and the jobs they took."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 64,
                 name: str = "userseq-batch") -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.batches = 0
        self.jobs = 0
        self._name, self._lock, self._closed = name, threading.Lock(), True
        self._start()

    def _start(self) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> cf.Future:
        """Queue one job; a closed batcher starts a new worker first (an app used again after
        its service was shut down answers instead of waiting forever)."""
        fut: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                self._start()
            self._q.put((job, fut))
        return fut

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                jobs.append(nxt)
            try:
                results = self.fn([j[0] for j in jobs])
            except Exception as e:  # hand the failure to every waiting request
                for _, f in jobs:
                    f.set_exception(e)
                continue
            self.batches += 1
            self.jobs += len(jobs)
            for (_, f), v in zip(jobs, results, strict=True):
                f.set_result(v)


class EncodeBatcher(Batcher):
    """Encodes histories (item index arrays) into user vectors, concurrent requests batched."""

    def __init__(self, rec: Any, max_batch: int = 64) -> None:
        self.rec = rec
        super().__init__(self.encode_now, max_batch, "userseq-encode")

    def encode_now(self, histories: list[np.ndarray]) -> np.ndarray:
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, np.int64)
        with torch.inference_mode():
            return self.rec.encode(offsets, flat).numpy()


class Service:
    """Everything the HTTP app answers, from a run directory and its index."""

    def __init__(self, rec: Any, index: RunIndex, run_dir: str | Path,
                 item_meta: pl.DataFrame | None = None, max_batch: int = 64,
                 metrics: dict | None = None, state_dir: str | Path | None = None) -> None:
        from userseq.serve.stream import Streams

        self.rec = rec
        self.index = index
        self.run_dir = Path(run_dir)
        self.items = IdMap(rec.item_ids, "item")
        self.users = IdMap(rec.user_ids, "user")
        # row i = item_ids[i]
        self.item_vectors = np.ascontiguousarray(rec.item_embeddings(), dtype=np.float32)
        # exact scans through torch: it honours torch.set_num_threads (numpy's BLAS may spin
        # extra threads)
        self.item_matrix = torch.from_numpy(self.item_vectors)
        self.offsets, self.hist_items = rec.histories_  # item indices are rows + 1
        self.max_len = rec.config.model.max_len
        self.batcher = EncodeBatcher(rec, max_batch)
        self.metrics = metrics
        self.counts = np.bincount(self.hist_items, minlength=len(self.items) + 1)[1:]
        self.titles: list[str | None] | None = None
        self.genres: list[list[str] | None] | None = None
        if item_meta is not None:
            self._set_meta(item_meta)
        self._map: OrderedDict[int, dict] = OrderedDict()  # LRU of MAP_CACHE projections
        self._haystack: pl.Series | None = None
        self._lock = threading.Lock()
        # per-user streaming state (POST /users/{id}/events), opened on first use
        self.streams = Streams(self, Path(state_dir) if state_dir else self.run_dir / "stream")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run_dir: str | Path, item_meta: str | Path | pl.DataFrame | None = None,
                 max_batch: int = 64, build_index: bool = True,
                 index_config: IndexConfig | None = None, log: Any = None,
                 state_dir: str | Path | None = None) -> Service:
        """Load a run (and RUN/index, building it first when missing and `build_index`).
        `state_dir` holds the streaming user states (default RUN/stream)."""
        from userseq.core.artifacts import read_json
        from userseq.nextitem.estimator import NextItemRecommender

        say = log or (lambda msg: None)
        run_dir = Path(run_dir)
        rec = NextItemRecommender.load(run_dir)
        if not RunIndex.exists(run_dir):
            if not build_index:
                raise UserseqError(f"{run_dir}: no index; build it with `userseq index {run_dir}`.")
            say(f"{run_dir}: no index yet; building it (same as `userseq index {run_dir}`)")
            index = RunIndex.build(rec, run_dir, index_config)
        else:
            index = RunIndex.load(run_dir, rec)
        meta = load_item_meta(item_meta, rec)
        metrics_file = run_dir / "metrics.json"
        metrics = read_json(metrics_file) if metrics_file.is_file() else None
        return cls(rec, index, run_dir, meta, max_batch, metrics, state_dir)

    def _set_meta(self, meta: pl.DataFrame) -> None:
        if "item_id" not in meta.columns:
            raise UserseqError("item metadata needs an `item_id` column (and `title`, optionally "
                               "`genres`).")
        rows, _ = self.items.rows(meta["item_id"].to_list())
        keep = rows >= 0
        titles: list[str | None] = [None] * len(self.items)
        genres: list[list[str] | None] = [None] * len(self.items)
        if "title" in meta.columns:
            kept = meta["title"].filter(pl.Series(keep)).to_list()
            for r, t in zip(rows[keep], kept, strict=True):
                titles[r] = t
        if "genres" in meta.columns:
            g = meta["genres"]
            if g.dtype == pl.String:
                g = g.str.split("|")
            for r, v in zip(rows[keep], g.filter(pl.Series(keep)).to_list(), strict=True):
                genres[r] = list(v) if v is not None else None
        self.titles, self.genres = titles, genres

    def close(self) -> None:
        self.batcher.close()
        self.streams.close()

    # ------------------------------------------------------------------ helpers
    def item_info(self, row: int, score: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"item_id": self.items.values[row]}
        if score is not None:
            d["score"] = score
        if self.titles is not None:
            d["title"] = self.titles[row]
        if self.genres is not None:
            d["genres"] = self.genres[row]
        return d

    def _item_row(self, item_id: Any) -> int:
        r = self.items.row(item_id)
        if r is None:
            raise RequestError(404, f"unknown item id {item_id!r}: not in the model's catalogue.")
        return r

    def _user_row(self, user_id: Any) -> int:
        r = self.users.row(user_id)
        if r is None:
            raise RequestError(404, f"unknown user id {user_id!r}: not in the training data; send "
                                    "a `history` of item ids instead (POST /recommend or /embed).")
        return r

    def resolve(self, req: Any) -> tuple[int | None, np.ndarray, list[Any]]:
        """(known user row or None, full history as item indices oldest first, ignored unknown
        items): `resolve_history` over this run's users, items and histories."""
        return resolve_history(req, self.users, self.items, self.offsets, self.hist_items)

    async def user_vector(self, row: int | None, seq: np.ndarray,
                          history_given: bool) -> np.ndarray:
        import asyncio

        if row is not None and not history_given and self.index.user_vectors is not None:
            # precomputed (a copy: the map is read-only)
            return np.array(self.index.user_vectors[row])
        return await asyncio.wrap_future(self.batcher.submit(seq[-self.max_len :]))

    def _id_rows(self, values: Sequence[Any] | None, field: str) -> np.ndarray | None:
        if values is None:
            return None
        rows, bad = self.items.rows(list(values))
        if bad:
            raise RequestError(422, f"unknown item id(s) {bad[:10]} in `{field}`: not in the "
                                    "model's catalogue.")
        return rows

    # ------------------------------------------------------------------ endpoints
    async def recommend(self, req: Any) -> dict[str, Any]:
        allow = self._id_rows(req.allow, "allow")
        deny = self._id_rows(req.deny, "deny")
        row, seq, ignored = self.resolve(req)
        mode = req.retrieval or self.rec.config.retrieval.mode
        if mode != "single":
            return self._recommend_mode(req, mode, row, seq, ignored)
        vec = await self.user_vector(row, seq, bool(req.history))
        excluded = np.unique(seq - 1) if req.exclude_seen else np.zeros(0, np.int64)
        if deny is not None and len(deny):
            excluded = np.union1d(excluded, deny)
        scores, rows, how = self.top_items(vec, req.k, excluded, allow, req.exact)
        return {
            "user_id": req.user_id, "known_user": row is not None,
            "history_length": int(len(seq)), "k": req.k,
            "items": [self.item_info(int(r), float(s)) for s, r in zip(scores, rows, strict=True)],
            "ignored_items": ignored, "index": how, "retrieval": "single",
        }

    def _recommend_mode(self, req: Any, mode: str, row: int | None, seq: np.ndarray,
                        ignored: list[Any]) -> dict[str, Any]:
        """kNN-Embed or Ada-Retrieval for one request (exact scoring; no allow/deny lists)."""
        if req.allow is not None or req.deny is not None:
            raise RequestError(422, f"`allow`/`deny` work with retrieval 'single' only, not "
                                    f"'{mode}'.")
        offsets = np.array([0, len(seq)], dtype=np.int64)
        try:
            with self._lock:  # the kNN-Embed state is built once, on first use
                s, top = self.rec.top_items(offsets, seq, req.k, req.exclude_seen, mode,
                                            np.array([-1 if row is None else row]))
        except UserseqError as e:
            raise RequestError(422, str(e)) from None
        ok = np.isfinite(s[0]) & (top[0] > 0)
        return {
            "user_id": req.user_id, "known_user": row is not None,
            "history_length": int(len(seq)), "k": req.k,
            "items": [self.item_info(int(r) - 1, float(v))
                      for v, r in zip(s[0][ok], top[0][ok], strict=True)],
            "ignored_items": ignored, "index": "exact", "retrieval": mode,
        }

    def top_items(self, vec: np.ndarray, k: int, excluded: np.ndarray,
                  allow: np.ndarray | None = None,
                  exact: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
        """Best k item rows for user vector `vec` (dot product), without `excluded` rows, within
        `allow` rows when given. ANN first; exact when filters leave the ANN short of k."""
        n = len(self.items)
        if allow is not None:  # a candidate set: score it exactly (small by construction)
            cand = np.setdiff1d(np.unique(allow), excluded, assume_unique=True)
            s = (self.item_matrix[torch.from_numpy(cand)] @ torch.from_numpy(vec)).numpy()
            order = np.argsort(-s, kind="stable")[:k]
            return s[order], cand[order], "exact (allow list)"
        index = self.index.items
        how = "exact" if exact else index.kind
        if not exact and index.kind not in ("flat", "exact"):
            want = min(n, k + len(excluded))
            for width in (want, min(n, 4 * want)):
                s, r = index.search(vec[None], width)
                s, r = s[0], r[0]
                ok = (r >= 0) & ~np.isin(r, excluded)
                if ok.sum() >= min(k, n - len(excluded)):
                    return s[ok][:k], r[ok][:k], index.kind
            how = "exact (ANN fell short after filtering)"
        # a flat index is an exact scan: do it directly (one matrix-vector product)
        s = (self.item_matrix @ torch.from_numpy(np.array(vec, dtype=np.float32))).numpy()
        if len(excluded):
            s[excluded] = -np.inf
        kk = min(k, n)
        top = np.argpartition(-s, kk - 1)[:kk]
        top = top[np.argsort(-s[top], kind="stable")]
        top = top[np.isfinite(s[top])]
        return s[top], top, how

    def append_events(self, user_id: Any, req: Any) -> dict[str, Any]:
        """POST /users/{id}/events: the user's streaming state after `req.events`, and top-k."""
        from userseq.serve.stream import StreamError

        try:
            return self.streams.append(user_id, list(req.events), req.k, req.exclude_seen)
        except StreamError as e:
            raise RequestError(422, str(e)) from None

    async def embed(self, req: Any) -> dict[str, Any]:
        row, seq, ignored = self.resolve(req)
        vec = await self.user_vector(row, seq, bool(req.history))
        return {"user_id": req.user_id, "known_user": row is not None,
                "history_length": int(len(seq)), "dim": int(len(vec)),
                "embedding": [float(x) for x in vec], "ignored_items": ignored}

    def similar_items(self, item_id: Any, k: int) -> dict[str, Any]:
        r = self._item_row(item_id)
        idx = self.index.items_cos
        found = _neighbours(idx, self.item_vectors[r], r, len(self.items), k)
        items = [self.item_info(j, s) for s, j in found]
        return {"id": self.items.values[r], "k": k, "metric": "cosine", "index": idx.kind,
                "items": items}

    def similar_users(self, user_id: Any, k: int) -> dict[str, Any]:
        r = self._user_row(user_id)
        idx = self.index.users
        if idx is None or self.index.user_vectors is None:
            raise RequestError(404, "this run's index has no user index; rebuild it with `userseq "
                                    "index RUN` (without --no-users).")
        found = _neighbours(idx, np.asarray(self.index.user_vectors[r]), r, len(self.users), k)
        users = [{"user_id": self.users.values[j], "score": s} for s, j in found]
        return {"id": self.users.values[r], "k": k, "metric": "cosine", "index": idx.kind,
                "users": users}

    def item(self, item_id: Any) -> dict[str, Any]:
        r = self._item_row(item_id)
        return {**self.item_info(r), "count": int(self.counts[r])}

    def user(self, user_id: Any, limit: int) -> dict[str, Any]:
        r = self._user_row(user_id)
        h = self.hist_items[self.offsets[r] : self.offsets[r + 1]]
        return {"user_id": self.users.values[r], "history_length": int(len(h)),
                "history": [{**self.item_info(int(i) - 1), "count": int(self.counts[int(i) - 1])}
                            for i in h[-limit:]]}

    def list_users(self, offset: int, limit: int) -> dict[str, Any]:
        return {"total": len(self.users), "ids": self.users.values[offset : offset + limit]}

    def search_items(self, q: str, limit: int) -> dict[str, Any]:
        """Items whose id or title contains `q` (case-insensitive), most frequent first."""
        if self._haystack is None:
            titles = self.titles or [None] * len(self.items)
            pairs = zip(self.items.values, titles, strict=True)
            self._haystack = pl.Series([f"{v} {t or ''}".lower() for v, t in pairs])
        found = self._haystack.str.contains(q.strip().lower(), literal=True).to_numpy()
        hits = np.flatnonzero(found)
        hits = hits[np.argsort(-self.counts[hits], kind="stable")]
        items = [{**self.item_info(int(r)), "count": int(self.counts[r])} for r in hits[:limit]]
        return {"total": int(len(hits)), "items": items}

    def item_map(self, n: int) -> dict[str, Any]:
        """A 2-D PCA projection of (up to n, most popular first) item embeddings, with genres."""
        n = max(1, min(int(n), len(self.items)))  # n past the catalogue is the catalogue
        with self._lock:
            if n in self._map:
                self._map.move_to_end(n)
            else:
                self._map[n] = self._project(n)
                while len(self._map) > MAP_CACHE:
                    self._map.popitem(last=False)
            return self._map[n]

    def _project(self, n: int) -> dict[str, Any]:
        rows = np.argsort(-self.counts, kind="stable")[:n]
        x = self.item_vectors[rows].astype(np.float64)
        x = x - x.mean(0)
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        scale = np.abs(xy).max(0)
        xy = xy / np.where(scale > 0, scale, 1.0)
        var = (sv**2) / max((sv**2).sum(), 1e-12)
        points = []
        for (px, py), r in zip(xy, rows, strict=True):
            g = self.genres[r] if self.genres is not None else None
            points.append({"item_id": self.items.values[r], "x": float(px), "y": float(py),
                           "genre": g[0] if g else None,
                           "title": self.titles[r] if self.titles is not None else None})
        return {"method": "pca", "explained_variance": [float(v) for v in var[:2]],
                "points": points}

    def info(self) -> dict[str, Any]:
        from userseq.core.version import __version__

        m = self.rec.config.model
        model = {"name": m.name, "dim": m.dim, "layers": getattr(m, "layers", None),
                 "max_len": m.max_len, "loss": self.rec.config.loss.name,
                 "dataset": self.rec.config.dataset, "train": self.rec.train_state_}
        metrics = None
        if self.metrics:
            keys = ("test", "valid", "filter_seen", "split")
            metrics = {k: self.metrics.get(k) for k in keys if k in self.metrics}
        return {"model": model, "data_fingerprint": self.rec.data_fingerprint_, "metrics": metrics,
                "index": self.index.manifest, "items": len(self.items), "users": len(self.users),
                "run_dir": str(self.run_dir), "userseq_version": __version__,
                "item_metadata": self.titles is not None}


def _neighbours(index: Any, vec: np.ndarray, row: int, n: int,
                k: int) -> list[tuple[float, int]]:
    """(score, row) of the k nearest rows to `vec` in `index`, without `row` itself."""
    s, rows = index.search(vec[None], min(n, k + 1))
    keep = (rows[0] >= 0) & (rows[0] != row)
    return [(float(v), int(j)) for v, j in zip(s[0][keep][:k], rows[0][keep][:k], strict=True)]


def load_item_meta(source: str | Path | pl.DataFrame | None, rec: Any) -> pl.DataFrame | None:
    """Item titles/genres: a frame, a CSV/Parquet file (item_id, title[, genres]), or, when None,
    the named dataset's metadata (e.g. ML-1M movies.dat) if the run was trained on one."""
    if isinstance(source, pl.DataFrame):
        return source
    if source is not None:
        p = Path(source)
        if not p.is_file():
            raise UserseqError(f"{p}: item metadata file not found.")
        try:
            if p.suffix == ".parquet":
                df = pl.read_parquet(p)
            else:
                df = pl.read_csv(p, infer_schema_length=10000)
        except Exception as e:  # polars raises several error types for unreadable files
            raise UserseqError(f"{p}: cannot read item metadata "
                               f"({str(e).splitlines()[0]}).") from None
        return df
    from userseq.data.datasets import is_dataset_name, load_item_metadata

    name = rec.config.dataset
    if not (name and is_dataset_name(name)):
        return None
    try:
        return load_item_metadata(name)
    except UserseqError:
        return None


def resolve_history(req: Any, users: Any, items: Any, offsets: np.ndarray,
                    hist_items: np.ndarray) -> tuple[int | None, np.ndarray, list[Any]]:
    """The history a request stands for: (the known user's row or None, the full history as item
    indices oldest first, the ignored unknown items). `req` has `user_id`, `history`, `timestamps`
    and `unknown_items`; a known user's stored history comes first, then the sent `history`
    (ordered by `timestamps` when given, ties keeping input order). `users`/`items` are the run's
    id maps (`row`/`rows`). 404 for an unknown user without a history; 422 for unknown items with
    unknown_items='error', or when no known item is left."""
    row = None
    ignored: list[Any] = []
    if req.user_id is not None:
        row = users.row(req.user_id)
        if row is None and not req.history:
            raise RequestError(404, f"unknown user id {req.user_id!r}: not in the training data; "
                                    "send a `history` of item ids instead (POST /recommend or "
                                    "/embed).")
    parts = []
    if row is not None:
        parts.append(hist_items[offsets[row] : offsets[row + 1]])
    if req.history:
        hist = list(req.history)
        if req.timestamps is not None:
            keys = [t.timestamp() if hasattr(t, "timestamp") else float(t)
                    for t in req.timestamps]
            order = sorted(range(len(hist)), key=lambda j: keys[j])  # stable: ties keep order
            hist = [hist[j] for j in order]
        rows, bad = items.rows(hist)
        if bad:
            if req.unknown_items == "error":
                raise RequestError(422, f"unknown item id(s) {bad[:10]} in `history`: not in "
                                        "the model's catalogue (send unknown_items='ignore' to "
                                        "skip them).")
            ignored = bad
            rows = rows[rows >= 0]
            if len(rows) == 0 and row is None:
                raise RequestError(422, f"no known item in `history` (unknown: {bad[:10]}); "
                                        "nothing to recommend from.")
        parts.append((rows + 1).astype(hist_items.dtype))
    seq = np.concatenate(parts) if parts else np.zeros(0, hist_items.dtype)
    return row, seq, ignored
