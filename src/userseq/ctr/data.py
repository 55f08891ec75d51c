"""CTR samples from an event log: labels, behaviour histories, categories, a time split, batches.

Every CTR sample is one event (or one event marked by `target_col`): the user, the target item,
its time, its 0/1 label, optional numeric context, and its history, the user's events strictly
before the target's timestamp (events at the same second are not history: the log cannot say
which came first). Histories are slices of one behaviour store (the log's events sorted by user,
time, input row), so a sample is two offsets, not a copy: 100k samples over histories of up to
10,000 events cost a few megabytes.

The label comes from `label_col`: `value >= label_threshold` (MovieLens: rating >= 4), or the
column's own 0/1 values when the threshold is null. The same column, bucketed, is the per-event
history feature ("what the user thought of it"). Item categories come from `category_col`, or for
named MovieLens datasets from their genres (the item's rarest genre: the most specific one).

The split is global in time (`split: time`): samples before the `valid_quantile` time quantile
train, samples in [valid, test) validate (early stopping), samples at/after the `test_quantile` time
test. `split: user` applies the same quantiles to each user's own targets in time order (every user
with >= 3 targets is in valid and test: a test set with many users, as logs without timestamps
such as the staged ML-1M need).

Sampled negatives (`negatives: N`, DARE's protocol): every observed event is a click, and for
each one N items the user never interacted with are drawn with probability proportional to their
frequency in the log, as non-clicks with the same history and time. `targets_per_user` keeps only
each user's last N observed events as targets (their histories stay whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core.errors import DataError
from userseq.ctr.config import CTRDataConfig
from userseq.data.batches import pad_left
from userseq.data.eventlog import EventLog, lookup_ids

MAX_FEATURE_VALUES = 64  # a label column with more distinct values is bucketed by quantiles
NO_CATEGORY = "(none)"


@dataclass
class Behaviours:
    """The behaviour store: events sorted by (user, time), CSR by user."""

    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (n_events,) int64 item indices 1..n_items
    feats: np.ndarray  # (n_events,) int64 feature buckets 1..n_feats (0 = padding)
    ts: np.ndarray  # (n_events,) float64


@dataclass
class Samples:
    """CTR impressions; the history of sample i is behaviours[start[i]:end[i]]."""

    user: np.ndarray  # int64 user index (1..n_users; 0 = unknown user)
    item: np.ndarray  # int64 item index
    ts: np.ndarray  # float64
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    label: np.ndarray  # float32 0/1
    context: np.ndarray  # (n, C) float32

    def __len__(self) -> int:
        return len(self.item)

    def take(self, idx: np.ndarray) -> Samples:
        return Samples(self.user[idx], self.item[idx], self.ts[idx], self.start[idx], self.end[idx],
                       self.label[idx], self.context[idx])

    @property
    def history_lengths(self) -> np.ndarray:
        return self.end - self.start


@dataclass
class Vocab:
    """Everything a model needs to read new data the way it read its training data (saved with
    it)."""

    item_ids: pl.Series
    user_ids: pl.Series
    item_cat: np.ndarray  # (n_items + 1,) int64 category index per item (0 for the padding item)
    cat_names: list[str]
    feat_edges: np.ndarray  # bucket = searchsorted(edges, value, 'right') + 1
    context_cols: list[str]
    context_mean: np.ndarray
    context_std: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_cats(self) -> int:
        return len(self.cat_names)

    @property
    def n_feats(self) -> int:
        return len(self.feat_edges) + 1

    def feature_buckets(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return np.searchsorted(self.feat_edges, values, side="right") + 1

    def item_index(self, ids: Any, what: str = "item") -> np.ndarray:
        """Item indices of original ids; unknown ids are an error naming them."""
        ids = list(ids)
        idx = lookup_ids(self.item_ids, ids, offset=1)
        if (idx <= 0).any():
            bad = [ids[j] for j in np.flatnonzero(idx <= 0)[:5]]
            raise DataError(
                f"unknown {what} id(s) {bad} ({int((idx <= 0).sum()):,} in all): not in the "
                "model's training catalogue. A CTR model can only score items it was trained with; "
                "retrain with them or drop them."
            )
        return idx.astype(np.int64)


@dataclass
class CTRData:
    behaviours: Behaviours
    samples: Samples
    vocab: Vocab
    source: str = "<data>"
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # name -> sample indices
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Samples:
        if name == "all":
            return self.samples
        if name not in self.splits:
            raise DataError(f"no '{name}' split; known: {', '.join(self.splits)} or 'all'.")
        return self.samples.take(self.splits[name])


# ---------------------------------------------------------------------- labels and features
def _column(log: EventLog, name: str, role: str, option: str) -> pl.Series:
    cols = [c for c in log.frame.columns if c not in ("user", "item", "timestamp", "__row")]
    if name not in log.frame.columns or name in ("user", "item", "__row"):
        raise DataError(
            f"{log.source}: missing {role} column '{name}'. Extra columns found: {cols}. "
            f"Name the column with {option}."
        )
    s = log.frame[name]
    n_null = s.null_count() + (int(s.is_nan().sum()) if s.dtype.is_float() else 0)
    if n_null:
        raise DataError(f"{log.source}: {role} column '{name}' has {n_null:,} missing values; fill "
                        "or drop those rows.")
    return s


def labels_from(values: pl.Series, threshold: float | None, source: str, name: str) -> np.ndarray:
    """0/1 labels: `value >= threshold`, or the values themselves (which must be 0/1)."""
    if values.dtype == pl.Boolean:
        values = values.cast(pl.Int8)
    if not values.dtype.is_numeric():
        raise DataError(f"{source}: label column '{name}' has type {values.dtype}; labels must be "
                        "numbers (0/1, or ratings with label_threshold).")
    v = values.to_numpy().astype(np.float64)
    if threshold is not None:
        return (v >= threshold).astype(np.float32)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():
        found = np.unique(v[bad])[:5].tolist()
        raise DataError(
            f"{source}: labels in column '{name}' must be 0 or 1, but {int(bad.sum()):,} rows hold "
            f"other values (e.g. {found}). Pass a threshold (CLI: --label-threshold 4; config: "
            "data.label_threshold) to derive labels from ratings."
        )
    return v.astype(np.float32)


def feature_edges(values: np.ndarray) -> np.ndarray:
    """Bucket edges for the per-event history feature: one bucket per distinct value, or 16 quantile
    buckets when there are more than MAX_FEATURE_VALUES distinct values."""
    uniq = np.unique(values)
    if len(uniq) <= MAX_FEATURE_VALUES:
        return uniq[1:].astype(np.float64)
    return np.unique(np.quantile(values, np.linspace(0, 1, 17)[1:-1]))


def genre_categories(meta: pl.DataFrame, item_ids: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Category per item = its rarest genre in the catalogue (the most specific one); items without
    genres (or missing from the metadata) get the category '(none)'."""
    m = meta.select("item_id", "genres")
    counts = m.explode("genres").drop_nulls("genres").group_by("genres").len()
    freq = dict(zip(counts["genres"].to_list(), counts["len"].to_list(), strict=True))
    lookup = dict(zip(m["item_id"].to_list(), m["genres"].to_list(), strict=True))
    names: list[str] = [NO_CATEGORY]
    index = {NO_CATEGORY: 1}
    out = np.zeros(len(item_ids) + 1, dtype=np.int64)
    for i, iid in enumerate(item_ids.to_list(), start=1):
        genres = [g for g in (lookup.get(iid) or []) if g]
        g = min(genres, key=lambda x: (freq.get(x, 0), x)) if genres else NO_CATEGORY
        if g not in index:
            index[g] = len(names) + 1
            names.append(g)
        out[i] = index[g]
    return out, names


