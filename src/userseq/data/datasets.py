"""Named public datasets: where to find them, how to download and verify them, how to read them.

`load_dataset("ml-1m")` returns an `EventLog`. A local copy is looked for, in this order, under

1. `$USERSEQ_DATA` (laid out like the project's `shared/data`, or holding the publisher's
   files: `ml-1m.zip`, an extracted `ml-1m/ratings.dat`, `Beauty.txt`, ...);
2. `../shared/data` relative to the current directory, then relative to the repository;
3. the download cache `~/.cache/userseq/<name>` (`$USERSEQ_CACHE/<name>` when set).

When none is found the publisher's file is downloaded into the cache, checked against its
published checksum, and unzipped. Each loader reads every layout it may find (the publisher's
raw files, or the derived files staged in `shared/data`) with Polars, without per-row Python.

Datasets without timestamps (the published sequences) get the position in the user's sequence as
timestamp, with `timestamp_kind="position"` and a note saying so.

Licences: the MovieLens 1M/100K terms forbid redistribution without permission and commercial
use; the Amazon and LastFM derivatives are research-use data. Keep them out of public releases.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from userseq.core.errors import DataError
from userseq.data.eventlog import EventLog, Step

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSpec",
    "Download",
    "Layout",
    "dataset_path",
    "fetch_dataset",
    "is_dataset_name",
    "list_datasets",
    "load_dataset",
    "load_item_metadata",
]

DOWNLOAD_TIMEOUT_S = 60.0
POSITION_NOTE = "timestamps are positions in the published sequence (the source has no timestamps)"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------- registry types
@dataclass(frozen=True)
class Download:
    """One file to download. `sha256` / `md5` / `size` are checked when given (None = unknown)."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract: bool = False
    checksum_source: str = ""  # where the checksum comes from (documentation only)

    @property
    def checksum(self) -> str | None:
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None


@dataclass(frozen=True)
class Layout:
    """One way a usable copy can sit under a search root.

    `path` is relative to the root: a directory (`"."` = the root itself) or a `.zip` archive;
    `needs` are the file names that must be inside it (the first one holds the events).
    `kind` tells the loader which format it is reading.
    """

    kind: str
    path: str
    needs: tuple[str, ...]

    def describe(self) -> str:
        if self.path.endswith(".zip"):
            return self.path
        return "/".join(p for p in (self.path, self.needs[0]) if p != ".")


@dataclass
class _Events:
    """What a loader hands to `EventLog.from_frame`: columns user_id, item_id, timestamp (+ extras)."""

    frame: pl.DataFrame
    source: str
    timestamp_kind: str | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)  # preprocessing done before from_frame
    rows_read: int | None = None


Loader = Callable[["_Files", str], _Events]
MetadataLoader = Callable[["_Files", str], pl.DataFrame]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: what it is, where it comes from, how copies look and how to read them."""

    name: str
    description: str
    licence: str
    homepage: str
    downloads: tuple[Download, ...]
    layouts: tuple[Layout, ...]
    load: Loader
    metadata: MetadataLoader | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Public summary of a named dataset (see `list_datasets`)."""

    name: str
    description: str
    url: str
    found_at: Path | None
    licence: str
    checksum: str | None = None
    urls: tuple[str, ...] = ()


# ---------------------------------------------------------------------- file access
class _Files:
    """Read named files from a directory or from a zip archive (members matched by base name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: dict[str, str] | None = None
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    names = [n for n in zf.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(
                    f"{path}: not a readable zip archive ({e}). Delete it and download it again."
                ) from None
            members: dict[str, str] = {}
            for n in sorted(names, key=lambda s: (s.count("/"), s)):  # shallowest member wins
                if "__MACOSX" not in n:
                    members.setdefault(n.rsplit("/", 1)[-1], n)
            self._members = members

    @property
    def is_zip(self) -> bool:
        return self._members is not None

    def has(self, name: str) -> bool:
        if self._members is not None:
            return name in self._members
        return (self.path / name).is_file()

    def where(self, name: str) -> str:
        """Human-readable location of a file, for messages and `EventLog.source`."""
        if self._members is not None:
            return f"{self.path}!{self._members.get(name, name)}"
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        if not self.has(name):
            raise DataError(f"{self.where(name)}: file not found (expected next to the dataset's events file).")
        if self._members is not None:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(self._members[name])
        else:
            data = (self.path / name).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        return data


def _csv(files: _Files, name: str, schema: dict[str, Any], *, sep: str = "\t", header: bool = False,
         encoding: str = "utf-8", double_colon: bool = False) -> pl.DataFrame:
    """Parse a delimited file with Polars; `double_colon` handles MovieLens' `::` separator."""
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{files.where(name)}: could not parse: {first}") from None


