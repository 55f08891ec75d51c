"""`userseq train|evaluate|recommend|embed|compress`: the next-item commands (registered by `userseq.cli`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core.artifacts import read_json
from userseq.core.cli import DataArg, RunDirArg, err, out, with_options
from userseq.core.errors import UserseqError


# ---------------------------------------------------------------------- train / evaluate
def train(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory to write")],
    model: Annotated[str | None, typer.Option(help="sasrec | bert4rec | gru4rec")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (sections data/model/loss/train/eval)")] = None,
    user_col: Annotated[str | None, typer.Option(help="user id column (default user_id)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item id column (default item_id)")] = None,
    timestamp_col: Annotated[str | None, typer.Option(help="timestamp column (default timestamp)")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="training time budget in minutes")] = None,
    loss: Annotated[str | None, typer.Option(help="ce | sampled_softmax | bce | gbce")] = None,
    split: Annotated[str | None, typer.Option(help="loo | temporal | cold-start")] = None,
    items: Annotated[str | None, typer.Option(help="item representation: id | text | id+text")] = None,
    item_table: Annotated[str | None, typer.Option(help="full | hash | qr | unified | matryoshka")] = None,
    compression: Annotated[float | None, typer.Option(help="item-table memory ratio (e.g. 8 = 8x smaller)")] = None,
    item_text: Annotated[str | None, typer.Option(help="item attribute table (item_id + text columns)")] = None,
    min_user_events: Annotated[int | None, typer.Option(help="drop users with fewer events (reported)")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoint.safetensors")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train a sequential recommender, evaluate it with full ranking and save the run."""
    from userseq.data.datasets import is_dataset_name
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import load_config

    if out_dir.exists() and not out_dir.is_dir():
        raise UserseqError(f"--out {out_dir}: exists and is not a directory; choose a run directory.")
    if item_text is not None and not Path(item_text).is_file():
        raise UserseqError(f"--item-text {item_text}: file not found; pass a CSV/TSV, Parquet or JSONL table "
                           "with an item_id column and text columns (title, description, ...).")
    # a file path is recorded absolute, so `evaluate RUN` works from any working directory
    dataset = data if is_dataset_name(data) or not Path(data).exists() else str(Path(data).resolve())
    cfg = with_options(load_config(config), {
        "--model": ("model.name", model), "--epochs": ("train.epochs", epochs),
        "--max-minutes": ("train.max_minutes", max_minutes), "--loss": ("loss.name", loss),
        "--split": ("data.split", split), "--min-user-events": ("data.min_user_events", min_user_events),
        "--user-col": ("data.user_col", user_col), "--item-col": ("data.item_col", item_col),
        "--timestamp-col": ("data.timestamp_col", timestamp_col), "--seed": ("train.seed", seed),
        "--device": ("train.device", device), "--data": ("dataset", dataset),
        "--items": ("model.items", items), "--item-table": ("model.item_table", item_table),
        "--compression": ("model.compression", compression),
        "--item-text": ("data.item_text", item_text and str(Path(item_text).resolve())),
    })
    t0 = time.time()
    log = load_events(data, cfg.data)
    err.print(f"loaded {log.source}: {log.n_users:,} users, {log.n_items:,} items, {log.n_events:,} events "
              f"({time.time() - t0:.1f}s)")
    from userseq.nextitem.estimator import (  # torch: imported once the data is fine
        NextItemRecommender,
        _split_kw,
    )

    sp = make_split(log, cfg.data.split, **_split_kw(cfg))
    NextItemRecommender(config=cfg).fit(log, sp, run_dir=out_dir, resume=resume, quiet=quiet)
    metrics = read_json(out_dir / "metrics.json")  # written by fit: valid/test metrics and baselines
    _print_metrics(metrics, f"{cfg.model.name} on {data}")
    out.print(f"saved run to {out_dir}")


def _evaluate_run(rec: Any, log: Any, sp: Any, run_dir: Path) -> dict[str, Any]:
    from userseq.core.artifacts import write_json

    metrics = rec.report(log, sp)
    write_json(metrics, Path(run_dir) / "metrics.json")
    return metrics


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    keys = [k for k in metrics["test"] if k != "users"]
    t.add_column("split")
    for k in keys:
        t.add_column(k, justify="right")
    for name in ("valid", "test"):
        t.add_row(name, *(f"{metrics[name][k]:.4f}" for k in keys))
    for name, m in metrics.get("baselines", {}).items():
        t.add_row(f"test: {name}", *(f"{m[k]:.4f}" for k in keys))
    out.print(t)
    tr = metrics.get("train") or {}
    if tr:
        out.print(f"epochs {tr.get('epochs')} (best {tr.get('best_epoch')}), {tr.get('seconds')}s, "
                  f"{tr.get('seconds_per_epoch')}s/epoch; seen items filtered: {metrics['filter_seen']}")


