"""CTR samples: no future leakage (proved on real data), time split, labels, categories, batches."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from userseq.core.errors import ConfigError, DataError
from userseq.ctr.config import CTRConfig, CTRDataConfig
from userseq.ctr.data import build_ctr_data, make_batch, position_buckets
from userseq.data.eventlog import EventLog

FRAME = pl.DataFrame({
    "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u2"],
    "item_id": ["a", "b", "c", "d", "a", "c", "b"],
    "timestamp": [10, 20, 20, 30, 5, 6, 7],  # u1: b and c share a second
    "rating": [5, 1, 4, 3, 2, 5, 4],
})


@pytest.fixture(scope="module")
def ml100k():
    from userseq.data.datasets import load_dataset

    try:
        return load_dataset("ml-100k")
    except DataError as e:
        pytest.skip(f"ml-100k not available: {e}")


def assert_no_leakage(data):
    """Every history holds exactly the user's events strictly before the target's timestamp."""
    s, b = data.samples, data.behaviours
    lengths = s.end - s.start
    assert (lengths >= 0).all()
    owner = np.repeat(np.arange(len(b.offsets) - 1), np.diff(b.offsets))
    # the history is a prefix of the target's user's events ...
    assert (s.start == b.offsets[owner[s.start.clip(max=len(owner) - 1)]]).all()
    has = lengths > 0
    last = s.end[has] - 1
    # ... whose last event is strictly earlier than the target ...
    assert (b.ts[last] < s.ts[has]).all()
    # ... and the next event of that user (if any) is at or after the target: nothing earlier is
    # left out
    nxt = s.end
    same_user = nxt < len(owner)
    first = s.start[same_user].clip(max=len(owner) - 1)
    same_user[same_user] = owner[nxt[same_user]] == owner[first]
    assert (b.ts[nxt[same_user]] >= s.ts[same_user]).all()


def test_histories_exclude_same_time_and_future_events():
    data = build_ctr_data(EventLog.from_frame(FRAME),
                          CTRDataConfig(valid_quantile=0.3, test_quantile=0.6))
    s, b = data.samples, data.behaviours
    hist = {(int(s.item[i]), float(s.ts[i])): b.items[s.start[i] : s.end[i]].tolist()
            for i in range(len(s))}
    a, bb, c, d = (data.vocab.item_index([x])[0] for x in "abcd")
    # u1: a@10 -> []; b@20 and c@20 -> [a] only (same second is not history); d@30 -> [a, b, c]
    assert hist[(a, 10.0)] == []
    assert hist[(bb, 20.0)] == [a] and hist[(c, 20.0)] == [a]
    assert hist[(d, 30.0)] == [a, bb, c]
    assert s.label.tolist() == [1, 0, 1, 0, 0, 1, 1]  # rating >= 4, events in (user, time) order
    assert_no_leakage(data)


def test_no_leakage_on_movielens(ml100k):
    data = build_ctr_data(ml100k, CTRDataConfig())
    assert len(data.samples) == 100_000
    assert_no_leakage(data)
    # ties are common in ml-100k: some samples must have lost same-second events from their history
    owner_end = data.behaviours.offsets[1:][data.samples.user - 1]
    next_ts = data.behaviours.ts[np.minimum(data.samples.end, 99_999)]
    assert ((data.samples.end < owner_end) & (next_ts == data.samples.ts)).any()


def test_time_split_orders_train_valid_test(ml100k):
    data = build_ctr_data(ml100k, CTRDataConfig())
    ts = data.samples.ts
    tr, va, te = (data.splits[k] for k in ("train", "valid", "test"))
    assert len(tr) + len(va) + len(te) == len(ts)
    assert ts[tr].max() < ts[va].min() and ts[va].max() < ts[te].min()
    assert ts[tr].max() < data.info["valid_cut"] <= ts[va].min()
    assert 0.75 < len(tr) / len(ts) < 0.85
    # label = rating >= 4
    rating = ml100k.frame["rating"].to_numpy()
    assert data.samples.label.mean() == pytest.approx((rating >= 4).mean())


def test_missing_label_column():
    log = EventLog.from_frame(FRAME.drop("rating"))
    with pytest.raises(DataError, match="missing label column 'rating'.*--label-col"):
        build_ctr_data(log, CTRDataConfig())


def test_labels_must_be_binary_without_threshold():
    log = EventLog.from_frame(FRAME)
    with pytest.raises(DataError, match=r"labels in column 'rating' must be 0 or 1, but 6 "
                                        r"rows.*\[2.0, 3.0, 4.0, 5.0\]"):
        build_ctr_data(log, CTRDataConfig(label_threshold=None))
    ok = EventLog.from_frame(FRAME.with_columns(clicked=(pl.col("rating") >= 4).cast(pl.Int64)))
    data = build_ctr_data(ok, CTRDataConfig(label_col="clicked", label_threshold=None,
                                            valid_quantile=0.3, test_quantile=0.6))
    assert sorted(set(data.samples.label.tolist())) == [0.0, 1.0]
    assert data.vocab.n_feats == 2  # the 0/1 label itself is the history feature


def test_null_labels_are_an_error():
    log = EventLog.from_frame(FRAME.with_columns(pl.when(pl.col("rating") == 3).then(None)
                                                 .otherwise(pl.col("rating")).alias("rating")))
    with pytest.raises(DataError, match="label column 'rating' has 1 missing values"):
        build_ctr_data(log, CTRDataConfig())


def test_genre_categories_pick_the_rarest_genre(ml100k):
    from userseq.data.datasets import load_item_metadata

    meta = load_item_metadata("ml-100k")
    data = build_ctr_data(ml100k, CTRDataConfig(), meta)
    v = data.vocab
    names = dict(enumerate(v.cat_names, start=1))
    # Toy Story (1): Animation, Children's, Comedy -> Animation is the rarest of the three
    assert names[int(v.item_cat[v.item_index([1])[0]])] == "Animation"
    assert v.item_cat[0] == 0 and (v.item_cat[1:] > 0).all()


def test_category_column_and_target_column():
    df = FRAME.with_columns(cat=pl.Series(["x", "y", "x", "y", "x", "x", "y"]),
                            is_target=pl.Series([False, False, True, True, False, True, True]))
    cfg = CTRDataConfig(category_col="cat", target_col="is_target", valid_quantile=0.3,
                        test_quantile=0.6)
    data = build_ctr_data(EventLog.from_frame(df), cfg)
    assert len(data.samples) == 4
    assert data.vocab.cat_names == ["x", "y"]
    assert data.behaviours.items.shape == (7,)  # every event stays a behaviour


def test_position_buckets_and_batch_shapes(ml100k):
    back = np.array([1, 2, 16, 17, 32, 10_000, 10**9])
    assert position_buckets(back, 64).tolist() == [1, 2, 16, 16, 20, 53, 63]
    data = build_ctr_data(ml100k, CTRDataConfig())
    s = data.samples.take(np.arange(100, 108))
    b = make_batch(data.behaviours, s, data.vocab.item_cat, 50, 64)
    width = int(min(50, (s.end - s.start).max()))
    assert b["hist_item"].shape == (8, width) and b["mask"].shape == (8, width)
    assert b["item"].shape == (8,) and b["context"].shape == (8, 0)
    lengths = np.minimum(s.end - s.start, 50)
    assert b["mask"].sum(1).tolist() == lengths.tolist()
    # the most recent behaviour sits in the last column with position bucket 1
    i = int(np.argmax(lengths))
    assert int(b["hist_pos"][i, -1]) == 1
    assert int(b["hist_item"][i, -1]) == data.behaviours.items[s.end[i] - 1]
    assert (b["hist_pos"][~b["mask"]] == 0).all() and (b["hist_feat"][~b["mask"]] == 0).all()


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'model.nope'"):
        CTRConfig().updated({"model.nope": 1})
    with pytest.raises(ConfigError, match="monitor"):
        CTRConfig().updated({"train.monitor": "ndcg@10"})
    with pytest.raises(ConfigError, match="valid_quantile"):
        CTRConfig().updated({"data.valid_quantile": 0.95})


# ---------------------------------------------------------------- sampled negatives, per-user split
def implicit_log(n_users=30, n_items=40, length=12, seed=0):
    """An implicit log (no rating column): per user `length` distinct items in time order, item
    popularity skewed (item k drawn with weight 1 / k)."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=length, replace=False, p=w / w.sum())
        rows += [(f"u{u}", f"i{i}", t) for t, i in enumerate(items)]
    return EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"],
                                            orient="row"))


