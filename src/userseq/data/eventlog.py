"""The event-log contract: validated events, contiguous ids, per-user chronological sequences.

Every later stage (splits, batches, models, services) reads an `EventLog`. It guarantees:

* required columns `user_id`, `item_id`, `timestamp` exist (names configurable), with no nulls,
  one value type per id column, and parseable timestamps;
* events sorted by (user, timestamp) with input order breaking ties (stable; `tie_order` may
  order same-timestamp events by item id or at random instead);
* users mapped to 0..n_users-1 and items to 1..n_items (0 is the padding id), both in sorted
  order of the original ids; the maps travel with every saved model;
* every filter (min events per user/item, k-core, consecutive de-duplication) is recorded in
  `report` with the counts it removed: nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from userseq.core.errors import DataError, UserseqWarning
from userseq.data.io import collect_table, describe_rows, scan_table, source_kind

TimestampKind = Literal["time", "numeric", "position"]
TieOrder = Literal["file", "item", "random"]
TIE_ORDERS = ("file", "item", "random")
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
    """Validated, sorted, id-mapped events. Build with `EventLog.read(...)` or
    `EventLog.from_frame(...)`.

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
        `dedup_consecutive`, `strip_ids` (see `from_frame`).
        """
        columns = columns or Columns()
        lf, name = scan_table(source)
        schema = lf.collect_schema()
        _require_columns(name, schema.names(), columns)
        df = collect_table(lf, name, id_columns=[columns.user, columns.item])
        return cls.from_frame(df, columns=columns, source=name, **options)

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
        strip_ids: bool = False,
        tie_order: TieOrder = "file",
        tie_seed: int = 0,
    ) -> EventLog:
        """Validate and index an events table.

        min_user_events / min_item_events drop users/items with fewer events (once, or repeated
        until stable when `k_core=True`). `dedup_consecutive` collapses a user's consecutive
        repeats of the same item into the first one. Each step is counted in `report`.
        String ids with blanks around them (`" u1"`, `"u1 "`) are distinct ids, and a warning
        (`UserseqWarning`, also in `notes`) says so; `strip_ids=True` strips them instead.
        Numeric timestamps in two units (Unix seconds and milliseconds) are warned about too.
        `tie_order` orders a user's events with equal timestamps: "file" (input order, the
        default), "item" (by original item id, as LRURec's preprocessing does) or "random" (a
        shuffle drawn from `tie_seed`); the chosen order is recorded in `notes` when it is not
        "file".
        """
        columns = columns or Columns()
        if not isinstance(df, pl.DataFrame):
            lf, name = scan_table(df)
            df = collect_table(lf, name, id_columns=[columns.user, columns.item])
            source = source or name
        source = source or "<DataFrame>"
        notes = list(notes or [])
        df, kind = _validated(df, columns, source, timestamp_kind, notes, strip_ids)
        n0 = df.height
        df = _sort_events(df, tie_order, tie_seed, source)
        if tie_order != "file":
            notes.append(f"same-timestamp events ordered by {tie_order}"
                         + (f" (seed {tie_seed})" if tie_order == "random" else ""))
        report = [Step("read", n0, n0)]
        if dedup_consecutive:
            df, step = _dedup_consecutive(df)
            report.append(step)
        if min_user_events > 0 or min_item_events > 0:
            df, step = _filter_counts(df, min_user_events, min_item_events, k_core)
            report.append(step)
        if df.height == 0:
            steps = "; ".join(s.describe() for s in report[1:])
            raise DataError(f"{source}: no events left after filtering ({steps}). Lower "
                            "min_user_events/min_item_events.")
        df, user_ids, item_ids = _index(df)
        return cls(frame=df, user_ids=user_ids, item_ids=item_ids, source=source,
                   timestamp_kind=kind, report=report, notes=notes)

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
        """Per-user chronological item sequences in CSR form: (offsets[n_users+1],
        items[n_events])."""
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
        kind = self.timestamp_kind
        pairs = self.frame.select(["user", "item"]).n_unique()
        return {
            "source": self.source,
            "users": self.n_users,
            "items": self.n_items,
            "events": self.n_events,
            "length": {"min": int(lengths.min()), **pct, "max": int(lengths.max()),
                       "mean": float(lengths.mean())},
            "timestamp_kind": self.timestamp_kind,
            "time_range": [_fmt_ts(ts.min(), kind), _fmt_ts(ts.max(), kind)],
            "consecutive_repeats": int(same_item_prev.sum()),
            "timestamp_ties": int(ts_tie.sum()) if kind != "position" else 0,
            "users_under_3_events": int((lengths < 3).sum()),
            "duplicate_user_item_pairs": int(self.n_events - pairs),
        }


# ---------------------------------------------------------------------- helpers
RESERVED = ("user", "item", "user_raw", "item_raw", "timestamp", ROW)  # names used internally
_ALIASES = {
    "user": ("user", "userid", "uid", "customer", "customerid", "visitor", "visitorid", "session",
             "sessionid"),
    "item": ("item", "itemid", "iid", "product", "productid", "movie", "movieid", "sku", "asin",
             "article"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "date", "eventtime", "createdat",
                  "unixtime"),
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _close_column(col: str, role: str, names: list[str], taken: set[str]) -> str | None:
    """The found column the user most likely meant for `col` (or None)."""
    candidates = [n for n in names if n not in taken]
    by_norm = {_norm(n): n for n in reversed(candidates)}
    if _norm(col) in by_norm:  # 'User ID', 'userId', ' user_id'
        return by_norm[_norm(col)]
    for alias in _ALIASES.get(role, ()):
        if alias in by_norm:
            return by_norm[alias]
    close = difflib.get_close_matches(_norm(col), list(by_norm), n=1, cutoff=0.7)
    if close:
        return by_norm[close[0]]
    # e.g. 'user_name' for 'user_id', 'product_sku' for 'item': the role word inside the name
    inside = [n for n in candidates if any(a in _norm(n) for a in _ALIASES.get(role, (role,))[:3])]
    return inside[0] if len(inside) == 1 else None


def _require_columns(source: str, names: list[str], columns: Columns) -> None:
    roles = (("user", columns.user), ("item", columns.item), ("timestamp", columns.timestamp))
    if len({c for _, c in roles}) < 3:
        raise DataError(
            f"{source}: the user, item and timestamp columns must be three different columns "
            f"(got user='{columns.user}', item='{columns.item}', timestamp='{columns.timestamp}')."
        )
    taken = {c for _, c in roles if c in names}
    for role, col in roles:
        if col not in names:
            close = _close_column(col, role, names, taken)
            hint = f" Did you mean '{close}'?" if close else ""
            opt = "timestamp" if role == "timestamp" else role
            raise DataError(
                f"{source}: missing required {role} column '{col}'. Found columns: {names}.{hint} "
                f"Rename the column or pass its name (CLI: --{opt}-col NAME; "
                f"config: data.{opt}_col; API: Columns({role}='NAME'))."
            )


def _rename_reserved(df: pl.DataFrame, columns: Columns, notes: list[str]) -> pl.DataFrame:
    """Extra input columns whose names userseq uses internally get an `_input` suffix (noted)."""
    roles = {columns.user, columns.item, columns.timestamp}
    clash = [c for c in df.columns if c in RESERVED and c not in roles]
    if not clash:
        return df
    mapping = {}
    for c in clash:
        new = f"{c}_input"
        while new in df.columns or new in mapping.values():
            new += "_"
        mapping[c] = new
    renamed = ", ".join(f"'{a}' -> '{b}'" for a, b in mapping.items())
    notes.append(f"renamed extra column(s) {renamed} (those names are used internally)")
    return df.rename(mapping)


def _row_hint(source: str, df: pl.DataFrame, mask: pl.Series) -> str:
    rows = df.filter(mask)[ROW].head(3).to_list()
    return describe_rows(source, rows)


def _warn(notes: list[str], message: str) -> None:
    """A data warning: a `UserseqWarning` (the CLI prints `warning: ...`) and a note of the log
    (`userseq validate` lists it under problems)."""
    notes.append(message)
    warnings.warn(message, UserseqWarning, stacklevel=4)


def _check_ids(source: str, df: pl.DataFrame, col: str, orig: str,
               notes: list[str] | None = None, strip: bool = False) -> pl.DataFrame:
    s = original = df[col]
    if isinstance(s.dtype, pl.Categorical | pl.Enum):
        s = s.cast(pl.String)  # sort and map by the id values, not the category codes
    if s.dtype == pl.Boolean:
        raise DataError(f"{source}: column '{orig}' holds booleans (true/false); ids must be "
                        "strings or integers.")
    if s.dtype == pl.String:
        s = _blank_ids(source, df, s, orig, notes if notes is not None else [], strip)
    if s.dtype == pl.Object or isinstance(s.dtype, pl.List | pl.Array | pl.Struct):
        raise DataError(f"{source}: column '{orig}' has unsupported type {s.dtype}; ids must be "
                        "strings or integers.")
    nulls = s.is_null()
    if s.dtype == pl.String:
        nulls = nulls | (s.str.strip_chars() == "")
    elif s.dtype.is_float():
        nulls = nulls | s.is_nan()
    n_null = int(nulls.sum())
    if n_null:
        raise DataError(
            f"{source}: column '{orig}' has {n_null:,} null/empty ids "
            f"({_row_hint(source, df, nulls)}). Remove those rows or fill the ids."
        )
    if s.dtype.is_float():
        bad = ~(s.is_finite() & (s == s.round(0)))
        if bool(bad.any()):
            first = int(bad.arg_max())
            raise DataError(
                f"{source}: column '{orig}' holds non-integer numbers "
                f"({_row_hint(source, df, bad)}: {s[first]!r}); ids must be integers or strings."
            )
        s = s.cast(pl.Int64)
    return df if s is original else df.with_columns(s.alias(col))


def _blank_ids(source: str, df: pl.DataFrame, s: pl.Series, orig: str, notes: list[str],
               strip: bool) -> pl.Series:
    """Ids with leading/trailing whitespace: stripped (`strip`) or kept with a warning."""
    stripped = s.str.strip_chars()
    padded = (stripped != s).fill_null(False)
    n = int(padded.sum())
    if not n:
        return s
    if strip:
        notes.append(f"stripped leading/trailing whitespace from {n:,} '{orig}' values "
                     "(data.strip_ids)")
        return stripped
    first = int(padded.arg_max())
    merged = int(s.n_unique() - stripped.n_unique())
    clash = (f"; {merged:,} of them equal another id once stripped, so one {orig} is counted as "
             "several" if merged else "")
    _warn(notes, f"{source}: {n:,} '{orig}' values have leading/trailing whitespace "
                 f"({_row_hint(source, df, padded)}: {s[first]!r}); they are kept as distinct "
                 f"ids{clash}. Set data.strip_ids: true (CLI: --set data.strip_ids=true; API: "
                 "strip_ids=True) to strip them.")
    return s


# Unix time magnitudes: seconds (1973..5138), milliseconds, microseconds, nanoseconds
_UNITS = (("seconds", 1e8, 1e11), ("milliseconds", 1e11, 1e14), ("microseconds", 1e14, 1e17),
          ("nanoseconds", 1e17, float("inf")))


def _check_time_units(source: str, df: pl.DataFrame, s: pl.Series, orig: str,
                      notes: list[str]) -> None:
    """Numeric timestamps that look like Unix time in two units (seconds and milliseconds): the
    order of events would be wrong, so say so with a row of each kind."""
    found = []
    for unit, lo, hi in _UNITS:
        mask = (s >= lo) & (s < hi)
        if bool(mask.any()):
            found.append((unit, mask))
    if len(found) < 2:
        return
    parts = []
    for unit, mask in found[:2]:
        i = int(mask.arg_max())
        first = describe_rows(source, df.filter(mask)[ROW].head(1).to_list())
        parts.append(f"{unit} ({int(mask.sum()):,} value{'s' if mask.sum() > 1 else ''}, e.g. "
                     f"{first}: {s[i]})")
    _warn(notes, f"{source}: column '{orig}' mixes timestamp magnitudes: "
                 f"{' and '.join(parts)}; events would be ordered wrongly. Convert the column "
                 "to one unit (e.g. divide the milliseconds by 1000).")


def _parse_timestamps(
    source: str, df: pl.DataFrame, orig: str, kind: TimestampKind | None,
    notes: list[str] | None = None,
) -> tuple[pl.DataFrame, TimestampKind]:
    s = df["timestamp"]
    nulls = s.is_null()
    if s.dtype == pl.String:
        nulls = nulls | (s.str.strip_chars() == "")
    elif s.dtype.is_float():
        nulls = nulls | s.is_nan()
    if bool(nulls.any()):
        raise DataError(
            f"{source}: column '{orig}' has {int(nulls.sum()):,} missing timestamps "
            f"({_row_hint(source, df, nulls)}). Fill or drop them."
        )
    if s.dtype == pl.String:
        s = _parse_timestamp_strings(source, df, s.str.strip_chars(), orig)
    if s.dtype in (pl.Date,) or isinstance(s.dtype, pl.Datetime):
        s = s.cast(pl.Datetime("us")).dt.epoch("s")
        detected: TimestampKind = "time"
    elif s.dtype.is_numeric():
        if s.dtype.is_float():
            inf = s.is_infinite()
            if bool(inf.any()):
                raise DataError(f"{source}: column '{orig}' has infinite timestamps "
                                f"({_row_hint(source, df, inf)}).")
            if bool((s == s.round(0)).all()):
                s = s.cast(pl.Int64)
        if kind != "position":
            _check_time_units(source, df, s, orig, notes if notes is not None else [])
        detected = "numeric"
    else:
        raise DataError(f"{source}: column '{orig}' has type {s.dtype}; expected datetimes, ISO "
                        "strings or numbers.")
    return df.with_columns(s.alias("timestamp")), (kind or detected)


def _parse_timestamp_strings(source: str, df: pl.DataFrame, s: pl.Series, orig: str) -> pl.Series:
    """Text timestamps: all numbers (Unix time as text) or all ISO 8601 dates/datetimes."""
    numeric = s.cast(pl.Float64, strict=False)
    if numeric.null_count() == 0:
        return numeric
    try:  # the format is inferred from the first value; values in other formats become null
        parsed = s.str.to_datetime(strict=False, time_unit="us")
    except pl.exceptions.PolarsError:  # no format fits the first value
        parsed = pl.Series("timestamp", [None] * len(s), dtype=pl.Datetime("us"))
    if parsed.null_count() == 0:
        return parsed
    bad = parsed.is_null() & numeric.is_null()
    if bool(bad.any()):
        first = int(bad.arg_max())
        raise DataError(
            f"{source}: column '{orig}' has {int(bad.sum()):,} unparsable timestamps; first at "
            f"{describe_rows(source, [int(df[ROW][first])])}: {s[first]!r}. Use ISO 8601 "
            "(2024-01-31T12:00:00, one format for the whole column) or Unix seconds."
        )
    i_num, i_date = int(numeric.is_not_null().arg_max()), int(parsed.is_not_null().arg_max())
    where_num = describe_rows(source, [int(df[ROW][i_num])])
    where_date = describe_rows(source, [int(df[ROW][i_date])])
    raise DataError(
        f"{source}: column '{orig}' mixes numbers ({where_num}: {s[i_num]!r}) "
        f"and date strings ({where_date}: {s[i_date]!r}). "
        "Use one kind for the whole column: ISO 8601 or Unix seconds."
    )


def _validated(df: pl.DataFrame, columns: Columns, source: str, kind: TimestampKind | None,
               notes: list[str], strip_ids: bool = False) -> tuple[pl.DataFrame, TimestampKind]:
    """Checked columns, ids and timestamps, renamed to user_raw / item_raw / timestamp, with the
    input row number in `ROW`; extra columns with internal names are renamed (noted)."""
    _require_columns(source, df.columns, columns)
    if df.height == 0:
        what = ("the DataFrame has no rows" if source_kind(source) == "frame"
                else "no event rows (only a header)")
        raise DataError(f"{source}: {what}. Add events or check the filter upstream.")
    df = _rename_reserved(df, columns, notes).with_row_index(ROW)
    df = df.rename({columns.user: "user_raw", columns.item: "item_raw",
                    columns.timestamp: "timestamp"})
    df = _check_ids(source, df, "user_raw", columns.user, notes, strip_ids)
    df = _check_ids(source, df, "item_raw", columns.item, notes, strip_ids)
    return _parse_timestamps(source, df, columns.timestamp, kind, notes)


def _dedup_consecutive(df: pl.DataFrame) -> tuple[pl.DataFrame, Step]:
    """Collapse a user's consecutive repeats of one item into the first (df sorted by user)."""
    same_user = pl.col("user_raw") == pl.col("user_raw").shift(1)
    prev_same = (pl.col("item_raw") == pl.col("item_raw").shift(1)) & same_user
    kept = df.filter(~prev_same.fill_null(False))
    return kept, Step("dedup consecutive repeats", df.height, kept.height)


