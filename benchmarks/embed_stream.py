"""Streaming batch embeddings: `userseq embed --chunk-size` over 1M users, time and peak memory.

Builds a run directory with 1M synthetic users (an untrained SASRec: encoding cost does not depend
on the weights), then runs `userseq embed RUN --out users.parquet --chunk-size C` in a fresh
process for each chunk size and records wall time and the process's peak RSS. Memory should
depend on the chunk size, not on the number of users (beyond the run's history CSR, which the
run holds anyway). Writes the `embed` section of benchmarks/RESULTS.md.

    python benchmarks/embed_stream.py                          # 1M users
    python benchmarks/embed_stream.py --users 200000 --chunks 16384 262144
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import publish, run_header  # noqa: E402


def make_run(path: Path, n_users: int, n_items: int, mean_len: int, dim: int, max_len: int,
             seed: int = 0) -> None:
    import polars as pl

    from userseq import NextItemRecommender
    from userseq.encoders import build_encoder

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_len, n_users), 2, None).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, n_items + 1, offsets[-1]).astype(np.int32)
    rec = NextItemRecommender("sasrec", overrides={"model.dim": dim, "model.max_len": max_len,
                                                   "model.heads": 1})
    rec.encoder_ = build_encoder(rec.config.model, n_items)
    rec.user_ids_ = pl.Series("id", np.arange(n_users, dtype=np.int64))
    rec.item_ids_ = pl.Series("id", np.arange(1, n_items + 1, dtype=np.int64))
    rec.histories_ = (offsets, items)
    rec.data_fingerprint_ = "synthetic"
    rec.save(path)


def run_embed(run: Path, out: Path, chunk: int, extra: list[str]) -> tuple[float, float]:
    exe = Path(sys.executable).with_name("userseq")
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(r.returncode)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, str(exe), "embed", str(run),
                        "--out", str(out), "--chunk-size", str(chunk), "--quiet", *extra],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"userseq embed failed: {p.stderr[-2000:]}")
    return wall, int(p.stdout.strip().splitlines()[-1]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--mean-len", type=int, default=30)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--chunks", type=int, nargs="+", default=[16_384, 65_536, 262_144])
    ap.add_argument("--workdir", type=Path, default=HERE / "_work")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    run = args.workdir / f"embed-run-{args.users}"
    if not (run / "model.safetensors").exists():
        print(f"building {run} ({args.users:,} synthetic users)", flush=True)
        make_run(run, args.users, args.items, args.mean_len, args.dim, args.max_len)
    load_before = os.getloadavg()
    rows = []
    for chunk in args.chunks:
        out = args.workdir / f"embed-{args.users}.parquet"
        wall, rss = run_embed(run, out, chunk, [])
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(out).metadata
        rows.append({"chunk": chunk, "wall": wall, "rss": rss, "rows": meta.num_rows,
                     "groups": meta.num_row_groups, "mb": out.stat().st_size / 2**20,
                     "load": os.getloadavg()[0]})
        print(rows[-1], flush=True)
    lines = [
        *run_header("embed_stream.py", load_before),
        f"- Run: {args.users:,} synthetic users (Poisson({args.mean_len}) events each), "
        f"{args.items:,} items, "
        f"SASRec d={args.dim}, max_len {args.max_len} (untrained: the cost does not depend on "
        "the weights)",
        "- Each row is a fresh `userseq embed RUN --out FILE --chunk-size C --quiet` process; "
        "peak RSS is its "
        "ru_maxrss (model + history CSR + one chunk).",
        "",
        "| chunk size | users written | row groups | Parquet MiB | wall s | users/s | peak RSS GiB "
        "| load 1m |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['chunk']:,} | {r['rows']:,} | {r['groups']} | {r['mb']:.0f} | "
                     f"{r['wall']:.1f} | {r['rows'] / r['wall']:,.0f} | {r['rss']:.2f} | "
                     f"{r['load']:.2f} |")
    publish("embed", "Batch embeddings: streamed `userseq embed` over 1M users", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
