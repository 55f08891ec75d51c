"""`userseq detect ...`: train, score and cluster malicious-user detectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from userseq.core.errors import UserseqError

detect_app = typer.Typer(no_args_is_help=True, help="Malicious-user detection and behaviour clustering.")
out = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.add_typer(detect_app, name="detect")


def _load_data(data: str, labels: Path | None, model: str, user_col: str, item_col: str, timestamp_col: str,
               text_col: str, with_leakage: bool = False):
    from userseq.data.eventlog import Columns
    from userseq.detect.data import load_event_data, load_text_data
    from userseq.detect.estimator import EVENT_MODELS

    cols = Columns(user=user_col, item=item_col, timestamp=timestamp_col, text=text_col)
    if model in EVENT_MODELS:
        d = load_event_data(data, labels, cols, with_leakage=with_leakage)
    else:
        d = load_text_data(data, labels, cols)
    return d


@detect_app.command("train")
def train(
    data: Annotated[str, typer.Option("--data", "-d", help="wiki-vandals | petgen-wiki | events file")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory to write")],
    labels: Annotated[Path | None, typer.Option(help="label table (user_id,label 0/1); required for files")] = None,
    model: Annotated[str, typer.Option(help="gru | transformer (events); hlstm | cnn | minilm (texts)")] = "gru",
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    dim: Annotated[int | None, typer.Option(help="embedding size")] = None,
    max_len: Annotated[int | None, typer.Option(help="events per user read by the model (the first ones)")] = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    folds: Annotated[int | None, typer.Option(help="k-fold cross-validation instead of one split")] = None,
    first_k: Annotated[str, typer.Option(help="early-detection prefix lengths, comma-separated")] = "1,2,5,10",
    with_leakage: Annotated[bool, typer.Option(help="add after-the-fact columns (reverts, STiKi) as features: "
                                               "NOT early detection")] = False,
    max_minutes: float | None = None,
    adversarial: Annotated[Path | None, typer.Option(help="adversarial training: an `attack run --train-posts` "
                                                     "output directory; its posts are appended to copies of "
                                                     "malicious training users")] = None,
    adversarial_share: Annotated[float, typer.Option(help="share of those users copied")] = 1.0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is much faster on a busy machine)")] = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str = "timestamp",
    text_col: str = "text",
    quiet: bool = False,
) -> None:
    """Train a detector; writes RUN/metrics.json ({"test": ..., "first_k": {"1": ...}}) and the model."""
    from userseq.detect.estimator import UserDetector, check_model_name, train_and_evaluate

    check_model_name(model)
    try:
        ks = [int(k) for k in first_k.split(",") if k.strip()]
    except ValueError:
        raise UserseqError(f"--first-k must be comma-separated positive integers (got {first_k!r}).") from None
    if any(k < 1 for k in ks):
        raise UserseqError(f"--first-k must be positive integers (got {first_k!r}).")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserseqError(f"--out {out_dir}: exists and is not a directory.")
    over = {"model.name": model, "train.epochs": epochs, "model.dim": dim, "model.max_len": max_len,
            "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "first_k": ks,
            "with_leakage": with_leakage, "train.max_minutes": max_minutes, "train.threads": threads,
            "dataset": data}
    augment = None
    if adversarial is not None:
        from userseq.detect.augment import augmenter

        augment = augmenter(adversarial, adversarial_share, seed)
        over["dataset"] = f"{data} + adversarial posts from {adversarial} (share {adversarial_share:g})"
    det = UserDetector(overrides=over)
    d = _load_data(data, labels, model, user_col, item_col, timestamp_col, text_col, with_leakage)
    metrics = train_and_evaluate(d, det, out_dir, folds=folds, quiet=quiet, augment=augment)
    t = metrics["test"]
    out.print(f"test: accuracy {t['accuracy']:.4f}  roc_auc {t['roc_auc']:.4f}  f1 {t['f1']:.4f}  "
              f"(n={int(t['n'])})")
    for k, m in metrics["first_k"].items():
        out.print(f"  first {k:>3}: accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']:.4f}")
    out.print(f"wrote {out_dir}/metrics.json")


@detect_app.command("score")
def score(
    run_dir: Annotated[Path, typer.Argument(help="run directory created by `userseq detect train`")],
    events: Annotated[str, typer.Option("--events", "-e", help="events file (same columns as training) or dataset")],
    first_k: Annotated[int | None, typer.Option(help="score each user from their first K events/posts")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="write CSV here instead of stdout")] = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str = "timestamp",
    text_col: str = "text",
) -> None:
    """Score users: CSV of user_id, score (P(malicious)), flagged (validation-chosen threshold)."""
    import polars as pl

    from userseq.detect.estimator import UserDetector

    if first_k is not None and first_k < 1:
        raise UserseqError(f"--first-k must be a positive integer (got {first_k}).")
    det = UserDetector.load(run_dir)
    d = _load_data(events, None, det.config.model.name, user_col, item_col, timestamp_col, text_col,
                   det.config.with_leakage)
    d.labels = None
    s = det.predict_proba(d, first_k=first_k)
    t = det.thresholds.get(str(first_k or "all"), det.thresholds.get("all", 0.5))
    table = pl.DataFrame({"user_id": d.user_ids.cast(pl.String), "score": s, "flagged": (s >= t).astype(int)})
    if output is not None:
        if not output.parent.is_dir():
            raise UserseqError(f"{output}: directory {output.parent} does not exist.")
        table.write_csv(output)
        err.print(f"wrote {len(table):,} scores to {output}")
    else:
        print(table.write_csv(), end="")


@detect_app.command("cluster")
def cluster(
    run_dir: Annotated[Path, typer.Argument(help="run directory created by `userseq detect train`")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for map.png + report.md/html")],
    min_cluster_size: Annotated[int | None, typer.Option(help="HDBSCAN min_cluster_size (default: ~0.5% of users)")] = None,
    max_users: Annotated[int, typer.Option(help="cluster a random sample of at most this many users")] = 20000,
    seed: int = 0,
) -> None:
    """Cluster the run's user embeddings (HDBSCAN), draw a PCA map, explain each cluster."""
    from userseq.detect.cluster import cluster_run

    summary = cluster_run(run_dir, out_dir, min_cluster_size=min_cluster_size, max_users=max_users, seed=seed)
    out.print(json.dumps({k: summary[k] for k in ("users", "clusters", "noise_share")}, indent=1))
    out.print(f"wrote {out_dir}/report.md, report.html, map.png")