def _sort_events(df: pl.DataFrame, tie_order: str, tie_seed: int, source: str) -> pl.DataFrame:
    """Sort by (user, timestamp); ties in input order, by item id, or shuffled (`tie_seed`)."""
    if tie_order == "file":
        return df.sort(["user_raw", "timestamp"], maintain_order=True)
    if tie_order == "item":
        return df.sort(["user_raw", "timestamp", "item_raw"], maintain_order=True)
    if tie_order == "random":
        key = np.random.default_rng(tie_seed).random(df.height)
        return (df.with_columns(pl.Series("__tie", key))
                .sort(["user_raw", "timestamp", "__tie"]).drop("__tie"))
    raise DataError(f"{source}: tie_order '{tie_order}' is not one of {', '.join(TIE_ORDERS)} "
                    "(data.tie_order).")


def _index(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """Contiguous ids: (frame with user/item indices first, user ids, item ids), from a frame
    sorted by user: user indices come from the boundaries between users, items from a join."""
    first = (pl.col("user_raw") != pl.col("user_raw").shift(1)).fill_null(True)
    user_ids = df.filter(first)["user_raw"]
    item_ids = df["item_raw"].unique().sort()
    index = pl.int_range(1, len(item_ids) + 1, dtype=pl.Int32, eager=True)
    item_map = pl.DataFrame({"item_raw": item_ids, "item": index})
    df = (df.with_columns((first.cum_sum() - 1).cast(pl.Int32).alias("user"))
          .join(item_map, on="item_raw", how="left", maintain_order="left")
          .drop(["user_raw", "item_raw"]))
    front = ["user", "item", "timestamp", ROW]
    df = df.select(front + [c for c in df.columns if c not in front])
    return df, user_ids.rename("user_id"), item_ids.rename("item_id")


def _filter_counts(df: pl.DataFrame, min_user: int, min_item: int,
                   k_core: bool) -> tuple[pl.DataFrame, Step]:
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
    return df, Step(name, before, df.height, u0 - df["user_raw"].n_unique(),
                    i0 - df["item_raw"].n_unique())


def lookup_ids(id_map: pl.Series, ids: Any, offset: int) -> np.ndarray:
    """Indices of `ids` in `id_map` (+offset); ids that are not in the map give -1 (offset 0) or 0.

    Ids of another type are compared by value where that is exact ("10" finds 10, 10 finds "10";
    10.5 finds nothing); each id is looked up on its own, so one odd id does not hide the others.
    """
    if isinstance(ids, pl.Series):
        query = ids.rename("id")
    else:
        ids = list(ids)
        bools = [v for v in ids if isinstance(v, bool | np.bool_)]
        if bools:
            raise DataError(f"id {bools[0]!r} is a boolean; ids are strings or integers (True is "
                            "not the id 1).")
        query = pl.Series("id", ids, strict=False)
    if query.dtype == pl.Boolean:
        raise DataError("ids are booleans; ids are strings or integers (True is not the id 1).")
    if query.dtype != id_map.dtype:
        try:
            cast = query.cast(id_map.dtype, strict=False)
            if query.dtype.is_float() and id_map.dtype.is_integer():
                fraction = ~(query == query.round(0)).fill_null(False)
                cast = cast.set(fraction, None)  # no truncation: 10.5 != 10
        except pl.exceptions.PolarsError:
            cast = pl.Series("id", [None] * len(query), dtype=id_map.dtype)
        query = cast
    table = pl.DataFrame({"id": id_map, "idx": np.arange(len(id_map), dtype=np.int64) + offset})
    out = pl.DataFrame({"id": query}).join(table, on="id", how="left", maintain_order="left")
    return out["idx"].fill_null(-1 if offset == 0 else 0).to_numpy()


def _fmt_ts(v: Any, kind: TimestampKind) -> str:
    if kind == "time":
        import datetime as _dt

        return _dt.datetime.fromtimestamp(int(v), tz=_dt.UTC).isoformat()
    return str(v)
