"""`userseq train|evaluate|recommend|embed|compress`: the next-item commands (registered by
`userseq.cli`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core import distributed
from userseq.core.artifacts import read_json
from userseq.core.cli import (
    DataArg,
    OverwriteOpt,
    RunDirArg,
    SetOption,
    check_out_dir,
    err,
    out,
    parse_set,
    with_options,
    writable_dir,
)
from userseq.core.errors import UserseqError
from userseq.encoders import ENCODERS
from userseq.losses import LOSSES

Opt = typer.Option
QuietOpt = Annotated[bool, Opt(help="no progress bar")]
RetrievalOpt = Annotated[str | None, Opt(
    help="single (one user vector) | knn_embed (interest mixture) | ada (multi-round; a run "
         "from `userseq ada fit`); default: the run's retrieval.mode")]
# query-time settings `evaluate --set` may change (the rest is fixed by the trained model)
EVAL_SETTINGS = ("eval.", "retrieval.mode", "retrieval.knn_embed.")


# ---------------------------------------------------------------------- train / evaluate
def train(
    data: DataArg,
    out_dir: Annotated[Path, Opt("--out", "-o", help="run directory to write")],
    model: Annotated[str | None, Opt(help=f"encoder: {' | '.join(ENCODERS.names())}")] = None,
    config: Annotated[Path | None, Opt(help="YAML config (sections data/model/loss/train/eval)")
                      ] = None,
    overrides: SetOption = None,
    user_col: Annotated[str | None, Opt(help="user id column (default user_id)")] = None,
    item_col: Annotated[str | None, Opt(help="item id column (default item_id)")] = None,
    timestamp_col: Annotated[str | None, Opt(help="timestamp column (default timestamp)")] = None,
    epochs: Annotated[int | None, Opt(help="maximum epochs")] = None,
    max_minutes: Annotated[float | None, Opt(help="training time budget in minutes")] = None,
    loss: Annotated[str | None, Opt(help=" | ".join(LOSSES.names()))] = None,
    split: Annotated[str | None, Opt(help="loo | temporal | cold-start")] = None,
    items: Annotated[str | None, Opt(
        help="item representation: id | text | id+text | id+graph")] = None,
    item_table: Annotated[str | None, Opt(help="full | hash | qr | unified | matryoshka")] = None,
    compression: Annotated[float | None, Opt(help="item-table memory ratio (8 = 8x smaller)")
                           ] = None,
    item_text: Annotated[str | None, Opt(help="item attribute table (item_id + text columns)")
                         ] = None,
    text_model: Annotated[str | None, Opt(help="sentence encoder of text items: a local "
                                               "sentence-transformers directory (default: the "
                                               "offline MiniLM)")] = None,
    min_user_events: Annotated[int | None, Opt(help="drop users with fewer events (reported)")
                               ] = None,
    seed: Annotated[int | None, Opt(help="seeds the whole run: training and the split")] = None,
    split_seed: Annotated[int | None, Opt(help="seed of the split (default: --seed)")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    resume: Annotated[bool, Opt(help="continue from OUT/checkpoint.safetensors")] = False,
    overwrite: OverwriteOpt = False,
    init_from: Annotated[Path | None, Opt(help="warm start from this run's weights (same "
                                               "encoder); new items and users get new rows")
                         ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a sequential recommender, evaluate it with full ranking and save the run.

    Data-parallel on several processes or machines: launch with torchrun (docs/distributed.md)."""
    from userseq.data.datasets import is_dataset_name
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import check_monitor, split_kwargs

    if model == "generative":
        raise UserseqError("--model generative: generative retrieval (semantic IDs) is its own "
                           "task; train it with `userseq generative train --data ... --out ...` "
                           "(see docs/generative.md).")
    _check_train_paths(out_dir, item_text)
    check_out_dir(out_dir, resume, overwrite)
    # a file path is recorded absolute, so `evaluate RUN` works from any working directory
    named = is_dataset_name(data) or not Path(data).exists()
    dataset = data if named else str(Path(data).resolve())
    cfg = _train_config(config, parse_set(overrides), model, {
        "--model": ("model.name", model), "--epochs": ("train.epochs", epochs),
        "--max-minutes": ("train.max_minutes", max_minutes), "--loss": ("loss.name", loss),
        "--split": ("data.split", split), "--min-user-events": ("data.min_user_events",
                                                                min_user_events),
        "--user-col": ("data.user_col", user_col), "--item-col": ("data.item_col", item_col),
        "--timestamp-col": ("data.timestamp_col", timestamp_col), "--seed": ("train.seed", seed),
        "--split-seed": ("data.split_seed", seed if split_seed is None else split_seed),
        "--device": ("train.device", device), "--data": ("dataset", dataset),
        "--items": ("model.items", items), "--item-table": ("model.item_table", item_table),
        "--compression": ("model.compression", compression),
        "--item-text": ("data.item_text", item_text and str(Path(item_text).resolve())),
        "--text-model": ("model.text_encoder", _text_model(text_model)),
    })
    check_monitor(cfg)  # before the data is read
    if cfg.model.items != "id":
        from userseq.items.text import check_encoder

        check_encoder(cfg.model.text_encoder)
    t0 = time.time()
    log = load_events(data, cfg.data)
    err.print(f"loaded {log.source}: {log.n_users:,} users, {log.n_items:,} items, "
              f"{log.n_events:,} events ({time.time() - t0:.1f}s)")
    from userseq.nextitem.estimator import NextItemRecommender

    sp = make_split(log, cfg.data.split, **split_kwargs(cfg))
    check_out_dir(out_dir, resume, overwrite, delete=True)  # the data loaded: now replace the run
    if init_from is not None and not init_from.is_dir():
        raise UserseqError(f"--init-from {init_from}: run directory not found.")
    NextItemRecommender(config=cfg).fit(log, sp, run_dir=out_dir, resume=resume, quiet=quiet,
                                        init_from=init_from)
    if not distributed.is_main():  # torchrun: rank 0 wrote the run and reports it
        return
    metrics = read_json(out_dir / "metrics.json")  # written by fit: valid/test metrics, baselines
    _print_metrics(metrics, f"{cfg.model.name} on {data}")
    out.print(f"saved run to {out_dir}")