def test_sampled_negatives_follow_dare_protocol():
    log = implicit_log()
    cfg = CTRDataConfig(negatives=2, split="user", negative_seed=7)
    data = build_ctr_data(log, cfg)
    s, b = data.samples, data.behaviours
    n_pos = log.n_events
    assert len(s) == 3 * n_pos and s.label[:n_pos].tolist() == [1] * n_pos
    assert s.label[n_pos:].sum() == 0
    # each negative shares its positive's user, time and history ...
    for k in (1, 2):
        blk = slice(k * n_pos, (k + 1) * n_pos)
        for a in ("user", "ts", "start", "end"):
            np.testing.assert_array_equal(getattr(s, a)[blk], getattr(s, a)[:n_pos])
    # ... and is an item its user never interacted with
    owner = np.repeat(np.arange(log.n_users), np.diff(b.offsets))
    seen = {(int(u), int(i)) for u, i in zip(owner, b.items, strict=True)}
    neg_owner = np.searchsorted(b.offsets, s.start[n_pos:], side="right") - 1
    assert not any((int(u), int(i)) in seen for u, i in zip(neg_owner, s.item[n_pos:],
                                                             strict=True))
    # same seed, same samples; another seed, other negatives
    again = build_ctr_data(log, cfg)
    np.testing.assert_array_equal(again.samples.item, s.item)
    other = build_ctr_data(log, cfg.model_copy(update={"negative_seed": 8}))
    assert (other.samples.item[n_pos:] != s.item[n_pos:]).any()
    assert "sampled by item frequency" in data.info["label"]


