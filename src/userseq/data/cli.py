"""`userseq datasets list|fetch` and `userseq validate` (registered by `userseq.cli`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core.cli import out
from userseq.core.errors import UserseqWarning


# ---------------------------------------------------------------------- datasets
def datasets_list() -> None:
    """Show the named datasets (next-item, CTR and detection) and where a local copy was found."""
    from userseq.data.datasets import list_datasets

    infos = list_datasets()
    t = Table()
    t.add_column("name", no_wrap=True, min_width=max(len(d.name) for d in infos))
    t.add_column("tasks", no_wrap=True)
    t.add_column("description", overflow="fold")
    t.add_column("local copy", overflow="fold")  # paths and URLs in full, folded
    t.add_column("source", overflow="fold")
    for d in infos:
        found = str(d.found_at) if d.found_at else "[dim]not found (fetch downloads it)[/]"
        t.add_row(d.name, ", ".join(d.tasks), d.description, found, d.url)
    out.print(t)


DestOption = Annotated[Path | None, typer.Option(help="target directory")]


def datasets_fetch(name: str, dest: DestOption = None) -> None:
    """Download a named dataset (verified by checksum) unless a local copy exists."""
    from userseq.data.datasets import fetch_dataset

    out.print(f"{name}: {fetch_dataset(name, dest)}")


# ---------------------------------------------------------------------- validate
def validate(
    data: Annotated[str, typer.Argument(help="events file (CSV/TSV/Parquet/JSONL) or dataset "
                                             "name")],
    user_col: Annotated[str, typer.Option(help="user id column")] = "user_id",
    item_col: Annotated[str, typer.Option(help="item id column")] = "item_id",
    timestamp_col: Annotated[str, typer.Option(help="timestamp column")] = "timestamp",
    min_user_events: int = 0,
    min_item_events: int = 0,
    k_core: bool = False,
    dedup_consecutive: bool = False,
    strip_ids: Annotated[bool, typer.Option(help="strip blanks around string ids")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Read an event log and print a data report (counts, lengths, time range, problems)."""
    from userseq.data.config import DataConfig
    from userseq.data.load import load_events

    cfg = DataConfig(user_col=user_col, item_col=item_col, timestamp_col=timestamp_col,
                     min_user_events=min_user_events, min_item_events=min_item_events,
                     k_core=k_core, dedup_consecutive=dedup_consecutive, strip_ids=strip_ids)
    with warnings.catch_warnings():  # the report lists them under problems
        warnings.simplefilter("ignore", UserseqWarning)
        log = load_events(data, cfg)
    d = log.describe()
    d["problems"] = _problems(d, log.timestamp_kind) + list(log.notes)
    d["steps"] = [s.describe() for s in log.report]
    if as_json:
        out.print_json(json.dumps(d))
    else:
        _print_report(d, log.timestamp_kind)


def _problems(d: dict[str, Any], timestamp_kind: str) -> list[str]:
    """What in a `describe()` report needs the user's attention, with what to do about it."""
    problems = []
    if timestamp_kind == "position":
        problems.append("timestamps are positions in the published sequence (the source has no "
                        "timestamps); the temporal split is not meaningful")
    if d["users_under_3_events"]:
        problems.append(f"{d['users_under_3_events']:,} users have fewer than 3 events: "
                        "leave-one-out needs --min-user-events 3 (they will be counted) or a "
                        "temporal split")
    if d["timestamp_ties"]:
        problems.append(f"{d['timestamp_ties']:,} events share their user's previous timestamp; "
                        "input order breaks the tie")
    if d["consecutive_repeats"]:
        problems.append(f"{d['consecutive_repeats']:,} consecutive repeats of the same item "
                        "(--dedup-consecutive collapses them)")
    return problems


def _print_report(d: dict[str, Any], timestamp_kind: str) -> None:
    t = Table(title=f"data report: {d['source']}", show_header=False)
    t.add_row("users", f"{d['users']:,}")
    t.add_row("items", f"{d['items']:,}")
    t.add_row("events", f"{d['events']:,}")
    ln = d["length"]
    t.add_row("events per user",
              f"min {ln['min']}  p5 {ln['p5']:.0f}  p25 {ln['p25']:.0f}  median {ln['p50']:.0f}  "
              f"p75 {ln['p75']:.0f}  p95 {ln['p95']:.0f}  max {ln['max']}  mean {ln['mean']:.1f}")
    kind = {"time": "", "numeric": " (numbers)",
            "position": " (sequence positions, no timestamps)"}[timestamp_kind]
    t.add_row("time range", f"{d['time_range'][0]} .. {d['time_range'][1]}{kind}")
    t.add_row("duplicate (user, item) pairs", f"{d['duplicate_user_item_pairs']:,}")
    for s in d["steps"]:
        t.add_row("step", s)
    out.print(t)
    if d["problems"]:
        out.print("[bold yellow]problems found:[/]")
        for p in d["problems"]:
            out.print(f"  - {p}")
    else:
        out.print("[green]no problems found[/]")


def register(app: typer.Typer) -> None:
    datasets_app = typer.Typer(no_args_is_help=True, help="Named public datasets.")
    datasets_app.command("list")(datasets_list)
    datasets_app.command("fetch")(datasets_fetch)
    app.add_typer(datasets_app, name="datasets")
    app.command()(validate)