def _sequence_lines(files: _Files, name: str) -> pl.DataFrame:
    """Read `user item item ...` lines into (user_id, item_id, timestamp = position) rows."""
    data = files.read(name)
    lines = pl.read_csv(
        io.BytesIO(data), has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String}
    )
    tokens = lines.select(pl.col("line").str.extract_all(r"\S+").alias("tok")).filter(pl.col("tok").list.len() > 1)
    df = tokens.select(
        pl.col("tok").list.first().alias("user_id"), pl.col("tok").list.slice(1).alias("item_id")
    ).explode("item_id")
    return _with_positions(_int_ids(df, files.where(name)))


def _int_ids(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """Cast user_id/item_id text columns to Int64, failing with the first bad value."""
    out = df.with_columns(pl.col("user_id", "item_id").cast(pl.Int64, strict=False))
    for col in ("user_id", "item_id"):
        bad = out[col].is_null() & df[col].is_not_null()
        if bad.any():
            raise DataError(f"{where}: non-integer {col} {df.filter(bad)[col][0]!r}; the file may be corrupt.")
    return out


def _with_positions(df: pl.DataFrame) -> pl.DataFrame:
    """Timestamp = 0-based position of each row within its user's rows (input order)."""
    return df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp"))


def _epoch_seconds(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.from_epoch(pl.col("timestamp"), time_unit="s"))


# ---------------------------------------------------------------------- loaders
_ML1M_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Int64, "timestamp": pl.Int64}


def _load_ml1m(files: _Files, kind: str) -> _Events:
    if kind == "sasrec5":
        pairs = _csv(files, "ml-1m.sasrec5.txt.gz", {"user_id": pl.Int64, "sasrec_item": pl.Int64}, sep=" ")
        item_map = _csv(
            files, "ml-1m.sasrec5.item_map.tsv", {"sasrec5_item": pl.Int64, "movie_id": pl.Int64}, header=True
        )
        df = pairs.join(item_map, left_on="sasrec_item", right_on="sasrec5_item", how="left", maintain_order="left")
        missing = df["movie_id"].null_count()
        if missing:
            raise DataError(
                f"{files.where('ml-1m.sasrec5.item_map.tsv')}: {missing:,} events use items missing from the map."
            )
        df = _with_positions(df.select("user_id", pl.col("movie_id").alias("item_id")))
        return _Events(
            df,
            files.where("ml-1m.sasrec5.txt.gz"),
            "position",
            [POSITION_NOTE, "SASRec preprocessing (items with >= 5 ratings) was applied upstream; "
             "item ids are MovieLens MovieIDs"],
        )
    raw = _csv(files, "ratings.dat", _ML1M_SCHEMA, double_colon=True)
    df, step = _sasrec_item_filter(raw)
    return _Events(_epoch_seconds(df), files.where("ratings.dat"), None, [], [step], rows_read=raw.height)


def _sasrec_item_filter(raw: pl.DataFrame, min_item: int = 5) -> tuple[pl.DataFrame, Step]:
    """SASRec's ml-1m preprocessing: drop items with fewer than `min_item` ratings, keep all users."""
    kept = raw.filter(pl.len().over("item_id") >= min_item)
    step = Step(
        f"SASRec item filter (item >= {min_item} ratings)",
        raw.height,
        kept.height,
        users_removed=raw["user_id"].n_unique() - kept["user_id"].n_unique(),
        items_removed=raw["item_id"].n_unique() - kept["item_id"].n_unique(),
    )
    return kept, step


def _load_ml100k(files: _Files, kind: str) -> _Events:
    df = _csv(files, "u.data", _ML1M_SCHEMA)
    return _Events(_epoch_seconds(df), files.where("u.data"))


