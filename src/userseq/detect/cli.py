"""`userseq detect ...`: train, score and cluster malicious-user detectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from userseq.core.cli import (
    OverwriteOpt,
    SetOption,
    check_out_dir,
    err,
    out,
    parse_set,
    with_options,
)
from userseq.core.errors import UserseqError

detect_app = typer.Typer(no_args_is_help=True,
                         help="Malicious-user detection and behaviour clustering.")


def register(app: typer.Typer) -> None:
    app.add_typer(detect_app, name="detect")


def _opt(text: str, *names: str) -> Any:
    """A typer option with help `text` (and explicit flag `names` where the default won't do)."""
    return typer.Option(*names, help=text)


DetectRunArg = Annotated[Path, typer.Argument(help="run directory of `userseq detect train`")]
MODEL_HELP = ("gru | transformer | any registered encoder (events); behavior-ae (unsupervised, "
              "events); hlstm | cnn | minilm (texts). Default: gru")
LEAKAGE_HELP = "add after-the-fact columns (reverts, STiKi) as features: NOT early detection"
FIXED_HELP = ("text data: posts per user, the last N (users with fewer are dropped); default: "
              "the dataset's (petgen-wiki 8, removing the post-count confound), 0 = all")
ADVERSARIAL_HELP = ("adversarial training: an `attack run --train-posts` output directory; its "
                    "posts are appended to copies of malicious training users")


def _load_data(data: str, labels: Path | None, kind: str, columns: tuple[str, str, str, str],
               with_leakage: bool = False, fixed_posts: int = 0, keep: str = "last") -> Any:
    """Event data for event models, post texts for text models (`kind` of the detector), the
    latter with `fixed_posts` posts per user (0 = all); `columns`: the user, item, timestamp and
    text column names."""
    from userseq.data.eventlog import Columns
    from userseq.detect.data import load_event_data, load_text_data

    user, item, timestamp, text = columns
    cols = Columns(user=user, item=item, timestamp=timestamp, text=text)
    if kind == "event":
        return load_event_data(data, labels, cols, with_leakage=with_leakage)
    return load_text_data(data, labels, cols, fixed_posts=fixed_posts, keep=keep)


def _first_k(first_k: str | None) -> list[int] | None:
    if first_k is None:
        return None
    try:
        ks = [int(k) for k in first_k.split(",") if k.strip()]
    except ValueError:
        raise UserseqError(f"--first-k must be comma-separated positive integers "
                           f"(got {first_k!r}).") from None
    if any(k < 1 for k in ks):
        raise UserseqError(f"--first-k must be positive integers (got {first_k!r}).")
    return ks


def _print_metrics(metrics: dict[str, Any], out_dir: Path) -> None:
    t = metrics["test"]
    out.print(f"test: accuracy {t['accuracy']:.4f}  roc_auc {t['roc_auc']:.4f}  f1 {t['f1']:.4f}  "
              f"(n={int(t['n'])})")
    for k, m in metrics["first_k"].items():
        out.print(f"  first {k:>3}: accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']:.4f}")
    out.print(f"wrote {out_dir}/metrics.json")


@detect_app.command("train")
def train(
    data: Annotated[str, _opt("wiki-vandals | petgen-wiki | events file", "--data", "-d")],
    out_dir: Annotated[Path, _opt("run directory to write", "--out", "-o")],
    labels: Annotated[Path | None, _opt("label table (user_id,label 0/1), for files")] = None,
    model: Annotated[str | None, _opt(MODEL_HELP)] = None,
    epochs: Annotated[int | None, _opt("maximum epochs")] = None,
    dim: Annotated[int | None, _opt("embedding size")] = None,
    max_len: Annotated[int | None, _opt("events per user read by the model (the first)")] = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: Annotated[int | None, _opt("seeds the whole run: training and (unless --split-seed) the "
                                     "user split")] = None,
    split_seed: Annotated[int | None, _opt("seeds the user split (default: --seed, or 0)")] = None,
    set_: SetOption = None,
    folds: Annotated[int | None, _opt("k-fold cross-validation instead of one split")] = None,
    first_k: Annotated[str | None, _opt("early-detection prefix lengths, comma-separated "
                                        "(default 1,2,5,10)")] = None,
    with_leakage: Annotated[bool | None,
                            _opt(LEAKAGE_HELP, "--with-leakage/--no-with-leakage")] = None,
    max_minutes: float | None = None,
    fixed_posts: Annotated[int | None, _opt(FIXED_HELP)] = None,
    adversarial: Annotated[Path | None, _opt(ADVERSARIAL_HELP)] = None,
    adversarial_share: Annotated[float, _opt("share of those users copied")] = 1.0,
    threads: Annotated[int | None, _opt("torch CPU threads (1: faster on a busy machine)")] = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str = "timestamp",
    text_col: str = "text",
    overwrite: OverwriteOpt = False,
    quiet: bool = False,
) -> None:
    """Train a detector; writes RUN/metrics.json ({"test": ..., "first_k": {"1": ...}}) and the
    model. Settings: the model's defaults, then --set KEY=VALUE, then the other options."""
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    check_out_dir(out_dir, overwrite=overwrite)
    det = UserDetector(model, overrides=parse_set(set_))
    det.set_params(config=with_options(det.config, {
        "--epochs": ("train.epochs", epochs), "--dim": ("model.dim", dim),
        "--max-len": ("model.max_len", max_len), "--batch-size": ("train.batch_size", batch_size),
        "--lr": ("train.lr", lr), "--seed": ("train.seed", seed),
        "--split-seed": ("split_seed", seed if split_seed is None else split_seed),
        "--first-k": ("first_k", _first_k(first_k)),
        "--with-leakage": ("with_leakage", with_leakage),
        "--max-minutes": ("train.max_minutes", max_minutes),
        "--threads": ("train.threads", threads),
        "--fixed-posts": ("fixed_posts", fixed_posts),
        "--data": ("dataset", data)}))
    augment = None
    if adversarial is not None:
        from userseq.detect.augment import augmenter

        augment = augmenter(adversarial, adversarial_share, det.config.split_seed)
        det.set_params(dataset=f"{data} + adversarial posts from {adversarial} "
                               f"(share {adversarial_share:g})")
    columns = (user_col, item_col, timestamp_col, text_col)
    if det.kind == "text" and det.config.fixed_posts is None:  # record the dataset's default
        from userseq.detect.data import default_fixed_posts

        det.set_params(fixed_posts=default_fixed_posts(data))
    d = _load_data(data, labels, det.kind, columns, det.config.with_leakage,
                   det.config.fixed_posts or 0, det.config.fixed_keep)
    check_out_dir(out_dir, overwrite=overwrite, delete=True)  # the data loaded: replace the run
    metrics = train_and_evaluate(d, det, out_dir, folds=folds, quiet=quiet, augment=augment)
    _print_metrics(metrics, out_dir)


@detect_app.command("score")
def score(
    run_dir: DetectRunArg,
    events: Annotated[str, _opt("events file (as in training) or dataset", "--events", "-e")],
    first_k: Annotated[int | None, _opt("score each user from their first K events/posts")] = None,
    output: Annotated[Path | None, _opt("write CSV here instead of stdout", "--output")] = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str = "timestamp",
    text_col: str = "text",
) -> None:
    """Score users: CSV of user_id, score (P(malicious)), flagged (validation-chosen threshold).
    Text detectors read the posts per user they were trained with (--fixed-posts of the run)."""
    import polars as pl

    from userseq.detect.data import default_fixed_posts
    from userseq.detect.estimator import UserDetector

    if first_k is not None and first_k < 1:
        raise UserseqError(f"--first-k must be a positive integer (got {first_k}).")
    det = UserDetector.load(run_dir)
    columns = (user_col, item_col, timestamp_col, text_col)
    c = det.config  # text: the posts per user the detector was trained with (None: the default)
    fixed = c.fixed_posts if c.fixed_posts is not None else default_fixed_posts(events)
    d = _load_data(events, None, det.kind, columns, c.with_leakage, fixed, c.fixed_keep)
    if det.kind == "text" and d.post_count is not None and d.post_count["dropped"]["all"]:
        err.print(f"the detector reads the {c.fixed_keep} {fixed} posts per user (as trained); "
                  f"{d.post_count['dropped']['all']:,} users with fewer are not scored")
    d.labels = None
    s = det.predict_proba(d, first_k=first_k)
    flagged = (s >= det.threshold(first_k)).astype(int)
    table = pl.DataFrame({"user_id": d.user_ids.cast(pl.String), "score": s, "flagged": flagged})
    if output is not None:
        if not output.parent.is_dir():
            raise UserseqError(f"{output}: directory {output.parent} does not exist.")
        table.write_csv(output)
        err.print(f"wrote {len(table):,} scores to {output}")
    else:
        print(table.write_csv(), end="")


@detect_app.command("cluster")
def cluster(
    run_dir: DetectRunArg,
    out_dir: Annotated[Path | None, _opt("directory for metrics.json, map.png, report.md/html "
                                         "(default RUN/cluster)", "--out", "-o")] = None,
    features: Annotated[str, _opt("what is clustered: both (embedding + readable features), "
                                  "embedding, hand")] = "both",
    min_cluster_size: Annotated[int | None, _opt("HDBSCAN min_cluster_size (default: ~0.5% of "
                                                 "users)")] = None,
    max_users: Annotated[int, _opt("cluster a random sample of at most this many users (0: "
                                   "all)")] = 0,
    seed: Annotated[int, _opt("seeds the user sample and the clustering")] = 0,
) -> None:
    """Cluster the run's users (HDBSCAN), rank clusters by risk, extract rules, draw a map; writes
    OUT/metrics.json with capture_at_10pct, lift_at_10pct, purity, n_clusters."""
    from userseq.detect.cluster import cluster_run

    summary = cluster_run(run_dir, out_dir, min_cluster_size=min_cluster_size,
                          max_users=max_users, seed=seed, features=features)
    m = summary["metrics"]
    out.print(json.dumps({k: m[k] for k in ("users", "n_clusters", "capture_at_10pct",
                                            "lift_at_10pct", "purity", "rule_precision",
                                            "rule_recall")}, indent=1))
    where = out_dir if out_dir is not None else run_dir / "cluster"
    out.print(f"wrote {where}/metrics.json, report.md, report.html, map.png")