def _text_model(path: str | None) -> str | None:
    """--text-model: a local directory is recorded absolute (the default name stays a name)."""
    from userseq.items.text import TEXT_ENCODERS, check_encoder

    if path is None or path in TEXT_ENCODERS:
        return path
    check_encoder(path)
    return str(Path(path).expanduser().resolve())


def _check_train_paths(out_dir: Path, item_text: str | None) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserseqError(f"--out {out_dir}: exists and is not a directory; choose a run "
                           "directory.")
    if item_text is not None and not Path(item_text).is_file():
        raise UserseqError(f"--item-text {item_text}: file not found; pass a CSV/TSV, Parquet or "
                           "JSONL table with an item_id column and text columns (title, "
                           "description, ...).")


def _train_config(config: Path | None, sets: dict[str, Any], model: str | None,
                  options: dict[str, tuple[str, Any]]) -> Any:
    """The run config: --config, then --set, then the other options. With --set, --model is
    applied together with it (it wins over --set model.name): the encoder decides which model.*
    keys exist."""
    from userseq.nextitem.config import RunConfig

    cfg = RunConfig.from_yaml(config)
    if sets:
        cfg = cfg.updated({**sets, "model.name": model} if model else sets, source="--set")
    return with_options(cfg, options)


ACCURACY = ("ndcg@", "hr@", "mrr")


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    keys = [k for k in metrics["test"] if k != "users"]
    accuracy = [k for k in keys if k.startswith(ACCURACY)]
    # two tables: accuracy, then beyond accuracy (coverage, novelty, gini, pop1%, diversity)
    for part, name in ((accuracy, title), ([k for k in keys if k not in accuracy],
                                           "beyond accuracy (test)")):
        if not part:
            continue
        t = Table(title=name)
        t.add_column("split")
        for k in part:
            t.add_column(k, justify="right")
        for split in ("valid", "test"):
            t.add_row(split, *(f"{metrics[split][k]:.4f}" if k in metrics[split] else "—"
                               for k in part))
        for b, m in metrics.get("baselines", {}).items():
            t.add_row(f"test: {b}", *(f"{m[k]:.4f}" if k in m else "—" for k in part))
        out.print(t)
    tr = metrics.get("train") or {}
    if tr:
        fitted = (f"closed form, chosen on validation: {tr.get('chosen')}, {tr.get('seconds')}s"
                  if tr.get("fit") == "closed form" else
                  f"epochs {tr.get('epochs')} (best {tr.get('best_epoch')}), {tr.get('seconds')}s, "
                  f"{tr.get('seconds_per_epoch')}s/epoch")
        out.print(f"{fitted}; seen items filtered: {metrics['filter_seen']}")


