"""One entry point from a `--data` argument (dataset name or file path) to an EventLog."""

from __future__ import annotations

from typing import Any

from userseq.data.config import DataConfig
from userseq.data.datasets import is_dataset_name, load_dataset
from userseq.data.eventlog import Columns, EventLog


def load_events(data: Any, cfg: DataConfig | None = None) -> EventLog:
    """Load a named dataset (see `userseq datasets list`) or an events file / DataFrame."""
    cfg = cfg or DataConfig()
    options = dict(min_user_events=cfg.min_user_events, min_item_events=cfg.min_item_events,
                   k_core=cfg.k_core, dedup_consecutive=cfg.dedup_consecutive)
    if isinstance(data, str) and is_dataset_name(data):
        return load_dataset(data, **options)
    columns = Columns(user=cfg.user_col, item=cfg.item_col, timestamp=cfg.timestamp_col)
    return EventLog.read(data, columns=columns, **options)
