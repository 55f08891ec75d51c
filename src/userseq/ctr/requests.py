"""Scoring requests -> CTR samples: what `CTREstimator.predict_proba` and `POST /score` read.

A request is a mapping with the candidate `item` and either an explicit `history` (item ids,
oldest first; optional `history_values` and `history_timestamps`) or a training `user` (their
stored history strictly before `timestamp`), plus `context` when the model has context columns.
Every mistake is a `DataError` naming the request and the field.

`ScoringJob` is the same request already in the model's indices (a history, a user, candidates):
what a caller that has mapped its ids once (the two-stage service, `POST /rank`) hands to
`CTREstimator.score_jobs`, which scores many jobs in one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from userseq.core.errors import DataError
from userseq.ctr.data import Behaviours, Samples, Vocab
from userseq.data.eventlog import lookup_ids

History = tuple[np.ndarray, np.ndarray, np.ndarray]  # item indices, feature buckets, timestamps


@dataclass
class ScoringJob:
    """One history and the candidates to score against it, in the model's indices: `history`
    (item indices 1..n, feature buckets (0: none), timestamps; oldest first), `candidates` (item
    indices), `user` (user index, 0: none) and `context` (one raw value per context column)."""

    history: History
    candidates: np.ndarray
    user: int = 0
    context: np.ndarray | None = None


def index_history(items: np.ndarray) -> History:
    """A history of item indices without values or timestamps (what a posted `history` of ids
    becomes)."""
    items = np.asarray(items, dtype=np.int64)
    return items, np.zeros(len(items), dtype=np.int64), np.full(len(items), -np.inf)


def jobs_to_samples(jobs: Sequence[ScoringJob], vocab: Vocab) -> tuple[Behaviours, Samples]:
    """Behaviours and one sample per job (its first candidate as the target; the scoring reads
    every candidate)."""
    if not jobs:
        raise DataError("no requests to score.")
    n = len(jobs)
    ctx = np.zeros((n, len(vocab.context_cols)), dtype=np.float64)
    for i, j in enumerate(jobs):
        if len(j.candidates) == 0:
            raise DataError("no candidate items to score.")
        if len(vocab.context_cols):
            if j.context is None:
                raise DataError(f"request #{i}: missing context feature(s) "
                                f"{list(vocab.context_cols)}.")
            ctx[i] = j.context
    users = np.array([j.user for j in jobs], dtype=np.int64)
    items = np.array([j.candidates[0] for j in jobs], dtype=np.int64)
    return _assemble([j.history for j in jobs], users, items, np.full(n, np.inf), ctx, vocab)


def requests_to_samples(requests: list[Mapping[str, Any]], vocab: Vocab,
                        stored: Behaviours | None) -> tuple[Behaviours, Samples]:
    """Behaviours and samples for explicit scoring requests; `stored` holds the training users'
    histories (None: only explicit histories can be scored)."""
    if not requests:
        raise DataError("no requests to score.")
    n = len(requests)
    items = vocab.item_index([_get(r, "item", i) for i, r in enumerate(requests)],
                             "candidate item")
    users = np.zeros(n, dtype=np.int64)
    ts = np.full(n, np.inf)
    histories: list[History] = []
    ctx = np.zeros((n, len(vocab.context_cols)), dtype=np.float64)
    for i, r in enumerate(requests):
        if r.get("timestamp") is not None:
            ts[i] = float(r["timestamp"])
        if r.get("user") is not None:
            users[i] = int(lookup_ids(vocab.user_ids, [r["user"]], offset=1)[0])
        if r.get("history") is not None:
            histories.append(_explicit_history(i, r, vocab, ts[i]))
        elif users[i] > 0 and stored is not None:
            histories.append(stored_history(stored, int(users[i]), ts[i]))
        else:
            who = r.get("user")
            hint = f" ({who!r} is not a training user)" if who is not None else ""
            raise DataError(f"request #{i}: give a 'history' (item ids, oldest first) or a known "
                            f"'user'{hint}.")
        ctx[i] = _context(i, r, vocab)
    return _assemble(histories, users, items, ts, ctx, vocab)


def _get(r: Mapping[str, Any], key: str, i: int) -> Any:
    if not isinstance(r, Mapping):
        raise DataError(f"request #{i}: expected a mapping with 'item' and 'history' or 'user' "
                        f"(got {type(r).__name__}).")
    if r.get(key) is None:
        raise DataError(f"request #{i}: missing '{key}'.")
    return r[key]


def _explicit_history(i: int, r: Mapping[str, Any], vocab: Vocab, ts: float) -> History:
    """A posted history: item indices, feature buckets of `history_values` (0: none given) and
    the events' times, sorted by `history_timestamps`, which must all be before `ts`."""
    h = list(r["history"])
    items = vocab.item_index(h, "history item") if h else np.zeros(0, dtype=np.int64)
    vals = r.get("history_values")
    if vals is None:
        feats = np.zeros(len(h), dtype=np.int64)  # no value: the feature embedding is left out
    else:
        if len(vals) != len(h):
            raise DataError(f"request #{i}: history_values has {len(vals)} entries for {len(h)} "
                            "history items; give one value per history event.")
        feats = vocab.feature_buckets(np.asarray(vals, dtype=np.float64))
    times = r.get("history_timestamps")
    if times is None:
        return items, feats, np.full(len(h), -np.inf)
    ht = np.asarray(times, dtype=np.float64)
    if len(ht) != len(h):
        raise DataError(f"request #{i}: history_timestamps has {len(ht)} entries for {len(h)} "
                        "history items.")
    if np.isfinite(ts) and (ht >= ts).any():
        raise DataError(
            f"request #{i}: {int((ht >= ts).sum())} history event(s) at or after the target's "
            f"timestamp {r['timestamp']} (latest {ht.max()}); a history may only hold earlier "
            "events (no future leakage).")
    order = np.argsort(ht, kind="stable")
    return items[order], feats[order], ht[order]


def stored_history(b: Behaviours, user: int, ts: float = np.inf) -> History:
    """A training user's stored events strictly before `ts`."""
    lo, hi = b.offsets[user - 1], b.offsets[user]
    end = lo + int(np.searchsorted(b.ts[lo:hi], ts, side="left"))
    return b.items[lo:end], b.feats[lo:end], b.ts[lo:end]


def _context(i: int, r: Mapping[str, Any], vocab: Vocab) -> list[float]:
    c = r.get("context") or {}
    missing = [col for col in vocab.context_cols if col not in c]
    if missing:
        raise DataError(f"request #{i}: missing context feature(s) {missing}.")
    return [float(c[col]) for col in vocab.context_cols]


def _assemble(histories: list[History], users: np.ndarray, items: np.ndarray, ts: np.ndarray,
              ctx: np.ndarray, vocab: Vocab) -> tuple[Behaviours, Samples]:
    lengths = np.array([len(h[0]) for h in histories], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    beh = Behaviours(offsets, np.concatenate([h[0] for h in histories]).astype(np.int64),
                     np.concatenate([h[1] for h in histories]).astype(np.int64),
                     np.concatenate([h[2] for h in histories]))
    if len(vocab.context_cols):
        ctx = (ctx - vocab.context_mean) / vocab.context_std
    n = len(items)
    s = Samples(users, items, ts, offsets[:-1].copy(), offsets[1:].copy(),
                np.zeros(n, dtype=np.float32), ctx.astype(np.float32))
    return beh, s