def evaluate(
    run_dir: RunDirArg,
    data: Annotated[str | None, Opt(help="evaluate on this data instead of the training data")
                    ] = None,
    filter_seen: Annotated[bool | None, Opt(help="filter history items from the ranking")] = None,
    overrides: SetOption = None,
    retrieval: RetrievalOpt = None,
    grid: Annotated[bool, Opt(help="2D Matryoshka grid: NDCG/HR for user vectors read after "
                              "each number of blocks x each prefix width (loss.mse2d runs); "
                              "writes RUN_DIR/grid.json")] = False,
    zero_shot: Annotated[bool, Opt(help="rank --data's own catalogue from its item text with "
                                        "this text-only run (never trained on it)")] = False,
    item_text: Annotated[str | None, Opt(help="--zero-shot: item attribute table of --data "
                                              "(default: the named dataset's item metadata)")
                         ] = None,
    out_dir: Annotated[Path | None, Opt("--out", help="--zero-shot: also save the transferred "
                                                      "model as a run here")] = None,
) -> None:
    """Full-ranking evaluation of a saved run (accuracy and diversity); writes
    RUN_DIR/metrics.json (with --grid: RUN_DIR/grid.json). `--set` changes evaluation settings
    (eval.ks, eval.filter_seen, retrieval.knn_embed.clusters, ...). With --zero-shot --data
    OTHER, a text-only run ranks OTHER's items from their text; metrics go to
    RUN_DIR/zero-shot/NAME.json (and --out)."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import split_kwargs
    from userseq.nextitem.estimator import NextItemRecommender

    settings = parse_set(overrides)
    trained = [k for k in settings if not k.startswith(EVAL_SETTINGS)]
    if trained:
        raise UserseqError(f"--set {trained[0]}: evaluate can change evaluation settings only "
                           "(eval.*, retrieval.mode, retrieval.knn_embed.*); the rest is fixed by "
                           "the trained model.")
    rec = NextItemRecommender.load(run_dir)
    rec.set_params(**settings)
    if filter_seen is not None:
        rec.set_params(eval__filter_seen=filter_seen)
    if retrieval is not None:
        rec.set_params(retrieval__mode=_retrieval_mode(retrieval))
    cfg = rec.config
    source = data or cfg.dataset
    if not source:
        raise UserseqError(f"{run_dir}: the run does not record its data; pass --data.")
    if data is None and Path(source).suffix and not Path(source).exists():
        raise UserseqError(f"{run_dir}: the run was trained on {source}, which no longer exists; "
                           "pass --data PATH (the same events) to evaluate.")
    if zero_shot:
        return _evaluate_zero_shot(rec, run_dir, data, item_text, out_dir)
    if item_text is not None or out_dir is not None:
        raise UserseqError("--item-text and --out belong to --zero-shot evaluation; add "
                           "--zero-shot --data OTHER, or leave them out.")
    log = load_events(source, cfg.data)
    _check_same_data(rec, log, source, explicit=data is not None)
    sp = make_split(log, cfg.data.split, **split_kwargs(cfg))
    if grid:
        _write_grid(rec, run_dir, sp)
        return
    metrics = rec.write_metrics(run_dir, rec.report(log, sp))
    _print_metrics(metrics, f"{cfg.model.name} ({metrics['retrieval']['mode']}): {run_dir}")
    out.print(f"wrote {run_dir / 'metrics.json'}")


def _write_grid(rec: Any, run_dir: Path, sp: Any) -> None:
    """`evaluate --grid`: the layers x dims grid on validation and test users, printed (test
    NDCG@10) and written to RUN_DIR/grid.json."""
    from userseq.core.artifacts import write_json

    res = {"valid": rec.evaluate_grid(sp.valid), "test": rec.evaluate_grid(sp.test)}
    write_json(res, run_dir / "grid.json")
    dims = sorted({int(g["dim"]) for g in res["test"]}, reverse=True)
    out.print("test NDCG@10: rows = blocks used, columns = prefix width")
    out.print("blocks " + " ".join(f"{d:>7}" for d in dims))
    for n in sorted({int(g["layers"]) for g in res["test"]}):
        cells = {int(g["dim"]): g["ndcg@10"] for g in res["test"] if int(g["layers"]) == n}
        out.print(f"{n:>6} " + " ".join(f"{cells[d]:7.4f}" for d in dims))
    out.print(f"wrote {run_dir / 'grid.json'}")


def _evaluate_zero_shot(rec: Any, run_dir: Path, data: str | None, item_text: str | None,
                        out_dir: Path | None) -> None:
    """`evaluate RUN --data OTHER --zero-shot`: the run's text model on OTHER's catalogue."""
    import re

    from userseq.core.artifacts import write_json
    from userseq.data.datasets import is_dataset_name
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.items.text import read_item_table
    from userseq.nextitem.config import split_kwargs

    if data is None:
        raise UserseqError("--zero-shot needs --data OTHER: the events (and item text) of the "
                           "catalogue to rank.")
    if item_text is not None and not Path(item_text).is_file():
        raise UserseqError(f"--item-text {item_text}: file not found.")
    if out_dir is not None:
        check_out_dir(out_dir, False, False)
    cfg = rec.config
    # the target's own columns and split: a named dataset's defaults, else the run's settings
    named = is_dataset_name(data)
    log = load_events(data, cfg.data)
    meta = read_item_table(item_text) if item_text else None
    if meta is None and not named:
        raise UserseqError(f"--zero-shot --data {data}: a file needs --item-text FILE (its "
                           "items' text); named datasets bring their own.")
    t0 = time.time()
    new = rec.transfer(log, meta, dataset=data if named else str(Path(data).resolve()))
    sp = make_split(log, cfg.data.split, **split_kwargs(cfg))
    metrics = new.report(log, sp)
    metrics["zero_shot"] = {"run": str(run_dir), "target": data, "seconds": round(
        time.time() - t0, 2), **new.item_info_.get("zero_shot", {})}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).name if not named else data)
    path = run_dir / "zero-shot" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    write_json(metrics, path)
    if out_dir is not None:
        new.write_metrics(out_dir, metrics)
        new.save(out_dir)
    _print_metrics(metrics, f"{cfg.model.name} zero-shot {cfg.dataset} -> {data}")
    out.print(f"wrote {path}" + (f"; saved the transferred run to {out_dir}" if out_dir else ""))


def _retrieval_mode(value: str) -> str:
    from userseq.nextitem.config import RETRIEVAL_MODES

    if value not in RETRIEVAL_MODES:
        raise UserseqError(f"--retrieval {value}: not a retrieval mode; choose one of "
                           f"{' | '.join(RETRIEVAL_MODES)}.")
    return value


def _check_same_data(rec: Any, log: Any, source: str, explicit: bool) -> None:
    """Evaluation needs the model's catalogue and, unless --data is given, the training data."""
    from userseq.nextitem.estimator import data_fingerprint

    fp, trained = data_fingerprint(log), rec.data_fingerprint_
    if not explicit and trained and fp != trained:
        raise UserseqError(f"{source}: data changed since training (fingerprint {fp} != "
                           f"{trained}); pass --data explicitly to evaluate on other data.")
    # the model's catalogue: the log's items, then items known only from their text (docs/items.md)
    if log.n_items > len(rec.item_ids) or not log.item_ids.equals(rec.item_ids.head(log.n_items)):
        raise UserseqError(f"{source}: its item catalogue differs from the model's; evaluation "
                           "needs the same items.")


