"""Page statistics and edit-time features are causal: perturbing everything that happens after a
time t (later edits, labels learnt after t) leaves every feature of the events up to t unchanged.
The check fails on a statistic that reads future edits or labels (the former page_vandal_rate)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from userseq.data.eventlog import EventLog
from userseq.detect.baselines import count_earlier, page_vandal_rate
from userseq.detect.data import event_data


def _world(seed: int = 0, n_users: int = 60, n_pages: int = 12) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t = int(rng.integers(0, 2000))
        for _ in range(int(rng.integers(1, 9))):
            t += int(rng.integers(1, 300))
            rows.append((f"u{u}", f"P{int(rng.integers(0, n_pages))}", t))
    ev = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return ev, (np.arange(n_users) % 3 == 0).astype(np.int64)


def _features(ev: pl.DataFrame, y: np.ndarray, train: np.ndarray):
    lab = pl.DataFrame({"user_id": [f"u{u}" for u in range(len(y))], "label": y})
    data = event_data(EventLog.from_frame(ev), lab)
    rate, log_users = page_vandal_rate(data, train)
    return data, rate, log_users


def _future_perturbed(ev: pl.DataFrame, y: np.ndarray, t: int, seed: int):
    """The same world up to time t; after t: other pages, later times, and the labels of every
    user still active at t (known only after t) flipped."""
    rng = np.random.default_rng(seed)
    late = (ev["timestamp"] > t).to_numpy()
    pages = ev["item_id"].to_numpy().copy()
    pages[late] = rng.permutation(pages[late])
    times = ev["timestamp"].to_numpy().copy()
    times[late] += rng.integers(1, 500, late.sum())
    ev2 = ev.with_columns(pl.Series("item_id", pages), pl.Series("timestamp", times))
    last = ev.group_by("user_id").agg(pl.col("timestamp").max())
    active = set(last.filter(pl.col("timestamp") >= t)["user_id"].to_list())
    y2 = y.copy()
    for u in range(len(y)):
        if f"u{u}" in active:
            y2[u] = 1 - y2[u]
    return ev2, y2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_at_t_ignore_everything_after_t(seed):
    ev, y = _world(seed)
    train = np.arange(0, 60, 2)  # every other user trains; the rest are scored
    data, rate, log_users = _features(ev, y, train)
    ts = data.log.frame["timestamp"].to_numpy()
    t = int(np.median(ts))
    ev2, y2 = _future_perturbed(ev, y, t, seed)
    assert (y2 != y).any() and not ev2.equals(ev)
    data2, rate2, log2 = _features(ev2, y2, train)
    # rows are (user, time)-sorted and every user keeps its number of events: row i up to time t
    # is the same event in both worlds
    assert data2.log.user_ids.to_list() == data.log.user_ids.to_list()
    early = ts <= t
    assert early.sum() > 50 and (~early).sum() > 50
    np.testing.assert_array_equal(data2.log.frame["timestamp"].to_numpy()[early], ts[early])
    np.testing.assert_allclose(rate2[early], rate[early], atol=1e-12)
    np.testing.assert_allclose(log2[early], log_users[early], atol=1e-12)
    np.testing.assert_allclose(data2.features[early], data.features[early], atol=1e-7)
    # the statistic does use the past: later events see labels of earlier-blocked users
    assert not np.allclose(rate[~early], rate2[~early])


def test_count_earlier_by_hand():
    keys = np.array([1, 1, 1, 2])
    times = np.array([5.0, 1.0, 3.0, 0.0])
    w = np.array([1.0, 10.0, 100.0, 1000.0])
    q_keys, q_times = np.array([1, 1, 2, 3, 1]), np.array([3.0, 6.0, 0.0, 9.0, 1.0])
    assert count_earlier(keys, times, q_keys, q_times).tolist() == [1, 3, 0, 0, 0]
    assert count_earlier(keys, times, q_keys, q_times, w).tolist() == [10, 111, 0, 0, 0]


def test_length_baselines_and_first_k_over_long_enough_users():
    from userseq.detect.baselines import count_features, hand_features
    from userseq.detect.estimator import at_least

    ev = pl.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["P", "Q", "P", "P"],
                       "timestamp": [0, 100, 86400 + 100, 5]})
    data = event_data(EventLog.from_frame(ev), pl.DataFrame({"user_id": ["a", "b"],
                                                             "label": [1, 0]}))
    X, names = count_features(data)
    assert names == ["log_events", "log_distinct_pages", "log_active_days", "log_span"]
    np.testing.assert_allclose(X[0], np.log1p([3, 2, 2, 86400 + 100]), rtol=1e-6)
    np.testing.assert_allclose(X[1], np.log1p([1, 1, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(count_features(data, 2)[0][0], np.log1p([2, 2, 1, 100]), rtol=1e-6)
    _, hnames = hand_features(data)
    assert not any(n in ("log_events", "mean_first_event", "mean_position_log") for n in hnames)
    lengths = np.array([3, 1, 10])
    assert at_least(np.array([0, 1, 2]), lengths, 2).tolist() == [0, 2]
    assert at_least(np.array([0, 1, 2]), lengths, None).tolist() == [0, 1, 2]


# ---------------------------------------------------------------------- the page vocabulary
def _page_reads(ev: pl.DataFrame, y: np.ndarray, split, causal: bool = True) -> np.ndarray:
    """Per event (frame rows), the page the fitted detector reads: its id, or '<rare>'."""
    from detect_support import TINY

    from userseq.detect.estimator import UserDetector

    lab = pl.DataFrame({"user_id": [f"u{u}" for u in range(len(y))], "label": y})
    data = event_data(EventLog.from_frame(ev), lab)
    det = UserDetector("gru", overrides={**TINY, "train.epochs": 1,
                                         "model.causal_pages": causal}).fit(data, split, quiet=True)
    rows = det.event_tables(data)[0].numpy()[1:]
    names = np.array(["<pad>", "<rare>", *[str(p) for p in det.pages_.to_list()]], dtype=object)
    return names[rows]


@pytest.mark.parametrize("seed", [0, 1])
def test_page_vocabulary_at_t_ignores_everything_after_t(seed):
    from userseq.detect.data import DetectSplit

    ev, y = _world(seed, n_users=80, n_pages=70)
    n = len(y)
    split = DetectSplit(np.arange(0, n, 2), np.arange(1, n, 4), np.arange(3, n, 4))
    t = int(np.median(ev["timestamp"].to_numpy()))
    ev2, y2 = _future_perturbed(ev, y, t, seed)
    early = EventLog.from_frame(ev).frame["timestamp"].to_numpy() <= t
    reads, reads2 = _page_reads(ev, y, split), _page_reads(ev2, y2, split)
    np.testing.assert_array_equal(reads2[early], reads[early])
    assert (reads[early] != "<rare>").sum() > 10  # the vocabulary is used before t
    # the former vocabulary (pages of the training users' whole histories) fails this
    old, old2 = (_page_reads(ev, y, split, causal=False),
                 _page_reads(ev2, y2, split, causal=False))
    assert (old[early] != old2[early]).any()


def test_page_vocabulary_by_hand_and_test_users_never_enter_it(tmp_path):
    from detect_support import TINY

    from userseq.detect.data import DetectSplit
    from userseq.detect.estimator import UserDetector

    # training users a, b, c first edit P at 5, 3, 9 (b again at 10); Q only by a; test user d
    # edits P at 4 and 6, Q at 7 and R at 8; validation users e, f edit P at 2 and R at 1
    ev = pl.DataFrame({"user_id": ["a", "a", "b", "b", "c", "d", "d", "d", "d", "e", "f"],
                       "item_id": ["P", "Q", "P", "P", "P", "P", "P", "Q", "R", "P", "R"],
                       "timestamp": [5, 6, 3, 10, 9, 4, 6, 7, 8, 2, 1]})
    lab = pl.DataFrame({"user_id": list("abcdef"), "label": [1, 0, 1, 0, 1, 0]})
    data = event_data(EventLog.from_frame(ev), lab)
    ids = data.log.user_ids.to_list()
    split = DetectSplit(np.array([ids.index(u) for u in "abc"]),
                        np.array([ids.index(u) for u in "ef"]), np.array([ids.index("d")]))
    det = UserDetector("gru", overrides={**TINY, "train.epochs": 1}).fit(
        data, split, run_dir=tmp_path / "run", quiet=True)
    assert det.pages_.to_list() == ["P"]  # Q: one training user; R: no training user
    np.testing.assert_array_equal(det.page_since_, [5.0])  # the 2nd training user's first edit
    f = data.log.frame
    rows = det.event_tables(data)[0].numpy()[1:]
    read = {(data.log.user_ids[int(u)], float(t)): int(r)
            for u, t, r in zip(f["user"].to_numpy(), f["timestamp"].to_numpy(), rows, strict=True)}
    assert read[("d", 4.0)] == 1 and read[("d", 6.0)] == 2  # P is known from after t=5
    assert read[("a", 5.0)] == 1 and read[("b", 10.0)] == 2 and read[("e", 2.0)] == 1
    assert read[("d", 7.0)] == 1 and read[("d", 8.0)] == 1  # Q, R: rare
    # the vocabulary and its times reload with the run
    again = UserDetector.load(tmp_path / "run")
    np.testing.assert_array_equal(again.page_since_, [5.0])
    np.testing.assert_array_equal(again.event_tables(data)[0].numpy(), det.event_tables(data)[0])
    # test and validation users' events never enter it: change all of them, same vocabulary
    ev2 = ev.with_columns(pl.when(pl.col("user_id").is_in(["d", "e", "f"])).then(pl.lit("Q"))
                          .otherwise(pl.col("item_id")).alias("item_id"))
    det2 = UserDetector("gru", overrides={**TINY, "train.epochs": 1}).fit(
        event_data(EventLog.from_frame(ev2), lab), split, quiet=True)
    assert det2.pages_.to_list() == ["P"] and det2.page_since_.tolist() == [5.0]
