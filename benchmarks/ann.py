"""ANN index benchmark: recall@100 against exact search, query latency and build cost.

Two catalogues:
- a 1M-item synthetic catalogue (64-d; 2,000 clusters, log-normal norms like popularity-scaled item
  embeddings); queries are "users": noisy mixtures of 3 item vectors;
- ML-1M: the item output vectors of a trained run, queried with the run's real user vectors.

For each index kind the same `VectorIndex` code that `userseq index` and the service use is
built, and measured: recall@100 of the top-100 against exact brute force, single-query latency
(1 thread, as the service queries), batch throughput (all threads), build time, file size.
Writes the `ann` section of benchmarks/RESULTS.md.

    python benchmarks/ann.py                                   # both catalogues
    python benchmarks/ann.py --n-items 200000 --skip-ml1m      # quicker
    python benchmarks/ann.py --run benchmarks/_work/ml1m-sasrec
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import fmt_load, log, publish, run_header  # noqa: E402

K = 100


def synthetic(n: int, dim: int, n_queries: int, latent: int = 16,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors with the structure of learned embeddings: clusters in a `latent`-d space mapped
    to `dim` dimensions, a little full-rank noise, log-normal norms (popularity). Queries ("users")
    mix two cluster centres (a taste for two genres) plus noise."""
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((2000, latent)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    step = 200_000
    for lo in range(0, n, step):
        m = min(step, n - lo)
        z = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, latent))
        x[lo : lo + m] = z @ proj + 0.15 * rng.standard_normal((m, dim))
        x[lo : lo + m] *= rng.lognormal(0, 0.35, (m, 1))
    pair = centres[rng.integers(0, len(centres), (n_queries, 2))].mean(1)
    q = ((pair + 0.3 * rng.standard_normal((n_queries, latent))) @ proj
         + 0.1 * rng.standard_normal((n_queries, dim)))
    return x, q.astype(np.float32)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    from userseq.index import exact_search

    out = []
    for lo in range(0, len(q), 100):
        out.append(exact_search(x, q[lo : lo + 100], k)[1])
    return np.concatenate(out)


def measure(index, q: np.ndarray, truth: np.ndarray, n_single: int) -> dict:
    import faiss

    from userseq.index import recall_at_k

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    _, got = index.search(q, K)
    batch_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    lat = []
    for v in q[:n_single]:
        t = time.perf_counter()
        index.search(v[None], K)
        lat.append((time.perf_counter() - t) * 1000)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    lat = np.array(lat)
    return {"recall": recall_at_k(got, truth), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "qps_batch": len(q) / batch_s}