# ---------------------------------------------------------------------- recommend / embed
def recommend(
    run_dir: RunDirArg,
    user: Annotated[list[str] | None, Opt("--user", "-u", help="user id (repeatable)")] = None,
    history: Annotated[str | None, Opt(help="comma-separated item ids, oldest first (new users)")
                       ] = None,
    k: Annotated[int, Opt("-k", help="number of items")] = 10,
    keep_seen: Annotated[bool, Opt(help="allow items from the history")] = False,
    as_json: Annotated[bool, Opt("--json", help="JSON output")] = False,
    retrieval: RetrievalOpt = None,
    decode: Annotated[str | None, Opt(help="generative runs: beam | diverse (Diverse Beam "
                                           "Search)")] = None,
    beams: Annotated[int | None, Opt(help="generative runs: beams B (at least k)")] = None,
    groups: Annotated[int | None, Opt(help="generative runs, --decode diverse: groups G "
                                           "(divides B)")] = None,
    diversity: Annotated[float | None, Opt(help="generative runs, --decode diverse: Hamming "
                                                "penalty λ")] = None,
    preference: Annotated[str | None, Opt(help="generative runs with a preference slot: the "
                                               "user's preference text")] = None,
) -> None:
    """Top-k next items for known users, or for an explicit history. Works for next-item runs
    (`userseq train`) and generative runs (`userseq generative train`: decoded with beam search or
    Diverse Beam Search)."""
    import polars as pl

    from userseq.core.estimator import load

    if k <= 0:
        raise UserseqError(f"-k must be a positive integer (got {k}).")
    if not user and not history:
        raise UserseqError("give --user ID (a user seen in training) or --history ITEM,ITEM,... "
                           "(any user).")
    rec = load(run_dir)  # the estimator class of the run's task
    options = {"decode": decode, "beams": beams, "groups": groups, "diversity": diversity}
    given = {key: v for key, v in options.items() if v is not None}
    if rec.task == "nextitem" and (given or preference is not None):
        flag = next(iter(given), "preference")
        raise UserseqError(f"--{flag}: {run_dir} is a next-item run, which ranks by dot product; "
                           "decoding options apply to generative runs (userseq generative "
                           "train).")
    if retrieval is not None:
        if rec.task != "nextitem":
            raise UserseqError(f"--retrieval: {run_dir} is a {rec.task} run; retrieval modes "
                               "apply to next-item runs (generative runs: --decode).")
        given["retrieval"] = _retrieval_mode(retrieval)
    if preference is not None:
        given["preference"] = [preference] * len(user or []) if user else None
    frames = []
    if user:
        users = _typed(user, rec.user_ids, "user")
        frames.append(rec.recommend(users, k, filter_seen=not keep_seen, **given))
    if history:
        items = _typed([h.strip() for h in history.split(",") if h.strip()], rec.item_ids, "item")
        if not items:
            raise UserseqError("--history is empty; give item ids separated by commas, oldest "
                               "first.")
        if preference is not None:
            given["preference"] = [preference]
        frames.append(rec.recommend_history([items], k, filter_seen=not keep_seen,
                                            ids=["<history>"], **given))
    res = pl.concat([f.with_columns(f["user_id"].cast(pl.String)) for f in frames])
    if as_json:
        out.print_json(json.dumps(res.to_dicts(), default=str))
    else:
        _print_recommendations(res, _item_titles(rec))


