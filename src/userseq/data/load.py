"""One entry point from a `--data` argument (dataset name or file path) to an EventLog.

This is the one module that joins the two: `datasets` knows names, `io`/`eventlog` know files.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from userseq.core.errors import DataError
from userseq.data.config import DataConfig
from userseq.data.datasets import DATASETS, is_dataset_name, load_dataset
from userseq.data.eventlog import Columns, EventLog


def load_events(data: Any, cfg: DataConfig | None = None) -> EventLog:
    """Load a named dataset (see `userseq datasets list`) or an events file / DataFrame."""
    cfg = cfg or DataConfig()
    options = dict(min_user_events=cfg.min_user_events, min_item_events=cfg.min_item_events,
                   k_core=cfg.k_core, dedup_consecutive=cfg.dedup_consecutive)
    if cfg.strip_ids:
        options["strip_ids"] = True
    if cfg.tie_order != "file":
        options.update(tie_order=cfg.tie_order, tie_seed=cfg.tie_seed)
    if isinstance(data, str) and is_dataset_name(data):
        return load_dataset(data, **options)
    check_not_a_misspelt_name(data)
    columns = Columns(user=cfg.user_col, item=cfg.item_col, timestamp=cfg.timestamp_col)
    return EventLog.read(data, columns=columns, **options)


def check_not_a_misspelt_name(data: Any) -> None:
    """A bare word that is neither a file nor a dataset name: say so, with the closest name."""
    if not isinstance(data, str | Path):
        return
    p = Path(data)
    if p.suffix or len(p.parts) != 1 or p.exists():
        return
    close = difflib.get_close_matches(str(p).lower(), DATASETS.names(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(
        f"{p}: not a known dataset name and no such file.{hint} Known datasets: "
        f"{', '.join(DATASETS.names())} (see `userseq datasets list`); or pass the path of an "
        "events file (.csv, .tsv, .parquet, .jsonl)."
    )
