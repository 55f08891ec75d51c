"""Polars readers for the publishers' file formats, shared by the dataset families.

Each reads a whole file with Polars (no per-row Python) and fails with a `DataError` naming the
file.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from userseq.core.errors import DataError
from userseq.data.datasets.base import DatasetFiles
from userseq.data.io import first_line


def read_delimited(files: DatasetFiles, name: str, schema: dict[str, Any], *, sep: str = "\t",
                   header: bool = False, encoding: str = "utf-8",
                   double_colon: bool = False) -> pl.DataFrame:
    """Parse a delimited file; `double_colon` handles MovieLens' `::` separator."""
    data = files.read(name)
    if encoding != "utf-8":
        data = data.decode(encoding).encode("utf-8")
    if double_colon:
        data = data.replace(b"::", b"\t")
        sep = "\t"
    try:
        return pl.read_csv(
            io.BytesIO(data),
            separator=sep,
            has_header=header,
            schema=None if header else schema,
            schema_overrides=schema if header else None,
            columns=list(schema) if header else None,
            quote_char='"' if header else None,
        )
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{files.where(name)}: could not parse: {first_line(e)}") from None


def sequence_lines(files: DatasetFiles, name: str) -> pl.DataFrame:
    """Read `user item item ...` lines into (user_id, item_id, timestamp = position) rows."""
    lines = pl.read_csv(io.BytesIO(files.read(name)), has_header=False, separator="\x1f",
                        quote_char=None, schema={"line": pl.String})
    tokens = lines.select(pl.col("line").str.extract_all(r"\S+").alias("tok"))
    tokens = tokens.filter(pl.col("tok").list.len() > 1)
    df = tokens.select(
        pl.col("tok").list.first().alias("user_id"), pl.col("tok").list.slice(1).alias("item_id")
    ).explode("item_id")
    return with_positions(int_ids(df, files.where(name)))


def int_ids(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """Cast user_id/item_id text columns to Int64, failing with the first bad value."""
    out = df.with_columns(pl.col("user_id", "item_id").cast(pl.Int64, strict=False))
    for col in ("user_id", "item_id"):
        bad = out[col].is_null() & df[col].is_not_null()
        if bad.any():
            raise DataError(f"{where}: non-integer {col} {df.filter(bad)[col][0]!r}; "
                            "the file may be corrupt.")
    return out


def with_positions(df: pl.DataFrame) -> pl.DataFrame:
    """Timestamp = 0-based position of each row within its user's rows (input order)."""
    position = pl.int_range(pl.len(), dtype=pl.Int64).over("user_id")
    return df.with_columns(position.alias("timestamp"))


def epoch_seconds(df: pl.DataFrame) -> pl.DataFrame:
    """Unix seconds in `timestamp` as datetimes."""
    return df.with_columns(pl.from_epoch(pl.col("timestamp"), time_unit="s"))
