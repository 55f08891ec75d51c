"""Named datasets: where to find them, how to download and verify them, how to read them.

`load_dataset("ml-1m")` returns an `EventLog`. A local copy is looked for, in this order, under

1. `$USERSEQ_DATA` (laid out like the project's `shared/data`, or holding the publisher's
   files: `ml-1m.zip`, an extracted `ml-1m/ratings.dat`, `Beauty.txt`, ...);
2. `../shared/data` relative to the current directory, then relative to the repository;
3. the download cache `~/.cache/userseq/<name>` (`$USERSEQ_CACHE/<name>` when set).

When none is found the publisher's file is downloaded into the cache, checked against its
published checksum, and unzipped. Each reader reads every layout it may find (the publisher's
raw files, or the derived files staged in `shared/data`) with Polars, without per-row Python.

Datasets without timestamps (the published sequences) get the position in the user's sequence as
timestamp, with `timestamp_kind="position"` and a note saying so.

The machinery lives in `base` (spec and file types), `parse` (shared format readers), `registry`
(`DATASETS`, `register_dataset`, the search for local copies), `fetch` (download, checksum,
extract) and `read` (`load_dataset`, `load_item_metadata`); each family of datasets is one module
that registers its datasets: `movielens`, `amazon`, `wiki` (detection data). Next-item, CTR and
detection datasets share the one registry; `userseq datasets list` shows them all.
"""

from __future__ import annotations

from userseq.data.datasets.base import (
    POSITION_NOTE,
    DatasetEvents,
    DatasetFiles,
    DatasetInfo,
    DatasetSpec,
    Download,
    Layout,
)
from userseq.data.datasets.fetch import fetch_dataset
from userseq.data.datasets.read import load_dataset, load_item_metadata
from userseq.data.datasets.registry import (
    DATASETS,
    cache_dir,
    dataset_path,
    is_dataset_name,
    list_datasets,
    register_dataset,
    search_roots,
)

# isort: off
# The built-in datasets register themselves on import, in this (listing) order.
from userseq.data.datasets import movielens  # noqa: E402, F401
from userseq.data.datasets import amazon  # noqa: E402, F401
from userseq.data.datasets import wiki  # noqa: E402, F401
# isort: on

__all__ = [
    "DATASETS",
    "POSITION_NOTE",
    "DatasetEvents",
    "DatasetFiles",
    "DatasetInfo",
    "DatasetSpec",
    "Download",
    "Layout",
    "cache_dir",
    "dataset_path",
    "fetch_dataset",
    "is_dataset_name",
    "list_datasets",
    "load_dataset",
    "load_item_metadata",
    "register_dataset",
    "search_roots",
]
