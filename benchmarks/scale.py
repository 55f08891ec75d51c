"""Scale check: a 1M-item synthetic catalogue, sampled-softmax training and chunked full ranking.

Targets (foundation issue): training with sampled softmax on a 1M-item catalogue in < 8 GB, and
full-ranking evaluation whose memory stays bounded (top-K computed in users x items chunks).
Each part runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/scale.py [--items 1000000 --users 200000 --events 10000000 --minutes 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def train_part(path: str, minutes: float, out: str) -> None:
    from userseq import EventLog, NextItemRecommender
    from userseq.data.split import leave_one_out

    t0 = time.time()
    log = EventLog.read(path, min_user_events=3)
    t_load = time.time() - t0
    sp = leave_one_out(log)
    over = {"model.max_len": 50, "loss.name": "sampled_softmax", "loss.negatives": 1024,
            "loss.sampler": "popularity", "train.batch_size": 256, "train.max_minutes": minutes,
            "train.valid_users": 2000, "train.epochs": 1000}
    rec = NextItemRecommender("sasrec", overrides=over).fit(log, sp, quiet=True)
    st = rec.train_state_
    res = {"users": log.n_users, "items": log.n_items, "events": log.n_events, "load_s": t_load,
           "train_s": st["seconds"], "epochs": st["epochs"],
           "seconds_per_epoch": st["seconds_per_epoch"], "sequences": st["train_sequences"],
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "valid_ndcg@10": st["best_valid"]}
    Path(out).write_text(json.dumps(res))


def eval_part(n_items: int, n_users: int, out: str) -> None:
    import numpy as np
    import torch

    from userseq.metrics.ranking import evaluate, matrix_scorer

    torch.manual_seed(0)
    U, W = torch.randn(n_users, 64), torch.randn(n_items + 1, 64)
    rng = np.random.default_rng(0)
    targets = rng.integers(1, n_items + 1, n_users)
    offsets = np.arange(0, 50 * n_users + 1, 50)
    items = rng.integers(1, n_items + 1, 50 * n_users).astype(np.int32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.time()
    m = evaluate(matrix_scorer(U, W), n_items, targets, (offsets, items), ks=[10, 100])
    res = {"users": n_users, "items": n_items, "seconds": time.time() - t0, "rss_before_gb": base,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "hr@100": m["hr@100"]}
    Path(out).write_text(json.dumps(res))


def section_lines(args: argparse.Namespace, tr: dict, ev: dict) -> list[str]:
    from results import machine_description

    return [
        f"Machine: {machine_description()}.",
        "",
        f"Synthetic log (benchmarks/synthetic.py, seed 0): {args.events:,} events, "
        f"{args.users:,} users, "
        f"{args.items:,} items (Zipf popularity); after `min_user_events=3`: {tr['users']:,} "
        f"users, {tr['items']:,} items, {tr['events']:,} events.",
        "",
        "| part | setting | time | peak RSS | target |",
        "|---|---|---|---|---|",
        "| train | SASRec d=64, max_len 50, sampled softmax (1,024 popularity negatives, logQ), "
        f"batch 256, {args.minutes} min budget | {tr['epochs']} epoch(s), "
        f"{tr['seconds_per_epoch']} s/epoch, "
        f"{tr['sequences']:,} sequences/epoch; load {tr['load_s']:.1f} s | "
        f"{tr['peak_rss_gb']:.2f} GB | "
        f"< 8 GB: {'met' if tr['peak_rss_gb'] < 8 else 'MISSED'} |",
        f"| full-ranking eval | {ev['users']:,} users x {ev['items']:,} items, d=64, 50 seen items "
        f"filtered per user, K = 10/100 | {ev['seconds']:.1f} s | {ev['peak_rss_gb']:.2f} GB "
        f"(inputs alone {ev['rss_before_gb']:.2f} GB) | bounded (chunks <= 32M scores) |",
        "",
        f"Command: `python benchmarks/scale.py --items {args.items} --users {args.users} "
        f"--events {args.events} --minutes {args.minutes}` ({time.strftime('%Y-%m-%d')}).",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    ap.add_argument("--eval-users", type=int, default=5_000)
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "scale")
    ap.add_argument("--part", choices=["train", "eval"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part == "train":
        return train_part(args.path, args.minutes, args.out)
    if args.part == "eval":
        return eval_part(args.items, args.eval_users, args.out)

    from results import publish
    from synthetic import write_synthetic_events

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"events-{args.events}-{args.users}-{args.items}.parquet"
    if not path.exists():
        print(f"generating {path}", flush=True)
        write_synthetic_events(path, args.events, args.users, args.items, seed=0)
    res = {}
    for part in ("eval", "train"):
        out = args.workdir / f"{part}.json"
        cmd = [sys.executable, __file__, "--part", part, "--out", str(out), "--path", str(path),
               "--items", str(args.items), "--eval-users", str(args.eval_users),
               "--minutes", str(args.minutes)]
        print("running", part, flush=True)
        subprocess.run(cmd, check=True)
        res[part] = json.loads(out.read_text())
        print(part, res[part], flush=True)
    publish("scale", "Scale: 1M-item catalogue", section_lines(args, res["train"], res["eval"]))


if __name__ == "__main__":
    main()