def bench_catalogue(name: str, x: np.ndarray, q: np.ndarray, kinds: list[str], n_single: int,
                    sweeps: dict[str, list[int]], log) -> list[dict]:
    from userseq.index import IndexConfig, VectorIndex

    log(f"[{name}] exact top-{K} for {len(q)} queries over {len(x):,} vectors")
    t0 = time.perf_counter()
    truth = exact_topk(x, q, K)
    log(f"[{name}] exact: {time.perf_counter() - t0:.1f}s")
    rows = []
    for kind in kinds:
        cfg = IndexConfig(kind=kind)
        t0 = time.perf_counter()
        index = VectorIndex.build(x, "ip", cfg)
        build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            size = index.save(Path(tmp) / "ix").stat().st_size
        log(f"[{name}] {kind}: built in {build:.1f}s ({size / 2**20:.0f} MiB) {index.info}")
        settings = [None]
        if kind == "hnsw":
            settings = sweeps["ef_search"]
        elif kind == "ivfpq":
            settings = sweeps["nprobe"]
        for s in settings:
            label = kind
            if kind == "hnsw":
                index.config.ef_search = s
                label = f"hnsw (M={cfg.hnsw_m}, efC={cfg.ef_construction}, efSearch={s})"
            elif kind == "ivfpq":
                index.config.nprobe, index.config.refine_factor = s
                label = (f"ivfpq (nlist={index.info['nlist']}, PQ{index.info['pq_m']}x8, "
                         f"nprobe={s[0]}, refine {s[1]}k)")
            m = measure(index, q, truth, n_single)
            log(f"[{name}] {label}: recall@{K} {m['recall']:.4f}, p50 {m['p50']:.3f} ms, "
                f"p99 {m['p99']:.3f} ms, batch {m['qps_batch']:.0f} q/s")
            rows.append({"catalogue": name, "index": label, "build_s": build, "mib": size / 2**20,
                         **m})
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--latent", type=int, default=16,
                    help="intrinsic dimension of the synthetic items")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--run", type=Path, default=HERE / "_work" / "ml1m-sasrec",
                    help="trained ML-1M run")
    ap.add_argument("--skip-ml1m", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    return ap.parse_args()


def synthetic_rows(args: argparse.Namespace) -> list[dict]:
    sweeps = {"ef_search": [128, 256, 512, 1024],
              "nprobe": [(32, 10), (128, 4), (128, 10), (256, 10), (256, 25)]}
    x, q = synthetic(args.n_items, args.dim, args.queries, args.latent)
    name = f"synthetic {args.n_items:,} x {args.dim} ({args.latent}-d latent)"
    return bench_catalogue(name, x, q, args.kinds, args.single, sweeps, log)


def ml1m_rows(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Rows of the trained ML-1M run's items and users, or none and a note when there is no run."""
    if not (args.run / "model.safetensors").exists():
        log(f"no trained run at {args.run}: skipping ML-1M (train one: userseq train --data ml-1m "
            "...)")
        return [], f"ML-1M skipped: no run at `{args.run}`."
    from userseq import NextItemRecommender

    rec = NextItemRecommender.load(args.run)
    items = rec.item_embeddings().astype(np.float32)
    users = rec.user_embeddings().astype(np.float32)
    name = f"ML-1M items ({len(items):,} x {items.shape[1]}, {rec.config.model.name})"
    sweeps = {"ef_search": [64, 256], "nprobe": [(16, 10), (64, 10)]}
    return bench_catalogue(name, items, users, args.kinds, args.single, sweeps, log), ""


def section_lines(args: argparse.Namespace, rows: list[dict], load_before: tuple[float, ...],
                  load_after: tuple[float, ...], software: str) -> list[str]:
    lines = [
        *run_header("ann.py", load_before),
        f"- Load average (1/5/15 min) after: {fmt_load(load_after)}",
        f"- Software: {software}",
        f"- Recall@{K}: share of the exact top-{K} (brute-force inner product) found in the "
        f"index's top-{K}; "
        f"{args.queries} queries for the synthetic catalogue (clustered items with a "
        f"{args.latent}-d latent "
        "structure and log-normal norms; queries mix two cluster centres), all "
        "6,040 real user vectors for ML-1M. Latency: one query at a time, 1 thread, top-100 "
        "(as the service queries). Batch: all queries at once, all threads.",
        "- `IndexConfig.kind = auto` picks flat up to 100k vectors, then IVF-PQ (nprobe 256, "
        "refine 10k) for "
        "inner products (these results) and HNSW for the cosine (similar items/users) indexes; "
        "HNSW and IVF-PQ search inner products through the MIPS-to-L2 transform (an extra "
        "coordinate "
        "sqrt(M^2 - |x|^2)); IVF-PQ re-ranks `refine x k` PQ candidates with exact vectors.",
        "",
        f"| catalogue | index | recall@{K} | p50 ms | p99 ms | batch q/s | build s | file MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['catalogue']} | {r['index']} | {r['recall']:.4f} | {r['p50']:.3f} | "
                     f"{r['p99']:.3f} | {r['qps_batch']:,.0f} | {r['build_s']:.1f} | "
                     f"{r['mib']:.0f} |")
    return lines


def main() -> None:
    args = parse_args()

    import faiss
    import torch

    software = f"faiss {faiss.__version__}, torch {torch.__version__}, numpy {np.__version__}"
    load_before = os.getloadavg()
    rows: list[dict] = []
    if not args.skip_synthetic:
        rows += synthetic_rows(args)
    ml1m_note = ""
    if not args.skip_ml1m:
        ml1m, ml1m_note = ml1m_rows(args)
        rows += ml1m
    lines = section_lines(args, rows, load_before, os.getloadavg(), software)
    if ml1m_note:
        lines += ["", ml1m_note]
    publish("ann", "ANN indexes: recall@100 against exact search, latency", lines,
            write=not args.no_write)
    if not args.no_write:
        log("wrote the ann section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