def _load_ml_latest_small(files: _Files, kind: str) -> _Events:
    schema = {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    df = _csv(files, "ratings.csv", schema, sep=",", header=True)
    df = df.rename({"userId": "user_id", "movieId": "item_id"}).select("user_id", "item_id", "rating", "timestamp")
    return _Events(_epoch_seconds(df), files.where("ratings.csv"))


def _s3rec_spec(name: str, fname: str, description: str, licence: str, sha256: str) -> DatasetSpec:
    """A dataset from the S3-Rec repository: one `user item item ...` file, local or downloaded."""
    return DatasetSpec(
        name=name, description=description, licence=licence, homepage="https://github.com/RUCAIBox/CIKM2020-S3Rec",
        downloads=(Download(f"{_S3REC}/{fname}", fname, sha256=sha256, checksum_source=_LOCAL_SHA),),
        layouts=(Layout("s3rec", "amazon-s3rec", (fname,)), Layout("s3rec", ".", (fname,))),
        load=_s3rec_loader(fname),
    )


def _s3rec_loader(filename: str) -> Loader:
    def load(files: _Files, kind: str) -> _Events:
        return _Events(_sequence_lines(files, filename), files.where(filename), "position", [POSITION_NOTE])

    load.__doc__ = f"Read S3-Rec's {filename} (`user item item ...` per line, chronological)."
    return load


def _load_scientific(files: _Files, kind: str) -> _Events:
    """Rebuild each user's sequence from the leave-one-out test file: item_id_list + item_id."""
    name = "Scientific.test.inter"
    rows = _csv(files, name, {"user_id": pl.String, "item_id_list": pl.String, "item_id": pl.String}, header=False)
    if rows.height and rows["user_id"][0].startswith("user_id:"):
        rows = rows.slice(1)  # RecBole typed header (user_id:token ...)
    seqs = rows.select(
        "user_id",
        pl.concat_list(
            pl.col("item_id_list").fill_null("").str.extract_all(r"\S+"), pl.col("item_id").str.strip_chars()
        ).alias("item_id"),
    ).explode("item_id")
    df = _with_positions(_int_ids(seqs, files.where(name)))
    return _Events(
        df,
        files.where(name),
        "position",
        [POSITION_NOTE, "sequences rebuilt from Scientific.test.inter (history capped at 50 items + target)"],
    )


# ---------------------------------------------------------------------- item metadata
def _genre_list(col: str) -> pl.Expr:
    return (
        pl.when(pl.col(col) == "(no genres listed)")
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col(col).str.split("|"))
        .alias("genres")
    )


def _meta_ml1m(files: _Files, kind: str) -> pl.DataFrame:
    df = _csv(
        files, "movies.dat", {"item_id": pl.Int64, "title": pl.String, "genres": pl.String},
        encoding="latin-1", double_colon=True,
    )
    return df.select("item_id", "title", _genre_list("genres"))


def _meta_ml100k(files: _Files, kind: str) -> pl.DataFrame:
    genres = _csv(files, "u.genre", {"name": pl.String, "index": pl.Int64}, sep="|", encoding="latin-1")
    genres = genres.drop_nulls().sort("index")
    names = genres["name"].to_list()
    schema: dict[str, Any] = {"item_id": pl.Int64, "title": pl.String, "release": pl.String,
                              "video_release": pl.String, "url": pl.String}
    schema |= {f"g{i}": pl.Int64 for i in range(len(names))}
    df = _csv(files, "u.item", schema, sep="|", encoding="latin-1")
    flags = [pl.when(pl.col(f"g{i}") == 1).then(pl.lit(g)) for i, g in enumerate(names)]
    return df.select("item_id", "title", pl.concat_list(flags).list.drop_nulls().alias("genres"))


def _meta_ml_latest_small(files: _Files, kind: str) -> pl.DataFrame:
    df = _csv(
        files, "movies.csv", {"movieId": pl.Int64, "title": pl.String, "genres": pl.String}, sep=",", header=True
    )
    return df.select(pl.col("movieId").alias("item_id"), "title", _genre_list("genres"))


def _meta_scientific(files: _Files, kind: str) -> pl.DataFrame:
    """Item text keyed by index: Scientific.text is keyed by ASIN, item2index maps ASIN -> index."""
    index = _csv(files, "Scientific.item2index", {"asin": pl.String, "item_id": pl.Int64})
    text = _csv(files, "Scientific.text", {"asin": pl.String, "text": pl.String}, header=False)
    if text.height and text["asin"][0].startswith("item_id:"):
        text = text.slice(1)
    df = index.join(text, on="asin", how="left", maintain_order="left")
    return df.select("item_id", "asin", pl.col("text").str.strip_chars().alias("title"))