def column_categories(log: EventLog, col: str) -> tuple[np.ndarray, list[str]]:
    """Category per item from an events column (an item's first value; conflicting values are
    counted)."""
    s = _column(log, col, "category", "--category-col / data.category_col")
    df = pl.DataFrame({"item": log.frame["item"], "cat": s.cast(pl.String)})
    per_item = df.group_by("item").agg(pl.col("cat").first(), pl.col("cat").n_unique().alias("n"))
    names = sorted(per_item["cat"].unique().to_list())
    index = {c: i + 1 for i, c in enumerate(names)}
    out = np.zeros(log.n_items + 1, dtype=np.int64)
    out[per_item["item"].to_numpy()] = [index[c] for c in per_item["cat"].to_list()]
    return out, names


# ---------------------------------------------------------------------- building samples
def build_ctr_data(log: EventLog, cfg: CTRDataConfig, meta: pl.DataFrame | None = None,
                   vocab: Vocab | None = None, cuts: tuple[float, float] | None = None) -> CTRData:
    """CTR samples and the time split from an event log.

    `meta` (item_id, genres) gives categories when `cfg.category_col` is not set. With `vocab`
    (a fitted model's), items and users are mapped to the model's indices (unknown items are an
    error) and categories/feature buckets/context scaling come from the vocab; `cuts` fixes the
    split times (valid_cut, test_cut) instead of taking quantiles.
    """
    src = log.source
    if cfg.negatives and cfg.label_col not in log.frame.columns:
        labels = raw_feat = np.ones(log.n_events, dtype=np.float32)  # implicit log: no feature
    else:
        label_values = _column(log, cfg.label_col, "label", "--label-col / data.label_col")
        labels = labels_from(label_values, cfg.label_threshold, src, cfg.label_col)
        if label_values.dtype == pl.Boolean:
            raw_feat = labels
        else:
            raw_feat = label_values.cast(pl.Float64).to_numpy()
    if cfg.negatives:  # observed events are the clicks, sampled items the non-clicks
        labels = np.ones(log.n_events, dtype=np.float32)
    ctx, is_target = _context(log, cfg), _target_mask(log, cfg)
    fresh = vocab is None
    if vocab is None:
        vocab = _new_vocab(log, cfg, meta, raw_feat)
        item_map = np.arange(log.n_items + 1, dtype=np.int64)
        user_map = np.arange(1, log.n_users + 1, dtype=np.int64)
    else:
        item_map = np.concatenate([[0], vocab.item_index(log.item_ids.to_list())])
        # unknown users -> 0
        user_map = lookup_ids(vocab.user_ids, log.user_ids, offset=1).astype(np.int64)
        if list(cfg.context_cols) != vocab.context_cols:
            raise DataError(f"{src}: context columns {cfg.context_cols} differ from the model's "
                            f"{vocab.context_cols}.")
    offsets, items = log.sequences()
    ts = log.timestamps().astype(np.float64)
    beh = Behaviours(offsets.astype(np.int64), item_map[items], vocab.feature_buckets(raw_feat), ts)
    if cfg.targets_per_user is not None:
        is_target = _last_targets(offsets, is_target, cfg.targets_per_user)
    samples, owner = _samples(log, beh, is_target, user_map, labels, ctx)
    if len(samples) == 0:
        raise DataError(f"{src}: no CTR samples (target column '{cfg.target_col}' marks no event).")
    if cfg.negatives:
        samples, owner = add_sampled_negatives(samples, owner, beh, vocab.n_items, cfg.negatives,
                                               cfg.negative_seed, src)
    data = CTRData(beh, samples, vocab, src)
    if cfg.split == "user":
        data.splits, split_info = per_user_ctr_split(owner, samples.ts, cfg.valid_quantile,
                                                     cfg.test_quantile, src)
    else:
        data.splits, split_info = temporal_ctr_split(samples.ts, cfg.valid_quantile,
                                                     cfg.test_quantile, cuts, src)
    if len(cfg.context_cols):
        if fresh:  # standardize context with training-period statistics only
            _fit_context_scaling(vocab, samples.context[data.splits["train"]])
        samples.context = ((samples.context - vocab.context_mean) / vocab.context_std).astype(
            np.float32)
    data.info = _info(log, cfg, vocab, samples, split_info)
    for name, idx in data.splits.items():
        rate = float(samples.label[idx].mean()) if len(idx) else float("nan")
        data.info[f"{name}_positive_rate"] = rate
    return data


