"""`userseq ctr ...`: train, evaluate, score and synthesize CTR data (registered by userseq.cli)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from userseq.core.errors import ConfigError, UserseqError

ctr_app = typer.Typer(no_args_is_help=True, help="CTR prediction over behaviour histories (DIN, SIM, TWIN, SDIM, DARE).")
out = Console()
err = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="run directory created by `userseq ctr train`")]


def register(app: typer.Typer) -> None:
    app.add_typer(ctr_app, name="ctr")


def _load_log(data: str, cfg: Any):
    """EventLog plus item metadata (genres) for named datasets."""
    from userseq.data.config import DataConfig
    from userseq.data.datasets import is_dataset_name, load_item_metadata
    from userseq.data.load import load_events

    dc = DataConfig(user_col=cfg.data.user_col, item_col=cfg.data.item_col, timestamp_col=cfg.data.timestamp_col)
    log = load_events(data, dc)
    meta = None
    if is_dataset_name(data) and cfg.data.category_col is None:
        meta = load_item_metadata(data)
    return log, meta


def _apply(cfg: Any, options: dict[str, tuple[str, Any]]) -> Any:
    try:
        return cfg.updated({key: value for key, value in options.values()})
    except ConfigError as e:
        msg = str(e).replace("<overrides>: invalid CTR config: ", "")
        for flag, (key, value) in options.items():
            if value is not None:
                msg = msg.replace(f"'{key}':", f"{flag} {value}:")
        raise ConfigError(f"invalid command-line option: {msg}") from None


def _print(metrics: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    for c in ("split", "auc", "gauc", "logloss", "impressions", "positive rate"):
        t.add_column(c, justify="right")
    for name in ("valid", "test"):
        if name in metrics:
            m = metrics[name]
            t.add_row(name, f"{m['auc']:.4f}", f"{m['gauc']:.4f}", f"{m['logloss']:.4f}", f"{m['impressions']:,}",
                      f"{m['positive_rate']:.3f}")
    out.print(t)
    tr = metrics.get("train") or {}
    if tr:
        out.print(f"epochs {tr.get('epochs')} (best {tr.get('best_epoch')} by valid {tr.get('monitor')}), "
                  f"{tr.get('seconds')}s; GAUC {metrics.get('gauc')}")


@ctr_app.command("train")
def train(
    data: Annotated[str, typer.Option("--data", "-d", help="ml-100k | ml-latest-small | dataset name | events file")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory to write")],
    model: Annotated[str | None, typer.Option(help="nohist | mean | din | sim | twin | sdim | dare")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML CTR config (sections data/model/train)")] = None,
    label_col: Annotated[str | None, typer.Option(help="label or rating column (default rating)")] = None,
    label_threshold: Annotated[float | None, typer.Option(help="label = value >= threshold (default 4)")] = None,
    binary_labels: Annotated[bool, typer.Option(help="the label column already holds 0/1")] = False,
    category_col: Annotated[str | None, typer.Option(help="item category column (default: genres)")] = None,
    target_col: Annotated[str | None, typer.Option(help="boolean column marking the CTR samples")] = None,
    max_len: Annotated[int | None, typer.Option(help="recent behaviours for mean/din")] = None,
    long_len: Annotated[int | None, typer.Option(help="behaviours searched by sim/twin/sdim/dare")] = None,
    top_k: Annotated[int | None, typer.Option(help="behaviours kept by the search stage")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="training time budget in minutes")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (YAML value), "
                                                   "e.g. --set model.attn_item_dim=8; repeatable")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoint.safetensors")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train a CTR model on a time split (label = rating >= 4 by default), evaluate it, save the run."""
    from userseq.ctr.config import load_ctr_config
    from userseq.data.datasets import is_dataset_name

    if out_dir.exists() and not out_dir.is_dir():
        raise UserseqError(f"--out {out_dir}: exists and is not a directory; choose a run directory.")
    dataset = data if is_dataset_name(data) or not Path(data).exists() else str(Path(data).resolve())
    cfg = _apply(load_ctr_config(config), {
        "--model": ("model.name", model), "--label-col": ("data.label_col", label_col),
        "--label-threshold": ("data.label_threshold", label_threshold),
        "--category-col": ("data.category_col", category_col), "--target-col": ("data.target_col", target_col),
        "--max-len": ("model.max_len", max_len), "--long-len": ("model.long_len", long_len),
        "--top-k": ("model.top_k", top_k), "--epochs": ("train.epochs", epochs),
        "--max-minutes": ("train.max_minutes", max_minutes), "--seed": ("train.seed", seed),
        "--device": ("train.device", device), "--data": ("dataset", dataset),
    })
    if set_:
        cfg = _apply(cfg, {f"--set {kv}": _key_value(kv) for kv in set_})
    if binary_labels:
        if label_threshold is not None:
            raise UserseqError("give either --binary-labels or --label-threshold, not both.")
        cfg = cfg.updated({"data": {**cfg.data.model_dump(mode="json"), "label_threshold": None}})
    t0 = time.time()
    log, meta = _load_log(data, cfg)
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.estimator import CTREstimator

    ctr = build_ctr_data(log, cfg.data, meta)
    i = ctr.info
    err.print(f"loaded {log.source}: {i['samples']:,} samples ({i['train_samples']:,} train / {i['valid_samples']:,} "
              f"valid / {i['test_samples']:,} test by time), {i['categories']} categories, mean history "
              f"{i['history_length']['mean']:.0f} ({time.time() - t0:.1f}s)")
    est = CTREstimator(config=cfg).fit(ctr, run_dir=out_dir, resume=resume, quiet=quiet)
    metrics = est.report(ctr)
    from userseq.core.artifacts import write_json

    write_json(metrics, out_dir / "metrics.json")
    _print(metrics, f"{cfg.model.name} on {data}")
    out.print(f"saved run to {out_dir}")