# ---------------------------------------------------------------------- registry
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_TFDS = "tensorflow/datasets tensorflow_datasets/url_checksums/movielens.txt (sha256, size)"
_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data"
_COWPIREC = (
    "https://raw.githubusercontent.com/ysh-1998/CoWPiRec/db47560c2364650d22afc77080717287daec5079/dataset/Scientific"
)
_LOCAL_SHA = "sha256 of the staged copy (shared/data, fetched from this pinned commit)"
_GROUPLENS_TERMS = (
    "GroupLens terms: research use, cite Harper & Konstan 2015, no commercial use, "
    "no redistribution without permission"
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="ml-1m",
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
            load=_load_ml1m,
            metadata=_meta_ml1m,
        ),
        DatasetSpec(
            name="ml-100k",
            description="MovieLens 100K ratings with timestamps: 943 users, 1,682 items, 100,000 events",
            licence=_GROUPLENS_TERMS,
            homepage="https://grouplens.org/datasets/movielens/100k/",
            downloads=(
                Download(
                    f"{_GROUPLENS}/ml-100k.zip", "ml-100k.zip",
                    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                    md5="0e33842e24a9c977be4e0107933c0723", size=4924029, extract=True,
                    checksum_source=f"{_TFDS}; md5 as published by GroupLens (used by torchtext and others)",
                ),
            ),
            layouts=(
                Layout("grouplens", "ml-100k", ("u.data",)),
                Layout("grouplens", "ml-100k.zip", ("u.data",)),
            ),
            load=_load_ml100k,
            metadata=_meta_ml100k,
        ),
        DatasetSpec(
            name="ml-latest-small",
            description="MovieLens latest-small (2018-09) ratings with timestamps: 610 users, 9,724 items, "
            "100,836 events",
            licence="GroupLens terms: research use, cite, no commercial use; redistribution allowed under the same "
            "terms",
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
            load=_load_ml_latest_small,
            metadata=_meta_ml_latest_small,
        ),
        _s3rec_spec(
            "amazon-beauty", "Beauty.txt",
            "Amazon Beauty 5-core, S3-Rec preprocessing (sequences, no timestamps): 22,363 users, 12,101 items, "
            "198,502 events",
            "Amazon review data (McAuley lab): research use only; S3-Rec repository has no licence file",
            "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        ),
        _s3rec_spec(
            "amazon-lastfm", "LastFM.txt",
            "LastFM (HetRec 2011), S3-Rec preprocessing (sequences, no timestamps): 1,090 users, 3,646 items, "
            "52,551 events",
            "HetRec 2011 terms: research use; S3-Rec repository has no licence file",
            "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802",
        ),
        DatasetSpec(
            name="amazon-scientific",
            description="Amazon 2018 Industrial & Scientific, UniSRec preprocessing, with item text "
            "(sequences, no timestamps): 8,442 users, 4,385 items",
            licence="Amazon review data 2018 (McAuley lab): research use only; source repository has no licence file",
            homepage="https://github.com/RUCAIBox/UniSRec",
            downloads=tuple(
                Download(f"{_COWPIREC}/{fname}", fname, sha256=sha, checksum_source=_LOCAL_SHA)
                for fname, sha in (
                    ("Scientific.test.inter", "546da7e5f44002b4518d7fd58066684bc09613f76c240914e16976d57cfe7083"),
                    ("Scientific.text", "95887e6bda76e54f59b71b566320520d5da74e21d3b6ff8f20bfb6e8e84aa831"),
                    ("Scientific.item2index", "896ab1017508cf20834d3d0537da9f8f624324223a835af272a98ba16f8c087a"),
                )
            ),
            layouts=(
                Layout("unisrec", "amazon-text/Scientific", ("Scientific.test.inter",)),
                Layout("unisrec", "Scientific", ("Scientific.test.inter",)),
                Layout("unisrec", ".", ("Scientific.test.inter",)),
            ),
            load=_load_scientific,
            metadata=_meta_scientific,
        ),
    )
}


# ---------------------------------------------------------------------- lookup
def is_dataset_name(s: Any) -> bool:
    """True when `s` names a registered dataset (so it is not taken for a file path)."""
    return isinstance(s, str) and s in DATASETS


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DataError(f"unknown dataset {name!r}. Known: {', '.join(DATASETS)}; or pass a path to an events file")
    return spec


