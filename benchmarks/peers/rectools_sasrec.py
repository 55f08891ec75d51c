"""userseq's SASRec against RecTools' SASRec on the same ML-1M split, at equal wall-clock budgets
(issue #14 item 6).

    python benchmarks/peers/rectools_sasrec.py --setup              # the venv only (no timing)
    python benchmarks/peers/rectools_sasrec.py --minutes 10         # both systems, 10 min each
    python benchmarks/peers/rectools_sasrec.py --minutes 30         # (committed, not run yet)
    python benchmarks/peers/rectools_sasrec.py --minutes 60         # (committed, not run yet)
    python benchmarks/peers/rectools_sasrec.py --table-only

RecTools is never a dependency of userseq: `--setup` makes benchmarks/peers/.venv (gitignored) and
installs `rectools[torch]==0.19.0` there, with torch pinned to the local CPU build 2.13.0 through a
constraints file so that pip cannot pull a CUDA torch. The split is userseq's leave-one-out split
of ML-1M (benchmarks/configs/ml-1m.yaml), exported as CSV (training events, each user's validation
item); RecTools trains on the training events only, one epoch at a time, and after each epoch
recommends top-10 lists (seen items filtered) from the training events (validation) and from
training + validation events (test). The lists are scored here with userseq.metrics
(`evaluate_lists`), the same code as every userseq row. userseq's SASRec trains with the same
architecture and recipe (d=64, 2 blocks, 1 head, dropout 0.1, max length 200, batch 128, lr
3e-3, full-softmax CE with bf16 matmuls, its fastest setting: see the epoch-time section) under
`train.max_minutes`. Both report: the test NDCG@10 of the epoch with
the best validation NDCG@10 within the budget, and the training seconds until validation NDCG@10
first reached 0.15 (time excludes evaluation for both). Rows: benchmarks/peers/peers_runs.json,
RESULTS.md section `peers`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))
import results  # noqa: E402

VENV = HERE / ".venv"
STORE = HERE / "peers_runs.json"
LOCK = BENCH / "_work" / "peers.lock"
WORK = BENCH / "_work" / "peers"
SECTION = "peers"
RECTOOLS = "rectools[torch]==0.19.0"
TORCH = "torch==2.13.0"  # the local CPU wheel; the constraint keeps pip from any other build
TARGET = 0.15


def venv_python() -> Path:
    return VENV / "bin" / "python"


def setup() -> None:
    """Create benchmarks/peers/.venv with RecTools 0.19 on the CPU torch 2.13.0."""
    if venv_python().exists() and subprocess.run(
            [str(venv_python()), "-c", "import rectools, torch; print(rectools.__version__)"],
            capture_output=True, text=True).stdout.strip() == "0.19.0":
        return
    results.log(f"creating {VENV} with {RECTOOLS} (torch pinned to {TORCH}, CPU)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    constraints = HERE / "_constraints.txt"
    constraints.write_text(TORCH + "\n")
    pip = [str(VENV / "bin" / "pip"), "install", "-q", "-c", str(constraints)]
    subprocess.run([*pip, TORCH], check=True)  # first, so that rectools finds it satisfied
    subprocess.run([*pip, RECTOOLS], check=True)
    out = subprocess.run([str(venv_python()), "-c", "import torch; print(torch.__version__, "
                          "torch.version.cuda)"], capture_output=True, text=True, check=True)
    results.log(f"peers venv torch: {out.stdout.strip()}")
    if "None" not in out.stdout:
        raise SystemExit(f"{VENV}: torch is a CUDA build ({out.stdout.strip()}); remove the venv")


def config(minutes: float, seed: int):
    from userseq.nextitem.config import RunConfig

    cfg = RunConfig.from_yaml(BENCH / "configs" / "ml-1m.yaml")
    # bf16 CE matmuls: userseq's fastest setting, accuracy-checked in benchmarks/epoch_time.py
    return cfg.updated({"train.max_minutes": minutes, "train.seed": seed, "train.epochs": 1000,
                        "train.patience": 1000, "train.threads": 2, "dataset": "ml-1m",
                        "loss.logits_dtype": "bf16"})


def export_split(cfg, out: Path):
    """Write userseq's split as CSV for the worker; returns (log, split)."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import split_kwargs

    log = load_events("ml-1m", cfg.data)
    sp = make_split(log, cfg.data.split, **split_kwargs(cfg))
    out.mkdir(parents=True, exist_ok=True)
    off, items = sp.train_offsets, sp.train_items
    users = np.repeat(np.arange(len(off) - 1), np.diff(off))
    pos = np.arange(len(items)) - np.repeat(off[:-1], np.diff(off))
    np.savetxt(out / "train.csv", np.c_[users, items, pos], fmt="%d", delimiter=",",
               header="user,item,pos", comments="")
    v, t = sp.valid, sp.test
    np.savetxt(out / "valid.csv", np.c_[v.users, v.targets], fmt="%d", delimiter=",",
               header="user,item", comments="")
    # the worker's test history is training + validation events: check that it is the split's
    for i in range(0, len(t), max(1, len(t) // 50)):
        u = t.users[i]
        j = int(np.searchsorted(v.users, u))
        want = np.r_[items[off[u]:off[u + 1]], v.targets[j]]
        if v.users[j] != u or not np.array_equal(t.history(i)[-len(want):], want):
            raise SystemExit(f"user {u}: test history is not training + validation events")
    return log, sp


def score(top: np.ndarray, users: np.ndarray, es, n_items: int) -> float:
    from userseq.metrics.ranking import evaluate_lists

    row = {int(u): r for r, u in enumerate(users)}
    lists = top[[row[int(u)] for u in es.users]]
    return evaluate_lists(lists, es.targets, n_items, ks=[10])["ndcg@10"]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, v in curve if v >= target), None)