def _print_recommendations(res: Any, titles: dict | None) -> None:
    t = Table("user", "rank", "item", "score")
    codes = "semantic_id" in res.columns  # generative runs: the decoded code tuple
    if codes:
        t.add_column("semantic id")
    if titles is not None:
        t.add_column("title")
    for r in res.iter_rows(named=True):
        row = [str(r["user_id"]), str(r["rank"]), str(r["item_id"]), f"{r['score']:.4f}"]
        if codes:
            row.append("-".join(map(str, r["semantic_id"])))
        if titles is not None:
            row.append(titles.get(r["item_id"], ""))
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
    if meta is None:
        return None
    return dict(zip(meta["item_id"].to_list(), meta["title"].to_list(), strict=True))


def _typed(values: list[str], id_map: Any, what: str) -> list[Any]:
    """Command-line ids are strings; convert them to the id type the model was trained with."""
    if id_map.dtype.is_integer():
        bad = [v for v in values if not v.strip().lstrip("+-").isdigit()]
        if bad:
            hint = ("recommend from an explicit history instead: --history ITEM,ITEM,..."
                    if what == "user" else "check the ids")
            raise UserseqError(f"unknown {what} id(s) {bad[:5]}: this model's {what} ids are "
                               f"integers, so these are not in the training data; {hint}.")
        return [int(v) for v in values]
    return values


def embed(
    run_dir: RunDirArg,
    out_path: Annotated[Path, Opt("--out", "-o", help="Parquet file for user embeddings (with "
                                                      "--input: a directory of Parquet files)")],
    input_dir: Annotated[Path | None, Opt("--input", help="embed the users of these events "
                                          "instead of the training users: a directory of "
                                          "(partitioned) Parquet files")] = None,
    engine: Annotated[str, Opt(help="with --input: local (one process) | ray (Ray Data actors; "
                                    "pip install 'userseq[ray]')")] = "local",
    workers: Annotated[int, Opt(help="--engine ray: actors (each loads the model once)")] = 2,
    ray_address: Annotated[str | None, Opt(help="--engine ray: a running Ray cluster (default: "
                                                "RAY_ADDRESS, else a local Ray)")] = None,
    items_out: Annotated[Path | None, Opt(help="Parquet file for item embeddings")] = None,
    chunk_size: Annotated[int, Opt(help="users encoded and written per Parquet row group "
                                        "(memory stays bounded by this)")] = 65_536,
    index: Annotated[bool, Opt("--index", help="also build the run's ANN indexes (RUN_DIR/index) "
                                               "from the same vectors, as `userseq index` does")
                     ] = False,
    index_kind: Annotated[str | None, Opt(help="with --index: auto | exact | flat | hnsw | ivfpq")
                          ] = None,
    semantic_ids: Annotated[bool, Opt("--semantic-ids", help="also give every user a semantic ID "
                                                             "(RQ-VAE codes of the user vector): "
                                                             "OUT_semantic_ids.parquet")] = False,
    levels: Annotated[int, Opt(help="with --semantic-ids: codes per user before the collision "
                                    "code")] = 2,
    codebook_size: Annotated[int, Opt(help="with --semantic-ids: codes per level")] = 64,
    quiet: QuietOpt = False,
) -> None:
    """Write user (and item) embeddings to Parquet: columns id, embedding (list of floats).

    Users are encoded chunk by chunk and streamed to the file, so a million users need no more
    memory than one chunk."""
    import polars as pl

    from userseq.nextitem.estimator import NextItemRecommender

    if chunk_size <= 0:
        raise UserseqError(f"--chunk-size must be a positive integer (got {chunk_size}).")
    if engine not in ("local", "ray"):
        raise UserseqError(f"--engine {engine}: unknown engine; choose local or ray.")
    if input_dir is not None:
        if index or items_out is not None:
            raise UserseqError("--input embeds the users of new events; --index and --items-out "
                               "work on the run's own users and items (run them without --input).")
        _embed_events(run_dir, input_dir, out_path, engine, workers, chunk_size, ray_address)
        return
    if engine != "local":
        raise UserseqError(f"--engine {engine} needs --input DIR (the events to embed); the "
                           "run's own users are embedded locally.")
    for flag, path in (("--out", out_path), ("--items-out", items_out)):
        if path is not None:
            _check_embedding_path(flag, path)
    cfg = None
    if index:
        from userseq.index.vector import IndexConfig

        cfg = IndexConfig.from_options(kind=index_kind)
    elif index_kind is not None:
        raise UserseqError("--index-kind needs --index.")
    rec = NextItemRecommender.load(run_dir)
    vectors_path = Path(run_dir) / "index" / "user_vectors.npy" if index else None
    _write_user_embeddings(rec, out_path, chunk_size, vectors_path, quiet)
    items_out = items_out or out_path.with_name(out_path.stem + "_items.parquet")
    items = rec.item_embeddings()
    pl.DataFrame({"item_id": rec.item_ids, "embedding": items}).write_parquet(items_out)
    out.print(f"wrote {len(items):,} item embeddings to {items_out}")
    if index:
        _build_index(rec, run_dir, cfg, chunk_size, vectors_path)
    if semantic_ids:
        _user_semantic_ids(rec, run_dir, out_path, levels, codebook_size)