def evaluate(
    run_dir: RunDirArg,
    data: Annotated[str | None, typer.Option(help="evaluate on this data instead of the training data")] = None,
    filter_seen: Annotated[bool | None, typer.Option(help="filter history items from the ranking")] = None,
) -> None:
    """Full-ranking evaluation of a saved run; writes RUN_DIR/metrics.json."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.estimator import NextItemRecommender, _split_kw, data_fingerprint

    rec = NextItemRecommender.load(run_dir)
    cfg = rec.config
    if filter_seen is not None:
        rec.config = cfg = cfg.updated({"eval.filter_seen": filter_seen})
    source = data or cfg.dataset
    if not source:
        raise UserseqError(f"{run_dir}: the run does not record its data; pass --data.")
    if data is None and Path(source).suffix and not Path(source).exists():
        raise UserseqError(f"{run_dir}: the run was trained on {source}, which no longer exists; "
                           "pass --data PATH (the same events) to evaluate.")
    log = load_events(source, cfg.data)
    fp = data_fingerprint(log)
    if data is None and rec.data_fingerprint and fp != rec.data_fingerprint:
        raise UserseqError(f"{source}: data changed since training (fingerprint {fp} != {rec.data_fingerprint}); "
                           "pass --data explicitly to evaluate on other data.")
    # the model's catalogue is the log's items, then items known only from their text (docs/items.md)
    if log.n_items > len(rec.item_ids) or not log.item_ids.equals(rec.item_ids.head(log.n_items)):
        raise UserseqError(f"{source}: its item catalogue differs from the model's; evaluation needs the same items.")
    sp = make_split(log, cfg.data.split, **_split_kw(cfg))
    metrics = _evaluate_run(rec, log, sp, run_dir)
    _print_metrics(metrics, f"{cfg.model.name}: {run_dir}")
    out.print(f"wrote {run_dir / 'metrics.json'}")


# ---------------------------------------------------------------------- recommend / embed
def recommend(
    run_dir: RunDirArg,
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="user id (repeatable)")] = None,
    history: Annotated[str | None, typer.Option(help="comma-separated item ids, oldest first (new users)")] = None,
    k: Annotated[int, typer.Option("-k", help="number of items")] = 10,
    keep_seen: Annotated[bool, typer.Option(help="allow items from the history")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Top-k next items for known users, or for an explicit history."""
    from userseq.nextitem.estimator import NextItemRecommender

    if k <= 0:
        raise UserseqError(f"-k must be a positive integer (got {k}).")
    if not user and not history:
        raise UserseqError("give --user ID (a user seen in training) or --history ITEM,ITEM,... (any user).")
    rec = NextItemRecommender.load(run_dir)
    frames = []
    if user:
        frames.append(rec.recommend(_typed(user, rec.user_ids, "user"), k, filter_seen=not keep_seen))
    if history:
        items = _typed([h.strip() for h in history.split(",") if h.strip()], rec.item_ids, "item")
        if not items:
            raise UserseqError("--history is empty; give item ids separated by commas, oldest first.")
        df = rec.recommend_history([items], k, filter_seen=not keep_seen, ids=["<history>"])
        frames.append(df.with_columns(df["user_id"].cast(str)))
    import polars as pl

    res = pl.concat([f.with_columns(f["user_id"].cast(pl.String)) for f in frames])
    if as_json:
        rows = res.to_dicts()
        out.print_json(json.dumps(rows, default=str))
        return
    t = Table("user", "rank", "item", "score")
    meta = _item_titles(rec)
    if meta is not None:
        t.add_column("title")
    for r in res.iter_rows(named=True):
        row = [str(r["user_id"]), str(r["rank"]), str(r["item_id"]), f"{r['score']:.4f}"]
        if meta is not None:
            row.append(meta.get(r["item_id"], ""))
        t.add_row(*row)
    out.print(t)


def _item_titles(rec: Any) -> dict | None:
    from userseq.data.datasets import is_dataset_name, load_item_metadata

    name = rec.config.dataset
    if not (name and is_dataset_name(name)):
        return None
    try:
        meta = load_item_metadata(name)
    except UserseqError:
        return None
    return None if meta is None else dict(zip(meta["item_id"].to_list(), meta["title"].to_list(), strict=True))


