"""The synthetic generator (benchmarks/synthetic.py) and the ingest path it feeds: Parquet ->
EventLog -> CSR -> padded training windows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from userseq.data.batches import training_windows
from userseq.data.eventlog import EventLog


def _load_synthetic():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("userseq_bench_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


synthetic = _load_synthetic()

N_EVENTS, N_USERS, N_ITEMS, SEED = 10_000, 150, 800, 7


@pytest.fixture(scope="module")
def parquet_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "events.parquet"
    # small chunks so the chunked writer path (several row groups / user-block chunks) is exercised
    synthetic.write_synthetic_events(path, N_EVENTS, N_USERS, N_ITEMS, SEED, chunk_events=1_500)
    return path


def test_file_schema_and_layout(parquet_path):
    table = pq.read_table(parquet_path)
    assert table.schema.names == ["user_id", "item_id", "timestamp"]
    assert all(str(t) == "int64" for t in table.schema.types)
    df = pl.from_arrow(table)
    assert df.height == N_EVENTS
    assert df["user_id"].n_unique() == N_USERS  # every user has at least one event
    assert df["item_id"].n_unique() <= N_ITEMS
    # user blocks: each user's rows are contiguous and chronological in the file ...
    runs = df.select((pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True).sum()).item()
    assert runs == N_USERS
    same_user = df["user_id"] == df["user_id"].shift(1)
    assert not (same_user & (df["timestamp"] < df["timestamp"].shift(1))).any()
    # ... but the file is not sorted by user, and there are same-second ties to break
    assert not df["user_id"].is_sorted()
    assert (same_user & (df["timestamp"] == df["timestamp"].shift(1))).any()


def test_deterministic_and_popularity_skewed(parquet_path):
    a = synthetic.synthetic_frame(N_EVENTS, N_USERS, N_ITEMS, SEED, chunk_events=1_500)
    assert a.equals(pl.read_parquet(parquet_path))
    other = synthetic.synthetic_frame(N_EVENTS, N_USERS, N_ITEMS, SEED + 1, chunk_events=1_500)
    assert not a.equals(other)
    counts = a["item_id"].value_counts(sort=True)["count"].to_numpy()
    assert counts[0] > 20 * np.median(counts)  # Zipf-like head


def test_eventlog_from_parquet(parquet_path):
    log = EventLog.read(parquet_path)
    raw = pl.read_parquet(parquet_path)
    assert log.n_events == N_EVENTS
    assert log.n_users == N_USERS
    assert log.n_items == raw["item_id"].n_unique()
    f = log.frame
    assert f["user"].min() == 0 and f["user"].max() == N_USERS - 1
    assert f["item"].min() == 1 and f["item"].max() == log.n_items
    # sorted by user, per-user timestamps non-decreasing, ties in input-row order
    assert f["user"].is_sorted()
    same_user = f["user"] == f["user"].shift(1)
    assert not (same_user & (f["timestamp"] < f["timestamp"].shift(1))).any()
    tie = same_user & (f["timestamp"] == f["timestamp"].shift(1))
    assert tie.any() and not (tie & (f["__row"] < f["__row"].shift(1))).any()
    # the id maps round-trip to the raw events
    back = pl.DataFrame(
        {
            "user_id": log.user_ids.gather(f["user"]),
            "item_id": log.item_ids.gather(f["item"] - 1),
            "timestamp": f["timestamp"],
        }
    )
    assert back.equals(raw[f["__row"].to_list()])

    offsets, items = log.sequences()
    assert offsets[0] == 0 and offsets[-1] == N_EVENTS and len(offsets) == N_USERS + 1
    assert np.array_equal(items, f["item"].to_numpy())


def test_training_windows_hand_built():
    # sequences: [5, 6, 7, 8, 9], [3], [1, 2], [4, 4, 4]
    offsets = np.array([0, 5, 6, 8, 11])
    items = np.array([5, 6, 7, 8, 9, 3, 1, 2, 4, 4, 4], dtype=np.int32)
    # rows of max_len + 1; users with < 2 items dropped
    w = training_windows(offsets, items, max_len=3)
    expected = np.array(
        [
            [6, 7, 8, 9],  # truncated to the last 4
            [0, 0, 1, 2],  # left-padded with 0
            [0, 4, 4, 4],
        ]
    )
    assert w.shape == (3, 4)
    assert np.array_equal(w, expected)


def test_training_windows_on_synthetic(parquet_path):
    log = EventLog.read(parquet_path)
    offsets, items = log.sequences()
    max_len = 20
    w = training_windows(offsets, items, max_len)
    lengths = np.diff(offsets)
    kept = np.flatnonzero(lengths >= 2)
    assert w.shape == (len(kept), max_len + 1)
    n_real = np.minimum(lengths[kept], max_len + 1)
    assert np.array_equal((w != 0).sum(axis=1), n_real)  # item ids are >= 1, so 0 is only padding
    for row, u in zip(w, kept, strict=True):
        seq = items[offsets[u] : offsets[u + 1]]
        k = min(len(seq), max_len + 1)
        assert np.array_equal(row[max_len + 1 - k :], seq[-k:])
