"""What a named dataset is: its spec (downloads, local layouts, readers) and its files.

A `DatasetSpec` says where a dataset comes from (`downloads`), how a usable copy sits under a
search root (`layouts`), and how to read it (`load`, `metadata`). Readers get a `DatasetFiles`,
which reads named files from a directory or from a zip archive alike.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import polars as pl

from userseq.core.errors import DataError
from userseq.data.eventlog import Step
from userseq.data.io import collect_table, first_line, scan_table

POSITION_NOTE = "timestamps are positions in the published sequence (the source has no timestamps)"


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

    `path` is relative to the root (a directory, `"."` = the root itself, or a `.zip` archive) or
    absolute (a fixed place, looked at whatever the roots); `needs` are the file names that must
    be inside it (the first one holds the events). `kind` tells the reader which format it reads.
    """

    kind: str
    path: str
    needs: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        if isinstance(self.needs, str):
            object.__setattr__(self, "needs", (self.needs,))
        if not self.needs:
            raise DataError(f"layout {self.path!r}: name at least one file it needs.")

    @property
    def is_absolute(self) -> bool:
        return Path(self.path).is_absolute()

    def describe(self) -> str:
        if self.path.endswith(".zip"):
            return self.path
        return "/".join(p for p in (self.path, self.needs[0]) if p != ".")


@dataclass
class DatasetEvents:
    """What an events reader returns: columns user_id, item_id, timestamp (+ extras), and notes.

    `steps` are preprocessing steps done before `EventLog.from_frame` (with `rows_read`, the
    number of rows read before the first of them).
    """

    frame: pl.DataFrame
    source: str
    timestamp_kind: str | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    rows_read: int | None = None


Loader = Callable[["DatasetFiles", str], "DatasetEvents | pl.DataFrame"]
MetadataLoader = Callable[["DatasetFiles", str], pl.DataFrame]


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A named dataset: what it is, where it comes from, how copies look and how to read them.

    `load(files, layout_kind)` returns the events (a `DatasetEvents`, or a DataFrame with columns
    user_id, item_id, timestamp); `metadata` the item table, if any. `tasks` names what the data
    is for (shown by `userseq datasets list`).
    """

    name: str
    layouts: tuple[Layout, ...]
    load: Loader
    description: str = ""
    licence: str = ""
    homepage: str = ""
    downloads: tuple[Download, ...] = ()
    metadata: MetadataLoader | None = None
    tasks: tuple[str, ...] = ("nextitem",)

    def __post_init__(self) -> None:
        for name in ("layouts", "downloads", "tasks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.name or not isinstance(self.name, str):
            raise DataError(f"a dataset needs a name (got {self.name!r}).")
        if not self.layouts:
            raise DataError(f"dataset {self.name!r}: give at least one Layout (where its files "
                            "sit).")


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
    tasks: tuple[str, ...] = ()


class DatasetFiles:
    """Read named files from a directory or from a zip archive (members matched by base name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: dict[str, str] | None = None
        if path.suffix.lower() == ".zip":
            self._members = _zip_members(path)

    def has(self, name: str) -> bool:
        if self._members is not None:
            return name in self._members
        return (self.path / name).is_file()

    def glob(self, pattern: str) -> list[str]:
        """Sorted names of the files matching a shell pattern (`benign_*.csv.gz`)."""
        if self._members is not None:
            return sorted(n for n in self._members if fnmatch(n, pattern))
        return sorted(p.name for p in self.path.glob(pattern) if p.is_file())

    def where(self, name: str) -> str:
        """Human-readable location of a file, for messages and `EventLog.source`."""
        if self._members is not None:
            return f"{self.path}!{self._members.get(name, name)}"
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        """The bytes of a file (gzip-decompressed when its name ends in .gz)."""
        if not self.has(name):
            raise DataError(f"{self.where(name)}: file not found (expected next to the dataset's "
                            "events file).")
        if self._members is not None:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(self._members[name])
        else:
            data = (self.path / name).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        return data

    def read_table(self, name: str) -> pl.DataFrame:
        """A CSV/TSV, Parquet or JSONL file (optionally .gz), read like `userseq.data.io` does."""
        if self._members is None:
            lf, where = scan_table(self.path / name)
            return collect_table(lf, where)
        data, suffix = io.BytesIO(self.read(name)), name.lower().removesuffix(".gz")
        try:
            if suffix.endswith((".parquet", ".pq")):
                return pl.read_parquet(data)
            if suffix.endswith((".jsonl", ".ndjson", ".json")):
                return pl.read_ndjson(data, infer_schema_length=None)
            sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
            return pl.read_csv(data, separator=sep, infer_schema_length=10_000)
        except pl.exceptions.PolarsError as e:
            raise DataError(f"{self.where(name)}: could not parse: {first_line(e)}") from None


def _zip_members(path: Path) -> dict[str, str]:
    """Base name -> member name of the files in a zip; the shallowest member of a name wins."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f"{path}: not a readable zip archive ({e}). Delete it and download it again."
        ) from None
    members: dict[str, str] = {}
    for n in sorted(names, key=lambda s: (s.count("/"), s)):
        if "__MACOSX" not in n:
            members.setdefault(n.rsplit("/", 1)[-1], n)
    return members