def run_rectools(a, sp, n_items: int, split_dir: Path) -> dict:
    out = WORK / f"rectools-{a.minutes:g}min-s{a.seed}"
    cmd = [str(venv_python()), str(HERE / "rectools_worker.py"), "--split", str(split_dir),
           "--out", str(out), "--minutes", str(a.minutes), "--threads", "2", "--seed",
           str(a.seed), *(["--max-epochs", str(a.max_epochs)] if a.max_epochs else [])]
    results.log("rectools: " + " ".join(cmd[1:]))
    with results.LoadMonitor() as mon:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rectools worker failed:\n{proc.stderr[-4000:]}")
    users = np.loadtxt(split_dir / "valid.csv", delimiter=",", skiprows=1, dtype=np.int64,
                       ndmin=2)[:, 0]
    curve = []
    for line in (out / "log.jsonl").read_text().splitlines():
        e = json.loads(line)
        ep = e["epoch"]
        vt = score(np.load(out / f"epoch-{ep}-valid.npy"), users, sp.valid, n_items)
        tt = score(np.load(out / f"epoch-{ep}-test.npy"), users, sp.test, n_items)
        curve.append({**e, "valid_ndcg10": round(vt, 4), "test_ndcg10": round(tt, 4)})
    inside = [c for c in curve if c["train_seconds"] <= a.minutes * 60] or curve[:1]
    best = max(inside, key=lambda c: c["valid_ndcg10"])
    return {"system": "RecTools 0.19 SASRec", "epochs": len(inside), "best_epoch": best["epoch"],
            "test_ndcg10": best["test_ndcg10"], "valid_ndcg10": best["valid_ndcg10"],
            "train_seconds": inside[-1]["train_seconds"],
            "time_to_target_s": time_to([(c["train_seconds"], c["valid_ndcg10"]) for c in curve],
                                        TARGET),
            "curve": curve, **results.provenance(mon, seeds=[a.seed], data="ml-1m")}


def run_userseq(a, log, sp, cfg) -> dict:
    from userseq.core.artifacts import read_json
    from userseq.nextitem.estimator import NextItemRecommender

    out = WORK / f"userseq-{a.minutes:g}min-s{a.seed}"
    if a.max_epochs:
        cfg = cfg.updated({"train.epochs": a.max_epochs})
    results.log(f"userseq: SASRec, {a.minutes} min")
    with results.LoadMonitor() as mon:
        NextItemRecommender(config=cfg).fit(log, sp, run_dir=out, quiet=True)
    m = read_json(out / "metrics.json")
    hist = read_json(out / "train_log.json")
    train_s = np.cumsum([h["epoch_seconds"] for h in hist])  # training time, validation excluded
    curve = [{"epoch": h["epoch"], "train_seconds": round(float(s), 2),
              "valid_ndcg10": round(h.get("valid_ndcg@10", float("nan")), 4)}
             for h, s in zip(hist, train_s, strict=True)]
    return {"system": "userseq SASRec", "epochs": m["train"]["epochs"],
            "best_epoch": m["train"]["best_epoch"], "test_ndcg10": m["test"]["ndcg@10"],
            "valid_ndcg10": m["train"]["best_valid"], "train_seconds": float(train_s[-1]),
            "time_to_target_s": time_to([(c["train_seconds"], c["valid_ndcg10"]) for c in curve],
                                        TARGET),
            "curve": curve, **results.provenance(mon, seeds=[a.seed], data="ml-1m")}


