"""Adversarial training data: attack posts appended to (a share of) malicious training users.

`userseq attack run ... --train-posts --out ATTACK` writes ATTACK/train_posts.parquet (user_id,
post): the attack's post for every malicious *training* user of the detector's split.
`adversarial_augment` adds, for a seeded share of those users, a copy of the user whose final post
is replaced by the attack post (label malicious, id `<user>#adv`); the copies join the training
users only, so validation and test users are untouched. `userseq detect train --adversarial ATTACK`
uses it.

Event detectors: `userseq attack run --method event-gradient --train-posts --out ATTACK` writes
ATTACK/train_events.parquet (user_id, item_id, timestamp): the events the attack appends to each
flagged vandal training user; `adversarial_events` adds a copy `<user>#adv` with them appended
(edit-time features recomputed over the whole log).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import DataError
from userseq.data.eventlog import EventLog
from userseq.detect.data import DetectSplit, EventData, TextData, event_data

SUFFIX = "#adv"
TRAIN_EVENTS_FILE = "train_events.parquet"  # event attacks (attack/events.py) write it


def read_train_posts(attack_dir: str | Path) -> pl.DataFrame:
    p = Path(attack_dir) / "train_posts.parquet"
    if not p.is_file():
        raise DataError(f"{p}: not found. Create it with `userseq attack run ... --train-posts "
                        f"--out {attack_dir}`.")
    t = pl.read_parquet(p)
    if set(t.columns) < {"user_id", "post"}:
        raise DataError(f"{p}: expected columns user_id, post (found {t.columns}).")
    return t


def _attack_rows(data: TextData, split: DetectSplit, posts: pl.DataFrame) -> list[tuple[int, str]]:
    """(user index, attack post) per row of `posts`; each must be a malicious training user with a
    history to append to."""
    if not isinstance(data, TextData):
        raise DataError("adversarial training appends generated posts: it needs a text detector "
                        "(hlstm, cnn, minilm).")
    if data.labels is None:
        raise DataError(f"{data.source}: adversarial training needs labels.")
    where = {str(u): i for i, u in enumerate(data.user_ids.to_list())}
    train = set(np.asarray(split.train).tolist())
    rows = []
    users = posts["user_id"].cast(pl.String).to_list()
    for u, post in zip(users, posts["post"].to_list(), strict=True):
        i = where.get(u)
        if i is None:
            raise DataError(f"adversarial posts: user {u!r} is not in {data.source}.")
        if i not in train:
            raise DataError(f"adversarial posts: user {u!r} is not a training user of this split "
                            "(the attack run used another split); adversarial posts may only come "
                            "from training users. Use the same --seed and split as the attacked "
                            "detector.")
        if data.labels[i] != 1:
            raise DataError(f"adversarial posts: user {u!r} is labelled benign; only malicious "
                            "users attack.")
        if len(data.posts[i]) < 2:
            raise DataError(f"adversarial posts: user {u!r} has no history to append to.")
        rows.append((i, post))
    return rows


def adversarial_augment(data: TextData, split: DetectSplit, posts: pl.DataFrame, share: float = 1.0,
                        seed: int = 0) -> tuple[TextData, DetectSplit]:
    """TextData + split with attacked copies of a `share` of the malicious training users in
    `posts`."""
    if not 0 < share <= 1:
        raise DataError(f"--adversarial-share must be in (0, 1] (got {share}).")
    rows = _attack_rows(data, split, posts)
    assert data.labels is not None
    rng = np.random.default_rng(seed)
    n_take = int(round(share * len(rows)))
    take = sorted(rng.choice(len(rows), n_take, replace=False).tolist()) if rows else []
    chosen = [rows[k] for k in take]
    copied = [i for i, _ in chosen]
    ids = [str(x) for x in data.user_ids.to_list()]
    n = data.n_users
    ctx, rel = data.contexts, data.relevancy
    aug = TextData(
        user_ids=pl.Series("user_id", ids + [ids[i] + SUFFIX for i in copied]),
        posts=data.posts + [[*data.posts[i][:-1], p] for i, p in chosen],
        labels=np.concatenate([data.labels, np.ones(len(chosen), dtype=data.labels.dtype)]),
        contexts=None if ctx is None else ctx + [ctx[i] for i in copied],
        source=f"{data.source} + {len(chosen)} adversarial copies",
        relevancy=None if rel is None else rel + [rel[i] for i in copied])
    train = np.concatenate([split.train, np.arange(n, n + len(chosen))])
    new_split = DetectSplit(train, split.valid, split.test, seed=split.seed, fold=split.fold,
                            meta={**split.meta, "adversarial_copies": len(chosen)})
    return aug, new_split


def augmenter(attack_dir: str | Path, share: float = 1.0, seed: int = 0,
              ) -> Callable[[Any, DetectSplit], tuple[Any, DetectSplit]]:
    """The `augment` hook of `UserDetector.fit`: reads ATTACK/train_posts.parquet once."""
    if not 0 < share <= 1:
        raise DataError(f"--adversarial-share must be in (0, 1] (got {share}).")
    if (Path(attack_dir) / TRAIN_EVENTS_FILE).is_file():  # an event-sequence attack
        events = read_train_events(attack_dir)
        users = events["user_id"].unique(maintain_order=True)
        rng = np.random.default_rng(seed)
        take = users.gather(np.sort(rng.choice(len(users), int(round(share * len(users))),
                                               replace=False)))
        events = events.filter(pl.col("user_id").is_in(take.implode()))

        def augment_events(data: Any, split: DetectSplit) -> tuple[Any, DetectSplit]:
            if not isinstance(data, EventData):
                raise DataError(f"{attack_dir}: holds appended events (an event attack); it "
                                "trains an event detector (gru, transformer, ...).")
            return adversarial_events(data, split, events)

        return augment_events
    posts = read_train_posts(attack_dir)

    def augment(data: TextData, split: DetectSplit) -> tuple[TextData, DetectSplit]:
        return adversarial_augment(data, split, posts, share, seed)

    return augment


def read_train_events(attack_dir: str | Path) -> pl.DataFrame:
    p = Path(attack_dir) / TRAIN_EVENTS_FILE
    if not p.is_file():
        raise DataError(f"{p}: not found. Create it with `userseq attack run --method "
                        f"event-gradient --train-posts --out {attack_dir}`.")
    t = pl.read_parquet(p)
    if not {"user_id", "item_id", "timestamp"} <= set(t.columns):
        raise DataError(f"{p}: expected columns user_id, item_id, timestamp (found {t.columns}).")
    return t


def adversarial_events(data: EventData, split: DetectSplit, events: pl.DataFrame,
                       ) -> tuple[EventData, DetectSplit]:
    """EventData + split with, for each attacked training vandal in `events`, a copy `<user>#adv`
    (label vandal, training only) whose history has the attack's events appended."""
    if data.labels is None:
        raise DataError(f"{data.source}: adversarial training needs labels.")
    ids = data.user_ids.cast(pl.String).to_list()
    where = {u: i for i, u in enumerate(ids)}
    train = set(np.asarray(split.train).tolist())
    users = events["user_id"].cast(pl.String).unique(maintain_order=True).to_list()
    for u in users:
        i = where.get(u)
        if i is None:
            raise DataError(f"adversarial events: user {u!r} is not in {data.source}.")
        if i not in train or data.labels[i] != 1:
            raise DataError(f"adversarial events: user {u!r} is not a vandal training user of this "
                            "split; use the attacked detector's --seed and split.")
    log = data.log
    f = log.frame
    base = pl.DataFrame({"user_id": log.user_ids.cast(pl.String).gather(f["user"].to_numpy()),
                         "item_id": log.item_ids.cast(pl.String).gather(f["item"].to_numpy() - 1),
                         "timestamp": f["timestamp"]})
    copies = base.filter(pl.col("user_id").is_in(users)).with_columns(
        pl.col("user_id") + "#adv")
    extra = events.select((pl.col("user_id").cast(pl.String) + "#adv"),
                          pl.col("item_id").cast(pl.String),
                          pl.col("timestamp").cast(base["timestamp"].dtype))
    new_log = EventLog.from_frame(pl.concat([base, copies, extra]),
                                  source=f"{log.source} + {len(users)} adversarial copies",
                                  timestamp_kind=log.timestamp_kind)
    lab = pl.DataFrame({"user_id": ids + [u + "#adv" for u in users],
                        "label": np.concatenate([data.labels, np.ones(len(users), np.int64)])})
    new = event_data(new_log, lab, label_source="adversarial copies")
    new_ids = new.user_ids.cast(pl.String).to_list()
    nwhere = {u: i for i, u in enumerate(new_ids)}

    def remap(idx: np.ndarray) -> np.ndarray:
        return np.sort(np.array([nwhere[ids[i]] for i in idx], dtype=np.int64))

    tr = np.concatenate([remap(np.asarray(split.train)),
                         np.array([nwhere[u + "#adv"] for u in users], dtype=np.int64)])
    return new, DetectSplit(np.sort(tr), remap(np.asarray(split.valid)),
                            remap(np.asarray(split.test)), seed=split.seed, fold=split.fold,
                            meta={**split.meta, "adversarial_copies": len(users)})