def test_negatives_are_drawn_by_item_frequency():
    """'hot' is in the store 90 times, each of 10 'cold' items 10 times: a user who has seen
    neither draws 'hot' with probability 90 / 190, never an item of their own."""
    from userseq.ctr.data import Behaviours, Samples, add_sampled_negatives

    items = np.r_[np.full(90, 1), np.repeat(np.arange(2, 12), 10), [12]]  # last: "me" saw 12
    n = len(items)
    beh = Behaviours(np.arange(n + 1), items, np.ones(n, np.int64), np.zeros(n))
    me = n - 1
    s = Samples(np.array([me + 1]), np.array([12]), np.array([1.0]), np.array([me]),
                np.array([me]), np.ones(1, np.float32), np.zeros((1, 0), np.float32))
    out, owner = add_sampled_negatives(s, np.array([me]), beh, 12, 2000, seed=0, source="x")
    neg = out.item[1:]
    assert len(out) == 2001 and (owner == me).all() and out.label[1:].sum() == 0
    assert abs(float((neg == 1).mean()) - 90 / 190) < 0.04
    assert 12 not in set(neg.tolist()) and 0 not in set(neg.tolist())


def test_per_user_split_hand_computed():
    """10 targets: 8 train, 1 valid, 1 test (q 0.8 / 0.9); 2 targets: train only; a click and
    its negatives stay in one split."""
    rows = [("a", f"i{t}", t) for t in range(10)] + [("b", f"j{t}", t) for t in range(2)]
    log = EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"],
                                           orient="row"))
    data = build_ctr_data(log, CTRDataConfig(negatives=1, split="user"))
    s = data.samples
    a_start = data.behaviours.offsets[data.vocab.user_ids.to_list().index("a")]
    for name, want in (("train", list(range(8))), ("valid", [8]), ("test", [9])):
        idx = data.splits[name]
        a = idx[s.start[idx] == a_start]
        assert sorted(set(s.ts[a].astype(int).tolist())) == want
        assert (s.label[a] == 1).sum() == (s.label[a] == 0).sum() == len(want)
    b_idx = np.flatnonzero(s.start != a_start)
    assert set(b_idx.tolist()) <= set(data.splits["train"].tolist())
    assert data.info["split"] == "user" and data.info["test_users"] == 1


def test_targets_per_user_keeps_the_last_targets_with_whole_histories():
    log = implicit_log(n_users=5, length=12)
    data = build_ctr_data(log, CTRDataConfig(negatives=1, split="user", targets_per_user=4))
    s = data.samples
    pos = s.label == 1
    assert pos.sum() == 5 * 4
    assert sorted(set(s.ts[pos].astype(int).tolist())) == [8, 9, 10, 11]
    assert set((s.end - s.start)[pos].tolist()) == {8, 9, 10, 11}  # histories stay whole
    assert [len(data.splits[k]) for k in ("train", "valid", "test")] == [20, 10, 10]


def test_implicit_log_needs_negatives_or_a_label_column():
    log = implicit_log(n_users=4)
    with pytest.raises(DataError, match="missing label column 'rating'"):
        build_ctr_data(log, CTRDataConfig())
    assert build_ctr_data(log, CTRDataConfig(negatives=1)).vocab.n_feats == 1


def test_per_user_split_needs_three_targets():
    rows = [("a", "x", 0), ("a", "y", 1), ("b", "z", 0)]
    log = EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"],
                                           orient="row"))
    with pytest.raises(DataError, match="per-user split left no valid samples"):
        build_ctr_data(log, CTRDataConfig(negatives=1, split="user"))
