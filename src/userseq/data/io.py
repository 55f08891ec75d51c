"""Reading event tables from files and DataFrames with Polars (lazy where the format allows).

Errors are `DataError`s that name the file, and where Polars tells us, the row and column.

Type rules for id columns, per format:

* CSV/TSV: a column's type is inferred from its values. When a value later in the file does
  not fit the type inferred from the first rows (e.g. ``u7`` after 10,000 numeric user ids),
  the file is re-read as text and only the columns that do not fit stay text: CSV has no
  number/string distinction, so ``123`` and ``u7`` are simply two string ids.
* JSONL: JSON does distinguish ``1`` from ``"1"``. Polars silently turns a column that mixes
  numbers and strings into strings (so ``1`` and ``"1"`` would become the same id); userseq
  refuses such id columns with an error naming a row of each kind instead of guessing.
* pandas: an ``object`` column that mixes Python types (e.g. ``int`` and ``str``) is refused.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import polars as pl

from userseq.core.errors import DataError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_NUMBER = r"^\s*-?\d+(\.\d*)?([eE][+-]?\d+)?\s*$"


def _format_of(path: Path) -> tuple[str, bool]:
    """Return (suffix without compression, compressed?)."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in {".gz", ".zst", ".bz2"}
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def source_kind(name: str) -> str:
    """'csv', 'jsonl', 'parquet' or 'frame' for a source name as returned by `scan_table`."""
    if name.startswith("<"):
        return "frame"
    fmt, _ = _format_of(Path(name))
    if fmt in CSV_SUFFIXES or fmt == ".txt":
        return "csv"
    if fmt in JSONL_SUFFIXES:
        return "jsonl"
    return "parquet" if fmt in PARQUET_SUFFIXES else "other"


def describe_rows(name: str, rows: list[int]) -> str:
    """Human row references for 0-based data rows of a source: file lines for CSV, 1-based rows
    for JSONL/Parquet, 0-based positions for DataFrames (what `df.row(i)` / `df.iloc[i]` take)."""
    kind = source_kind(name)
    one = len(rows) == 1
    if kind == "csv":  # line 1 is the header
        return ("line " if one else "lines ") + ", ".join(str(r + 2) for r in rows)
    if kind == "frame":
        return ("0-based row index " if one else "0-based row indices ") + ", ".join(map(str, rows))
    return ("1-based row " if one else "1-based rows ") + ", ".join(str(r + 1) for r in rows)


