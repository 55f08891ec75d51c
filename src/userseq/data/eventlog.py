"""The event-log contract: validated events, contiguous ids, per-user chronological sequences.

Every later stage (splits, batches, models, services) reads an `EventLog`. It guarantees:

* required columns `user_id`, `item_id`, `timestamp` exist (names configurable), with no nulls,
  one value type per id column, and parseable timestamps;
* events sorted by (user, timestamp) with input order breaking ties (stable);
* users mapped to 0..n_users-1 and items to 1..n_items (0 is the padding id), both in sorted
  order of the original ids; the maps travel with every saved model;
* every filter (min events per user/item, k-core, consecutive de-duplication) is recorded in
  `report` with the counts it removed: nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from userseq.data.io import scan_table
from userseq.errors import DataError

TimestampKind = Literal["time", "numeric", "position"]
ROW = "__row"  # input row number (0-based data row), used for stable tie-breaks and error messages


@dataclass(frozen=True)
class Columns:
    """Names of the columns in the user's table."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    weight: str = "weight"
    event: str = "event"
    text: str = "text"


@dataclass
class Step:
    """One processing step and what it changed."""

    name: str
    events_before: int
    events_after: int
    users_removed: int = 0
    items_removed: int = 0

    def describe(self) -> str:
        removed = self.events_before - self.events_after
        return (
            f"{self.name}: removed {removed:,} events, {self.users_removed:,} users, "
            f"{self.items_removed:,} items ({self.events_after:,} events left)"
        )


