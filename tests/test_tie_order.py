"""`data.tie_order`: how a user's events with equal timestamps are ordered (file, item, random)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from userseq.core.errors import DataError
from userseq.data.config import DataConfig
from userseq.data.eventlog import EventLog
from userseq.data.load import load_events

# user a: items 50, 30, 90 at t=1 (a tie, in this file order), then 10 at t=2;
# user b: 7 at t=5 and 3 at t=5 (a tie), then 8 at t=4 (earlier, listed last)
FRAME = pl.DataFrame({
    "user_id": ["a", "a", "a", "a", "b", "b", "b"],
    "item_id": [50, 30, 90, 10, 7, 3, 8],
    "timestamp": [1, 1, 1, 2, 5, 5, 4],
})


def raw_sequences(log: EventLog) -> list[list[int]]:
    offsets, items = log.sequences()
    ids = log.item_ids.to_numpy()
    return [ids[items[offsets[u]:offsets[u + 1]] - 1].tolist() for u in range(log.n_users)]


def test_file_order_keeps_input_order_within_ties() -> None:
    log = EventLog.from_frame(FRAME)
    assert raw_sequences(log) == [[50, 30, 90, 10], [8, 7, 3]]
    assert not any("same-timestamp" in n for n in log.notes)


def test_item_order_sorts_ties_by_item_id() -> None:
    log = EventLog.from_frame(FRAME, tie_order="item")
    assert raw_sequences(log) == [[30, 50, 90, 10], [8, 3, 7]]
    assert "same-timestamp events ordered by item" in log.notes


def test_random_order_shuffles_only_inside_ties_and_is_seeded() -> None:
    seqs = {tuple(map(tuple, raw_sequences(EventLog.from_frame(FRAME, tie_order="random",
                                                                tie_seed=s))))
            for s in range(20)}
    for a, b in seqs:
        assert sorted(a[:3]) == [30, 50, 90] and a[3] == 10  # t=2 stays last
        assert b[0] == 8 and sorted(b[1:]) == [3, 7]
    assert len({s[0][:3] for s in seqs}) > 1  # different seeds give different orders
    one = raw_sequences(EventLog.from_frame(FRAME, tie_order="random", tie_seed=3))
    assert one == raw_sequences(EventLog.from_frame(FRAME, tie_order="random", tie_seed=3))
    log = EventLog.from_frame(FRAME, tie_order="random", tie_seed=3)
    assert "same-timestamp events ordered by random (seed 3)" in log.notes


def test_unknown_tie_order_is_one_clear_error() -> None:
    with pytest.raises(DataError, match="tie_order 'time' is not one of file, item, random"):
        EventLog.from_frame(FRAME, tie_order="time")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tie_order"):
        DataConfig(tie_order="time")


def test_load_events_passes_the_config_through(tmp_path) -> None:
    path = tmp_path / "events.csv"
    FRAME.write_csv(path)
    cfg = DataConfig(tie_order="item")
    assert raw_sequences(load_events(str(path), cfg)) == [[30, 50, 90, 10], [8, 3, 7]]
    offsets, items = load_events(str(path)).sequences()
    assert np.diff(offsets).tolist() == [4, 3]