def check_file(path: str | Path) -> Path:
    """Fail with a clear message when a file is missing, a directory, or empty."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found. Check the path, or use a named dataset (see "
                        "`userseq datasets list`).")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass an events file (CSV/TSV, Parquet or JSONL).")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty (0 bytes). Expected a header and at least one event "
                        "row.")
    return p


def _csv_options(fmt: str) -> dict[str, Any]:
    sep = CSV_SUFFIXES.get(fmt, "\t" if fmt == ".txt" else ",")
    return dict(separator=sep, infer_schema_length=10_000, try_parse_dates=False)


def scan_table(source: Any) -> tuple[pl.LazyFrame, str]:
    """Open an events table lazily. Returns the LazyFrame and a human-readable source name.

    `source` may be a path (CSV/TSV, Parquet, JSONL; CSV/TSV/JSONL may be gzip-compressed),
    a Polars DataFrame/LazyFrame, or a pandas DataFrame. Collect it with `collect_table`, which
    turns parse errors into `DataError`s.
    """
    if isinstance(source, pl.LazyFrame):
        return source, "<LazyFrame>"
    if isinstance(source, pl.DataFrame):
        return source.lazy(), "<DataFrame>"
    if type(source).__module__.startswith("pandas"):
        return _from_pandas(source).lazy(), "<pandas DataFrame>"
    if not isinstance(source, str | Path):
        raise DataError(f"cannot read events from a {type(source).__name__}; pass a file path, a "
                        "Polars or a pandas DataFrame.")
    path = check_file(source)
    name = str(path)
    fmt, _ = _format_of(path)
    try:
        lf = _scan_file(path, name)
    except DataError:
        raise
    except pl.exceptions.ComputeError as e:  # malformed file contents
        raise DataError(f"{name}: could not parse as {fmt.lstrip('.')}: {first_line(e)}") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(f"{name}: could not read: {first_line(e)}") from None
    if not lf.collect_schema().names():
        raise DataError(f"{name}: no columns found. Expected a header row with user_id, item_id, "
                        "timestamp.")
    return lf, name


def _scan_file(path: Path, name: str) -> pl.LazyFrame:
    """Open one file by its format (Polars errors propagate; `scan_table` words them)."""
    fmt, compressed = _format_of(path)
    if compressed and path.suffixes[-1].lower() == ".bz2":
        raise DataError(f"{name}: bz2 compression is not supported; decompress it or use gzip "
                        "(.gz).")
    if fmt in PARQUET_SUFFIXES:
        lf = pl.scan_parquet(path)
        lf.collect_schema()
        return lf
    if fmt in CSV_SUFFIXES or fmt == ".txt":
        kw = _csv_options(fmt)
        lf = pl.read_csv(path, **kw).lazy() if compressed else pl.scan_csv(path, **kw)
        schema = lf.collect_schema()
        if len(schema) == 1 and kw["separator"] == "," and "\t" in next(iter(schema)):
            raise DataError(f"{name}: looks tab-separated but has a .csv name; rename it to .tsv.")
        return _strip_header(lf)
    if fmt in JSONL_SUFFIXES:
        if compressed:
            lf = pl.read_ndjson(path, infer_schema_length=None).lazy()
        else:
            lf = pl.scan_ndjson(path, infer_schema_length=None)
        lf.collect_schema()
        return lf
    raise DataError(f"{name}: unknown file type '{fmt or path.name}'. Use .csv, .tsv, .parquet or "
                    ".jsonl (optionally .gz).")


def _strip_header(lf: pl.LazyFrame) -> pl.LazyFrame:
    """'user_id, item_id, timestamp' headers: drop the blanks around names when that keeps them
    unique."""
    names = lf.collect_schema().names()
    stripped = [c.strip() for c in names]
    if stripped != names and len(set(stripped)) == len(stripped):
        lf = lf.rename(dict(zip(names, stripped, strict=True)))
    return lf


def collect_table(lf: pl.LazyFrame, name: str, id_columns: list[str] | None = None) -> pl.DataFrame:
    """Collect a table opened by `scan_table`, with clear errors for malformed contents.

    CSV columns whose inferred type does not fit a later value are re-read as text (see the module
    docstring); JSONL `id_columns` that mix JSON numbers and strings are refused.
    """
    kind = source_kind(name)
    try:
        df = lf.collect()
    except pl.exceptions.ComputeError as e:
        if kind != "csv":
            raise DataError(f"{name}: could not parse: {first_line(e)}") from None
        df = _reread_csv_as_text(Path(name), lf.collect_schema(), e)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(f"{name}: could not read: {first_line(e)}") from None
    for col in id_columns or []:
        if col in df.columns and df[col].dtype == pl.Boolean and kind == "csv":
            # CSV has no booleans: `true` is the text of an id (Polars inferred a type)
            df = df.with_columns(df[col].cast(pl.String))
        elif col in df.columns and df[col].dtype == pl.Boolean:
            raise DataError(f"{name}: column '{col}' holds booleans (true/false); ids must be "
                            "strings or integers. Write the ids themselves.")
    if kind == "jsonl":
        for col in id_columns or []:
            if col in df.columns and df[col].dtype == pl.String:
                _check_jsonl_booleans(Path(name), df, col)
                _check_jsonl_mixed(Path(name), df, col)
    return df


def _check_jsonl_booleans(path: Path, df: pl.DataFrame, col: str) -> None:
    """JSON `true`/`false` in an id column of strings (Polars reads them as "true"/"false")."""
    s = df[col]
    if not bool(s.is_in(["true", "false"]).any()):
        return
    try:  # JSON booleans read as Boolean; anything else becomes null
        flags = pl.read_ndjson(path, schema_overrides={col: pl.Boolean}, ignore_errors=True,
                               infer_schema_length=None)[col]
    except pl.exceptions.PolarsError:
        return
    if len(flags) != len(s) or not bool(flags.is_not_null().any()):
        return
    where = describe_rows(str(path), [int(flags.is_not_null().arg_max())])
    raise DataError(f"{path}: column '{col}' holds a JSON boolean ({where}: "
                    f"{str(flags.drop_nulls()[0]).lower()}); ids must be strings or integers, "
                    "never true/false. Write the id itself (e.g. \"true\" in quotes if that is "
                    "its name).")


def _reread_csv_as_text(path: Path, inferred: pl.Schema, error: Exception) -> pl.DataFrame:
    name = str(path)
    fmt, _ = _format_of(path)
    kw = _csv_options(fmt)
    kw.pop("infer_schema_length")
    try:
        raw = _strip_header(pl.read_csv(path, infer_schema=False, **kw).lazy()).collect()
    except pl.exceptions.PolarsError as e:
        where = _ragged_line(path, kw["separator"])
        raise DataError(
            f"{name}: could not parse as {fmt.lstrip('.')}: {first_line(e)}"
            + (f" ({where})" if where else "")
            + ". Check the separator and quoting of that row."
        ) from None
    cols = []
    for col, dtype in zip(raw.columns, inferred.values(), strict=False):
        s = raw[col]
        if dtype != pl.String:
            typed = s.cast(dtype, strict=False)
            if typed.null_count() == s.null_count():
                s = typed  # every value fits the inferred type; other columns stay text
        cols.append(s)
    return pl.DataFrame(cols)


def _ragged_line(path: Path, sep: str, max_lines: int = 5_000_000) -> str:
    """Find the first line with more fields than the header (only on the error path)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, [])
            for row in reader:
                if reader.line_num > max_lines:
                    break
                if len(row) > len(header):  # fewer fields are read as missing values
                    return (f"line {reader.line_num} has {len(row)} fields, the header has "
                            f"{len(header)}")
    except (OSError, csv.Error):
        return ""
    return ""