def _user_semantic_ids(rec: Any, run_dir: Path, out_path: Path, levels: int,
                       codebook_size: int) -> None:
    """ULMRec-style user semantic IDs: the RQ-VAE tokenizer over the user vectors; the tokenizer
    is kept in RUN_DIR/user_semantic_ids, the codes go next to the embeddings."""
    import polars as pl

    from userseq.index.semantic_ids import SemanticIdTokenizer, prefix_neighbour_check

    vectors = rec.user_embeddings()
    tok = SemanticIdTokenizer({"levels": levels, "codebook_size": codebook_size})
    tok.fit(vectors, what="users", setting="--codebook-size")
    tok.save(Path(run_dir) / "user_semantic_ids")
    path = out_path.with_name(out_path.stem + "_semantic_ids.parquet")
    pl.DataFrame({"user_id": rec.user_ids, "semantic_id": tok.ids_.tolist()}).write_parquet(path)
    r = tok.report_
    out.print(f"wrote {len(vectors):,} user semantic IDs ({levels} x {codebook_size} codes + "
              f"collision code) to {path}; codebook usage "
              f"{', '.join(f'{u:.0%}' for u in r['codebook_usage'])}, collision rate "
              f"{r['collision_rate']:.1%}")
    t = Table("prefix", "cosine, same prefix", "cosine, all pairs", "10-NN sharing it",
              "by chance", title="do equal prefixes mean near users? (sample of 2,000)")
    for c in prefix_neighbour_check(vectors, tok.ids_):
        t.add_row(str(c["prefix"]), f"{c['same_prefix_cosine']:.3f}",
                  f"{c['all_pairs_cosine']:.3f}", f"{c['knn_same_prefix']:.1%}",
                  f"{c['chance_same_prefix']:.1%}")
    out.print(t)