def _context(log: EventLog, cfg: CTRDataConfig) -> np.ndarray:
    """(n_events, n_context) raw numeric context features."""
    ctx = np.zeros((log.n_events, len(cfg.context_cols)), dtype=np.float64)
    for j, c in enumerate(cfg.context_cols):
        s = _column(log, c, "context", "data.context_cols")
        if not s.dtype.is_numeric():
            raise DataError(f"{log.source}: context column '{c}' has type {s.dtype}; context "
                            "features must be numeric.")
        ctx[:, j] = s.cast(pl.Float64).to_numpy()
    return ctx


def _target_mask(log: EventLog, cfg: CTRDataConfig) -> np.ndarray:
    """Which events are CTR samples: those marked by `target_col`, or all of them."""
    if not cfg.target_col:
        return np.ones(log.n_events, dtype=bool)
    t = _column(log, cfg.target_col, "target-marker", "data.target_col")
    if t.dtype != pl.Boolean and not set(t.unique().to_list()) <= {0, 1}:
        raise DataError(f"{log.source}: target column '{cfg.target_col}' must be boolean or 0/1.")
    return t.cast(pl.Boolean).to_numpy()


def _new_vocab(log: EventLog, cfg: CTRDataConfig, meta: pl.DataFrame | None,
               raw_feat: np.ndarray) -> Vocab:
    """The vocabulary of a training log: its ids, categories and feature buckets (context
    scaling is fitted later, on the training period)."""
    if cfg.category_col:
        item_cat, cat_names = column_categories(log, cfg.category_col)
    elif meta is not None and "genres" in meta.columns:
        item_cat, cat_names = genre_categories(meta, log.item_ids)
    else:
        item_cat, cat_names = np.ones(log.n_items + 1, dtype=np.int64), [NO_CATEGORY]
        item_cat[0] = 0
    n_ctx = len(cfg.context_cols)
    return Vocab(log.item_ids, log.user_ids, item_cat, cat_names, feature_edges(raw_feat),
                 list(cfg.context_cols), np.zeros(n_ctx), np.ones(n_ctx))