@dataclass
class EventLog:
    """Validated, sorted, id-mapped events. Build with `EventLog.read(...)` or `EventLog.from_frame(...)`.

    `frame` has columns `user` (int, 0-based), `item` (int, 1-based), `timestamp`, `__row` and any
    extra columns of the input (weight, event, text, features), sorted by (user, timestamp, row).
    """

    frame: pl.DataFrame
    user_ids: pl.Series
    item_ids: pl.Series
    source: str = "<DataFrame>"
    timestamp_kind: TimestampKind = "numeric"
    report: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _csr: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def read(cls, source: Any, columns: Columns | None = None, **options: Any) -> EventLog:
        """Read events from a path (CSV/TSV/Parquet/JSONL) or a Polars/pandas DataFrame.

        Options: `timestamp_kind`, `min_user_events`, `min_item_events`, `k_core`,
        `dedup_consecutive` (see `from_frame`).
        """
        columns = columns or Columns()
        lf, name = scan_table(source)
        schema = lf.collect_schema()
        _require_columns(name, schema.names(), columns)
        return cls.from_frame(lf.collect(), columns=columns, source=name, **options)

    @classmethod
    def from_frame(
        cls,
        df: pl.DataFrame | Any,
        columns: Columns | None = None,
        source: str | None = None,
        timestamp_kind: TimestampKind | None = None,
        min_user_events: int = 0,
        min_item_events: int = 0,
        k_core: bool = False,
        dedup_consecutive: bool = False,
        notes: list[str] | None = None,
    ) -> EventLog:
        """Validate and index an events table.

        min_user_events / min_item_events drop users/items with fewer events (once, or repeated
        until stable when `k_core=True`). `dedup_consecutive` collapses a user's consecutive
        repeats of the same item into the first one. Each step is counted in `report`.
        """
        columns = columns or Columns()
        if not isinstance(df, pl.DataFrame):
            lf, name = scan_table(df)
            df = lf.collect()
            source = source or name
        source = source or "<DataFrame>"
        _require_columns(source, df.columns, columns)
        if df.height == 0:
            raise DataError(f"{source}: no event rows (only a header). Add events or check the filter upstream.")

        df = df.with_row_index(ROW)
        df = df.rename({columns.user: "user_raw", columns.item: "item_raw", columns.timestamp: "timestamp"})
        for col in ("user_raw", "item_raw"):
            orig = columns.user if col == "user_raw" else columns.item
            _check_ids(source, df, col, orig)
        df, kind = _parse_timestamps(source, df, columns.timestamp, timestamp_kind)
        n0 = df.height
        df = df.sort(["user_raw", "timestamp", ROW])
        report = [Step("read", n0, n0)]

        if dedup_consecutive:
            prev_same = (pl.col("item_raw") == pl.col("item_raw").shift(1)) & (
                pl.col("user_raw") == pl.col("user_raw").shift(1)
            )
            before = df.height
            df = df.filter(~prev_same.fill_null(False))
            report.append(Step("dedup consecutive repeats", before, df.height))
        if min_user_events > 0 or min_item_events > 0:
            df, step = _filter_counts(df, min_user_events, min_item_events, k_core)
            report.append(step)
        if df.height == 0:
            raise DataError(
                f"{source}: no events left after filtering ({'; '.join(s.describe() for s in report[1:])}). "
                "Lower min_user_events/min_item_events."
            )
        user_ids = df["user_raw"].unique().sort()
        item_ids = df["item_raw"].unique().sort()
        df = df.with_columns(
            (pl.col("user_raw").rank("dense") - 1).cast(pl.Int32).alias("user"),
            pl.col("item_raw").rank("dense").cast(pl.Int32).alias("item"),
        ).drop(["user_raw", "item_raw"])
        front = ["user", "item", "timestamp", ROW]
        df = df.select(front + [c for c in df.columns if c not in front])
        return cls(
            frame=df,
            user_ids=user_ids.rename("user_id"),
            item_ids=item_ids.rename("item_id"),
            source=source,
            timestamp_kind=kind,
            report=report,
            notes=list(notes or []),
        )

    # ------------------------------------------------------------------ sizes and sequences
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of distinct items; valid item indices are 1..n_items (0 = padding)."""
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return self.frame.height

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-user chronological item sequences in CSR form: (offsets[n_users+1], items[n_events])."""
        if self._csr is None:
            counts = np.bincount(self.frame["user"].to_numpy(), minlength=self.n_users)
            offsets = np.zeros(self.n_users + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            self._csr = (offsets, self.frame["item"].to_numpy().astype(np.int32, copy=False))
        return self._csr

    def timestamps(self) -> np.ndarray:
        return self.frame["timestamp"].to_numpy()

    def lengths(self) -> np.ndarray:
        offsets, _ = self.sequences()
        return np.diff(offsets)

    def item_counts(self) -> np.ndarray:
        """Events per item index (length n_items + 1, index 0 = padding = 0)."""
        return np.bincount(self.sequences()[1], minlength=self.n_items + 1)

    # ------------------------------------------------------------------ id lookups
    def user_index(self, ids: Any) -> np.ndarray:
        """Map original user ids to indices; unknown ids give -1."""
        return lookup_ids(self.user_ids, ids, offset=0)

    def item_index(self, ids: Any) -> np.ndarray:
        """Map original item ids to indices (1-based); unknown ids give 0."""
        return lookup_ids(self.item_ids, ids, offset=1)

    def describe(self) -> dict[str, Any]:
        """Summary numbers used by `userseq validate`."""
        lengths = self.lengths()
        ts = self.frame["timestamp"]
        pct = {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 95)}
        items = self.frame["item"]
        users = self.frame["user"]
        same_item_prev = (items == items.shift(1)) & (users == users.shift(1))
        ts_tie = (ts == ts.shift(1)) & (users == users.shift(1))
        return {
            "source": self.source,
            "users": self.n_users,
            "items": self.n_items,
            "events": self.n_events,
            "length": {"min": int(lengths.min()), **pct, "max": int(lengths.max()), "mean": float(lengths.mean())},
            "timestamp_kind": self.timestamp_kind,
            "time_range": [_fmt_ts(ts.min(), self.timestamp_kind), _fmt_ts(ts.max(), self.timestamp_kind)],
            "consecutive_repeats": int(same_item_prev.sum()),
            "timestamp_ties": int(ts_tie.sum()) if self.timestamp_kind != "position" else 0,
            "users_under_3_events": int((lengths < 3).sum()),
            "duplicate_user_item_pairs": int(self.n_events - self.frame.select(["user", "item"]).n_unique()),
        }


# ---------------------------------------------------------------------- helpers
def _require_columns(source: str, names: list[str], columns: Columns) -> None:
    for role, col in (("user", columns.user), ("item", columns.item), ("timestamp", columns.timestamp)):
        if col not in names:
            close = [n for n in names if n.lower().replace(" ", "_") == col.lower() or col.lower() in n.lower()]
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"{source}: missing required {role} column '{col}'. Found columns: {names}.{hint} "
                f"Rename the column or pass its name (CLI: --{role}-col NAME; API: Columns({role}='NAME'))."
            )


def _row_hint(df: pl.DataFrame, mask: pl.Series) -> str:
    rows = df.filter(mask)[ROW].head(3).to_list()
    return ", ".join(str(r + 1) for r in rows)


