"""`userseq ctr ...`: train, evaluate, score and synthesize CTR data (registered by userseq.cli).

`userseq ctr serve` (HTTP) is added to this group by `userseq.serve.cli`: serving is a layer
above the task packages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core import distributed
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

ctr_app = typer.Typer(
    no_args_is_help=True,
    help="CTR prediction over behaviour histories (DIN, SIM, TWIN, SDIM, DARE, AW-MoE).")

RunDir = Annotated[Path, typer.Argument(help="run directory created by `userseq ctr train`")]


def register(app: typer.Typer) -> None:
    app.add_typer(ctr_app, name="ctr")


def _load_log(data: str, cfg: Any):
    """EventLog plus item metadata (genres) for named datasets."""
    from userseq.data.config import DataConfig
    from userseq.data.datasets import is_dataset_name, load_item_metadata
    from userseq.data.load import load_events

    dc = DataConfig(user_col=cfg.data.user_col, item_col=cfg.data.item_col,
                    timestamp_col=cfg.data.timestamp_col)
    log = load_events(data, dc)
    meta = None
    if is_dataset_name(data) and cfg.data.category_col is None:
        meta = load_item_metadata(data)
    return log, meta


def _print(metrics: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    for c in ("split", "auc", "auc 95% CI (users)", "gauc", "logloss", "impressions",
              "positive rate"):
        t.add_column(c, justify="right")
    for name in ("valid", "test"):
        if name in metrics:
            m = metrics[name]
            lo, hi = (m.get("ci95") or {}).get("auc", (float("nan"), float("nan")))
            t.add_row(name, f"{m['auc']:.4f}", f"[{lo:.4f}, {hi:.4f}]", f"{m['gauc']:.4f}",
                      f"{m['logloss']:.4f}", f"{m['impressions']:,}", f"{m['positive_rate']:.3f}")
    out.print(t)
    tr = metrics.get("train") or {}
    if tr:
        out.print(f"epochs {tr.get('epochs')} (best {tr.get('best_epoch')} by valid "
                  f"{tr.get('monitor')}), {tr.get('seconds')}s; GAUC {metrics.get('gauc')}")


@ctr_app.command("train")
def train(
    data: Annotated[str, typer.Option(
        "--data", "-d", help="ml-100k | ml-latest-small | dataset name | events file")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory to write")],
    model: Annotated[str | None, typer.Option(
        help="nohist | mean | din | sim | twin | sdim | dare | awmoe")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML CTR config (sections data/model/train)")] = None,
    set_: SetOption = None,
    label_col: Annotated[str | None, typer.Option(
        help="label or rating column (default rating)")] = None,
    label_threshold: Annotated[float | None, typer.Option(
        help="label = value >= threshold (default 4)")] = None,
    binary_labels: Annotated[bool, typer.Option(help="the label column already holds 0/1")] = False,
    category_col: Annotated[str | None, typer.Option(
        help="item category column (default: genres)")] = None,
    target_col: Annotated[str | None, typer.Option(
        help="boolean column marking the CTR samples")] = None,
    max_len: Annotated[int | None, typer.Option(help="recent behaviours for mean/din")] = None,
    long_len: Annotated[int | None, typer.Option(
        help="behaviours searched by sim/twin/sdim/dare")] = None,
    top_k: Annotated[int | None, typer.Option(help="behaviours kept by the search stage")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="training time budget in minutes")] = None,
    seed: Annotated[int | None, typer.Option(
        help="seeds the run: training (train.seed; the CTR split is by time, not random)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoint.safetensors")] = False,
    overwrite: OverwriteOpt = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train a CTR model on a time split (label = rating >= 4 by default), evaluate it, save the
    run. Settings: --config, then --set KEY=VALUE, then the specific options."""
    from userseq.ctr.config import CTRConfig
    from userseq.data.datasets import is_dataset_name

    check_out_dir(out_dir, resume, overwrite)
    local = not is_dataset_name(data) and Path(data).exists()
    dataset = str(Path(data).resolve()) if local else data
    cfg = CTRConfig.from_yaml(config).updated(parse_set(set_), source="--set")
    cfg = with_options(cfg, {
        "--model": ("model.name", model), "--label-col": ("data.label_col", label_col),
        "--label-threshold": ("data.label_threshold", label_threshold),
        "--category-col": ("data.category_col", category_col),
        "--target-col": ("data.target_col", target_col),
        "--max-len": ("model.max_len", max_len), "--long-len": ("model.long_len", long_len),
        "--top-k": ("model.top_k", top_k), "--epochs": ("train.epochs", epochs),
        "--max-minutes": ("train.max_minutes", max_minutes), "--seed": ("train.seed", seed),
        "--device": ("train.device", device), "--data": ("dataset", dataset),
    })
    if binary_labels:
        if label_threshold is not None:
            raise UserseqError("give either --binary-labels or --label-threshold, not both.")
        cfg = cfg.updated({"data": {**cfg.data.model_dump(mode="json"), "label_threshold": None}})
    _train_run(data, cfg, out_dir, resume, quiet, overwrite)


