"""MovieLens (GroupLens): ml-1m, ml-100k, ml-latest-small, with titles and genres.

Licences: the MovieLens 1M/100K terms forbid redistribution without permission and commercial
use; ml-latest-small may be redistributed under the same terms. Keep them out of public releases.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from userseq.core.errors import DataError
from userseq.data.datasets.base import POSITION_NOTE, DatasetEvents, DatasetFiles, Download, Layout
from userseq.data.datasets.parse import epoch_seconds, read_delimited, with_positions
from userseq.data.datasets.registry import register_dataset
from userseq.data.eventlog import Step

_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_TFDS = "tensorflow/datasets tensorflow_datasets/url_checksums/movielens.txt (sha256, size)"
_GROUPLENS_TERMS = (
    "GroupLens terms: research use, cite Harper & Konstan 2015, no commercial use, "
    "no redistribution without permission"
)
_RATINGS = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Int64, "timestamp": pl.Int64}
_TASKS = ("nextitem", "ctr")  # rated datasets: CTR labels come from the ratings


def _genre_list(col: str) -> pl.Expr:
    return (
        pl.when(pl.col(col) == "(no genres listed)")
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col(col).str.split("|"))
        .alias("genres")
    )


# ---------------------------------------------------------------------- ml-1m
def _meta_ml1m(files: DatasetFiles, kind: str) -> pl.DataFrame:
    schema = {"item_id": pl.Int64, "title": pl.String, "genres": pl.String}
    df = read_delimited(files, "movies.dat", schema, encoding="latin-1", double_colon=True)
    return df.select("item_id", "title", _genre_list("genres"))


def sasrec_item_filter(raw: pl.DataFrame, min_item: int = 5) -> tuple[pl.DataFrame, Step]:
    """SASRec's ml-1m preprocessing: drop items with under `min_item` ratings, keep all users."""
    kept = raw.filter(pl.len().over("item_id") >= min_item)
    step = Step(
        f"SASRec item filter (item >= {min_item} ratings)",
        raw.height,
        kept.height,
        users_removed=raw["user_id"].n_unique() - kept["user_id"].n_unique(),
        items_removed=raw["item_id"].n_unique() - kept["item_id"].n_unique(),
    )
    return kept, step


def _sasrec5(files: DatasetFiles) -> DatasetEvents:
    """The staged SASRec layout: `user item` pairs with SASRec item ids, and their MovieID map."""
    pairs_file, map_file = "ml-1m.sasrec5.txt.gz", "ml-1m.sasrec5.item_map.tsv"
    pairs = read_delimited(files, pairs_file, {"user_id": pl.Int64, "sasrec_item": pl.Int64},
                           sep=" ")
    item_map = read_delimited(files, map_file, {"sasrec5_item": pl.Int64, "movie_id": pl.Int64},
                              header=True)
    df = pairs.join(item_map, left_on="sasrec_item", right_on="sasrec5_item", how="left",
                    maintain_order="left")
    missing = df["movie_id"].null_count()
    if missing:
        raise DataError(f"{files.where(map_file)}: {missing:,} events use items missing from the "
                        "map.")
    df = with_positions(df.select("user_id", pl.col("movie_id").alias("item_id")))
    notes = [POSITION_NOTE, "SASRec preprocessing (items with >= 5 ratings) was applied upstream; "
             "item ids are MovieLens MovieIDs"]
    return DatasetEvents(df, files.where(pairs_file), "position", notes)


@register_dataset(
    "ml-1m",
    description="MovieLens 1M with SASRec preprocessing (items with >= 5 ratings): "
    "6,040 users, 3,416 items, 999,611 events",
    licence=_GROUPLENS_TERMS,
    homepage="https://grouplens.org/datasets/movielens/1m/",
    downloads=(
        Download(
            f"{_GROUPLENS}/ml-1m.zip", "ml-1m.zip",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            md5="c4d9eecfca2ab87c1945afe126590906", size=5917549, extract=True,
            checksum_source=f"{_TFDS}; md5 from GroupLens ml-1m.zip.md5",
        ),
    ),
    layouts=(
        Layout("grouplens", "ml-1m", ("ratings.dat",)),
        Layout("grouplens", "ml-1m.zip", ("ratings.dat",)),
        Layout("sasrec5", "ml-1m", ("ml-1m.sasrec5.txt.gz", "ml-1m.sasrec5.item_map.tsv")),
    ),
    metadata=_meta_ml1m,  # the staged copy has no ratings: not a CTR dataset
)
def read_ml1m(files: DatasetFiles, kind: str) -> DatasetEvents:
    """ml-1m: GroupLens `ratings.dat` (SASRec's item filter applied here) or the staged pairs."""
    if kind == "sasrec5":
        return _sasrec5(files)
    raw = read_delimited(files, "ratings.dat", _RATINGS, double_colon=True)
    df, step = sasrec_item_filter(raw)
    return DatasetEvents(epoch_seconds(df), files.where("ratings.dat"), None, [], [step],
                         rows_read=raw.height)


