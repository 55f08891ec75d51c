"""The EventLog contract: inputs, ordering, id maps, timestamps, filters, describe(), and one clear
`DataError` (naming file, row, column and what to do) for every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from userseq.core.errors import DataError, UserseqError
from userseq.data.eventlog import Columns, EventLog
from userseq.data.split import leave_one_out


def frame(rows: list[tuple], names=("user_id", "item_id", "timestamp")) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=list(names), orient="row")


def seqs(log: EventLog) -> dict:
    """{original user id: [original item ids in chronological order]}."""
    offsets, items = log.sequences()
    ids = log.item_ids.to_list()
    return {
        log.user_ids[u]: [ids[i - 1] for i in items[offsets[u] : offsets[u + 1]]]
        for u in range(log.n_users)
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_same_log(a: EventLog, b: EventLog) -> None:
    assert a.frame.equals(b.frame), (a.frame, b.frame)
    assert a.user_ids.equals(b.user_ids) and a.item_ids.equals(b.item_ids)
    assert a.timestamp_kind == b.timestamp_kind
    counts = [[(s.events_before, s.events_after) for s in log.report] for log in (a, b)]
    assert counts[0] == counts[1]


# --------------------------------------------------------------------------- inputs


def test_all_input_kinds_give_the_same_log(tiny_frame, tmp_path):
    ref = EventLog.from_frame(tiny_frame)
    tiny_frame.write_csv(tmp_path / "e.csv")
    tiny_frame.write_csv(tmp_path / "e.tsv", separator="\t")
    tiny_frame.write_parquet(tmp_path / "e.parquet")
    tiny_frame.write_ndjson(tmp_path / "e.jsonl")
    with gzip.open(tmp_path / "e.csv.gz", "wt") as f:
        f.write((tmp_path / "e.csv").read_text())
    sources = [tmp_path / n for n in ("e.csv", "e.tsv", "e.parquet", "e.jsonl", "e.csv.gz")]
    sources += [str(tmp_path / "e.csv"), tiny_frame, tiny_frame.lazy(), tiny_frame.to_pandas()]
    for src in sources:
        log = EventLog.read(src)
        assert_same_log(log, ref)
    assert EventLog.read(tmp_path / "e.csv").source == str(tmp_path / "e.csv")


def test_configurable_column_names(tiny_frame, tmp_path):
    renamed = tiny_frame.rename({"user_id": "customer", "item_id": "sku", "timestamp": "ts"})
    renamed.write_csv(tmp_path / "r.csv")
    cols = Columns(user="customer", item="sku", timestamp="ts")
    expected = EventLog.from_frame(tiny_frame)
    assert_same_log(EventLog.read(tmp_path / "r.csv", columns=cols), expected)
    assert_same_log(EventLog.from_frame(renamed.to_pandas(), columns=cols), expected)


def test_extra_columns_are_kept_and_reserved_names_renamed():
    df = frame([("u1", "a", 1, 0.5, 9), ("u1", "b", 2, 1.0, 9)],
               ("user_id", "item_id", "timestamp", "weight", "user"))
    log = EventLog.from_frame(df)
    assert log.frame.columns == ["user", "item", "timestamp", "__row", "weight", "user_input"]
    assert log.frame["weight"].to_list() == [0.5, 1.0]
    assert any("'user' -> 'user_input'" in n for n in log.notes)
    # a second time column next to the one that is used
    df = frame([("u1", "a", 5, 1), ("u1", "b", 6, 2)], ("user_id", "item_id", "timestamp", "ts"))
    log = EventLog.from_frame(df, columns=Columns(timestamp="ts"))
    assert log.frame["timestamp"].to_list() == [1, 2]
    assert log.frame["timestamp_input"].to_list() == [5, 6]


# --------------------------------------------------------------------------- order and ids


def test_chronological_and_stable_order(tiny_frame):
    log = EventLog.from_frame(tiny_frame)
    # u1: c@1, b@2, a@3 ; u2: a@2 then the t=5 tie b, c in input order ; u3: a@7
    assert seqs(log) == {"u1": ["c", "b", "a"], "u2": ["a", "b", "c"], "u3": ["a"]}
    assert log.frame["__row"].to_list() == [3, 6, 1, 5, 0, 2, 4]
    # c before b in the input
    swapped = pl.concat([tiny_frame[2:3], tiny_frame[:2], tiny_frame[3:]])
    assert seqs(EventLog.from_frame(swapped))["u2"] == ["a", "c", "b"]


def test_many_ties_keep_input_order():
    n = 5_000  # large enough that an unstable sort would very likely reorder
    items = [f"i{i}" for i in np.random.default_rng(0).permutation(n)]
    df = pl.DataFrame({"user_id": ["u"] * n, "item_id": items, "timestamp": [7] * n})
    assert seqs(EventLog.from_frame(df))["u"] == items


def test_contiguous_ids_and_round_trip(tiny_frame):
    log = EventLog.from_frame(tiny_frame)
    assert log.user_ids.to_list() == ["u1", "u2", "u3"]
    assert log.item_ids.to_list() == ["a", "b", "c"]
    assert log.frame["user"].to_list() == sorted(log.frame["user"].to_list())
    assert set(log.frame["user"].to_list()) == {0, 1, 2}
    assert set(log.frame["item"].to_list()) == {1, 2, 3}
    # maps round-trip: original ids of each row are recovered from the indices
    back = log.frame.select(
        pl.col("__row"),
        log.user_ids.gather(log.frame["user"]).alias("user_id"),
        log.item_ids.gather(log.frame["item"] - 1).alias("item_id"),
    ).sort("__row")
    assert back["user_id"].equals(tiny_frame["user_id"])
    assert back["item_id"].equals(tiny_frame["item_id"])
    assert log.user_index(["u3", "u1", "nobody"]).tolist() == [2, 0, -1]
    assert log.item_index(["c", "a", "zzz"]).tolist() == [3, 1, 0]
    assert log.n_users == 3 and log.n_items == 3 and log.n_events == 7
    assert log.item_counts().tolist() == [0, 3, 2, 2]
    assert log.lengths().tolist() == [3, 3, 1]


def test_integer_ids_sort_numerically_and_look_up_from_strings():
    log = EventLog.from_frame(frame([(10, 100, 1), (9, 7, 1), (10, 7, 2)]))
    assert log.user_ids.to_list() == [9, 10] and log.item_ids.to_list() == [7, 100]
    assert log.user_index([10, 9, 11]).tolist() == [1, 0, -1]
    assert log.user_index(["10", "x"]).tolist() == [1, -1]  # one odd id does not hide the others
    assert log.user_index([10.0, 9.5]).tolist() == [1, -1]
    assert log.item_index(pl.Series([100, 8])).tolist() == [2, 0]
    strs = EventLog.from_frame(frame([("10", "a", 1)]))
    assert strs.user_index([10, "10", 11]).tolist() == [0, 0, -1]


def test_float_and_categorical_ids():
    log = EventLog.from_frame(frame([(1.0, 2.0, 1), (2.0, 2.0, 1)]))
    assert log.user_ids.dtype == pl.Int64 and log.user_ids.to_list() == [1, 2]
    df = frame([("b", "x", 1), ("a", "x", 2)]).with_columns(pl.col("user_id").cast(pl.Categorical))
    log = EventLog.from_frame(df)
    assert log.user_ids.to_list() == ["a", "b"] and seqs(log) == {"a": ["x"], "b": ["x"]}


# --------------------------------------------------------------------------- timestamps


def test_iso_strings_and_unix_seconds_agree(tmp_path):
    unix = [1704067200, 1704067260, 1704153600]  # 2024-01-01T00:00, 00:01, 2024-01-02
    iso = ["2024-01-01T00:00:00", "2024-01-01T00:01:00", "2024-01-02T00:00:00"]
    a = EventLog.from_frame(frame([("u", "x", unix[2]), ("u", "y", unix[0]), ("u", "z", unix[1])]))
    b = EventLog.from_frame(frame([("u", "x", iso[2]), ("u", "y", iso[0]), ("u", "z", iso[1])]))
    assert a.timestamp_kind == "numeric" and b.timestamp_kind == "time"
    assert seqs(a) == seqs(b) == {"u": ["y", "z", "x"]}
    assert a.timestamps().tolist() == b.timestamps().tolist() == unix
    # from a file, with a UTC designator; and dates; and Unix seconds written as JSON strings
    write(tmp_path / "z.csv",
          "user_id,item_id,timestamp\nu,x,2024-01-02T00:00:00Z\nu,y,2024-01-01T00:00:00Z\n")
    assert EventLog.read(tmp_path / "z.csv").timestamps().tolist() == [1704067200, 1704153600]
    d = EventLog.from_frame(frame([("u", "x", "2024-01-02"), ("u", "y", "2024-01-01")]))
    assert d.timestamps().tolist() == [1704067200, 1704153600] and d.timestamp_kind == "time"
    s = EventLog.from_frame(frame([("u", "x", "1704153600"), ("u", "y", "1704067200")]))
    assert s.timestamps().tolist() == [1704067200, 1704153600] and s.timestamp_kind == "numeric"
    positions = EventLog.from_frame(frame([("u", "x", 2)]), timestamp_kind="position")
    assert positions.timestamp_kind == "position"


def test_datetime_columns_from_polars_and_pandas():
    pdf = pd.DataFrame({"user_id": [1, 1], "item_id": [5, 6],
                        "timestamp": pd.to_datetime(["2024-01-02", "2024-01-01"])})
    log = EventLog.read(pdf)
    assert log.timestamp_kind == "time" and log.timestamps().tolist() == [1704067200, 1704153600]
    assert seqs(log) == {1: [6, 5]}


# --------------------------------------------------------------------------- filters and report


def filter_example() -> pl.DataFrame:
    # item counts a2 b2 c2 e1; user counts u1 3, u2 2, u3 2
    return frame([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2),
                  ("u3", "c", 1), ("u3", "e", 2)])


def test_min_counts_single_pass():
    log = EventLog.from_frame(filter_example(), min_user_events=2, min_item_events=2)
    # items first: e goes, so u3 has 1 event and goes; c is left with 1 event (no second pass)
    assert seqs(log) == {"u1": ["a", "b", "c"], "u2": ["a", "b"]}
    read, step = log.report
    assert (read.name, read.events_before, read.events_after) == ("read", 7, 7)
    counts = (step.events_before, step.events_after, step.users_removed, step.items_removed)
    assert counts == (7, 5, 1, 1)
    assert "min-count" in step.name and "removed 2 events, 1 users, 1 items" in step.describe()


def test_k_core_repeats_until_stable():
    log = EventLog.from_frame(filter_example(), min_user_events=2, min_item_events=2, k_core=True)
    assert seqs(log) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    step = log.report[-1]
    assert "k-core" in step.name
    counts = (step.events_before, step.events_after, step.users_removed, step.items_removed)
    assert counts == (7, 4, 1, 2)
    # re-indexed after filtering
    assert log.item_ids.to_list() == ["a", "b"] and log.frame["item"].max() == 2


def test_min_user_events_only():
    log = EventLog.from_frame(filter_example(), min_user_events=3)
    assert seqs(log) == {"u1": ["a", "b", "c"]}
    assert (log.report[-1].users_removed, log.report[-1].items_removed) == (2, 1)  # e went with u3
    log = EventLog.from_frame(filter_example(), min_item_events=2)
    assert seqs(log) == {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["c"]}
    last = log.report[-1]
    assert (last.events_after, last.users_removed, last.items_removed) == (6, 0, 1)


def test_dedup_consecutive_uses_chronological_order():
    # input order for u1 is a@2, b@1, a@3, a@3: chronologically b, a, a, a -> b, a
    df = frame([("u1", "a", 2), ("u1", "b", 1), ("u1", "a", 3), ("u1", "a", 3), ("u2", "a", 1),
                ("u2", "b", 2), ("u2", "a", 3)])
    log = EventLog.from_frame(df, dedup_consecutive=True)
    assert seqs(log) == {"u1": ["b", "a"], "u2": ["a", "b", "a"]}
    step = log.report[-1]
    assert step.name.startswith("dedup") and (step.events_before, step.events_after) == (7, 5)
    # the first of the repeats is kept
    assert log.frame.filter(pl.col("user") == 0)["__row"].to_list() == [1, 0]


def test_filtering_everything_away_is_an_error():
    with pytest.raises(DataError, match="no events left after filtering.*min_user_events"):
        EventLog.from_frame(filter_example(), min_user_events=10)


def test_describe_numbers():
    df = frame([("u1", "a", 1), ("u1", "a", 2), ("u1", "b", 2), ("u2", "c", 5),
                ("u3", "a", 1), ("u3", "b", 3), ("u3", "a", 4), ("u3", "c", 10)])
    d = EventLog.from_frame(df, columns=None).describe()
    assert (d["users"], d["items"], d["events"]) == (3, 3, 8)
    assert d["length"]["min"] == 1 and d["length"]["max"] == 4 and d["length"]["p50"] == 3.0
    assert d["length"]["mean"] == pytest.approx(8 / 3)
    assert d["consecutive_repeats"] == 1  # u1: a, a
    assert d["timestamp_ties"] == 1  # u1: a@2, b@2
    assert d["users_under_3_events"] == 1  # u2
    assert d["duplicate_user_item_pairs"] == 2  # (u1, a) and (u3, a) twice
    assert d["timestamp_kind"] == "numeric" and d["time_range"] == ["1", "10"]
    dated = frame([("u", "x", "2024-01-01T00:00:00"), ("u", "y", "2024-01-02T00:00:00")])
    t = EventLog.from_frame(dated).describe()
    assert t["time_range"] == ["2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00"]


# ------------------------------------------------------------------- bad input: one clear error


def raises(source, match: str | None = None, **kw) -> str:
    with pytest.raises(DataError) as info:
        EventLog.read(source, **kw)
    msg = str(info.value)
    assert isinstance(info.value, UserseqError)
    if match:
        assert match in msg, msg
    return msg


def test_missing_file(tmp_path):
    msg = raises(tmp_path / "nope.csv", "file not found")
    assert str(tmp_path / "nope.csv") in msg


def test_directory_and_unknown_type(tmp_path):
    raises(tmp_path, "is a directory")
    raises(write(tmp_path / "e.xlsx", "x"), "unknown file type '.xlsx'")


def test_empty_file(tmp_path):
    msg = raises(write(tmp_path / "e.csv", ""), "file is empty (0 bytes)")
    assert "e.csv" in msg


def test_header_only(tmp_path):
    raises(write(tmp_path / "e.csv", "user_id,item_id,timestamp\n"),
           "no event rows (only a header)")
    with pytest.raises(DataError, match="no rows"):
        schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
        EventLog.from_frame(pl.DataFrame(schema=schema))


@pytest.mark.parametrize(
    ("header", "role", "expected", "close"),
    [
        ("userid,item_id,timestamp", "user", "user_id", "userid"),
        ("User Id,item_id,timestamp", "user", "user_id", "User Id"),
        ("user,item_id,timestamp", "user", "user_id", "user"),
        ("user_id,itemid,timestamp", "item", "item_id", "itemid"),
        ("user_id,item_id,ts", "timestamp", "timestamp", "ts"),
        ("user_id,item_id,time_stamp", "timestamp", "timestamp", "time_stamp"),
    ],
)
def test_misnamed_column(tmp_path, header, role, expected, close):
    path = write(tmp_path / "e.csv", header + "\nu1,a,1\n")
    msg = raises(path, f"missing required {role} column '{expected}'")
    assert f"Found columns: {header.split(',')}" in msg
    assert f"Did you mean '{close}'?" in msg
    assert f"--{role}-col" in msg and str(path) in msg


def test_no_suggestion_for_unrelated_names(tmp_path):
    msg = raises(write(tmp_path / "e.csv", "a,b,c\n1,2,3\n"),
                 "missing required user column 'user_id'")
    assert "Did you mean" not in msg and "['a', 'b', 'c']" in msg


def test_same_column_for_two_roles(tiny_frame):
    with pytest.raises(DataError, match="three different columns"):
        EventLog.from_frame(tiny_frame, columns=Columns(item="user_id"))


def test_null_ids_name_the_row(tmp_path):
    msg = raises(write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\n,b,2\nu2,c,3\n"),
                 "column 'user_id' has 1 null/empty ids (line 3)")
    assert "Remove those rows or fill the ids" in msg
    raises(write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,,2\nu2,,3\n"),
           "column 'item_id' has 2 null/empty ids (lines 3, 4)")
    # JSON null, pandas None/NaN, polars NaN: rows counted as their format counts them
    write(tmp_path / "e.jsonl", '{"user_id": "u1", "item_id": "a", "timestamp": 1}\n'
                                '{"user_id": null, "item_id": "a", "timestamp": 2}\n')
    raises(tmp_path / "e.jsonl", "(1-based row 2)")
    raises(pd.DataFrame({"user_id": ["u1", None], "item_id": ["a", "b"], "timestamp": [1, 2]}),
           "(0-based row index 1)")
    raises(pl.DataFrame({"user_id": [1.0, float("nan")], "item_id": [1, 2], "timestamp": [1, 2]}),
           "has 1 null/empty ids (0-based row index 1)")


def test_non_integer_numeric_ids(tmp_path):
    raises(pl.DataFrame({"user_id": [1.0, 2.5], "item_id": [1, 2], "timestamp": [1, 2]}),
           "column 'user_id' holds non-integer numbers (0-based row index 1: 2.5)")


def test_unparsable_timestamps_name_row_and_value(tmp_path):
    path = write(tmp_path / "e.csv",
                 "user_id,item_id,timestamp\nu1,a,2024-01-01\nu1,b,yesterday\nu2,c,2024-01-02\n")
    msg = raises(path,
                 "column 'timestamp' has 1 unparsable timestamps; first at line 3: 'yesterday'")
    assert "ISO 8601" in msg and "Unix seconds" in msg
    # Unix seconds with a bad value: the first value is a number, the format cannot be inferred
    # from it
    raises(write(tmp_path / "u.csv", "user_id,item_id,timestamp\nu1,a,1700000000\nu1,b,N/A\n"),
           "first at line 3: 'N/A'")
    raises(write(tmp_path / "m.csv",
                 "user_id,item_id,timestamp\nu1,a,1700000000\nu1,b,2024-01-01\n"),
           "mixes numbers (line 2: '1700000000') and date strings (line 3: '2024-01-01')")
    raises(write(tmp_path / "n.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,\n"),
           "1 missing timestamps (line 3)")
    raises(pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1.0, float("nan")]}),
           "missing timestamps (0-based row index 1)")


def test_bad_value_after_the_inference_window_is_found(tmp_path):
    rows = "".join(f"u{i},i{i},{i}\n" for i in range(12_000))
    path = write(tmp_path / "late.csv", "user_id,item_id,timestamp\n" + rows + "u1,a,oops\n")
    raises(path, "first at line 12002: 'oops'")


def test_csv_id_column_with_numbers_then_text_is_read_as_text(tmp_path):
    # documented coercion: in CSV all ids are text; numeric-looking ids and others are all strings
    rows = "".join(f"{i},{i},{i}\n" for i in range(12_000))
    path = write(tmp_path / "late.csv", "user_id,item_id,timestamp\n" + rows + "u-x,7,12000\n")
    log = EventLog.read(path)
    assert log.user_ids.dtype == pl.String and "u-x" in log.user_ids.to_list()
    assert log.n_users == 12_001
    assert log.item_ids.dtype == pl.Int64  # the column where every value fits keeps its type


def test_ragged_csv_names_the_line(tmp_path):
    msg = raises(write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\nu2,b,2,extra\n"),
                 "line 3 has 4 fields, the header has 3")
    assert str(tmp_path / "e.csv") in msg


def test_tab_separated_file_named_csv(tmp_path):
    raises(write(tmp_path / "e.csv", "user_id\titem_id\ttimestamp\nu1\ta\t1\n"),
           "rename it to .tsv")


def test_pandas_mixed_id_types():
    df = pd.DataFrame({"user_id": [1, "x", 2], "item_id": ["a", "b", "a"], "timestamp": [3, 1, 2]})
    msg = raises(df, "column 'user_id' mixes value types ['int', 'str']")
    assert "astype(str)" in msg
    df = pd.DataFrame({"user_id": ["u", "v", "w"], "item_id": [1, "b", 2.5],
                       "timestamp": [3, 1, 2]})
    raises(df, "column 'item_id' mixes value types ['float', 'int', 'str']")


def test_jsonl_mixed_number_and_string_ids_is_an_error(tmp_path):
    # polars alone would silently read this column as strings (1 and "1" becoming the same id)
    path = tmp_path / "e.jsonl"
    lines = [{"user_id": 1, "item_id": "a", "timestamp": 1},
             {"user_id": "x", "item_id": "b", "timestamp": 2},
             {"user_id": 2, "item_id": "a", "timestamp": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert pl.read_ndjson(path, infer_schema_length=None)["user_id"].dtype == pl.String
    msg = raises(path, "column 'user_id' mixes JSON numbers and strings "
                       "(e.g. 1-based row 1: 1, 1-based row 2: 'x')")
    assert "all as strings" in msg
    # the documented way out: read it as strings yourself
    log = EventLog.read(pl.read_ndjson(path, infer_schema_length=None))
    assert log.user_ids.to_list() == ["1", "2", "x"]


def test_jsonl_string_ids_that_look_numeric_are_fine(tmp_path):
    path = tmp_path / "e.jsonl"
    lines = [{"user_id": "1", "item_id": "a", "timestamp": 1},
             {"user_id": "x", "item_id": "b", "timestamp": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert EventLog.read(path).user_ids.to_list() == ["1", "x"]
    path.write_text("".join(json.dumps({**r, "user_id": i}) + "\n" for i, r in enumerate(lines)))
    assert EventLog.read(path).user_ids.to_list() == [0, 1]


def test_corrupt_files(tmp_path):
    (tmp_path / "e.parquet").write_bytes(b"PAR1 not really")
    raises(tmp_path / "e.parquet", "could not parse as parquet")
    raises(write(tmp_path / "e.jsonl",
                 '{"user_id": 1, "item_id": 2, "timestamp": 3}\n{"user_id": 1, "item\n'),
           "could not parse")
    raises([1, 2, 3], "cannot read events from a list")


def test_single_event_user_under_leave_one_out():
    df = frame([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1)])
    with pytest.raises(DataError) as info:
        leave_one_out(EventLog.from_frame(df))
    msg = str(info.value)
    assert "at least 3 events per user" in msg and "'u2' has 1" in msg
    assert "--min-user-events 3" in msg
    fixed = EventLog.from_frame(df, min_user_events=3)
    assert leave_one_out(fixed).test.targets.tolist() == [3] and fixed.report[-1].users_removed == 1