def _check_jsonl_mixed(path: Path, df: pl.DataFrame, col: str) -> None:
    s = df[col]
    if not bool(s.str.contains(_NUMBER).any()):
        return  # no value even looks like a number: the column held JSON strings only
    try:  # JSON numbers read as Float64; JSON strings (even "1") do not and become null
        numbers = pl.read_ndjson(path, schema_overrides={col: pl.Float64}, ignore_errors=True,
                                 infer_schema_length=None)[col]
    except pl.exceptions.PolarsError:
        return
    is_number = numbers.is_not_null()
    is_string = s.is_not_null() & ~is_number
    if len(numbers) != len(s) or not bool(is_number.any()) or not bool(is_string.any()):
        return
    i_num, i_str = int(is_number.arg_max()), int(is_string.arg_max())
    where_num, where_str = describe_rows(str(path), [i_num]), describe_rows(str(path), [i_str])
    raise DataError(
        f"{path}: column '{col}' mixes JSON numbers and strings (e.g. {where_num}: {s[i_num]}, "
        f"{where_str}: {s[i_str]!r}). Ids must have one type: write them all as strings "
        f"(\"{s[i_num]}\") or all as numbers. To treat them all as strings, read the file yourself "
        "and pass the frame: EventLog.read(pl.read_ndjson(path, infer_schema_length=None))."
    )


def _from_pandas(df: Any) -> pl.DataFrame:
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v).__name__ for v in df[col].dropna().head(1_000_000)}
            if len(kinds) > 1:
                raise DataError(
                    f"<pandas DataFrame>: column '{col}' mixes value types {sorted(kinds)}. "
                    f"Cast it to one type first, e.g. df['{col}'] = df['{col}'].astype(str)."
                )
    try:
        return pl.from_pandas(df)
    except Exception as e:  # pyarrow conversion errors have many types
        raise DataError(f"<pandas DataFrame>: could not convert to Polars: "
                        f"{first_line(e)}") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