def _check_ids(source: str, df: pl.DataFrame, col: str, orig: str) -> None:
    s = df[col]
    nulls = s.is_null()
    if s.dtype == pl.String:
        nulls = nulls | (s.str.strip_chars() == "")
    n_null = int(nulls.sum())
    if n_null:
        raise DataError(
            f"{source}: column '{orig}' has {n_null:,} null/empty ids (data rows {_row_hint(df, nulls)}, "
            "counting from 1 after the header). Remove those rows or fill the ids."
        )
    if s.dtype == pl.Object or isinstance(s.dtype, pl.List | pl.Struct):
        raise DataError(f"{source}: column '{orig}' has unsupported type {s.dtype}; ids must be strings or integers.")
    if s.dtype.is_float():
        if not bool((s == s.round(0)).all()):
            raise DataError(f"{source}: column '{orig}' holds non-integer numbers; ids must be integers or strings.")
        df.replace_column(df.get_column_index(col), s.cast(pl.Int64))


def _parse_timestamps(
    source: str, df: pl.DataFrame, orig: str, kind: TimestampKind | None
) -> tuple[pl.DataFrame, TimestampKind]:
    s = df["timestamp"]
    nulls = s.is_null()
    if int(nulls.sum()):
        raise DataError(
            f"{source}: column '{orig}' has {int(nulls.sum()):,} missing timestamps (data rows "
            f"{_row_hint(df, nulls)}). Fill or drop them."
        )
    if s.dtype == pl.String:
        parsed = s.str.strip_chars().str.to_datetime(strict=False, time_unit="us")
        if parsed.is_null().any():
            # maybe numeric text
            numeric = s.str.strip_chars().cast(pl.Float64, strict=False)
            if numeric.is_null().any():
                bad = parsed.is_null()
                first = df.filter(bad).row(0, named=True)
                raise DataError(
                    f"{source}: column '{orig}' has {int(bad.sum()):,} unparsable timestamps; first at data row "
                    f"{first[ROW] + 1}: {first['timestamp']!r}. Use ISO 8601 (2024-01-31T12:00:00) or Unix seconds."
                )
            s = numeric
        else:
            s = parsed
    if s.dtype in (pl.Date,) or isinstance(s.dtype, pl.Datetime):
        s = s.cast(pl.Datetime("us")).dt.epoch("s")
        detected: TimestampKind = "time"
    elif s.dtype.is_numeric():
        if s.dtype.is_float() and bool((s == s.round(0)).all()):
            s = s.cast(pl.Int64)
        detected = "numeric"
    else:
        raise DataError(f"{source}: column '{orig}' has type {s.dtype}; expected datetimes, ISO strings or numbers.")
    return df.with_columns(s.alias("timestamp")), (kind or detected)


def _filter_counts(df: pl.DataFrame, min_user: int, min_item: int, k_core: bool) -> tuple[pl.DataFrame, Step]:
    before = df.height
    u0, i0 = df["user_raw"].n_unique(), df["item_raw"].n_unique()
    while True:
        n = df.height
        if min_item > 0:
            df = df.filter(pl.len().over("item_raw") >= min_item)
        if min_user > 0:
            df = df.filter(pl.len().over("user_raw") >= min_user)
        if not k_core or df.height == n:
            break
    name = f"{'k-core' if k_core else 'min-count'} filter (user >= {min_user}, item >= {min_item})"
    return df, Step(name, before, df.height, u0 - df["user_raw"].n_unique(), i0 - df["item_raw"].n_unique())


def lookup_ids(id_map: pl.Series, ids: Any, offset: int) -> np.ndarray:
    query = pl.Series("id", list(ids) if not isinstance(ids, pl.Series) else ids)
    if query.dtype != id_map.dtype:
        try:
            query = query.cast(id_map.dtype)
        except pl.exceptions.PolarsError:
            query = pl.Series("id", [None] * len(query), dtype=id_map.dtype)
    table = pl.DataFrame({"id": id_map, "idx": np.arange(len(id_map), dtype=np.int64) + offset})
    out = pl.DataFrame({"id": query}).join(table, on="id", how="left", maintain_order="left")
    return out["idx"].fill_null(-1 if offset == 0 else 0).to_numpy()


def _fmt_ts(v: Any, kind: TimestampKind) -> str:
    if kind == "time":
        import datetime as _dt

        return _dt.datetime.fromtimestamp(int(v), tz=_dt.UTC).isoformat()
    return str(v)