def _check_embedding_path(flag: str, path: Path) -> None:
    """Before any work: a Parquet name, in an existing writable directory, not a directory."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise UserseqError(f"{flag} {path}: embeddings are written as Parquet; name the file "
                           f"{path.with_suffix('.parquet').name} (other formats: read the Parquet "
                           "file with polars/pandas and convert it).")
    if path.is_dir():
        raise UserseqError(f"{flag} {path}: is a directory; give a file name ending in .parquet.")
    if not path.parent.is_dir():
        raise UserseqError(f"{flag} {path}: directory {path.parent} does not exist; create it "
                           "first.")
    if not writable_dir(path.parent):
        raise UserseqError(f"{flag} {path}: {path.parent} is not writable; choose another path.")
def _embed_events(run_dir: Path, input_dir: Path, out_dir: Path, engine: str, workers: int,
                  chunk_size: int, ray_address: str | None) -> None:
    from userseq.nextitem.batch import embed_local, embed_ray

    t0 = time.time()
    if engine == "ray":
        res = embed_ray(run_dir, input_dir, out_dir, workers, chunk_size, ray_address)
    else:
        res = embed_local(run_dir, input_dir, out_dir, chunk_size)
    skipped = f"; {res['skipped']:,} users without a catalogue item skipped" if res.get(
        "skipped") else ""
    out.print(f"wrote {res['users']:,} user embeddings to {out_dir} ({res['files']} Parquet "
              f"files, engine {engine}, {time.time() - t0:.1f}s){skipped}")


def _write_user_embeddings(rec: Any, out_path: Path, chunk_size: int, vectors_path: Path | None,
                           quiet: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from userseq.index.stream import write_user_embeddings

    with Progress(TextColumn("embedding users"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("users", total=len(rec.user_ids))
        done = write_user_embeddings(rec, out_path, chunk_size, vectors_path=vectors_path,
                                     progress=lambda d: bar.update(task, completed=d))
    out.print(f"wrote {done:,} user embeddings (dim {rec.encoder_.dim}) to {out_path}")


def _build_index(rec: Any, run_dir: Path, cfg: Any, chunk_size: int,
                 vectors_path: Path | None) -> None:
    from userseq.index.run import RunIndex

    built = RunIndex.build(rec, run_dir, cfg, chunk_size=chunk_size,
                           user_vectors_path=vectors_path)
    m = built.manifest
    out.print(f"built {Path(run_dir) / 'index'}: items {m['items']['kind']} (recall@100 "
              f"{m['items']['recall@100']:.4f}), users {m['users']['kind']} (recall@100 "
              f"{m['users']['recall@100']:.4f}) in {m['build_seconds']:.1f}s")


def compress(
    run_dir: RunDirArg,
    method: Annotated[str, Opt(help="int8 (per-row scale) | pq (faiss product quantization)")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="new run directory to write")],
    compression: Annotated[float | None, Opt(help="pq: memory ratio vs fp32 (4*dim/M); default 8")
                           ] = None,
    subquantizers: Annotated[int | None, Opt(help="pq: number of sub-quantizers M (bytes per "
                                                  "item)")] = None,
    data: Annotated[str | None, Opt(help="evaluate on this data instead of the run's")] = None,
) -> None:
    """Post-training int8 / PQ quantization of a run's item vectors; evaluates the new run and
    writes OUT/metrics.json (with item_table_bytes)."""
    from userseq.nextitem.compress import compress_run

    rec = compress_run(run_dir, method, out_dir, compression, subquantizers)
    c = rec.item_info_["compressed"]
    out.print(f"{method}: item table {c['bytes_before']:,} -> {c['bytes_after']:,} bytes "
              f"({c['bytes_before'] / max(c['bytes_after'], 1):.1f}x smaller); saved {out_dir}")
    evaluate(out_dir, data=data, filter_seen=None)


# ---------------------------------------------------------------------- Ada-Retrieval
ADA_SETTINGS = ("retrieval.ada.", "train.", "eval.")


def ada_fit(
    base_run: RunDirArg,
    out_dir: Annotated[Path, Opt("--out", "-o", help="the fine-tuned run directory to write")],
    rounds: Annotated[int | None, Opt(help="retrieval rounds T (retrieval.ada.rounds)")] = None,
    train_k: Annotated[int | None, Opt(help="items retrieved per training sample, a multiple of "
                                            "--rounds (retrieval.ada.train_k)")] = None,
    epochs: Annotated[int | None, Opt(help="maximum fine-tuning epochs")] = None,
    max_minutes: Annotated[float | None, Opt(help="fine-tuning time budget in minutes")] = None,
    overrides: SetOption = None,
    data: Annotated[str | None, Opt(help="the base run's data, when it moved")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Ada-Retrieval: fine-tune a trained run with the item and user adapters (multi-round
    retrieval) and save it as a new run whose retrieval mode is `ada`."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import split_kwargs
    from userseq.nextitem.estimator import NextItemRecommender

    if out_dir.resolve() == Path(base_run).resolve():
        raise UserseqError(f"--out {out_dir}: the same directory as BASE_RUN; write the "
                           "fine-tuned run to a new directory.")
    settings = parse_set(overrides)
    bad = [k for k in settings if not k.startswith(ADA_SETTINGS)]
    if bad:
        raise UserseqError(f"--set {bad[0]}: ada fit changes retrieval.ada.*, train.* and eval.* "
                           "settings only; the model is the base run's.")
    opts = {"retrieval.ada.rounds": rounds, "retrieval.ada.train_k": train_k,
            "train.epochs": epochs, "train.max_minutes": max_minutes}
    settings.update({k: v for k, v in opts.items() if v is not None})
    rec = NextItemRecommender.load(base_run)
    if settings:
        rec.config = rec.config.updated(settings, source="--set")
    cfg = rec.config
    source = data or cfg.dataset
    if not source:
        raise UserseqError(f"{base_run}: the run does not record its data; pass --data.")
    log = load_events(source, cfg.data)
    sp = make_split(log, cfg.data.split, **split_kwargs(cfg))
    rec.fit_ada(log, sp, run_dir=out_dir, quiet=quiet, base_run=str(Path(base_run).resolve()))
    metrics = read_json(out_dir / "metrics.json")
    _print_metrics(metrics, f"{cfg.model.name} + Ada-Retrieval: {out_dir}")
    out.print(f"saved run to {out_dir}")
# ---------------------------------------------------------------------- probe
def probe(
    run_dir: RunDirArg,
    data: Annotated[str | None, Opt(help="events to probe on (a dataset name or file); default: "
                                         "the run's training histories")] = None,
    items: Annotated[Path | None, Opt(help="item metadata with item_id and genres (CSV/Parquet); "
                                           "default: the dataset's (e.g. ML-1M movies.dat)")
                     ] = None,
    max_users: Annotated[int | None, Opt(help="probe a random sample of users")] = None,
    top_genres: Annotated[int, Opt(help="genres of the genre-share probe (most frequent)")] = 5,
    seed: Annotated[int, Opt(help="seed of the user split and the shuffles")] = 0,
    as_json: Annotated[bool, Opt("--json", help="JSON output")] = False,
) -> None:
    """Linear probes of the frozen user embeddings (genre share, length, order: original vs
    shuffled) against a bag-of-items baseline; writes RUN_DIR/probe.json."""
    from userseq.core.artifacts import write_json
    from userseq.nextitem.estimator import NextItemRecommender
    from userseq.nextitem.probe import item_genres
    from userseq.nextitem.probe import probe as run_probe

    if max_users is not None and max_users < 20:
        raise UserseqError(f"--max-users must be at least 20 (got {max_users}).")
    if top_genres <= 0:
        raise UserseqError(f"--top-genres must be a positive integer (got {top_genres}).")
    rec = NextItemRecommender.load(run_dir)
    offsets, hist = rec.histories_
    if data is not None:
        from userseq.data.load import load_events

        log = load_events(data, rec.config.data)
        _check_same_data(rec, log, data, explicit=True)
        offsets, hist = log.sequences()
    meta = _probe_meta(items, data or rec.config.dataset)
    result = run_probe(rec, offsets, hist, item_genres(rec, meta), top_genres, seed, max_users)
    result["run"], result["model"] = str(run_dir), rec.config.model.name
    write_json(result, Path(run_dir) / "probe.json")
    if as_json:
        out.print_json(json.dumps(result))
        return
    t = Table("probe", "metric", "model (test)", "bag of items (test)",
              title=f"probes of {rec.config.model.name} ({result['users']:,} users, last "
                    f"{result['window']} events)")
    for name, by in result["probes"].items():
        t.add_row(name, result["metric"][name], f"{by['model']['test']:.4f}",
                  f"{by['bag_of_items']['test']:.4f}")
    out.print(t)
    if "note" in result:
        out.print(result["note"])
    out.print(f"wrote {Path(run_dir) / 'probe.json'}")


def _probe_meta(items: Path | None, dataset: str | None) -> Any:
    import polars as pl

    if items is not None:
        if not items.is_file():
            raise UserseqError(f"--items {items}: file not found; pass a CSV or Parquet table "
                               "with item_id and genres columns.")
        df = pl.read_parquet(items) if items.suffix == ".parquet" else pl.read_csv(items)
        if "item_id" not in df.columns or "genres" not in df.columns:
            raise UserseqError(f"--items {items}: needs item_id and genres columns (genres as "
                               f"'A|B' strings); found {', '.join(df.columns)}.")
        return df
    from userseq.data.datasets import is_dataset_name, load_item_metadata

    if dataset and is_dataset_name(dataset):
        try:
            return load_item_metadata(dataset)
        except UserseqError:
            return None
    return None


# ---------------------------------------------------------------------- tune
def tune(
    config: Annotated[Path, typer.Argument(help="run config with a `search:` section "
                                                "(docs/tuning.md)")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="directory for best.yaml, trials.csv/json, "
                                                     "tune.json and best-run/")],
    trials: Annotated[int, Opt(help="number of trials")] = 20,
    budget_minutes: Annotated[float | None, Opt(help="no trial starts after this many minutes; "
                                                     "each trial's time budget is capped by "
                                                     "what is left")] = None,
    data: Annotated[str | None, Opt(help="dataset name or events file (default: the config's "
                                         "`dataset`)")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = True,
) -> None:
    """Optuna search over the config's `search:` space, chosen on validation (with pruning on the
    validation curve); the best config is trained again and evaluated once on test."""
    from userseq.data.load import load_events
    from userseq.nextitem.tune import read_tune_config
    from userseq.nextitem.tune import tune as run_tune

    if not config.is_file():
        raise UserseqError(f"{config}: config file not found.")
    cfg, _, _ = read_tune_config(config)  # errors in the search space before the data is read
    source = data or cfg.dataset
    if not source:
        raise UserseqError(f"{config}: no `dataset:` in the config; pass --data.")
    _check_tune_dir(out_dir, overwrite)
    log = load_events(source, cfg.data)
    err.print(f"loaded {log.source}: {log.n_users:,} users, {log.n_items:,} items")
    summary = run_tune(config, log, out_dir, trials, budget_minutes, quiet=quiet,
                       progress=lambda m: err.print(m))
    t = summary["test"]
    out.print(f"{summary['trials']} trials ({summary['complete']} complete, {summary['pruned']} "
              f"pruned) in {summary['search_seconds']:.0f}s; best trial {summary['best_trial']}: "
              f"valid {summary['monitor']} {summary['best_valid']:.4f} with "
              f"{summary['best_params']}")
    out.print(f"best config retrained: test ndcg@10 {t.get('ndcg@10', float('nan')):.4f}, hr@10 "
              f"{t.get('hr@10', float('nan')):.4f}; wrote {out_dir}/best.yaml, trials.csv, "
              "trials.json, tune.json, best-run/")


def _check_tune_dir(out_dir: Path, overwrite: bool) -> None:
    """A new or empty directory, or (with --overwrite) an earlier search's (it has tune.json or
    trials.json), which is deleted."""
    import shutil

    check_out_dir(out_dir, resume=True)  # a file, a path under a file, an unwritable place
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    earlier = (out_dir / "tune.json").exists() or (out_dir / "trials.json").exists()
    if not overwrite or not earlier:
        what = "holds an earlier search" if earlier else "is not empty and not a tune directory"
        fix = "pass --overwrite to replace it, or" if earlier else ""
        raise UserseqError(f"--out {out_dir}: {what}; {fix} choose a new directory.".replace(
            ";  choose", "; choose"))
    shutil.rmtree(out_dir)


def register(app: typer.Typer) -> None:
    for command in (train, evaluate, recommend, embed, compress, probe, tune):
        app.command()(command)
    ada_app = typer.Typer(no_args_is_help=True,
                          help="Ada-Retrieval: multi-round retrieval fine-tuned on a trained run.")
    ada_app.command("fit")(ada_fit)
    app.add_typer(ada_app, name="ada")