def _typed(values: list[str], id_map: Any, what: str) -> list[Any]:
    """Command-line ids are strings; convert them to the id type the model was trained with."""
    if id_map.dtype.is_integer():
        bad = [v for v in values if not v.strip().lstrip("+-").isdigit()]
        if bad:
            hint = ("recommend from an explicit history instead: --history ITEM,ITEM,..." if what == "user"
                    else "check the ids")
            raise UserseqError(f"unknown {what} id(s) {bad[:5]}: this model's {what} ids are integers, so these "
                               f"are not in the training data; {hint}.")
        return [int(v) for v in values]
    return values


def embed(
    run_dir: RunDirArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Parquet file for user embeddings")],
    items_out: Annotated[Path | None, typer.Option(help="Parquet file for item embeddings")] = None,
    chunk_size: Annotated[int, typer.Option(help="users encoded and written per Parquet row group "
                                                 "(memory stays bounded by this)")] = 65_536,
    index: Annotated[bool, typer.Option("--index", help="also build the run's ANN indexes (RUN_DIR/index) "
                                                        "from the same vectors, as `userseq index` does")] = False,
    index_kind: Annotated[str | None, typer.Option(help="with --index: auto | exact | flat | hnsw | ivfpq")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Write user (and item) embeddings to Parquet: columns id, embedding (list of floats).

    Users are encoded chunk by chunk and streamed to the file, so a million users need no more
    memory than one chunk."""
    import polars as pl
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from userseq.nextitem.estimator import NextItemRecommender

    if chunk_size <= 0:
        raise UserseqError(f"--chunk-size must be a positive integer (got {chunk_size}).")
    for path in (out_path, items_out):
        if path is not None and not path.parent.is_dir():
            raise UserseqError(f"{path}: directory {path.parent} does not exist; create it first.")
    cfg = None
    if index:
        from userseq.index.vector import IndexConfig

        cfg = IndexConfig.from_options(kind=index_kind)
    elif index_kind is not None:
        raise UserseqError("--index-kind needs --index.")
    from userseq.index.stream import write_user_embeddings

    rec = NextItemRecommender.load(run_dir)
    n = len(rec.user_ids)
    vectors_path = Path(run_dir) / "index" / "user_vectors.npy" if index else None
    with Progress(TextColumn("embedding users"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("users", total=n)
        done = write_user_embeddings(rec, out_path, chunk_size, vectors_path=vectors_path,
                                     progress=lambda d: bar.update(task, completed=d))
    out.print(f"wrote {done:,} user embeddings (dim {rec.encoder.dim}) to {out_path}")
    items_out = items_out or out_path.with_name(out_path.stem + "_items.parquet")
    items = rec.item_embeddings()
    pl.DataFrame({"item_id": rec.item_ids, "embedding": items}).write_parquet(items_out)
    out.print(f"wrote {len(items):,} item embeddings to {items_out}")
    if index:
        from userseq.index.run import RunIndex

        built = RunIndex.build(rec, run_dir, cfg, chunk_size=chunk_size, user_vectors_path=vectors_path)
        m = built.manifest
        out.print(f"built {Path(run_dir) / 'index'}: items {m['items']['kind']} (recall@100 "
                  f"{m['items']['recall@100']:.4f}), users {m['users']['kind']} (recall@100 "
                  f"{m['users']['recall@100']:.4f}) in {m['build_seconds']:.1f}s")




def compress(
    run_dir: Annotated[Path, typer.Argument(help="run directory created by `userseq train`")],
    method: Annotated[str, typer.Option(help="int8 (per-row scale) | pq (faiss product quantization)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="new run directory to write")],
    compression: Annotated[float | None, typer.Option(help="pq: memory ratio vs fp32 (4*dim/M); default 8")] = None,
    subquantizers: Annotated[int | None, typer.Option(help="pq: number of sub-quantizers M (bytes per item)")] = None,
    data: Annotated[str | None, typer.Option(help="evaluate on this data instead of the run's")] = None,
) -> None:
    """Post-training int8 / PQ quantization of a run's item vectors; evaluates the new run and
    writes OUT/metrics.json (with item_table_bytes)."""
    from userseq.nextitem.compress import compress_run

    rec = compress_run(run_dir, method, out_dir, compression, subquantizers)
    c = rec.item_info["compressed"]
    out.print(f"{method}: item table {c['bytes_before']:,} -> {c['bytes_after']:,} bytes "
              f"({c['bytes_before'] / max(c['bytes_after'], 1):.1f}x smaller); saved {out_dir}")
    evaluate(out_dir, data=data, filter_seen=None)


def register(app: typer.Typer) -> None:
    for command in (train, evaluate, recommend, embed):
        app.command()(command)
    app.command()(compress)