def table(write: bool) -> None:
    rows = results.load_rows(STORE)
    lines = ["ML-1M (SASRec preprocessing), userseq's leave-one-out split exported to both "
             "systems; top-10 lists scored by userseq.metrics; seen items filtered. Same "
             "architecture and recipe for both: d=64, 2 blocks, 1 head, dropout 0.1, max length "
             "200, batch 128, lr 3e-3, full-softmax CE (userseq: bf16 CE matmuls), 2 threads. "
             "`test NDCG@10` = the epoch with "
             "the best validation NDCG@10 inside the budget. `to 0.15` = training seconds (no "
             f"evaluation) until validation NDCG@10 first reached {TARGET}.", "",
             "| budget | system | test NDCG@10 | best valid NDCG@10 | epochs (best) | train s | "
             "to 0.15 (valid) | load mean/max | verdict | commit | date |",
             "|---|---|---:|---:|---|---:|---:|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (rows[k]["minutes"], rows[k]["system"])):
        r = rows[key]
        tt = f"{r['time_to_target_s']:.0f} s" if r["time_to_target_s"] is not None else \
            "not reached"
        lines.append(f"| {r['minutes']:g} min | {r['system']} | {r['test_ndcg10']:.4f} | "
                     f"{r['valid_ndcg10']:.4f} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds']:.0f} | {tt} | {r['load_mean']}/{r['load_max']} | "
                     f"{r['verdict']} | {r['commit']} | {r['date']} |")
    by_min: dict[float, dict[str, dict]] = {}
    for r in rows.values():
        by_min.setdefault(r["minutes"], {})[r["system"]] = r
    for mins, g in sorted(by_min.items()):
        u, t = g.get("userseq SASRec"), g.get("RecTools 0.19 SASRec")
        if u and t and u["time_to_target_s"] and t["time_to_target_s"]:
            lines += ["", f"{mins:g} min: userseq reached validation NDCG@10 {TARGET} "
                      f"{t['time_to_target_s'] / u['time_to_target_s']:.1f}x sooner than RecTools "
                      "(goal: >= 2x)."]
        elif u and t:
            lines += ["", f"{mins:g} min: speed-up to {TARGET} not measurable (userseq: "
                      f"{u['time_to_target_s']}, RecTools: {t['time_to_target_s']} s)."]
    lines += ["", "30- and 60-minute budgets: committed commands (`python benchmarks/peers/"
              "rectools_sasrec.py --minutes 30`, `--minutes 60`), not run (the 20-minute "
              "benchmark budget of the session that wrote this). Commands: " + "; ".join(
                  sorted({f"`{r['command'].strip()}`" for r in rows.values()})) + "."]
    results.publish(SECTION, "Peers: userseq vs RecTools SASRec on the same ML-1M split", lines,
                    write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", nargs="+", default=["rectools", "userseq"],
                    choices=["rectools", "userseq"])
    ap.add_argument("--max-epochs", type=int, default=0, help="smoke runs: stop after N epochs")
    ap.add_argument("--setup", action="store_true", help="create the venv and exit")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    a = ap.parse_args()
    if a.table_only:
        table(not a.no_write)
        return
    setup()
    if a.setup:
        return
    results.ensure_quiet(a.no_quiet)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    cfg = config(a.minutes, a.seed)
    split_dir = WORK / "split"
    log, sp = export_split(cfg, split_dir)
    n_items = log.n_items
    for system in a.systems:
        row = (run_rectools(a, sp, n_items, split_dir) if system == "rectools"
               else run_userseq(a, log, sp, cfg))
        row["minutes"] = a.minutes
        results.log(f"{row['system']}: test NDCG@10 {row['test_ndcg10']:.4f}, epochs "
                    f"{row['epochs']}, to {TARGET}: {row['time_to_target_s']}")
        if not a.no_write:
            results.save_row(STORE, f"{a.minutes:g}/{system}/s{a.seed}", row, LOCK)
    if not a.no_write:
        table(True)


if __name__ == "__main__":
    main()