def _last_targets(offsets: np.ndarray, is_target: np.ndarray, n: int) -> np.ndarray:
    """The target mask restricted to each user's last `n` targets (events sorted by user, time)."""
    users = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    per_user = np.bincount(users[is_target], minlength=len(offsets) - 1)
    # 0-based index of each target among its user's targets
    rank = np.cumsum(is_target) - 1 - np.concatenate([[0], np.cumsum(per_user)[:-1]])[users]
    return is_target & (rank >= per_user[users] - n)


def add_sampled_negatives(s: Samples, owner: np.ndarray, beh: Behaviours, n_items: int,
                          per_positive: int, seed: int, source: str) -> tuple[Samples, np.ndarray]:
    """`per_positive` non-clicks per sample (DARE): items drawn with probability proportional to
    their frequency in the behaviour store, never interacted with by the sample's user, sharing
    the positive's user, time, history and context. Positives come first, then the negatives in
    blocks of one per positive. `owner` is the store's user index of each sample."""
    freq = np.bincount(beh.items, minlength=n_items + 1).astype(np.float64)
    freq[0] = 0.0
    cdf = np.cumsum(freq) / freq.sum()
    users = np.repeat(np.arange(len(beh.offsets) - 1), np.diff(beh.offsets))
    seen = np.unique(users * (n_items + 1) + beh.items)  # (user, item) pairs in the log
    rng = np.random.default_rng(seed)
    n = len(s) * per_positive
    own = np.tile(owner, per_positive)
    neg = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(100):  # rejection sampling: redraw the items the user has seen
        draw = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), n_items)
        key = own[todo] * (n_items + 1) + draw
        pos = np.minimum(np.searchsorted(seen, key), len(seen) - 1)
        ok = seen[pos] != key
        neg[todo[ok]] = draw[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    else:
        raise DataError(f"{source}: could not sample {per_positive} unseen negative item(s) for "
                        f"{len(todo):,} samples (their users interacted with nearly every "
                        "item); lower data.negatives.")
    rep = np.tile(np.arange(len(s)), per_positive)
    negs = Samples(s.user[rep], neg, s.ts[rep], s.start[rep], s.end[rep],
                   np.zeros(n, dtype=np.float32), s.context[rep])
    out = Samples(*(np.concatenate([a, b]) for a, b in zip(
        (s.user, s.item, s.ts, s.start, s.end, s.label, s.context),
        (negs.user, negs.item, negs.ts, negs.start, negs.end, negs.label, negs.context),
        strict=True)))
    return out, np.concatenate([owner, own])


def _samples(log: EventLog, beh: Behaviours, is_target: np.ndarray, user_map: np.ndarray,
             labels: np.ndarray, ctx: np.ndarray) -> tuple[Samples, np.ndarray]:
    """One sample per target event; its history is the user's events strictly before it. Also
    returns each sample's user index in the log (the store's row)."""
    offsets, ts = beh.offsets, beh.ts
    users = np.repeat(np.arange(log.n_users, dtype=np.int64), np.diff(offsets))
    # history end of event j: the first event of the same user with the same timestamp
    new_group = np.ones(log.n_events, dtype=bool)
    new_group[1:] = (users[1:] != users[:-1]) | (ts[1:] != ts[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(log.n_events), 0))
    sel = np.flatnonzero(is_target)
    return Samples(
        user=user_map[users[sel]], item=beh.items[sel], ts=ts[sel],
        start=offsets[users[sel]].astype(np.int64), end=group_start[sel].astype(np.int64),
        label=labels[sel], context=ctx[sel].astype(np.float32),
    ), users[sel]


def _fit_context_scaling(vocab: Vocab, train_ctx: np.ndarray) -> None:
    n_ctx = len(vocab.context_cols)
    x = train_ctx.astype(np.float64)
    vocab.context_mean = x.mean(0) if len(x) else np.zeros(n_ctx)
    std = x.std(0) if len(x) else np.ones(n_ctx)
    vocab.context_std = np.where(std > 0, std, 1.0)


def _info(log: EventLog, cfg: CTRDataConfig, vocab: Vocab, samples: Samples,
          split_info: dict[str, Any]) -> dict[str, Any]:
    lengths = samples.history_lengths
    label = cfg.label_col
    if cfg.negatives:
        label = f"observed event = 1, {cfg.negatives} sampled by item frequency = 0"
    elif cfg.label_threshold is not None:
        label = f"{cfg.label_col} >= {cfg.label_threshold}"
    return {
        "source": log.source, "users": log.n_users, "items": log.n_items, "events": log.n_events,
        "samples": len(samples), "categories": vocab.n_cats, "feature_buckets": vocab.n_feats,
        "label": label,
        "history_length": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                           "max": int(lengths.max()), "empty": int((lengths == 0).sum())},
        **split_info,
    }


