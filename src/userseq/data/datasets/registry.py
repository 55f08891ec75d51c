"""The dataset registry (`DATASETS`, `register_dataset`) and the search for local copies."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from userseq.core.errors import DataError
from userseq.core.registry import Registry
from userseq.data.datasets.base import DatasetFiles, DatasetInfo, DatasetSpec, Layout, Loader

DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", hint="See `userseq datasets list`; or pass a path to an events file.")


def register_dataset(spec: DatasetSpec | str, load: Loader | None = None, *,
                     replace: bool = False, **fields: Any) -> Any:
    """Add a named dataset to `DATASETS`, so `load_dataset(name)`, `--data NAME` and
    `userseq datasets list` know it.

    Either pass a full `DatasetSpec`, or a name and the `DatasetSpec` fields (at least `layouts`)
    and use it as a decorator on the events reader (or pass the reader as `load`):

        @register_dataset("shop", layouts=[Layout("csv", "shop", ("clicks.csv",))])
        def shop(files, kind):
            return files.read_table("clicks.csv")  # user_id, item_id, timestamp

    Registering a taken name is an error unless `replace=True`. Returns the spec, or (as a
    decorator) the reader unchanged.
    """
    if isinstance(spec, DatasetSpec):
        if load is not None or fields:
            raise DataError(f"register_dataset({spec.name!r}): pass a DatasetSpec alone, or a name "
                            "with its fields.")
        DATASETS.register(spec.name, spec, replace=replace, help=spec.description)
        return spec

    def add(reader: Loader) -> Loader:
        doc = (reader.__doc__ or "").strip().split("\n")[0]
        built = DatasetSpec(name=spec, load=reader, **{"description": doc, **fields})
        DATASETS.register(spec, built, replace=replace, help=built.description)
        return reader

    return add(load) if load is not None else add


def get_spec(name: Any) -> DatasetSpec:
    """The spec of a registered dataset; an unknown name is a DataError listing the known ones."""
    if not is_dataset_name(name):
        raise DataError(f"unknown dataset {name!r}. Known: {', '.join(DATASETS.names())}; "
                        "or pass a path to an events file")
    return DATASETS.get(name).obj


def is_dataset_name(s: Any) -> bool:
    """True when `s` names a registered dataset (so it is not taken for a file path)."""
    return isinstance(s, str) and s in DATASETS


# ---------------------------------------------------------------------- local copies
def cache_dir(name: str) -> Path:
    """Download cache for one dataset: `$USERSEQ_CACHE/<name>` or `~/.cache/userseq/<name>`."""
    base = os.environ.get("USERSEQ_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "userseq") / name


def _repo_shared_data() -> Path | None:
    parents = Path(__file__).resolve().parents  # <repo>/src/userseq/data/datasets/registry.py
    return parents[5] / "shared" / "data" if len(parents) > 5 else None


def search_roots(name: str) -> list[Path]:
    """Directories searched for a local copy, in priority order (existing ones only, no
    duplicates): $USERSEQ_DATA, ../shared/data from the working directory and from the
    repository, then the download cache."""
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
class Found:
    """A usable copy: the layout it matched and its files."""

    layout: Layout
    files: DatasetFiles

    @property
    def path(self) -> Path:
        return self.files.path


def find_in(spec: DatasetSpec, root: Path | None) -> Found | None:
    """The first layout of `spec` present under `root` (None: only the absolute layouts)."""
    for layout in spec.layouts:
        if root is None and not layout.is_absolute:
            continue
        p = Path(layout.path) if root is None else root / layout.path
        if layout.path.endswith(".zip"):
            if not p.is_file():
                continue
        elif not p.is_dir():
            continue
        files = DatasetFiles(p)
        if all(files.has(n) for n in layout.needs):
            return Found(layout, files)
    return None


def locate(spec: DatasetSpec) -> Found | None:
    """A local copy under the search roots (or at an absolute layout path), or None."""
    for root in [*search_roots(spec.name), None]:
        found = find_in(spec, root)
        if found is not None:
            return found
    return None


def dataset_path(name: str) -> Path | None:
    """Where a usable local copy of `name` is: a directory holding its files, or a zip; None if
    there is none (nothing is downloaded)."""
    found = locate(get_spec(name))
    return found.path if found else None


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, with where (if anywhere) a local copy was found."""
    out = []
    for entry in DATASETS:
        spec = entry.obj
        found = locate(spec)
        first = spec.downloads[0] if spec.downloads else None
        out.append(DatasetInfo(
            name=spec.name,
            description=spec.description,
            url=first.url if first else spec.homepage,
            found_at=found.path if found else None,
            licence=spec.licence,
            checksum=first.checksum if first else None,
            urls=tuple(d.url for d in spec.downloads),
            tasks=spec.tasks,
        ))
    return out
