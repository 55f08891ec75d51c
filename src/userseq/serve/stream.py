"""Per-user streaming state of the service: `POST /users/{id}/events` appends events to a user's
recurrent state (ssm, gru4rec runs) and answers fresh recommendations.

The states live in one SQLite file (`STATE_DIR/streaming.sqlite`, default `RUN/stream/`): one
row per user with the state tensors serialised as safetensors bytes (never pickle), the event
count and the item rows appended since training (for `exclude_seen`). Every update is one
transaction, so a restart finds the last committed state, and a request with an unknown item is
rejected (422) before the state is read, so it can never corrupt it. The file records the run it
belongs to (model name + data fingerprint); another run's file is refused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from userseq.core.errors import UserseqError
from userseq.nextitem.stream import UserState, advance, empty_state

STATE_FILE = "streaming.sqlite"


class StreamError(UserseqError):
    """The run or the state file cannot stream (answered 422 / 500 by the route)."""


class StateStore:
    """SQLite table of user states for one run (thread-safe: one lock around each update)."""

    def __init__(self, path: Path, run_key: dict[str, str]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, "
                        "n_events INTEGER NOT NULL, state BLOB NOT NULL, appended TEXT NOT NULL)")
        self.lock = threading.Lock()
        saved = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if not saved:
            with self.db:
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", run_key.items())
        elif saved != run_key:
            raise StreamError(f"{path}: this state file belongs to another run ({saved}); "
                              "delete it or serve with another --state-dir.")

    def get(self, user_key: str) -> tuple[UserState, list[int]] | None:
        row = self.db.execute("SELECT state, appended FROM users WHERE user_id = ?",
                              (user_key,)).fetchone()
        if row is None:
            return None
        return UserState.from_tensors(st_load(row[0])), json.loads(row[1])

    def put(self, user_key: str, state: UserState, appended: list[int]) -> None:
        blob = st_save(state.to_tensors())
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)",
                            (user_key, int(state.n_events[0]), blob, json.dumps(appended)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class Streams:
    """The streaming part of a `Service`: opens the store on first use."""

    def __init__(self, service: Any, state_dir: Path) -> None:
        self.service = service
        self.state_dir = state_dir
        self._store: StateStore | None = None
        self._open = threading.Lock()

    def store(self) -> StateStore:
        rec = self.service.rec
        enc = rec.check_is_fitted()
        if not enc.recurrent:
            raise StreamError(f"this run's encoder '{rec.config.model.name}' has no recurrent "
                              "state: POST /users/{id}/events needs a run of a recurrent "
                              "encoder (ssm without attention blocks, or gru4rec); use POST "
                              "/recommend with a history instead.")
        with self._open:
            if self._store is None:
                key = {"model": rec.config.model.name,
                       "data_fingerprint": rec.data_fingerprint_ or ""}
                self._store = StateStore(self.state_dir / STATE_FILE, key)
            return self._store

    def append(self, user_id: Any, events: list[Any], k: int,
               exclude_seen: bool) -> dict[str, Any]:
        """Append `events` (original item ids, oldest first) to the user's state and recommend."""
        from userseq.serve.service import RequestError

        svc = self.service
        store = self.store()
        rows, bad = svc.items.rows(events)
        if bad:
            raise RequestError(422, f"unknown item id(s) {bad[:10]} in `events`: not in the "
                                    "model's catalogue; the user's state was not changed.")
        known = svc.users.row(user_id)
        key = json.dumps(svc.users.native(user_id) if known is not None else str(user_id))
        rec = svc.rec
        with store.lock:
            found = store.get(key)
            created = found is None
            if found is None:
                if known is not None:
                    hist = svc.hist_items[svc.offsets[known] : svc.offsets[known + 1]]
                    state = advance(rec.encoder_, empty_state(rec.encoder_, 1, rec.device_),
                                    [hist.astype(np.int64)], rec.device_)
                else:
                    state = empty_state(rec.encoder_, 1, rec.device_)
                appended: list[int] = []
            else:
                state, appended = found
            state = advance(rec.encoder_, state, [rows + 1], rec.device_)
            appended = appended + [int(r) for r in rows]
            store.put(key, state, appended)
        vec = state.vector[0, : svc.item_vectors.shape[1]].numpy()  # Matryoshka serving prefix
        excluded = np.zeros(0, np.int64)
        if exclude_seen:
            parts = [np.asarray(appended, dtype=np.int64)]
            if known is not None:
                parts.append(svc.hist_items[svc.offsets[known] : svc.offsets[known + 1]] - 1)
            excluded = np.unique(np.concatenate(parts).astype(np.int64))
        scores, top, how = svc.top_items(np.ascontiguousarray(vec, dtype=np.float32), k, excluded)
        return {"user_id": user_id, "known_user": known is not None, "created": created,
                "n_events": int(state.n_events[0]), "appended": len(rows), "k": k,
                "items": [svc.item_info(int(r), float(s)) for s, r in zip(scores, top,
                                                                           strict=True)],
                "index": how}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
