"""Reading event tables from files and DataFrames with Polars (lazy where the format allows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from userseq.errors import DataError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


def _format_of(path: Path) -> tuple[str, bool]:
    """Return (suffix without compression, compressed?)."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in {".gz", ".zst", ".bz2"}
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def check_file(path: str | Path) -> Path:
    """Fail with a clear message when a file is missing, a directory, or empty."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"{p}: file not found. Check the path, or use a named dataset (see `userseq datasets list`)."
        )
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass an events file (CSV/TSV, Parquet or JSONL).")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty (0 bytes). Expected a header and at least one event row.")
    return p


def scan_table(source: Any, columns: list[str] | None = None) -> tuple[pl.LazyFrame, str]:
    """Open an events table lazily. Returns the LazyFrame and a human-readable source name.

    `source` may be a path (CSV/TSV, Parquet, JSONL; CSV/TSV/JSONL may be gzip-compressed),
    a Polars DataFrame/LazyFrame, or a pandas DataFrame.
    """
    if isinstance(source, pl.LazyFrame):
        return source, "<LazyFrame>"
    if isinstance(source, pl.DataFrame):
        return source.lazy(), "<DataFrame>"
    if type(source).__module__.startswith("pandas"):
        return _from_pandas(source).lazy(), "<pandas DataFrame>"
    if not isinstance(source, str | Path):
        raise DataError(
            f"cannot read events from a {type(source).__name__}; pass a file path, a Polars or a pandas DataFrame."
        )
    path = check_file(source)
    name = str(path)
    fmt, compressed = _format_of(path)
    try:
        if fmt in PARQUET_SUFFIXES:
            lf = pl.scan_parquet(path)
            lf.collect_schema()
        elif fmt in CSV_SUFFIXES or fmt == ".txt":
            sep = CSV_SUFFIXES.get(fmt, "\t" if fmt == ".txt" else ",")
            kw: dict[str, Any] = dict(separator=sep, infer_schema_length=10_000, try_parse_dates=False)
            lf = pl.read_csv(path, **kw).lazy() if compressed else pl.scan_csv(path, **kw)
            schema = lf.collect_schema()
            if len(schema) == 1 and sep == "," and "\t" in next(iter(schema)):
                raise DataError(f"{name}: looks tab-separated but has a .csv name; rename it to .tsv.")
        elif fmt in JSONL_SUFFIXES:
            lf = pl.read_ndjson(path, infer_schema_length=None).lazy() if compressed else pl.scan_ndjson(
                path, infer_schema_length=None
            )
            lf.collect_schema()
        else:
            raise DataError(
                f"{name}: unknown file type '{fmt or path.name}'. Use .csv, .tsv, .parquet or .jsonl "
                "(optionally .gz)."
            )
    except DataError:
        raise
    except pl.exceptions.ComputeError as e:  # malformed file contents
        raise DataError(f"{name}: could not parse as {fmt.lstrip('.')}: {_first_line(e)}") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(f"{name}: could not read: {_first_line(e)}") from None
    if not lf.collect_schema().names():
        raise DataError(f"{name}: no columns found. Expected a header row with user_id, item_id, timestamp.")
    return lf, name


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
        raise DataError(f"<pandas DataFrame>: could not convert to Polars: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
