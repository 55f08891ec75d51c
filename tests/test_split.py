"""Splits: leave-one-out targets and histories; temporal split leakage check."""

import numpy as np
import polars as pl
import pytest

from userseq import EventLog
from userseq.core.errors import DataError
from userseq.data.batches import csr_take, last_window, training_windows
from userseq.data.split import leave_one_out, make_split, temporal_split


def log_from(rows):
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return EventLog.from_frame(df)


def test_leave_one_out_targets_and_histories():
    log = log_from([("a", 10, 1), ("a", 11, 2), ("a", 12, 3), ("a", 13, 4), ("b", 12, 5),
                    ("b", 10, 6), ("b", 11, 7)])
    sp = leave_one_out(log)
    item = {int(v): i + 1 for i, v in enumerate(log.item_ids)}  # original id -> index
    assert sp.test.targets.tolist() == [item[13], item[11]]
    assert sp.valid.targets.tolist() == [item[12], item[10]]
    assert sp.test.history(0).tolist() == [item[10], item[11], item[12]]
    assert sp.valid.history(0).tolist() == [item[10], item[11]]
    assert sp.valid.history(1).tolist() == [item[12]]
    assert np.diff(sp.train_offsets).tolist() == [2, 1]


def test_leave_one_out_rejects_short_users_with_advice():
    log = log_from([("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("solo", 1, 1)])
    with pytest.raises(DataError, match=r"at least 3 events.*'solo' has 1.*min_user_events: 3"):
        leave_one_out(log)
    frame = pl.DataFrame([("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("solo", 1, 1)],
                         schema=["user_id", "item_id", "timestamp"], orient="row")
    filtered = EventLog.from_frame(frame, min_user_events=3)
    assert filtered.n_users == 1 and filtered.report[-1].users_removed == 1
    assert leave_one_out(filtered).test.targets.tolist() == [3]


def test_temporal_split_has_no_leakage():
    rng = np.random.default_rng(0)
    n = 5000
    df = pl.DataFrame({"user_id": rng.integers(0, 200, n), "item_id": rng.integers(0, 300, n),
                       "timestamp": rng.integers(0, 1_000_000, n)})
    log = EventLog.from_frame(df)
    sp = temporal_split(log, valid_quantile=0.7, test_quantile=0.85)
    ts = log.timestamps()
    offsets, _ = log.sequences()
    # every training event is strictly before the validation cut-off (so before the test cut-off)
    assert sp.train_max_timestamp < sp.info["valid_cut"] <= sp.info["test_cut"]
    n_train = np.diff(sp.train_offsets)
    for u in range(log.n_users):
        user_ts = ts[offsets[u]:offsets[u + 1]]
        assert (user_ts[:n_train[u]] < sp.info["valid_cut"]).all()
        assert n_train[u] == (user_ts < sp.info["valid_cut"]).sum()
    # each test target is the user's first event at/after the test cut-off; its history is
    # everything before
    for i, u in enumerate(sp.test.users):
        user_ts = ts[offsets[u]:offsets[u + 1]]
        first = int(np.argmax(user_ts >= sp.info["test_cut"]))
        assert len(sp.test.history(i)) == first
    assert sp.info["test_users"] == len(sp.test) > 0


def test_make_split_unknown():
    log = log_from([("a", 1, 1), ("a", 2, 2), ("a", 3, 3)])
    with pytest.raises(DataError, match="unknown split"):
        make_split(log, "random")


def test_padding_helpers():
    offsets = np.array([0, 3, 4, 8])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    assert last_window(offsets, items, 3).tolist() == [[1, 2, 3], [0, 0, 4], [6, 7, 8]]
    w = training_windows(offsets, items, max_len=2)  # sequences with >= 2 items, last 3 items
    assert w.tolist() == [[1, 2, 3], [6, 7, 8]]
    off, it = csr_take(offsets, items, np.array([0, 4]), np.array([2, 6]))
    assert off.tolist() == [0, 2, 4] and it.tolist() == [1, 2, 5, 6]


def test_random_training_windows_cover_long_histories():
    offsets = np.array([0, 3, 10])  # a short user (3 items) and a long one (7 items)
    items = np.arange(1, 11)
    rng = np.random.default_rng(0)
    seen_ends = set()
    for _ in range(200):
        w = training_windows(offsets, items, max_len=3, rng=rng)
        assert w.shape == (2, 4)
        assert w[0].tolist() == [0, 1, 2, 3]  # shorter than a row: always the whole sequence
        row = w[1].tolist()
        # a contiguous crop of items 4..10
        assert row == list(range(row[0], row[0] + 4)) and 4 <= row[0] <= 7
        seen_ends.add(row[-1])
    assert seen_ends == {7, 8, 9, 10}  # every crop position is drawn, the last one included


def test_cold_start_split_is_seeded_by_split_seed():
    rows = [(f"u{u}", f"i{(u + t) % 12}", t) for u in range(40) for t in range(4)]
    log = log_from(rows)
    a = make_split(log, "cold-start", cold_fraction=0.5, seed=1)
    b = make_split(log, "cold-start", cold_fraction=0.5, seed=1)
    c = make_split(log, "cold-start", cold_fraction=0.5, seed=2)
    assert a.info["split_seed"] == 1 and a.info["cold_items"] == 6
    assert np.array_equal(a.train_items, b.train_items)
    assert not np.array_equal(a.test.targets, c.test.targets)
    held_out = set(a.valid.targets) | set(a.test.targets)
    assert held_out.isdisjoint(set(a.train_items.tolist()))  # cold items never in training


def test_data_config_split_seed_reads_old_cold_seed():
    from userseq.core.config import validate_config
    from userseq.core.errors import ConfigError
    from userseq.data.config import DataConfig

    assert DataConfig(cold_seed=5).split_seed == 5  # old run configs
    assert DataConfig.model_validate({"split_seed": 3, "cold_seed": 3}).split_seed == 3
    assert "cold_seed" not in DataConfig().model_dump() and DataConfig().split_seed == 0
    with pytest.raises(ConfigError, match="old name of .split_seed."):
        validate_config(DataConfig, {"cold_seed": 1, "split_seed": 2}, "run/config.yaml", "data")