def cache_dir(name: str) -> Path:
    """Download cache for one dataset: `$USERSEQ_CACHE/<name>` or `~/.cache/userseq/<name>`."""
    base = os.environ.get("USERSEQ_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "userseq") / name


def _repo_shared_data() -> Path | None:
    parents = Path(__file__).resolve().parents  # .../<repo>/src/userseq/data/datasets.py
    return parents[4] / "shared" / "data" if len(parents) > 4 else None


def search_roots(name: str) -> list[Path]:
    """Directories searched for a local copy, in priority order (existing ones only, no duplicates)."""
    candidates: list[Path | None] = []
    env = os.environ.get("USERSEQ_DATA")
    if env:
        if not Path(env).expanduser().is_dir():
            warnings.warn(f"$USERSEQ_DATA={env} is not a directory; ignoring it.", stacklevel=3)
        candidates.append(Path(env).expanduser())
    candidates += [Path.cwd().parent / "shared" / "data", _repo_shared_data(), cache_dir(name)]
    roots: list[Path] = []
    seen: set[Path] = set()
    for c in candidates:
        if c is None or not c.is_dir():
            continue
        key = c.resolve()
        if key not in seen:
            seen.add(key)
            roots.append(c)
    return roots


@dataclass
class _Found:
    layout: Layout
    files: _Files

    @property
    def path(self) -> Path:
        return self.files.path


def _find_in(spec: DatasetSpec, root: Path) -> _Found | None:
    for layout in spec.layouts:
        p = root if layout.path == "." else root / layout.path
        if layout.path.endswith(".zip"):
            if not p.is_file():
                continue
        elif not p.is_dir():
            continue
        files = _Files(p)
        if all(files.has(n) for n in layout.needs):
            return _Found(layout, files)
    return None


def _locate(spec: DatasetSpec) -> _Found | None:
    for root in search_roots(spec.name):
        found = _find_in(spec, root)
        if found is not None:
            return found
    return None


def dataset_path(name: str) -> Path | None:
    """Where a usable local copy of `name` is: a directory holding its files, or a zip; None if none."""
    found = _locate(_spec(name))
    return found.path if found else None


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, with where (if anywhere) a local copy was found."""
    out = []
    for spec in DATASETS.values():
        found = _locate(spec)
        out.append(
            DatasetInfo(
                name=spec.name,
                description=spec.description,
                url=spec.downloads[0].url,
                found_at=found.path if found else None,
                licence=spec.licence,
                checksum=spec.downloads[0].checksum,
                urls=tuple(d.url for d in spec.downloads),
            )
        )
    return out


# ---------------------------------------------------------------------- download
def _expected_files(spec: DatasetSpec) -> str:
    return " or ".join(f"'{layout.describe()}'" for layout in spec.layouts)


def _unreachable(spec: DatasetSpec, d: Download, reason: str) -> DataError:
    return DataError(
        f"{spec.name}: this machine could not reach {d.url} ({reason}). Download "
        f"{', '.join(x.filename for x in spec.downloads)} elsewhere and place the files in a directory "
        f"named by $USERSEQ_DATA, as {_expected_files(spec)} under that directory "
        "(files from this project's shared/data layout work too)."
    )


def _progress(total: int | None, label: str) -> Any:
    """A rich progress bar on stderr when rich is installed and stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    except ImportError:  # pragma: no cover - rich is a dependency, but stay usable without it
        return None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   transient=True)
    bar.add_task(label, total=total)
    return bar