def temporal_ctr_split(ts: np.ndarray, valid_q: float, test_q: float,
                       cuts: tuple[float, float] | None,
                       source: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sample indices for train (t < valid_cut), valid (valid_cut <= t < test_cut) and test
    (t >= test_cut)."""
    if cuts is None:
        valid_cut = float(np.quantile(ts, valid_q, method="higher"))
        test_cut = float(np.quantile(ts, test_q, method="higher"))
    else:
        valid_cut, test_cut = map(float, cuts)
    splits = {
        "train": np.flatnonzero(ts < valid_cut),
        "valid": np.flatnonzero((ts >= valid_cut) & (ts < test_cut)),
        "test": np.flatnonzero(ts >= test_cut),
    }
    if cuts is None:
        for name in ("train", "valid", "test"):
            if len(splits[name]) == 0:
                raise DataError(
                    f"{source}: the time split left no {name} samples (valid cut {valid_cut}, test "
                    f"cut {test_cut}; many events share one timestamp?). Adjust "
                    "data.valid_quantile / data.test_quantile."
                )
    info = {"split": "temporal", "valid_cut": valid_cut, "test_cut": test_cut,
            **{f"{k}_samples": int(len(v)) for k, v in splits.items()}}
    return splits, info


def per_user_ctr_split(owner: np.ndarray, ts: np.ndarray, valid_q: float, test_q: float,
                       source: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each user's distinct target times in order: the last round((1 - test_q) * n) (at least 1)
    test, the round((test_q - valid_q) * n) (at least 1) before them validate, the rest train.
    Users with fewer than 3 target times only train. Samples at one time (a click and its sampled
    non-clicks) stay together."""
    pairs, inv = np.unique(np.stack([owner, ts]), axis=1, return_inverse=True)
    inv = inv.reshape(-1)
    u = pairs[0].astype(np.int64)  # sorted by user, then time
    n_u = np.bincount(u)[u]
    rank = np.arange(len(u)) - np.searchsorted(u, u)  # rank of the time within its user
    n_test = np.maximum(1, np.round((1 - test_q) * n_u)).astype(np.int64)
    n_valid = np.maximum(1, np.round((test_q - valid_q) * n_u)).astype(np.int64)
    part = np.zeros(len(u), dtype=np.int8)  # 0 train, 1 valid, 2 test
    eligible = n_u >= 3
    part[eligible & (rank >= n_u - n_test - n_valid)] = 1
    part[eligible & (rank >= n_u - n_test)] = 2
    p = part[inv]
    splits = {name: np.flatnonzero(p == k) for k, name in enumerate(("train", "valid", "test"))}
    for name in ("train", "valid", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"{source}: the per-user split left no {name} samples (users need "
                            ">= 3 targets); use data.split: time or more targets per user.")
    info = {"split": "user", "valid_cut": None, "test_cut": None,
            **{f"{k}_samples": int(len(v)) for k, v in splits.items()},
            **{f"{k}_users": int(len(np.unique(owner[v]))) for k, v in splits.items()}}
    return splits, info


# ---------------------------------------------------------------------- batches
def position_buckets(back: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of the position counted back from the target (1 = most recent): exact up to 16, then
    4 buckets per doubling, capped at n_buckets - 1 (0 is padding)."""
    back = np.asarray(back, dtype=np.float64)
    b = np.where(back <= 16, back, 16 + np.floor(4 * np.log2(np.maximum(back, 16) / 16)))
    return np.clip(b, 1, n_buckets - 1).astype(np.int64)


def make_batch(beh: Behaviours, s: Samples, item_cat: np.ndarray, window: int, pos_buckets: int,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors for a batch of samples: the target, and the last `window` behaviours left-padded
    to the longest history in the batch (not to `window`), with the position counted back from
    the target."""
    hist_len = np.minimum(s.end - s.start, window)
    width = int(hist_len.max()) if len(hist_len) and window > 0 else 0
    items = pad_left(s.start, s.end, beh.items, width)
    feats = pad_left(s.start, s.end, beh.feats, width)
    pos = position_buckets(width - np.arange(width), pos_buckets)[None, :].repeat(len(s), 0)
    mask = items > 0
    pos[~mask] = 0
    out = {
        "user": s.user, "item": s.item, "cat": item_cat[s.item], "label": s.label,
        "hist_item": items, "hist_cat": item_cat[items], "hist_feat": np.where(mask, feats, 0),
        "hist_pos": pos,
        "mask": mask, "context": s.context,
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}


def iter_batches(beh: Behaviours, s: Samples, item_cat: np.ndarray, window: int, pos_buckets: int,
                 batch_size: int, device: torch.device | str = "cpu"):
    """Batches in length order (little padding); yields (sample positions, batch)."""
    order = np.argsort(np.minimum(s.history_lengths, window), kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield idx, make_batch(beh, s.take(idx), item_cat, window, pos_buckets, device)
