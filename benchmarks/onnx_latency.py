"""Latency of the onnxruntime engine next to PyTorch (`userseq serve --engine onnx`): encoding user
vectors (SASRec, ml-100k) and scoring 100 candidates for one user (DIN and DARE over ML-1M
histories). Writes the `onnx` section of benchmarks/RESULTS.md.

    python benchmarks/onnx_latency.py            # ~1 minute
    python benchmarks/onnx_latency.py --smoke    # a few seconds, not stored

One thread for both engines (the service's default, --threads 1). Weights: SASRec trained 1 epoch;
CTR models untrained (the cost does not depend on the weights). Every exported graph is checked
against PyTorch first (max abs difference in the row).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import (  # noqa: E402
    LoadMonitor,
    ensure_quiet,
    load_rows,
    provenance,
    publish,
    save_row,
)

STORE = HERE / "onnx_runs.json"
LOCK = HERE / "_work" / "onnx_runs.lock"


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def nextitem_rows(tmp: Path, reps: int, smoke: bool) -> list[dict]:
    from userseq.data.datasets import load_dataset
    from userseq.export.onnx import OnnxUserEncoder, export_onnx
    from userseq.nextitem.estimator import NextItemRecommender

    log = load_dataset("ml-100k")
    rec = NextItemRecommender("sasrec", overrides={
        "model.dim": 64, "model.max_len": 200, "train.epochs": 1, "train.device": "cpu",
        "train.threads": 1, **({"train.max_minutes": 0.05} if smoke else {})})
    rec.fit(log, quiet=True)
    info = export_onnx(rec, tmp / "sasrec.onnx")
    eng = OnnxUserEncoder(rec, tmp / "sasrec.onnx")
    offsets, items = rec.histories_
    rows = []
    for batch in (1, 64):
        users = np.argsort(-np.diff(offsets))[:batch]  # the longest histories (200 events)
        off = np.r_[0, np.cumsum(np.diff(offsets)[users])]
        flat = np.concatenate([items[offsets[u]:offsets[u + 1]] for u in users])
        for name, e in (("torch", rec), ("onnx", eng)):
            ms = timed(lambda e=e, off=off, flat=flat: e.encode(off, flat), reps)
            rows.append({"what": f"SASRec user vector (d 64, L 200), batch {batch}",
                         "engine": name, "ms": round(ms, 3), "max_abs_diff": info["max_abs_diff"]})
    return rows


def ctr_rows(tmp: Path, reps: int, smoke: bool) -> list[dict]:
    import torch

    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.estimator import CTREstimator
    from userseq.ctr.models import build_ctr_model
    from userseq.data.datasets import load_dataset, load_item_metadata
    from userseq.export.onnx import OnnxCTRScorer, export_onnx

    cfg = CTRConfig().updated({"data.negatives": 1, "data.split": "user",
                               "data.targets_per_user": 3, "train.device": "cpu"})
    data = build_ctr_data(load_dataset("ml-1m"), cfg.data, load_item_metadata("ml-1m"))
    v = data.vocab
    lengths = np.diff(data.behaviours.offsets)
    user = v.user_ids.to_list()[int(np.argsort(lengths)[len(lengths) // 2])]  # median history
    rows = []
    for name, over in (("din", {"model.max_len": 200}), ("dare", {"model.long_len": 2000})):
        est = CTREstimator(config=cfg, overrides={"model.name": name, **over})
        torch.manual_seed(0)
        est.model_ = build_ctr_model(est.config.model, v.n_items, v.n_cats, v.n_feats,
                                     v.n_users).eval()
        est.vocab_, est.behaviours_ = v, data.behaviours
        info = export_onnx(est, tmp / f"{name}.onnx")
        eng = OnnxCTRScorer(est, tmp / f"{name}.onnx")
        cands = v.item_ids.to_list()[:100]
        for engine, e in (("torch", est), ("onnx", eng)):
            ms = timed(lambda e=e, c=cands: e.score_request({"user": user}, c), reps)
            rows.append({"what": f"{name} CTR: 100 candidates, one user (history "
                                 f"{int(np.median(lengths))} events, window "
                                 f"{est.config.model.window})",
                         "engine": engine, "ms": round(ms, 3),
                         "max_abs_diff": info["max_abs_diff"],
                         "dynamic_width": info.get("dynamic_width")})
    return rows


def render(write: bool) -> None:
    rows = [r for k, r in load_rows(STORE).items() if not k.startswith("smoke/")]
    lines = ["Written by `benchmarks/onnx_latency.py` from `benchmarks/onnx_runs.json`. Median "
             "latency of one call after a warm-up, one thread for both engines (the service "
             "default). `max abs diff`: onnxruntime vs PyTorch on the export check.", "",
             "`history width`: free = the graph's history axis is dynamic (a short history is "
             "not padded to the window), window = padded to the window.", "",
             "| what | engine | ms per call | onnx / torch | max abs diff | history width | "
             "verdict | command |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["what"], r["engine"]): r for r in rows}
    for r in rows:
        base = by.get((r["what"], "torch"))
        ratio = f"{r['ms'] / base['ms']:.2f}" if base and r["engine"] == "onnx" else ""
        width = {True: "free", False: "window"}.get(r.get("dynamic_width"), "—")
        lines.append(f"| {r['what']} | {r['engine']} | {r['ms']:.2f} | {ratio} | "
                     f"{r['max_abs_diff']:.1e} | {width} | {r['verdict']} | "
                     f"`{r['command'].strip()}` |")
    if rows:
        lines += ["", f"Run {rows[0]['date']}, commit {rows[0]['commit']}, {rows[0]['machine']}."]
    publish("onnx", "ONNX engine latency next to PyTorch", lines, write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    ap.add_argument("--table", action="store_true", help="only rewrite RESULTS.md")
    args = ap.parse_args()
    if not args.table:
        ensure_quiet(args.no_quiet)
        import torch

        torch.set_num_threads(1)
        reps = 3 if args.smoke else args.reps
        with tempfile.TemporaryDirectory() as d:
            for part in (nextitem_rows, ctr_rows):
                with LoadMonitor() as mon:
                    rows = part(Path(d), reps, args.smoke)
                for r in rows:
                    key = f"{'smoke/' if args.smoke else ''}{r['what']}/{r['engine']}"
                    save_row(STORE, key, provenance(mon, **r), LOCK)
                    print(f"{r['what']} [{r['engine']}]: {r['ms']:.2f} ms", flush=True)
    render(not args.smoke)


if __name__ == "__main__":
    main()