def _train_run(data: str, cfg: Any, out_dir: Path, resume: bool, quiet: bool,
               overwrite: bool = False) -> None:
    """Build the samples, fit, write the run and its metrics.json, print the table."""
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.estimator import CTREstimator

    t0 = time.time()
    log, meta = _load_log(data, cfg)
    ctr = build_ctr_data(log, cfg.data, meta)
    i = ctr.info
    by = "per user" if i.get("split") == "user" else "by time"
    err.print(f"loaded {log.source}: {i['samples']:,} samples ({i['train_samples']:,} train / "
              f"{i['valid_samples']:,} valid / {i['test_samples']:,} test {by}), "
              f"{i['categories']} categories, mean history {i['history_length']['mean']:.0f} "
              f"({time.time() - t0:.1f}s)")
    check_out_dir(out_dir, resume, overwrite, delete=True)  # the data loaded: replace the run
    est = CTREstimator(config=cfg).fit(ctr, run_dir=out_dir, resume=resume, quiet=quiet)
    if not distributed.is_main():  # torchrun: rank 0 writes and reports the run
        return
    metrics = est.write_metrics(out_dir, est.report(ctr))
    _print(metrics, f"{cfg.model.name} on {data}")
    out.print(f"saved run to {out_dir}")


@ctr_app.command("evaluate")
def evaluate(
    run_dir: RunDir,
    data: Annotated[str | None, typer.Option(
        help="evaluate on this data instead of the training data")] = None,
) -> None:
    """AUC, GAUC (by user) and logloss on the test period; writes RUN_DIR/metrics.json."""
    from userseq.ctr.estimator import CTREstimator, data_fingerprint

    est = CTREstimator.load(run_dir)
    source = data or est.config.dataset
    if not source:
        raise UserseqError(f"{run_dir}: the run does not record its data; pass --data.")
    if data is None and Path(source).suffix and not Path(source).exists():
        raise UserseqError(f"{run_dir}: the run was trained on {source}, which no longer exists; "
                           "pass --data PATH.")
    log, meta = _load_log(source, est.config)
    ctr = est.data_for(log, meta, same_split=data is None)
    fp, trained = data_fingerprint(ctr), est.data_fingerprint_
    if data is None and trained and fp != trained:
        raise UserseqError(f"{source}: data changed since training (fingerprint {fp} != "
                           f"{trained}); pass --data explicitly to evaluate on other data.")
    metrics = est.write_metrics(run_dir, est.report(ctr))
    _print(metrics, f"{est.config.model.name}: {run_dir}")
    out.print(f"wrote {Path(run_dir) / 'metrics.json'}")


@ctr_app.command("predict")
def predict(
    run_dir: RunDir,
    item: Annotated[list[str], typer.Option(
        "--item", "-i", help="candidate item id (repeatable)")],
    user: Annotated[str | None, typer.Option(
        "--user", "-u", help="a training user: their stored history")] = None,
    history: Annotated[str | None, typer.Option(
        help="comma-separated history item ids, oldest first")] = None,
    values: Annotated[str | None, typer.Option(
        help="comma-separated ratings/labels of the history events")] = None,
) -> None:
    """Click probabilities of candidate items for a user or an explicit history (JSON)."""
    from userseq.ctr.estimator import CTREstimator

    if not user and not history:
        raise UserseqError("give --user ID (a training user) or --history ITEM,ITEM,... "
                           "(any history).")
    est = CTREstimator.load(run_dir)
    v = est.vocab_
    req: dict[str, Any] = {}
    if history:
        req["history"] = _typed([h.strip() for h in history.split(",") if h.strip()], v.item_ids)
    if values:
        try:
            req["history_values"] = [float(x) for x in values.split(",") if x.strip()]
        except ValueError:
            raise UserseqError(f"--values must be numbers separated by commas (got {values!r}).") \
                from None
    if user:
        req["user"] = _typed([user], v.user_ids)[0]
        if "history" not in req and (_lookup_user(v, req["user"]) <= 0):
            raise UserseqError(f"unknown user {user!r}: not a training user; give --history "
                               "instead.")
    probs = est.predict_proba([{**req, "item": i} for i in _typed(item, v.item_ids)])
    rows = [{"item": i, "probability": float(p)} for i, p in zip(item, probs, strict=True)]
    out.print_json(json.dumps(rows))


@ctr_app.command("synth")
def synth(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Parquet/CSV file to write")],
    users: int = 300,
    items: int = 2000,
    categories: int = 50,
    history_len: int = 1000,
    targets: int = 10,
    seed: int = 0,
) -> None:
    """Write the synthetic CTR log with planted long-range interests (see docs/ctr.md)."""
    from userseq.ctr.synthetic import synthetic_ctr_events

    if not out_path.parent.is_dir():
        raise UserseqError(f"{out_path}: directory {out_path.parent} does not exist.")
    try:
        df = synthetic_ctr_events(users, items, categories, history_len, targets, seed=seed)
    except ValueError as e:
        raise UserseqError(f"synth: {e}") from None
    if out_path.suffix == ".csv":
        df.write_csv(out_path)
    else:
        df.write_parquet(out_path)
    out.print(f"wrote {df.height:,} events ({users:,} users x {history_len:,} history + "
              f"{targets} impressions) to {out_path}; train with: userseq ctr train --data "
              f"{out_path} --category-col category --target-col is_target --model dare --out RUN")


def _typed(values: list[str], id_map: Any) -> list[Any]:
    if id_map.dtype.is_integer():
        bad = [x for x in values if not x.strip().lstrip("+-").isdigit()]
        if bad:
            raise UserseqError(f"unknown id(s) {bad[:5]}: this model's ids are integers.")
        return [int(x) for x in values]
    return values


def _lookup_user(v: Any, user: Any) -> int:
    from userseq.data.eventlog import lookup_ids

    return int(lookup_ids(v.user_ids, [user], offset=1)[0])