def _download_file(spec: DatasetSpec, d: Download, target: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Stream `d.url` to `target/d.filename`, verifying size and checksums; a bad file is removed."""
    target.mkdir(parents=True, exist_ok=True)
    out = target / d.filename
    part = out.with_name(out.name + ".part")
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    request = urllib.request.Request(d.url, headers={"User-Agent": "userseq"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, part.open("wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or d.size
            bar = _progress(total, f"{spec.name}: {d.filename}")
            try:
                if bar is not None:
                    bar.start()
                while chunk := resp.read(_CHUNK):
                    fh.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.advance(bar.task_ids[0], len(chunk))
            finally:
                if bar is not None:
                    bar.stop()
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise _unreachable(spec, d, str(reason)) from None
    except OSError as e:  # local disk problems (permissions, full disk) while writing the download
        part.unlink(missing_ok=True)
        raise DataError(f"{spec.name}: could not write {part}: {e}. Set $USERSEQ_CACHE to a writable directory.") from None

    problems = []
    if d.size is not None and size != d.size:
        problems.append(f"size {size:,} bytes, expected {d.size:,}")
    if d.sha256 and sha.hexdigest() != d.sha256:
        problems.append(f"sha256 {sha.hexdigest()}, expected {d.sha256}")
    if d.md5 and md5.hexdigest() != d.md5:
        problems.append(f"md5 {md5.hexdigest()}, expected {d.md5}")
    if problems:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{spec.name}: checksum mismatch for {d.url}: {'; '.join(problems)}. The download is corrupt or "
            f"the publisher changed the file; it was deleted. Retry, or place a verified copy in $USERSEQ_DATA "
            f"as {_expected_files(spec)}."
        )
    if d.checksum is None:
        warnings.warn(
            f"{spec.name}: {d.filename} is UNVERIFIED: no published checksum is known for {d.url} "
            f"(sha256 of what was downloaded: {sha.hexdigest()}).",
            stacklevel=3,
        )
    part.replace(out)
    return out


def _extract(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            root = target.resolve()
            for member in zf.namelist():
                if not (target / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: unsafe path {member!r} in archive; not extracting.")
            zf.extractall(target)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip archive ({e}). Delete it and download it again.") from None


def fetch_dataset(name: str, dest: Path | None = None) -> Path:
    """Return a usable local copy of `name`, downloading it when none exists.

    Without `dest`, the search roots (see the module docstring) are tried first and downloads go
    to the cache. With `dest`, only `dest` is looked at and downloads go there. Downloads are
    verified against the published checksum (DataError on mismatch) and zips are extracted;
    the returned path is the directory holding the files (or a zip found locally).
    """
    return _fetch(_spec(name), dest).path


def _fetch(spec: DatasetSpec, dest: Path | None) -> _Found:
    if dest is None:
        found = _locate(spec)
        target = cache_dir(spec.name)
    else:
        target = Path(dest).expanduser()
        found = _find_in(spec, target) if target.is_dir() else None
    if found is not None:
        return found
    for d in spec.downloads:
        path = _download_file(spec, d, target)
        if d.extract:
            _extract(path, target)
    found = _find_in(spec, target)
    if found is None:
        raise DataError(
            f"{spec.name}: downloaded into {target} but found none of {_expected_files(spec)} there; "
            "the publisher's layout may have changed."
        )
    return found


# ---------------------------------------------------------------------- loading
def _open(name: str) -> tuple[DatasetSpec, _Found]:
    spec = _spec(name)
    return spec, _fetch(spec, None)


def load_dataset(name: str, **eventlog_options: Any) -> EventLog:
    """Load a named dataset as an `EventLog` (fetching it if needed).

    `eventlog_options` go to `EventLog.from_frame` (min_user_events, min_item_events, k_core,
    dedup_consecutive, timestamp_kind, notes). Ratings are kept as the extra column `rating`.
    """
    spec, found = _open(name)
    ev = spec.load(found.files, found.layout.kind)
    options = dict(eventlog_options)
    notes = [*ev.notes, *(options.pop("notes", None) or [])]
    if ev.timestamp_kind is not None:
        options.setdefault("timestamp_kind", ev.timestamp_kind)
    log = EventLog.from_frame(ev.frame, source=f"{spec.name} ({ev.source})", notes=notes, **options)
    if ev.steps:
        n = ev.rows_read if ev.rows_read is not None else ev.steps[0].events_before
        log.report = [Step("read", n, n), *ev.steps, *log.report[1:]]
    return log


def load_item_metadata(name: str) -> pl.DataFrame | None:
    """Item titles/genres (MovieLens) or item text (amazon-scientific), keyed by `item_id`.

    `item_id` has the same values and type as the EventLog's original item ids. Columns:
    `item_id`, `title`, and `genres` (list of strings) for MovieLens; `item_id`, `asin`, `title`
    (UniSRec text "title. categories. brand.") for amazon-scientific. None when the dataset has
    no item metadata.
    """
    spec = _spec(name)
    if spec.metadata is None:
        return None
    _, found = _open(name)
    return spec.metadata(found.files, found.layout.kind)
