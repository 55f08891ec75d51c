"""Streaming user state: one new event through the recurrence (`NextItemRecommender.update`) vs
re-encoding the whole history (`encode`, the batch path), for recurrent encoders.

A model is trained briefly (--epochs) on synthetic users with long histories (the timing does
not depend on accuracy), then for --users users with a --history-event history: time of
`update(state, [[one event]])` and of `encode(history + event)` (median of --repeats, one user
at a time, as a live service sees them), and the largest difference between the two user vectors
and between their scores over the catalogue (goal: <= 1e-4).

    python benchmarks/ssm_stream.py
    python benchmarks/ssm_stream.py --models ssm --history 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "ssm_stream_runs.json"
LOCK = HERE / "_work" / "ssm_stream.lock"


def synthetic_log(n_users: int, length: int, n_items: int, seed: int):
    import polars as pl

    from userseq import EventLog

    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    steps = rng.integers(1, 4, (n_users, length)).cumsum(1)  # noisy walks through the catalogue
    items = (starts[:, None] + steps) % n_items
    frame = pl.DataFrame({"user_id": np.repeat(np.arange(n_users), length),
                          "item_id": items.reshape(-1),
                          "timestamp": np.tile(np.arange(length), n_users)})
    return EventLog.from_frame(frame)


def measure(model: str, args: argparse.Namespace) -> dict:
    import torch

    from userseq import NextItemRecommender

    torch.set_num_threads(args.threads)
    L = args.history + 1
    log = synthetic_log(args.train_users, L, args.items, args.seed)
    rec = NextItemRecommender(model, overrides={
        "model.dim": args.dim, "model.layers": 2, "model.max_len": L, "train.epochs": args.epochs,
        "train.batch_size": 16, "train.seed": args.seed, "eval.ks": [10],
        "train.valid_users": 64, "train.threads": args.threads}).fit(log, quiet=True)
    offsets, items = rec.histories_
    upd, enc, dvec, dscore = [], [], [], []
    W = rec.item_matrix()
    for u in range(args.users):
        h = items[offsets[u] : offsets[u] + L]
        ids = rec.item_ids.gather(h - 1).to_list()
        state = rec.user_state(histories=[ids[:-1]])
        for r in range(args.repeats):
            t0 = time.perf_counter()
            new = rec.update(state, [[ids[-1]]])
            t1 = time.perf_counter()
            full = rec.encode(np.array([0, L]), h)
            t2 = time.perf_counter()
            if r:  # the first round warms up
                upd.append(t1 - t0)
                enc.append(t2 - t1)
        dvec.append(float((new.vector - full).abs().max()))
        dscore.append(float((new.vector @ W.T - full @ W.T).abs().max()))
    return {"model": model, "history": args.history, "update_ms": 1000 * float(np.median(upd)),
            "reencode_ms": 1000 * float(np.median(enc)),
            "speedup": float(np.median(enc) / np.median(upd)),
            "max_vector_diff": max(dvec), "max_score_diff": max(dscore),
            "users": args.users, "repeats": args.repeats - 1, "dim": args.dim, "layers": 2,
            "threads": args.threads, "train_epochs": args.epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ssm", "gru4rec"])
    ap.add_argument("--history", type=int, default=1000, help="events before the new one")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--train-users", type=int, default=200)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        for model in args.models:
            results.log(f"{model}: history {args.history}")
            with results.LoadMonitor() as mon:
                r = measure(model, args)
            r.update(results.provenance(mon, seeds=[args.seed], data=(
                f"synthetic: {args.train_users} users x {args.history + 1} events, "
                f"{args.items} items")))
            results.log(f"  update {r['update_ms']:.2f} ms, re-encode {r['reencode_ms']:.2f} ms, "
                        f"x{r['speedup']:.0f}, max score diff {r['max_score_diff']:.2e}")
            results.save_row(STORE, f"{model}/h{args.history}", r, LOCK)
    rows = list(results.load_rows(STORE).values())
    lines = ["| model | history | update one event (ms) | re-encode history (ms) | speed-up "
             "| max vector diff | max score diff | verdict | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['history']:,} | {r['update_ms']:.2f} | "
                     f"{r['reencode_ms']:.2f} | {r['speedup']:.0f}x | {r['max_vector_diff']:.1e} "
                     f"| {r['max_score_diff']:.1e} | {r['verdict']} | `{r['command']}` |")
    r0 = rows[0] if rows else {}
    lines = [f"Machine: {r0.get('machine', '-')}; dates: {results.run_dates(rows)}.", "",
             f"d = {r0.get('dim')}, 2 layers, torch threads {r0.get('threads')}, one user at a "
             "time; medians over users x repeats (first round discarded). `update` = "
             "`NextItemRecommender.update(state, [[event]])` (the recurrence, one step); "
             "re-encode = `encode` of the whole history + event (FFT convolution for ssm, the "
             "fused GRU for gru4rec). Diffs: largest |difference| between the two user vectors "
             "and between their dot-product scores over the catalogue. Models trained "
             f"{r0.get('train_epochs')} epoch on {r0.get('data')} (timing does not depend on "
             "accuracy).", "", *lines]
    results.publish("ssm_stream", "Streaming user state: update vs re-encode", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