# ---------------------------------------------------------------------- ml-100k
def _meta_ml100k(files: DatasetFiles, kind: str) -> pl.DataFrame:
    genres = read_delimited(files, "u.genre", {"name": pl.String, "index": pl.Int64}, sep="|",
                            encoding="latin-1")
    names = genres.drop_nulls().sort("index")["name"].to_list()
    schema: dict[str, Any] = {"item_id": pl.Int64, "title": pl.String, "release": pl.String,
                              "video_release": pl.String, "url": pl.String}
    schema |= {f"g{i}": pl.Int64 for i in range(len(names))}
    df = read_delimited(files, "u.item", schema, sep="|", encoding="latin-1")
    flags = [pl.when(pl.col(f"g{i}") == 1).then(pl.lit(g)) for i, g in enumerate(names)]
    return df.select("item_id", "title", pl.concat_list(flags).list.drop_nulls().alias("genres"))


@register_dataset(
    "ml-100k",
    description="MovieLens 100K ratings with timestamps: 943 users, 1,682 items, 100,000 events",
    licence=_GROUPLENS_TERMS,
    homepage="https://grouplens.org/datasets/movielens/100k/",
    downloads=(
        Download(
            f"{_GROUPLENS}/ml-100k.zip", "ml-100k.zip",
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            md5="0e33842e24a9c977be4e0107933c0723", size=4924029, extract=True,
            checksum_source=f"{_TFDS}; md5 as published by GroupLens (used by torchtext and "
            "others)",
        ),
    ),
    layouts=(
        Layout("grouplens", "ml-100k", ("u.data",)),
        Layout("grouplens", "ml-100k.zip", ("u.data",)),
    ),
    metadata=_meta_ml100k,
    tasks=_TASKS,
)
def read_ml100k(files: DatasetFiles, kind: str) -> DatasetEvents:
    """ml-100k: GroupLens `u.data` (user, item, rating, Unix seconds)."""
    df = read_delimited(files, "u.data", _RATINGS)
    return DatasetEvents(epoch_seconds(df), files.where("u.data"))


# ---------------------------------------------------------------------- ml-latest-small
def _meta_ml_latest_small(files: DatasetFiles, kind: str) -> pl.DataFrame:
    schema = {"movieId": pl.Int64, "title": pl.String, "genres": pl.String}
    df = read_delimited(files, "movies.csv", schema, sep=",", header=True)
    return df.select(pl.col("movieId").alias("item_id"), "title", _genre_list("genres"))


@register_dataset(
    "ml-latest-small",
    description="MovieLens latest-small (2018-09) ratings with timestamps: 610 users, "
    "9,724 items, 100,836 events",
    licence="GroupLens terms: research use, cite, no commercial use; redistribution allowed "
    "under the same terms",
    homepage="https://grouplens.org/datasets/movielens/latest/",
    downloads=(
        Download(
            f"{_GROUPLENS}/ml-latest-small.zip", "ml-latest-small.zip",
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
            size=978202, extract=True, checksum_source=_TFDS,
        ),
    ),
    layouts=(
        Layout("grouplens", "ml-latest-small", ("ratings.csv",)),
        Layout("grouplens", "ml-latest-small.zip", ("ratings.csv",)),
    ),
    metadata=_meta_ml_latest_small,
    tasks=_TASKS,
)
def read_ml_latest_small(files: DatasetFiles, kind: str) -> DatasetEvents:
    """ml-latest-small: GroupLens `ratings.csv` (userId, movieId, rating, timestamp)."""
    schema = {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    df = read_delimited(files, "ratings.csv", schema, sep=",", header=True)
    df = df.rename({"userId": "user_id", "movieId": "item_id"})
    df = df.select("user_id", "item_id", "rating", "timestamp")
    return DatasetEvents(epoch_seconds(df), files.where("ratings.csv"))
