"""Reading a named dataset: its events as an `EventLog`, its item metadata as a DataFrame."""

from __future__ import annotations

from typing import Any

import polars as pl

from userseq.data.datasets.base import DatasetEvents
from userseq.data.datasets.fetch import fetch
from userseq.data.datasets.registry import get_spec
from userseq.data.eventlog import EventLog, Step


def load_dataset(name: str, **eventlog_options: Any) -> EventLog:
    """Load a named dataset as an `EventLog` (fetching it if needed).

    `eventlog_options` go to `EventLog.from_frame` (min_user_events, min_item_events, k_core,
    dedup_consecutive, timestamp_kind, notes). Ratings are kept as the extra column `rating`.
    """
    spec = get_spec(name)
    found = fetch(spec, None)
    ev = spec.load(found.files, found.layout.kind)
    if isinstance(ev, pl.DataFrame):
        ev = DatasetEvents(ev, found.files.where(found.layout.needs[0]))
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
    spec = get_spec(name)
    if spec.metadata is None:
        return None
    found = fetch(spec, None)
    return spec.metadata(found.files, found.layout.kind)