@ctr_app.command("evaluate")
def evaluate(
    run_dir: RunDir,
    data: Annotated[str | None, typer.Option(help="evaluate on this data instead of the training data")] = None,
) -> None:
    """AUC, GAUC (by user) and logloss on the test period; writes RUN_DIR/metrics.json."""
    from userseq.core.artifacts import write_json
    from userseq.ctr.estimator import CTREstimator, data_fingerprint

    est = CTREstimator.load(run_dir)
    source = data or est.config.dataset
    if not source:
        raise UserseqError(f"{run_dir}: the run does not record its data; pass --data.")
    if data is None and Path(source).suffix and not Path(source).exists():
        raise UserseqError(f"{run_dir}: the run was trained on {source}, which no longer exists; pass --data PATH.")
    log, meta = _load_log(source, est.config)
    ctr = est.data_for(log, meta, same_split=data is None)
    fp = data_fingerprint(ctr)
    if data is None and est.data_fingerprint and fp != est.data_fingerprint:
        raise UserseqError(f"{source}: data changed since training (fingerprint {fp} != {est.data_fingerprint}); "
                           "pass --data explicitly to evaluate on other data.")
    metrics = est.report(ctr)
    write_json(metrics, Path(run_dir) / "metrics.json")
    _print(metrics, f"{est.config.model.name}: {run_dir}")
    out.print(f"wrote {Path(run_dir) / 'metrics.json'}")


@ctr_app.command("predict")
def predict(
    run_dir: RunDir,
    item: Annotated[list[str], typer.Option("--item", "-i", help="candidate item id (repeatable)")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="a training user: their stored history")] = None,
    history: Annotated[str | None, typer.Option(help="comma-separated history item ids, oldest first")] = None,
    values: Annotated[str | None, typer.Option(help="comma-separated ratings/labels of the history events")] = None,
) -> None:
    """Click probabilities of candidate items for a user or an explicit history (JSON)."""
    from userseq.ctr.estimator import CTREstimator

    est = CTREstimator.load(run_dir)
    v = est.vocab
    if not user and not history:
        raise UserseqError("give --user ID (a training user) or --history ITEM,ITEM,... (any history).")
    req: dict[str, Any] = {}
    if history:
        req["history"] = _typed([h.strip() for h in history.split(",") if h.strip()], v.item_ids)
    if values:
        try:
            req["history_values"] = [float(x) for x in values.split(",") if x.strip()]
        except ValueError:
            raise UserseqError(f"--values must be numbers separated by commas (got {values!r}).") from None
    if user:
        req["user"] = _typed([user], v.user_ids)[0]
        if "history" not in req and (_lookup_user(v, req["user"]) <= 0):
            raise UserseqError(f"unknown user {user!r}: not a training user; give --history instead.")
    probs = est.predict_proba([{**req, "item": i} for i in _typed(item, v.item_ids)])
    out.print_json(json.dumps([{"item": i, "probability": float(p)} for i, p in zip(item, probs, strict=True)]))


@ctr_app.command("serve")
def serve(
    run_dir: RunDir,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8001,
) -> None:
    """Serve POST /score (click probabilities of candidates for a user or history) over HTTP."""
    try:
        import uvicorn

        from userseq.serve.routes.ctr import create_ctr_app
    except ModuleNotFoundError as e:
        raise UserseqError(f"serving needs the serve extra ({e.name} is missing): pip install 'userseq[serve]'.") from None
    app = create_ctr_app(run_dir)
    out.print(f"serving {run_dir} ({app.state.estimator.config.model.name}) on http://{host}:{port}  (POST /score)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


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
    out.print(f"wrote {df.height:,} events ({users:,} users x {history_len:,} history + {targets} impressions) to "
              f"{out_path}; train with: userseq ctr train --data {out_path} --category-col category "
              "--target-col is_target --model dare --out RUN")


def _key_value(kv: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = kv.partition("=")
    if not sep or not key.strip():
        raise UserseqError(f"--set {kv!r}: expected KEY=VALUE, e.g. --set model.top_k=50.")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserseqError(f"--set {kv!r}: the value is not valid YAML.") from None


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
