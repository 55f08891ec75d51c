"""CTR benchmark: accuracy, training time and throughput per model on MovieLens, and a scaling table
on synthetic long histories. Writes the `ctr` section of benchmarks/RESULTS.md.

    python benchmarks/ctr.py --part real       # 7 models x ml-latest-small, ml-100k (CLI runs)
    python benchmarks/ctr.py --part scaling    # ms / 1,000 candidates + peak RSS, L = 100, 1k, 10k
    python benchmarks/ctr.py --part synthetic  # AUC on planted long-range interests (L = 1,000)
    python benchmarks/ctr.py --part table      # only rewrite RESULTS.md from ctr_runs.json

Rows are kept in benchmarks/ctr_runs.json (keyed), so parts can be run separately. Every run uses
one torch thread (the reference machine has 2 shared cores) and records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import (  # noqa: E402
    fmt_load,
    load_rows,
    machine_description,
    publish,
)
from results import save_row as _save_row  # noqa: E402

STORE = HERE / "ctr_runs.json"
LOCK = HERE / "_work" / "ctr_runs.lock"  # parts may run side by side
CONFIG = HERE / "configs" / "ctr.yaml"
MODELS = ["nohist", "mean", "din", "sim", "twin", "sdim", "dare", "dare-attn4"]
CLI_ARGS = {"dare-attn4": ["--model", "dare", "--set", "model.attn_item_dim=8",
                           "--set", "model.attn_cat_dim=4"]}


def load_store() -> dict:
    return load_rows(STORE)


def save_row(key: str, row: dict) -> None:
    row["date"] = time.strftime("%Y-%m-%d %H:%M")
    _save_row(STORE, key, row, LOCK)


# ---------------------------------------------------------------------- real data (CLI runs)
def run_real(datasets: list[str], models: list[str], workdir: Path, max_minutes: float) -> None:
    exe = Path(sys.executable).with_name("userseq")
    for ds in datasets:
        for model in models:
            run_dir = workdir / f"{ds}-{model}"
            cmd = ["userseq", "ctr", "train", "--data", ds,
                   *CLI_ARGS.get(model, ["--model", model]),
                   "--config", str(CONFIG.relative_to(HERE.parent)),
                   "--max-minutes", str(max_minutes), "--out", str(run_dir), "--overwrite",
                   "--quiet"]
            print(f"== {ds} / {model}", flush=True)
            t0 = time.time()
            proc = subprocess.run([str(exe), *cmd[1:]], capture_output=True, text=True,
                                  cwd=HERE.parent)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            m = json.loads((run_dir / "metrics.json").read_text())
            save_row(f"real/{ds}/{model}", {"dataset": ds, "model": model, "cmd": " ".join(cmd),
                                            "wall": time.time() - t0, "metrics": m,
                                            "load": os.getloadavg()})
            t = m["test"]
            print(f"   test auc {t['auc']:.4f} gauc {t['gauc']:.4f} logloss {t['logloss']:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)


# ------------------------------------------------------------ scaling (one process per cell)
SCALING_MODELS = {
    "din": {"model.name": "din"},
    "sdim": {"model.name": "sdim"},
    "dare": {"model.name": "dare"},
    "dare (attn dim / 4)": {"model.name": "dare", "model.attn_item_dim": 8,
                            "model.attn_cat_dim": 4},
}


def scaling_cell(model: str, L: int, n_cand: int, repeats: int) -> dict:
    """Time and peak memory to score `n_cand` candidates for one history of length L (in this
    process)."""
    import numpy as np
    import polars as pl
    import torch

    torch.set_num_threads(1)
    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import Behaviours, Samples, Vocab
    from userseq.ctr.estimator import CTREstimator
    from userseq.ctr.models import build_ctr_model

    n_items, n_cats = 10_000, 100
    cfg = CTRConfig().updated({**SCALING_MODELS[model], "model.max_len": L, "model.long_len": L})
    rng = np.random.default_rng(0)
    item_cat = np.concatenate([[0], rng.integers(1, n_cats + 1, n_items)])
    vocab = Vocab(pl.Series("id", np.arange(1, n_items + 1)), pl.Series("id", [0]), item_cat,
                  [str(c) for c in range(n_cats)], np.arange(2, 6, dtype=np.float64), [],
                  np.zeros(0), np.ones(0))
    est = CTREstimator(config=cfg)
    est.vocab_ = vocab
    torch.manual_seed(0)
    est.model_ = build_ctr_model(cfg.model, n_items, n_cats, vocab.n_feats, 1).eval()
    beh = Behaviours(np.array([0, L]), rng.integers(1, n_items + 1, L), rng.integers(1, 6, L),
                     np.arange(L, dtype=float))
    s = Samples(np.array([1]), np.array([1]), np.array([float(L)]), np.array([0]), np.array([L]),
                np.zeros(1, np.float32), np.zeros((1, 0), np.float32))
    cand = rng.integers(1, n_items + 1, n_cand)
    rss0 = _rss_mib()
    with torch.no_grad():
        est._score_candidates(beh, s, cand)  # warm-up (same sizes: the peak is reached here)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            est._score_candidates(beh, s, cand)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "L": L, "ms_per_1000": 1000 * float(np.median(times)) * 1000 / n_cand,
            "peak_mib": peak, "extra_mib": peak - rss0, "load": os.getloadavg()}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scaling(lengths: list[int], models: list[str], n_cand: int, repeats: int) -> None:
    for L in lengths:
        for model in models:
            code = (f"import json,sys; sys.path.insert(0, {str(HERE)!r}); "
                    "from ctr import scaling_cell; "
                    f"print(json.dumps(scaling_cell({model!r}, {L}, {n_cand}, {repeats})))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"scaling {model} L={L} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"   L={L:>6} {model:<20} {row['ms_per_1000']:9.1f} ms / 1000 cand  "
                  f"peak {row['peak_mib']:.0f} MiB (+{row['extra_mib']:.0f})", flush=True)
            save_row(f"scaling/{L}/{model}", row)


# ------------------------------------------------------------ synthetic accuracy (in-process)
SYNTH_MODELS = {
    "nohist": {"model.name": "nohist"},
    "din (last 200)": {"model.name": "din", "model.max_len": 200},
    "din (full history)": {"model.name": "din"},
    "sim": {"model.name": "sim"},
    "twin": {"model.name": "twin"},
    "sdim": {"model.name": "sdim"},
    "dare": {"model.name": "dare"},
    "dare (attn dim / 4)": {"model.name": "dare", "model.attn_item_dim": 8,
                            "model.attn_cat_dim": 4},
}


def run_synthetic(L: int, users: int, targets: int, models: list[str], epochs: int, seed: int,
                  batch_size: int = 512) -> None:
    import torch

    torch.set_num_threads(1)
    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.estimator import CTREstimator
    from userseq.ctr.synthetic import synthetic_ctr_events
    from userseq.data.eventlog import EventLog
    from userseq.metrics.ctr import auc

    df = synthetic_ctr_events(n_users=users, history_len=L, n_targets=targets, seed=seed)
    cfg = CTRConfig().updated({"data.category_col": "category", "data.target_col": "is_target",
                               "model.user_dim": 0, "model.max_len": L, "model.long_len": L,
                               "train.epochs": epochs, "train.patience": 2, "train.threads": 1,
                               "train.batch_size": batch_size,
                               "train.device": "cpu", "train.seed": seed})
    data = build_ctr_data(EventLog.from_frame(df), cfg.data)
    test = data.splits["test"]
    truth = df.filter(df["is_target"])["click_prob"].to_numpy()
    oracle = auc(data.samples.label[test], truth[test])
    for name in models:
        t0 = time.time()
        est = CTREstimator(config=cfg, overrides=SYNTH_MODELS[name]).fit(data, quiet=True)
        m = est.evaluate(data, "test")
        print(f"   L={L} {name:<22} auc {m['auc']:.4f} gauc {m['gauc']:.4f} "
              f"(oracle {oracle:.4f}) {time.time() - t0:.0f}s", flush=True)
        save_row(f"synthetic/{L}/{name}", {"model": name, "L": L, "users": users,
                                           "targets": targets, "seed": seed,
                                           "batch_size": batch_size, "max_epochs": epochs,
                                           "test": m, "oracle_auc": oracle,
                                           "train": est.train_state_, "load": os.getloadavg()})


# ---------------------------------------------------------------------- the RESULTS.md section
def _order(names: list[str]):
    """Sort position of a model name: its place in `names`, unknown names last."""
    return lambda name: names.index(name) if name in names else 99


def _real_lines(real: list[dict]) -> list[str]:
    lines = [
        "### MovieLens (label = rating >= 4, history = all earlier ratings with their rating as a "
        "feature)",
        "",
        "Time split: samples before the 80% time quantile train, [80%, 90%) validate (early "
        "stopping on",
        "valid AUC), >= 90% test. GAUC grouped by user, weighted by impressions. Throughput = "
        "test samples",
        "scored per second in batches of 2,048 (one thread). mean/din read the last 200 "
        "behaviours; sim, twin,",
        "sdim, dare search the last 2,000 (top-k 20; SDIM m = 48, tau = 3). dare-attn4: attention "
        "embeddings",
        "4x smaller (item 8 + category 4 instead of 32 + 16).",
        "",
        "| dataset | model | test AUC | GAUC | logloss | epochs (best) | train time | samples/s "
        "| peak RSS | load | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pos = _order(MODELS)
    for r in sorted(real, key=lambda r: (r["dataset"], pos(r["model"]))):
        t, tr = r["metrics"]["test"], r["metrics"]["train"]
        lines.append(
            f"| {r['dataset']} | {r['model']} | {t['auc']:.4f} | {t['gauc']:.4f} | "
            f"{t['logloss']:.4f} | {tr['epochs']} ({tr['best_epoch']}) | {tr['seconds']:.0f} s | "
            f"{t['samples_per_second']:,.0f} | {tr['peak_rss_gb']:.2f} GB | "
            f"{fmt_load(r['load'], 1)} | `{r['cmd']}` |")
    return lines


def _scaling_lines(scal: list[dict]) -> list[str]:
    lines = [
        "",
        "### Scaling with history length (synthetic history, one user, 1,000 candidates)",
        "",
        "Time to score 1,000 candidates against one history of length L, including encoding the "
        "history",
        "once (DIN: behaviour embeddings; DARE: keys and values; SDIM: hashing the behaviours into "
        "bucket",
        "sums), median of repeats after a warm-up; untrained weights (cost does not depend on "
        "them).",
        "Peak = the process's peak RSS (one process per cell); '+' = growth over the RSS before "
        "scoring.",
        "DIN and DARE read the whole history (max_len = long_len = L). "
        "`python benchmarks/ctr.py --part scaling`.",
        "",
        "| L | model | ms per 1,000 candidates | peak RSS (MiB) | + over baseline (MiB) | load |",
        "|---|---|---|---|---|---|",
    ]
    pos = _order(list(SCALING_MODELS))
    for r in sorted(scal, key=lambda r: (r["L"], pos(r["model"]))):
        lines.append(f"| {r['L']:,} | {r['model']} | {r['ms_per_1000']:.1f} | "
                     f"{r['peak_mib']:.0f} | {r['extra_mib']:.0f} | {fmt_load(r['load'], 1)} |")
    return lines


def _synthetic_lines(syn: list[dict]) -> list[str]:
    lines = [
        "",
        "### Planted long-range interests (synthetic)",
        "",
        "`userseq.ctr.synthetic` (seed 42): 2,000 items in 50 categories; per user 2 liked and 2 "
        "disliked",
        "categories, whose evidence (8 events each, rated 5 / 1) lies only before the last 200 "
        "events; all",
        "other history events are noise from neutral categories. Impressions: liked / disliked / "
        "neutral",
        "category (one third each), click probability sigmoid(+2 / -2 / -0.5 + item quality). "
        "Time split",
        "of the impressions: last 10% test, the 10% before validate. Oracle AUC = AUC of the true "
        "click",
        "probabilities on the same test impressions. History models read the whole history except",
        "`din (last 200)`. `python benchmarks/ctr.py --part synthetic --synthetic-length L ...`.",
        "",
        "| model | L | users x impressions | test AUC | GAUC | logloss | oracle AUC "
        "| epochs (best) / max | train time | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pos = _order(list(SYNTH_MODELS))
    for r in sorted(syn, key=lambda r: (r["L"], pos(r["model"]))):
        t, tr = r["test"], r["train"]
        lines.append(f"| {r['model']} | {r['L']:,} | {r['users']} x {r['targets']} | "
                     f"{t['auc']:.4f} | {t['gauc']:.4f} | {t['logloss']:.4f} | "
                     f"{r['oracle_auc']:.4f} | {tr['epochs']} ({tr['best_epoch']}) / "
                     f"{r.get('max_epochs', '?')} | "
                     f"{tr['seconds']:.0f} s | "
                     f"{fmt_load(r['load'], 1)} |")
    return lines


def write_table() -> None:
    store = load_store()
    real = [r for k, r in store.items() if k.startswith("real/")]
    scal = [r for k, r in store.items() if k.startswith("scaling/")]
    syn = [r for k, r in store.items() if k.startswith("synthetic/")]
    lines = [
        f"Machine: {machine_description()}; Python {platform.python_version()}; one torch thread "
        "per run (the",
        "2 cores are shared: the load average, 1/5/15 min, is printed per row; above 2 means other "
        "work",
        "competed for the CPU and times are inflated). One seed (42) per row: differences of a few",
        "thousandths are within seed noise.",
        "",
        *_real_lines(real),
        *_scaling_lines(scal),
    ]
    if syn:
        lines += _synthetic_lines(syn)
    lines += _findings(store)
    dates = sorted({r["date"] for r in store.values()})
    lines += ["", f"Rows kept in benchmarks/ctr_runs.json (run dates {dates[0]} .. {dates[-1]})."
              if dates else ""]
    publish("ctr", "CTR over behaviour histories (DIN, SIM, TWIN, SDIM, DARE)", lines)


def _findings(store: dict) -> list[str]:
    """The paper expectations, checked against the rows (only where both sides were measured)."""
    out = ["", "### Against the expected shape", ""]

    def get(key: str, path: tuple[str, ...]) -> float | None:
        r = store.get(key)
        for p in path:
            if r is None:
                return None
            r = r.get(p)
        return r

    def within(small: float, dare: float) -> str:
        return "within" if abs(small - dare) <= 0.002 else "not within"

    for L in (100, 1000, 10000):
        din, sdim, dare = (get(f"scaling/{L}/{m}", ("ms_per_1000",))
                           for m in ("din", "sdim", "dare"))
        if din and sdim and dare:
            out.append(f"- L = {L:,}: DIN {din:,.0f} ms, SDIM {sdim:,.0f} ms, DARE {dare:,.0f} ms "
                       f"per 1,000 candidates (DIN / DARE = {din / dare:,.0f}x, "
                       f"DIN / SDIM = {din / sdim:,.0f}x).")
    for L in (1000, 10000):
        dare = get(f"synthetic/{L}/dare", ("test", "auc"))
        small = get(f"synthetic/{L}/dare (attn dim / 4)", ("test", "auc"))
        full = f"synthetic/{L}/din (full history)" in store
        din_name = "din (full history)" if full else "din (last 200)"
        din = get(f"synthetic/{L}/{din_name}", ("test", "auc"))
        if dare is not None and din is not None:
            out.append(f"- synthetic L = {L:,}: DARE AUC - {din_name} AUC = {dare - din:+.4f} "
                       f"({'holds' if dare >= din else 'does not hold'}: DARE >= DIN).")
        if dare is not None and small is not None:
            out.append(f"- synthetic L = {L:,}: DARE attention dim / 4 changes AUC by "
                       f"{small - dare:+.4f} ({within(small, dare)} 0.002).")
    for ds in ("ml-latest-small", "ml-100k"):
        auc = ("metrics", "test", "auc")
        dare, small = get(f"real/{ds}/dare", auc), get(f"real/{ds}/dare-attn4", auc)
        din = get(f"real/{ds}/din", auc)
        if dare is not None and din is not None:
            out.append(f"- {ds}: DARE AUC - DIN AUC = {dare - din:+.4f}.")
        if dare is not None and small is not None:
            out.append(f"- {ds}: DARE attention dim / 4 changes AUC by {small - dare:+.4f} "
                       f"({within(small, dare)} 0.002).")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["real", "scaling", "synthetic", "table", "all"],
                    default="all")
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--max-minutes", type=float, default=3.0,
                    help="training budget per real-data run")
    ap.add_argument("--lengths", nargs="+", type=int, default=[100, 1000, 10000])
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic-length", type=int, default=1000)
    ap.add_argument("--synthetic-users", type=int, default=300)
    ap.add_argument("--synthetic-targets", type=int, default=20)
    ap.add_argument("--synthetic-batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "ctr")
    args = ap.parse_args()
    if args.part in ("real", "all"):
        run_real(args.datasets, args.models or MODELS, args.workdir, args.max_minutes)
    if args.part in ("scaling", "all"):
        run_scaling(args.lengths, args.models or list(SCALING_MODELS), args.candidates,
                    args.repeats)
    if args.part in ("synthetic", "all"):
        run_synthetic(args.synthetic_length, args.synthetic_users, args.synthetic_targets,
                      args.models or list(SYNTH_MODELS), args.epochs, args.seed,
                      args.synthetic_batch_size)
    write_table()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
